"""Uploading a bundle to S3 (SPEC §2): ``s3://BUCKET/PREFIX/NAME/VERSION/{files…,manifest.sig,
manifest.json}`` and, optionally, ``s3://BUCKET/PREFIX/NAME/channels/CHANNEL.json``.

- The bundle is verified locally first (the agent's own loader).
- Artifact files go up first, side by side, then manifest.sig once they are all there, then
  manifest.json: a reader that sees the manifest sees a complete version. The channel pointer
  is written after that.
- Every object carries its sha256 in the metadata key ``sha256``; an object that already has the
  same size and sha256 is skipped, so publishing twice uploads nothing the second time.
- Versions are immutable: an existing version whose manifest differs is refused unless ``force``.
- Large files go up in parts (boto3's transfer manager), with a progress bar over bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union
from urllib.parse import urlparse

from edge_agent.bundle import MANIFEST, SIGNATURE, Bundle, load_bundle, sha256_file
from edge_agent.bundle.manifest import NAME_RE
from edge_agent.config import S3Config
from edge_agent.s3 import (
    CREDENTIAL_CODES,
    DENIED_CODES,
    NOT_FOUND_CODES,
    S3Error,
    S3Url,
    error_code,
    make_client,
    parse_s3_url,
)

from .errors import TrainerError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_MULTIPART_THRESHOLD = 8 * MiB
DEFAULT_MULTIPART_CHUNKSIZE = 8 * MiB
CONTENT_TYPES = {MANIFEST: "application/json", SIGNATURE: "text/plain"}
T = TypeVar("T")


class PublishError(TrainerError):
    """Publishing failed; the message names the object, bucket or endpoint at fault."""


@dataclass
class PublishResult:
    manifest: str  # s3://…/manifest.json
    sha256: str  # of manifest.json
    name: str
    version: str
    channel: Optional[str] = None
    uploaded: List[str] = field(default_factory=list)  # keys written
    skipped: List[str] = field(default_factory=list)  # keys already there, identical

    def summary(self) -> Dict[str, str]:
        """The JSON line `cloud-trainer publish` prints (SPEC §7)."""
        out = {"manifest": self.manifest, "sha256": self.sha256, "version": self.version}
        if self.channel is not None:
            out["channel"] = self.channel
        return out


def parse_s3_uri(uri: str) -> S3Url:
    """``s3://BUCKET[/PREFIX]`` -> its bucket and prefix (``key(*parts)`` below it); a clear
    error for anything else."""
    try:
        return parse_s3_url(uri, "s3://BUCKET/PREFIX")
    except S3Error as e:
        raise PublishError(str(e)) from e


def _describe(e: Exception, loc: S3Url, uri: str) -> str:
    """One line naming what went wrong with which object, bucket or endpoint."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(e, NoCredentialsError):
        return (
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE or --profile"
        )
    if isinstance(e, PartialCredentialsError):
        return f"incomplete AWS credentials: {e}"
    if isinstance(e, EndpointConnectionError):
        u = urlparse(str(e.kwargs.get("endpoint_url", "")))
        why = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", str(e.kwargs.get("error", "")))
        return f"cannot reach the S3 endpoint {u.scheme}://{u.netloc}" + (
            f" ({why.group(1).strip()})" if why else ""
        )
    if isinstance(e, ClientError):
        code = error_code(e)
        msg = e.response.get("Error", {}).get("Message") or code
        if code == "NoSuchBucket":
            return f"bucket {loc.bucket!r} does not exist"
        if code in CREDENTIAL_CODES:
            return f"the S3 endpoint rejected the credentials ({code}: {msg})"
        if code in DENIED_CODES:
            return (
                f"access denied to {uri} (publishing needs s3:GetObject, s3:PutObject and "
                f"s3:ListBucket on {loc.uri()})"
            )
        return f"{uri}: {code}: {msg}"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{uri}: {text}"


