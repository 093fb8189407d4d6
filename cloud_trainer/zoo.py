"""``cloud-trainer zoo``: a short catalogue of well-known public detection models, and ``pull``,
which downloads one, verifies every file, packages it as a bundle (SPEC §2) through
``cloud_trainer.byom`` and, given a labelled dataset, evaluates it.

Each entry pins its files to an immutable URL (a git commit, a release directory) and carries
every checksum its publisher states: sizes and sha384 from the OpenVINO Open Model Zoo's own
``model.yml``, git blob ids from the google-coral/test_data tree, sha256 where one is known.
Where the catalogue has no sha256 for a file, ``pull`` verifies what it has, computes the
sha256 and records it (in its output and in the bundle's manifest ``source``), and says so.

``--mirror URL`` (or ``EDGEWATCH_ZOO_MIRROR``) replaces the scheme and host of every URL, keeping
the path: ``https://storage.openvinotoolkit.org/repositories/…`` becomes ``URL/repositories/…``
(``http://``, ``https://`` or ``file://``), for an internal mirror, an air-gapped copy, or the
tests' loopback server. ``--catalog FILE`` adds entries from a JSON file of the same form as
``zoo list --json`` (an entry of the same name replaces the built-in one).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.bundle import MANIFEST, load_bundle

from . import __version__
from .errors import TrainerError

if TYPE_CHECKING:
    from .data.dataset import Dataset

MIRROR_ENV = "EDGEWATCH_ZOO_MIRROR"
DEFAULT_TIMEOUT_S = 60.0
CHUNK = 64 * 1024
Role = Literal["model", "weights", "labels", "edgetpu"]

# Digest algorithms a catalogue may state, and how each is computed over a file's bytes.
# "git-blob-sha1" is the id git gives the file in its tree: sha1 of b"blob <size>\0" + bytes.
ALGORITHMS = ("sha256", "sha384", "git-blob-sha1")
_HEX_LENGTH = {"sha256": 64, "sha384": 96, "git-blob-sha1": 40}


class ZooError(TrainerError):
    """A zoo entry cannot be fetched or packaged as it is: the message names the URL or file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ZooFile(_Strict):
    """One file of an entry: where it is, what it is, and what it must hash to."""

    url: str
    role: Role
    size: Optional[int] = Field(None, ge=0)
    digests: Dict[str, str] = Field(default_factory=dict)  # algorithm -> lower-case hex
    name: Optional[str] = None  # the file's name on disk (default: the URL's last path segment)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if urllib.parse.urlsplit(v).scheme not in ("http", "https", "file"):
            raise ValueError(f"{v!r}: not an http(s):// or file:// URL")
        return v

    @field_validator("digests")
    @classmethod
    def _digests(cls, v: Dict[str, str]) -> Dict[str, str]:
        for algorithm, digest in v.items():
            if algorithm not in ALGORITHMS:
                raise ValueError(f"{algorithm!r}: not a digest this tool checks ({', '.join(ALGORITHMS)})")
            n = _HEX_LENGTH[algorithm]
            if len(digest) != n or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"{algorithm}: must be {n} lower-case hex digits")
        return v

    @property
    def filename(self) -> str:
        name = self.name or urllib.parse.unquote(urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1])
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ZooError(f"{self.url}: no file name in the URL; give the entry's file a 'name'")
        return name


def twin_name(model: str) -> str:
    """The name of the EdgeTPU-compiled twin of the CPU model ``model`` (Coral's convention)."""
    return model.removesuffix(".tflite") + "_edgetpu.tflite"


