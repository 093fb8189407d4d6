"""Bring your own model: ``cloud-trainer package --model FILE …`` wraps a model a user already
has in a bundle (SPEC §2) that deploys like a trained one.

Each kind of model is one module here with a ``KIND`` (a :class:`base.ModelKind`): it says
whether it recognises the files (``claims``) and describes them for the manifest (``inspect``).
This module picks the one kind that claims the files, copies them into the bundle, writes and
signs the manifest, then verifies the bundle through edge_agent's own runtimes: every artifact
this machine can run is loaded and run once, so its outputs are checked against the decoder.
"""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from edge_agent.bundle import Manifest

from ..errors import PackageError
from ..package import artifact_entry, write_bundle
from .base import ArtifactFiles, Inferred, ModelFiles, ModelKind

# One module per kind, in the order they are asked (the first that claims the files wins; a
# kind that needs a closer look comes before one that would also claim its files).
KIND_MODULES = ("ultralytics", "tflite_ssd", "openvino_ir", "frozen_graph", "darknet")
NAME_RE = re.compile(r"[^a-z0-9._-]+")


def kinds() -> List[ModelKind]:
    """Every kind this trainer knows (a module that does not import is an error, not a gap)."""
    out = []
    for module in KIND_MODULES:
        out.append(importlib.import_module(f"{__name__}.{module}").KIND)
    return out


def identify(files: ModelFiles) -> Tuple[ModelKind, Inferred]:
    if not files.model.exists():
        raise PackageError(f"{files.model}: no such file or directory")
    known = kinds()
    for kind in known:
        if kind.claims(files):
            return kind, kind.inspect(files)
    raise PackageError(
        f"{files.model}: not a model kind package knows ({', '.join(k.name for k in known)}); "
        "see README, 'Bring your own model'"
    )


def bundle_name(inferred: Inferred, model: Path) -> str:
    stem = inferred.name or model.stem
    name = NAME_RE.sub("-", stem.lower()).strip("-._") or "model"
    return name[:64]


def package_model(
    files: ModelFiles,
    out: Path,
    *,
    name: Optional[str] = None,
    version: str = "1.0.0",
    sign_key: Optional[Path] = None,
    echo: Callable[[str], None] = print,
    verify: Optional[Callable[[Path], Dict[str, str]]] = None,
) -> Tuple[Manifest, Inferred]:
    """Package ``files`` into the bundle directory ``out`` (made; must not exist or be empty).
    ``echo`` gets what was inferred, a line each; ``verify`` (default: run every artifact this
    machine can through edge_agent) gets the bundle directory."""
    kind, inferred = identify(files)
    echo(f"{files.model}: {inferred.kind}")
    for note in inferred.notes:
        echo(f"  {note}")
    if out.exists() and any(out.iterdir()):
        raise PackageError(f"{out}: not empty; package writes a new bundle directory")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        entries = [_copy_artifact(art, out) for art in inferred.artifacts]
        manifest = write_bundle(
            out,
            name=name or bundle_name(inferred, files.model),
            version=version,
            labels=inferred.labels,
            input=inferred.input,
            decoder=inferred.decoder,
            artifacts=entries,
            defaults=inferred.defaults,
            source={"packaged_from": files.model.name, "kind": inferred.kind},
            sign_key=sign_key,
        )
        for runtime, outcome in (verify or verify_bundle)(out).items():
            echo(f"  {runtime}: {outcome}")
    except BaseException:
        # A bundle that failed is no bundle: what this call wrote goes, so that the same
        # command can run again once the cause is fixed (out was empty or absent before).
        for child in list(out.iterdir()):
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        if made:
            out.rmdir()
        raise
    return manifest, inferred


def _copy_artifact(art: ArtifactFiles, out: Path) -> Dict[str, object]:
    def copy(path: Optional[Path]) -> Optional[Path]:
        if path is None:
            return None
        target = out / path.name
        if target.exists():
            raise PackageError(f"{path}: two files of the model are both named {path.name}")
        shutil.copyfile(path, target)
        return target

    return artifact_entry(art.runtime, art.precision, copy(art.file), copy(art.weights), copy(art.config))  # type: ignore[arg-type]


def verify_bundle(bundle_dir: Path) -> Dict[str, str]:
    """Each artifact loaded on its native backend and run once on a grey frame (its outputs
    checked against the decoder); "verified", or "not run here: …" where this machine lacks
    the runtime or the device. An artifact that loads but does not fit is a PackageError."""
    from edge_agent.bundle import load_bundle
    from edge_agent.errors import BackendUnavailable, EdgewatchError

    from ..pipeline import artifact_detector

    out: Dict[str, str] = {}
    for art in load_bundle(bundle_dir).manifest.artifacts:
        try:
            artifact_detector(bundle_dir, art.runtime).close()
        except BackendUnavailable as e:
            out[art.runtime] = f"not run here: {e}"
        except EdgewatchError as e:
            if art.runtime == "edgetpu":  # the compiled twin needs an EdgeTPU to run at all
                out[art.runtime] = f"not run here: {e}"
                continue
            raise PackageError(f"{bundle_dir / art.file}: does not run as described: {e}") from e
        else:
            out[art.runtime] = "verified"
    return out


__all__ = ["ArtifactFiles", "Inferred", "ModelFiles", "identify", "kinds", "package_model", "verify_bundle"]