class _S3:
    """The few S3 calls publishing makes, each turning botocore errors into PublishError."""

    def __init__(self, client: Any, loc: S3Url) -> None:
        self.client = client
        self.loc = loc

    def _fail(self, e: Exception, key: str) -> PublishError:
        return PublishError(_describe(e, self.loc, f"s3://{self.loc.bucket}/{key}"))

    def _unless_absent(self, key: str, call: Callable[[], T]) -> Optional[T]:
        """``call()`` on the object at ``key``; None when there is no such object."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except ClientError as e:
            if error_code(e) in NOT_FOUND_CODES:
                return None
            raise self._fail(e, key) from e
        except BotoCoreError as e:
            raise self._fail(e, key) from e

    def get(self, key: str) -> Optional[bytes]:
        return self._unless_absent(
            key, lambda: bytes(self.client.get_object(Bucket=self.loc.bucket, Key=key)["Body"].read())
        )

    def head(self, key: str) -> Optional[Dict[str, Any]]:
        return self._unless_absent(
            key, lambda: dict(self.client.head_object(Bucket=self.loc.bucket, Key=key))
        )

    def put(self, key: str, data: bytes, content_type: str, cache_control: Optional[str] = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        extra: Dict[str, Any] = {"ContentType": content_type}
        if cache_control:
            extra["CacheControl"] = cache_control
        try:
            self.client.put_object(
                Bucket=self.loc.bucket,
                Key=key,
                Body=data,
                Metadata={"sha256": hashlib.sha256(data).hexdigest()},
                **extra,
            )
        except (ClientError, BotoCoreError) as e:
            raise self._fail(e, key) from e

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.loc.bucket, Key=key)
        except (ClientError, BotoCoreError) as e:
            raise self._fail(e, key) from e


def _same(head: Optional[Dict[str, Any]], size: int, sha256: str) -> bool:
    if head is None:
        return False
    meta = {str(k).lower(): v for k, v in (head.get("Metadata") or {}).items()}
    return bool(head.get("ContentLength") == size and meta.get("sha256") == sha256)


def _bundle_files(bundle: Bundle) -> List[Tuple[str, Path, int, str]]:
    """(name, path, size, sha256) of what goes up, in upload order: artifact files, then
    manifest.sig, then manifest.json last."""
    out: List[Tuple[str, Path, int, str]] = []
    seen = set()
    for art in bundle.manifest.artifacts:
        for name, sha, size in art.files():
            if name not in seen:
                seen.add(name)
                out.append((name, bundle.path(name), size, sha))
    if bundle.signature is not None:
        p = bundle.path(SIGNATURE)
        out.append((SIGNATURE, p, p.stat().st_size, sha256_file(p)))
    out.append((MANIFEST, bundle.path(MANIFEST), len(bundle.manifest_bytes), bundle.manifest_sha256))
    return out


def _waves(todo: List[Tuple[str, Path, int, str]]) -> List[List[Tuple[str, Path, int, str]]]:
    """``todo`` (in :func:`_bundle_files` order) in the groups that go up one after another: the
    artifact files together, then manifest.sig, then manifest.json, each only once everything
    before it is in place (a reader that finds the manifest finds every file it lists, and the
    signature that goes with it)."""
    last = {SIGNATURE: 1, MANIFEST: 2}
    waves: List[List[Tuple[str, Path, int, str]]] = [[], [], []]
    for item in todo:
        waves[last.get(item[1].name, 0)].append(item)
    return [wave for wave in waves if wave]


def publish(
    bundle_dir: Union[str, Path],
    destination: str,
    *,
    client: Any = None,
    endpoint_url: Optional[str] = None,
    region: Optional[str] = None,
    profile: Optional[str] = None,
    channel: Optional[str] = None,
    force: bool = False,
    progress: bool = False,
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
    multipart_chunksize: int = DEFAULT_MULTIPART_CHUNKSIZE,
    max_concurrency: int = 8,
) -> PublishResult:
    """Upload the bundle in ``bundle_dir`` to ``destination`` (``s3://BUCKET/PREFIX``) under
    ``NAME/VERSION/``; with ``channel`` also point ``NAME/channels/CHANNEL.json`` at it.

    ``client`` is a boto3 S3 client (made from ``endpoint_url``, ``region``, ``profile`` when
    None). Files of ``multipart_threshold`` bytes or more go up in parts of
    ``multipart_chunksize`` (S3 needs at least 5 MiB per part; smaller sizes are raised)."""
    from boto3.s3.transfer import ProgressCallbackInvoker, TransferConfig, create_transfer_manager
    from botocore.exceptions import BotoCoreError, ClientError
    from tqdm import tqdm

    loc = parse_s3_uri(destination)
    if channel is not None and not NAME_RE.match(channel):
        raise PublishError(f"channel {channel!r} does not match [a-z0-9][a-z0-9._-]{{0,63}}")
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    if client is None:
        settings = S3Config(endpoint_url=endpoint_url, region=region, profile=profile)
        try:
            client = make_client(
                settings, connect_timeout_s=10, read_timeout_s=120, endpoint_option="--endpoint-url"
            )
        except S3Error as e:
            raise PublishError(str(e)) from e
    s3 = _S3(client, loc)
    version_key = loc.key(m.name, m.version)
    manifest_key = f"{version_key}/{MANIFEST}"
    result = PublishResult(
        manifest=f"s3://{loc.bucket}/{manifest_key}",
        sha256=bundle.manifest_sha256,
        name=m.name,
        version=m.version,
    )

    # Versions are immutable: an existing manifest must be this one, byte for byte.
    existing = s3.get(manifest_key)
    if existing is not None and existing != bundle.manifest_bytes:
        if not force:
            raise PublishError(
                f"{m.ident} is already published at {result.manifest} with a different manifest "
                f"(sha256 {hashlib.sha256(existing).hexdigest()}); versions are immutable: "
                "publish a new version, or --force to replace it"
            )
        log.warning("replacing %s at %s (--force)", m.ident, result.manifest)
        s3.delete(manifest_key)  # readers must not pair the old manifest with new files
        if bundle.signature is None:
            s3.delete(f"{version_key}/{SIGNATURE}")  # it signed the old manifest

    todo: List[Tuple[str, Path, int, str]] = []
    for name, path, size, sha in _bundle_files(bundle):
        key = f"{version_key}/{name}"
        if _same(s3.head(key), size, sha):
            log.info("already there: s3://%s/%s", loc.bucket, key)
            result.skipped.append(key)
        else:
            todo.append((key, path, size, sha))

    if todo:
        config = TransferConfig(
            multipart_threshold=max(1, multipart_threshold),
            multipart_chunksize=max(5 * MiB, multipart_chunksize),
            max_concurrency=max_concurrency,
            preferred_transfer_client="classic",
        )
        total = sum(size for _, _, size, _ in todo)
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"publish {m.ident}",
            file=sys.stderr,
            disable=not progress,
        )
        bar_lock = threading.Lock()  # the transfer threads report progress side by side

        def advance(nbytes: int) -> None:
            with bar_lock:
                bar.update(nbytes)

        with bar, create_transfer_manager(s3.client, config) as manager:
            for wave in _waves(todo):
                # Every file of a wave is under way at once (max_concurrency requests at most);
                # the next wave starts once the whole of this one is in place.
                futures = []
                for key, path, _size, sha in wave:
                    extra = {
                        "Metadata": {"sha256": sha},
                        "ContentType": CONTENT_TYPES.get(path.name, "application/octet-stream"),
                    }
                    future = manager.upload(
                        str(path),
                        loc.bucket,
                        key,
                        extra_args=extra,
                        subscribers=[ProgressCallbackInvoker(advance)],
                    )
                    futures.append((key, path, future))
                for key, path, future in futures:
                    try:
                        future.result()
                    except (ClientError, BotoCoreError) as e:
                        raise s3._fail(e, key) from e
                    except OSError as e:
                        raise PublishError(f"{path}: cannot read: {e.strerror}") from e
                    log.info("uploaded s3://%s/%s", loc.bucket, key)
                    result.uploaded.append(key)
    if channel is not None:
        pointer = {"version": m.version, "manifest": result.manifest, "sha256": bundle.manifest_sha256}
        data = (json.dumps(pointer, indent=2) + "\n").encode("utf-8")
        key = loc.key(m.name, "channels", f"{channel}.json")
        if s3.get(key) == data:
            result.skipped.append(key)
        else:
            s3.put(key, data, "application/json", cache_control="no-cache")
            result.uploaded.append(key)
        result.channel = channel
    return result