class ZooModel(_Strict):
    """One catalogue entry."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    description: str
    detects: str  # what it finds, in a few words
    runtimes: Tuple[str, ...]  # the bundle's artifact runtimes
    license: str  # SPDX identifier
    license_url: str
    source: str  # the page that describes the model
    files: Tuple[ZooFile, ...]
    labels: Optional[Tuple[str, ...]] = None  # inline labels, for a model without a label file
    labels_source: str  # where the labels (file or inline) come from
    checksums_source: str  # where the sizes and digests come from
    decoder: Optional[str] = None  # a decoder type for package, where the outputs leave it open
    version: str = "1.0.0"

    @field_validator("files")
    @classmethod
    def _files(cls, v: Tuple[ZooFile, ...]) -> Tuple[ZooFile, ...]:
        roles = [f.role for f in v]
        if roles.count("model") != 1:
            raise ValueError("needs exactly one file with role 'model'")
        for role in ("weights", "labels", "edgetpu"):
            if roles.count(role) > 1:
                raise ValueError(f"at most one file with role {role!r}")
        model = next(f for f in v if f.role == "model")
        if "edgetpu" in roles and not model.filename.endswith(".tflite"):
            raise ValueError("an EdgeTPU twin goes with a .tflite model")
        names = [twin_name(model.filename) if f.role == "edgetpu" else f.filename for f in v]
        if len(set(names)) != len(names):
            raise ValueError("two files have the same name")
        return v

    def file(self, role: str) -> Optional[ZooFile]:
        return next((f for f in self.files if f.role == role), None)

    @property
    def size(self) -> Optional[int]:
        """Bytes to download, when the catalogue knows every file's size."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)


class Catalog(_Strict):
    models: Tuple[ZooModel, ...]


# --- the built-in catalogue ---------------------------------------------------------------------

_CORAL_COMMIT = "104342d2d3480b3e66203073dac24f4e2dbb4c41"  # google-coral/test_data "Release Grouper"
_CORAL_LABELS_COMMIT = "c21de4450f88a20ac5968628d375787745932a5a"  # "Release Frogfish": indexed labels
_CORAL_RAW = f"https://raw.githubusercontent.com/google-coral/test_data/{_CORAL_COMMIT}"
# coco_labels.txt as "0  person" lines: the class ids these SSDs output (COCO's ids less one,
# with its gaps), which package turns into placeholders so that indexes keep their meaning.
_CORAL_LABELS = ZooFile(
    url=f"https://raw.githubusercontent.com/google-coral/test_data/{_CORAL_LABELS_COMMIT}/coco_labels.txt",
    role="labels",
    size=930,
    digests={
        "sha256": "93f235896748537fc71325a070ee32e9a0afda2481ceb943559325619763fa6d",
        "git-blob-sha1": "1ee473cfa69910637754b6485ff9432a337c7ac3",
    },
)
_CORAL_CHECKSUMS = (
    "git blob ids from the google-coral/test_data tree at the pinned commits; the labels' size and "
    "sha256 computed from that blob; the EdgeTPU model's sha256 as published by projects that pin "
    f"commit {_CORAL_COMMIT[:7]}; the CPU model has no published sha256: pull records the one it computes"
)


def _coral(name: str, stem: str, what: str, cpu_blob: str, tpu_sha256: str, tpu_blob: str) -> ZooModel:
    """A Coral COCO SSD: ``stem.tflite`` and ``stem_edgetpu.tflite`` from google-coral/test_data."""
    return ZooModel(
        name=name,
        description=f"{what}, uint8 with TFLite_Detection_PostProcess; the CPU model and its "
        "EdgeTPU-compiled twin",
        detects="80 COCO classes (person, car, dog, ...)",
        runtimes=("tflite", "edgetpu"),
        license="Apache-2.0",
        license_url=f"https://github.com/google-coral/test_data/blob/{_CORAL_COMMIT}/LICENSE",
        source="https://coral.ai/models/object-detection/",
        files=(
            ZooFile(url=f"{_CORAL_RAW}/{stem}.tflite", role="model", digests={"git-blob-sha1": cpu_blob}),
            ZooFile(
                url=f"{_CORAL_RAW}/{stem}_edgetpu.tflite",
                role="edgetpu",
                digests={"sha256": tpu_sha256, "git-blob-sha1": tpu_blob},
            ),
            _CORAL_LABELS,
        ),
        labels_source=_CORAL_LABELS.url,
        checksums_source=_CORAL_CHECKSUMS,
        decoder="ssd",
    )


_OMZ_TAG = "2022.3.1"  # IR from the 2022.3 release: loads in OpenVINO 2022.3 LTS (the NCS2) and later
_OMZ_BIN = "https://storage.openvinotoolkit.org/repositories/open_model_zoo/2022.3/models_bin/1"


def _omz(
    name: str, what: str, labels: Tuple[str, ...], ids: str, xml: Tuple[int, str], bin_: Tuple[int, str]
) -> ZooModel:
    """An Intel Open Model Zoo detector: its FP16 IR (``xml``, ``bin_``: size and sha384)."""
    base = f"{_OMZ_BIN}/{name}/FP16/{name}"
    page = f"https://github.com/openvinotoolkit/open_model_zoo/blob/{_OMZ_TAG}/models/intel/{name}/README.md"
    return ZooModel(
        name=f"omz-{name}",
        description=f"Intel Open Model Zoo {what}, OpenVINO IR FP16 with DetectionOutput; NCS2 and CPU",
        detects=", ".join(labels),
        runtimes=("openvino",),
        license="Apache-2.0",
        license_url=f"https://github.com/openvinotoolkit/open_model_zoo/blob/{_OMZ_TAG}/LICENSE",
        source=page,
        files=(
            ZooFile(url=f"{base}.xml", role="model", size=xml[0], digests={"sha384": xml[1]}),
            ZooFile(url=f"{base}.bin", role="weights", size=bin_[0], digests={"sha384": bin_[1]}),
        ),
        labels=labels,
        labels_source=f"{page} (Outputs: {ids})",
        checksums_source=f"sizes and sha384 from models/intel/{name}/model.yml of openvinotoolkit/"
        f"open_model_zoo at tag {_OMZ_TAG} (what omz_downloader checks); no published sha256: "
        "pull records the one it computes",
        decoder="openvino-ssd",
    )


BUILTIN: Tuple[ZooModel, ...] = (
    _coral(
        "coral-ssd-mobilenet-v2-coco",
        "ssd_mobilenet_v2_coco_quant_postprocess",
        "SSD MobileNet v2 trained on COCO, 300x300 (Coral's reference detector, 22 mAP)",
        cpu_blob="28b6bdee3548170bb999ffcc7248b40d76f6b6b8",
        tpu_sha256="b94e2d58222c32f31062c7604e10488e2aba9259ab77462039476a3ba4597fef",
        tpu_blob="67037e5ef832559e9b49beac96b11f2a0788ee63",
    ),
    _coral(
        "coral-ssdlite-mobiledet-coco",
        "ssdlite_mobiledet_coco_qat_postprocess",
        "SSDLite MobileDet trained on COCO (quantization-aware), 320x320 (33 mAP)",
        cpu_blob="f2857fa8b4a89cc285194ab5a636ddbe2def7fde",
        tpu_sha256="b69e508ef2a670e06b80bd3e5559a827d5cd8d557c95d5e332cbf1d31d434a2e",
        tpu_blob="88d57192111241e540384f59c8d108a8452b920c",
    ),
    _omz(
        "person-detection-retail-0013",
        "pedestrian detector (MobileNetV2-like backbone, SSD head, 88.6 AP), 544x320 BGR",
        ("person",),
        "label 1 - person",
        xml=(
            571262,
            "d8ccaf92723a52d2b6bc8d2adf604843d2452dd9b0ea1c89ee5b44ee6651a13763770c32d163d88934a1ffe31194dd55",
        ),
        bin_=(
            1445734,
            "89cb1d9735d508b6d047fbafbed06babc3373d4da21cdb67873fed828aefdcf297b3594ef8219bf54b22af912b20f2d1",
        ),
    ),
    _omz(
        "person-vehicle-bike-detection-crossroad-0078",
        "person/vehicle/bike detector for traffic cameras (RMNet backbone, SSD head), 1024x1024 BGR",
        ("person", "vehicle", "bike"),
        "1 - person, 2 - vehicle, 3 - bike",
        xml=(
            526289,
            "e5d0e6d5d2b61211d14a7f58a66ad7cee1661076e021772c121a5e3ab02c7b0a2b434d4f4c0b2138c79e12bf2b7769b3",
        ),
        bin_=(
            2357042,
            "1ae9334519e2d218b562e7f919e26f7a837cec18b0a8a47875586c74b1f71cc773b16093ffd10c072fad792d0cc7d1ed",
        ),
    ),
)


def load_catalog(extra: Sequence[Path] = ()) -> Dict[str, ZooModel]:
    """The built-in entries, then those of each JSON file in ``extra`` (``{"models": [...]}``, the
    form ``zoo list --json`` prints); a later entry replaces an earlier one of the same name."""
    out = {m.name: m for m in BUILTIN}
    for path in extra:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ZooError(f"{path}: cannot read the catalogue: {e.strerror or e}") from e
        except ValueError as e:
            raise ZooError(f"{path}: not JSON: {e}") from e
        try:
            catalog = Catalog.model_validate(doc)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ZooError(f"{path}: {where}: {err['msg']}") from e
        except ZooError as e:
            raise ZooError(f"{path}: {e}") from e
        out.update((m.name, m) for m in catalog.models)
    return out


def catalog_document(models: Sequence[ZooModel]) -> Dict[str, Any]:
    return {"models": [m.model_dump(mode="json", exclude_none=True) for m in models]}


def human_size(n: Optional[int]) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def table(models: Sequence[ZooModel]) -> str:
    """``zoo list``: one row per entry (name, what it detects, runtimes, size, licence, source)."""
    head = ("NAME", "DETECTS", "RUNTIMES", "SIZE", "LICENSE", "SOURCE")
    rows = [head] + [
        (m.name, m.detects, ",".join(m.runtimes), human_size(m.size), m.license, m.source) for m in models
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return "\n".join("  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip() for r in rows)


# --- downloading --------------------------------------------------------------------------------


def mirrored(url: str, mirror: Optional[str]) -> str:
    """``url`` with its scheme and host replaced by ``mirror`` (which may carry a path prefix)."""
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    m = urllib.parse.urlsplit(mirror)
    if m.scheme not in ("http", "https", "file") or (m.scheme != "file" and not m.netloc):
        raise ZooError(f"mirror {mirror!r}: not an http(s)://HOST[/PATH] or file:///PATH URL")
    path = m.path.rstrip("/") + parts.path
    return urllib.parse.urlunsplit((m.scheme, m.netloc, path, parts.query, ""))


class _Hashes:
    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.sha384 = hashlib.sha384()
        self.size = 0

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        self.sha384.update(data)
        self.size += len(data)


def _git_blob_sha1(path: Path, size: int) -> str:
    h = hashlib.sha1(b"blob %d\0" % size)  # git's object id, not a security hash
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Progress:
    """A tqdm byte bar on stderr, or nothing (tqdm missing, or progress off)."""

    def __init__(self, total: Optional[int], desc: str, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                file=sys.stderr,
                leave=True,
            )

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _open(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": f"edgewatch-cloud-trainer/{__version__}"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # http(s) or file only (checked)
    except urllib.error.HTTPError as e:
        raise ZooError(f"{url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise ZooError(f"{url}: cannot fetch: {e.reason}") from e
    except (socket.timeout, TimeoutError) as e:
        raise ZooError(f"{url}: no answer within {timeout:g} s") from e
    except OSError as e:
        raise ZooError(f"{url}: cannot fetch: {e.strerror or e}") from e


def _length(response: Any) -> Optional[int]:
    text = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def download(
    f: ZooFile,
    dest: Path,
    *,
    mirror: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
) -> Dict[str, Any]:
    """Fetch ``f`` into ``dest`` and check it against every size and digest the catalogue
    states. Returns what was fetched and checked; on any failure ``dest`` is removed and a
    ZooError names the URL (and, for a mismatch, what was expected and what arrived)."""
    url = mirrored(f.url, mirror)
    try:
        with contextlib.closing(_open(url, timeout)) as response:
            length = _length(response)
            if length is not None and f.size is not None and length != f.size:
                raise ZooError(
                    f"{url}: size mismatch: expected {f.size} bytes, the server announces {length}"
                )
            hashes = _fetch(response, url, dest, length or f.size, timeout, progress)
        if length is not None and hashes.size != length:
            raise ZooError(f"{url}: the connection closed after {hashes.size} of {length} bytes")
        return _check(f, url, dest, hashes)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _fetch(
    response: Any, url: str, dest: Path, total: Optional[int], timeout: float, progress: bool
) -> _Hashes:
    hashes = _Hashes()
    bar = _Progress(total, dest.name, progress)
    try:
        with dest.open("wb") as out:
            while True:
                try:
                    block = response.read(CHUNK)
                except (socket.timeout, TimeoutError) as e:
                    raise ZooError(f"{url}: stalled: nothing arrived for {timeout:g} s") from e
                except (OSError, http.client.HTTPException) as e:  # a reset, an IncompleteRead
                    raise ZooError(f"{url}: the download broke off after {hashes.size} bytes: {e}") from e
                if not block:
                    break
                out.write(block)
                hashes.update(block)
                bar.update(len(block))
    finally:
        bar.close()
    return hashes


def _check(f: ZooFile, url: str, dest: Path, hashes: _Hashes) -> Dict[str, Any]:
    got = {"sha256": hashes.sha256.hexdigest(), "sha384": hashes.sha384.hexdigest()}
    checked: List[str] = []
    if f.size is not None:
        if hashes.size != f.size:
            raise ZooError(f"{url}: size mismatch: expected {f.size} bytes, got {hashes.size}")
        checked.append("size")
    for algorithm, expected in f.digests.items():
        actual = got[algorithm] if algorithm in got else _git_blob_sha1(dest, hashes.size)
        if actual != expected:
            raise ZooError(f"{url}: {algorithm} mismatch: expected {expected}, got {actual}")
        checked.append(algorithm)
    return {
        "url": f.url,
        **({"fetched_from": url} if url != f.url else {}),
        "file": dest.name,
        "role": f.role,
        "bytes": hashes.size,
        "sha256": got["sha256"],
        "verified": checked,
        "sha256_source": "catalogue" if "sha256" in f.digests else "computed here",
    }


def _describe_check(result: Dict[str, Any]) -> str:
    checked = result["verified"]
    unchecked = "NOT verified: the catalogue has no size or checksum for it"
    verdict = f"verified ({', '.join(checked)})" if checked else unchecked
    computed = result["sha256_source"] != "catalogue"
    note = " (not in the catalogue: computed here and recorded)" if computed else ""
    return f"{result['file']}: {result['bytes']} bytes, {verdict}; sha256 {result['sha256']}{note}"


# --- pull ---------------------------------------------------------------------------------------


def find(catalog: Dict[str, ZooModel], name: str) -> ZooModel:
    try:
        return catalog[name]
    except KeyError:
        raise ZooError(
            f"{name!r}: no such model in the zoo; `cloud-trainer zoo list` shows {', '.join(catalog)}"
        ) from None


def _default_echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def pull(
    entry: ZooModel,
    out: Path,
    *,
    mirror: Optional[str] = None,
    name: Optional[str] = None,
    version: Optional[str] = None,
    sign_key: Optional[Path] = None,
    eval_data: Optional[str] = None,
    eval_format: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
    echo: Callable[[str], None] = _default_echo,
) -> Dict[str, Any]:
    """Download ``entry``'s files into a temporary directory, verify each, package them as a
    bundle in ``out`` (which must not exist or be empty; it is written only once the bundle is
    complete) and, with ``eval_data``, evaluate it. Returns the summary ``zoo pull`` prints."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZooError(f"{out}: not an empty directory; zoo pull writes a new bundle directory")
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    mirrored(entry.files[0].url, mirror)  # a bad mirror is an error before anything downloads
    dataset = _eval_dataset(eval_data, eval_format)  # a dataset that cannot be read fails before any download
    echo(f"{entry.name}: {entry.description}")
    echo(f"  licence {entry.license} ({entry.license_url}); source {entry.source}")
    fetched: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgewatch-zoo-") as tmp:
        paths: Dict[str, Path] = {}
        for f in entry.files:
            dest = Path(tmp) / _disk_name(entry, f)
            result = download(f, dest, mirror=mirror, timeout=timeout, progress=progress)
            echo(f"  {_describe_check(result)}")
            fetched.append(result)
            paths[f.role] = dest
        if "labels" not in paths and entry.labels:
            paths["labels"] = Path(tmp) / f"{entry.name}.labels.txt"
            paths["labels"].write_text("".join(f"{label}\n" for label in entry.labels), encoding="utf-8")
        with _staging(out) as stage:
            _package(entry, paths, stage, fetched, name=name, version=version, sign_key=sign_key, echo=echo)
    bundle = load_bundle(out)
    summary: Dict[str, Any] = {
        "bundle": str(out),
        "zoo": entry.name,
        "name": bundle.manifest.name,
        "version": bundle.manifest.version,
        "manifest_sha256": bundle.manifest_sha256,
        "signed": bundle.signature is not None,
        "runtimes": [a.runtime for a in bundle.manifest.artifacts],
        "license": entry.license,
        "files": fetched,
    }
    if dataset is None:
        note = (
            f"not evaluated: give a labelled dataset with --eval DATA, or run "
            f"`cloud-trainer evaluate --bundle {out} DATA`"
        )
        echo(note)
        summary["evaluation"] = {"skipped": note}
    else:
        from .evaluate import evaluate_bundles

        summary["evaluation"] = evaluate_bundles([out], dataset, echo)
    return summary


def _eval_dataset(data: Optional[str], fmt: Optional[str]) -> Optional[Dataset]:
    if data is None:
        if fmt is not None:
            raise ZooError("--format goes with --eval DATA")
        return None
    from .data import load_dataset

    return load_dataset(data, fmt)


def _disk_name(entry: ZooModel, f: ZooFile) -> str:
    """Where a file is saved for package: its own name, but an EdgeTPU twin named by Coral's
    convention beside its CPU model (``X.tflite``, ``X_edgetpu.tflite``), which is how package
    finds the twin (and checks that it was compiled from that model)."""
    model = entry.file("model")
    return twin_name(model.filename) if f.role == "edgetpu" and model is not None else f.filename


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A new directory beside ``out`` to build the bundle in; renamed to ``out`` on success,
    removed on failure, so that ``out`` never holds half a bundle."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.zoo-", dir=out.parent))
    try:
        yield stage
        if out.exists():
            out.rmdir()  # checked empty before the downloads
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _package(
    entry: ZooModel,
    paths: Dict[str, Path],
    stage: Path,
    fetched: List[Dict[str, Any]],
    *,
    name: Optional[str],
    version: Optional[str],
    sign_key: Optional[Path],
    echo: Callable[[str], None],
) -> None:
    from .byom import ModelFiles, package_model, verify_bundle
    from .package import repackage

    files = ModelFiles(
        model=paths["model"], weights=paths.get("weights"), labels=paths.get("labels"), decoder=entry.decoder
    )
    # Verified once below, when the manifest is final (with the provenance, and signed).
    manifest, _ = package_model(
        files,
        stage,
        name=name or entry.name,
        version=version or entry.version,
        echo=echo,
        verify=lambda _: {},
    )
    if "edgetpu" in paths and not any(a.runtime == "edgetpu" for a in manifest.artifacts):
        raise ZooError(
            f"{paths['edgetpu']}: the catalogue's EdgeTPU twin of {paths['model'].name}, "
            "but package did not take it as one"
        )
    doc = json.loads((stage / MANIFEST).read_text(encoding="utf-8"))
    doc.setdefault("source", {})["zoo"] = {
        "name": entry.name,
        "license": entry.license,
        "license_url": entry.license_url,
        "source": entry.source,
        "files": [{"url": r["url"], "sha256": r["sha256"], "bytes": r["bytes"]} for r in fetched],
    }
    (stage / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    repackage(stage, sign_key=sign_key)
    for runtime, outcome in verify_bundle(stage).items():
        echo(f"  {runtime}: {outcome}")


__all__ = [
    "BUILTIN",
    "MIRROR_ENV",
    "Catalog",
    "ZooError",
    "ZooFile",
    "ZooModel",
    "catalog_document",
    "download",
    "find",
    "load_catalog",
    "mirrored",
    "pull",
    "table",
]
