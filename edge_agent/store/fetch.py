"""Downloading a bundle into a staging directory, hashing as it streams (SPEC §2, §6.2).

A bundle is found by its manifest's URI:

- ``s3://BUCKET/KEY/manifest.json`` — boto3 (the ``s3`` extra, imported only for such URIs),
  its client made by :mod:`edge_agent.s3` from ``s3.endpoint_url``, ``s3.region``, ``s3.profile``;
- ``https://HOST/PATH/manifest.json[?QUERY]`` — the standard library; sibling files are fetched
  at the same path prefix with the same query string (plain HTTPS hosting, CloudFront wildcard
  signed URLs) unless ``files`` names a URL for that file (S3 pre-signed per-object URLs);
- ``http://`` — loopback hosts only (tests, development);
- ``file:///ABS/PATH/manifest.json`` — a local bundle directory, copied with hashing.

A URI ending in ``/`` names the bundle directory or prefix itself. The order is fixed so that
nothing large is fetched before it is known to fit: manifest.json (at most 1 MiB), manifest.sig
(optional), the manifest is parsed, the sum of the listed sizes is checked against ``max_bytes``,
then every listed file is streamed to ``dest`` in chunks with its sha256 and size checked as it
arrives. Every error is a :class:`FetchError` naming the URI or file and the reason; URLs in
messages lose their query string, which may hold credentials (pre-signed URLs).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import http.client
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from ..bundle import MANIFEST, SIGNATURE, parse_manifest
from ..config import S3Config
from ..errors import BundleError, EdgewatchError
from ..s3 import (
    CREDENTIAL_CODES,
    DENIED_CODES,
    NOT_FOUND_CODES,
    S3Error,
    error_code,
    make_client,
    parse_s3_url,
)

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_SIGNATURE_BYTES = 4096
# A download that moves less than this within a whole stall window is stalled (SPEC §6.5).
STALL_MIN_BYTES = 1024
USER_AGENT = "edgewatch-agent"

Progress = Callable[[float, str], None]
"""(fraction 0..1 of the listed files' total bytes, the file being fetched)."""


class FetchError(EdgewatchError):
    """A bundle could not be fetched; the message names the URI or file and the reason."""


class FetchIntegrityError(FetchError):
    """What arrived does not match the manifest (size, sha256), or the manifest is invalid."""


class FetchCancelled(FetchError):
    """The ``cancelled`` event was set while fetching."""


class _StatusError(FetchError):
    """A fetch answered with a status that may mean "absent" (404) or "not allowed" (403)."""

    def __init__(self, message: str, status: Optional[int]) -> None:
        super().__init__(message)
        self.status = status


def redact(url: str) -> str:
    """A URL fit for logs and results: the query string (signatures, tokens) left out."""
    parts = urllib.parse.urlsplit(url)
    shown = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return shown + ("?…" if parts.query else "")


def _is_loopback(host: Optional[str]) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_http_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return
    if parts.scheme == "http":
        raise FetchError(f"{redact(url)}: plain http:// is only allowed for loopback hosts; use https://")
    raise FetchError(f"{redact(url)}: not an https:// URL")


def _reason(e: BaseException, timeout_s: float) -> str:
    """One short phrase for a network or file error."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        inner = e.reason
        if isinstance(inner, BaseException):
            return _reason(inner, timeout_s)
        return str(inner)
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"timed out after {timeout_s:g} s"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({e.verify_message})"
    if isinstance(e, ssl.SSLError):
        return f"TLS error ({e.reason or e})"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e.strerror})"
    if isinstance(e, http.client.IncompleteRead):
        return "the connection closed before the end of the file"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class _Stream:
    """An open remote or local file: ``read(n)`` and ``close()``, and its length when known.

    ``read`` returns what has arrived (``read1``) rather than waiting for ``n`` bytes, so that
    the caller sees a trickle as the trickle it is and can call it stalled. ``read`` given here
    replaces ``raw``'s own (``raw`` is still what is closed)."""

    def __init__(
        self, raw: Any, length: Optional[int], read: Optional[Callable[[int], bytes]] = None
    ) -> None:
        self.raw = raw
        self.length = length
        self._read = read or getattr(raw, "read1", None) or raw.read

    def read(self, n: int) -> bytes:
        return bytes(self._read(n))

    def close(self) -> None:
        # Closing a broken connection must not hide the error that broke it.
        with contextlib.suppress(Exception):
            self.raw.close()


class _Source:
    """Where the bundle's files come from."""

    timeout_s: float = 30.0

    def describe(self, name: str) -> str:
        raise NotImplementedError

    def open(self, name: str) -> _Stream:
        raise NotImplementedError


class _FileSource(_Source):
    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest
        self.dir = manifest.parent

    def _path(self, name: str) -> Path:
        return self.manifest if name == MANIFEST else self.dir / name

    def describe(self, name: str) -> str:
        return str(self._path(name))

    def open(self, name: str) -> _Stream:
        path = self._path(name)
        try:
            f = path.open("rb")
        except FileNotFoundError as e:
            raise _StatusError(f"{path}: not found", 404) from e
        except PermissionError as e:
            raise _StatusError(f"{path}: permission denied", 403) from e
        except OSError as e:
            raise FetchError(f"{path}: {_reason(e, self.timeout_s)}") from e
        return _Stream(f, os.fstat(f.fileno()).st_size)


class _RefuseInsecureRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to https:// (or loopback http://), as for the URL itself."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> Optional[urllib.request.Request]:
        try:
            _check_http_url(newurl)
        except FetchError as e:
            raise FetchError(f"{redact(req.full_url)}: refused redirect: {e}") from e
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _HttpSource(_Source):
    def __init__(self, manifest_url: str, timeout_s: float, cafile: Optional[Path]) -> None:
        _check_http_url(manifest_url)
        self.manifest_url = manifest_url
        self.timeout_s = timeout_s
        context = ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _RefuseInsecureRedirect()
        )

    def url(self, name: str) -> str:
        if name == MANIFEST:
            return self.manifest_url
        parts = urllib.parse.urlsplit(self.manifest_url)
        directory = parts.path.rsplit("/", 1)[0]
        return urllib.parse.urlunsplit(parts._replace(path=f"{directory}/{urllib.parse.quote(name)}"))

    def describe(self, name: str) -> str:
        return redact(self.url(name))

    def open(self, name: str) -> _Stream:
        url = self.url(name)
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            response = self.opener.open(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as e:
            e.close()
            raise _StatusError(f"{redact(url)}: HTTP {e.code} {e.reason}", e.code) from e
        except FetchError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise FetchError(f"{redact(url)}: {_reason(e, self.timeout_s)}") from e
        length = response.headers.get("Content-Length")
        return _Stream(response, int(length) if length and length.isdigit() else None)


class _PerFileUrls(_Source):
    """Files named in ``files`` come from their own URL; the others from the manifest's source.

    When ``files`` is given without manifest.sig, the bundle is taken to have no signature: a
    sibling URL derived from a pre-signed manifest URL could never be valid."""

    def __init__(self, base: _Source, files: Mapping[str, str], timeout_s: float, cafile: Optional[Path]):
        self.base = base
        self.timeout_s = timeout_s
        self.sources: Dict[str, _HttpSource] = {}
        for name, url in files.items():
            if name != MANIFEST:
                self.sources[name] = _HttpSource(url, timeout_s, cafile)

    def _source(self, name: str) -> Tuple[_Source, str]:
        per_file = self.sources.get(name)
        return (per_file, MANIFEST) if per_file is not None else (self.base, name)

    def describe(self, name: str) -> str:
        source, as_name = self._source(name)
        return source.describe(as_name)

    def open(self, name: str) -> _Stream:
        if name == SIGNATURE and name not in self.sources:
            raise _StatusError(f"{self.base.describe(name)}: not among the given file URLs", 404)
        source, as_name = self._source(name)
        return source.open(as_name)


class _S3Source(_Source):
    def __init__(self, uri: str, s3: S3Config, timeout_s: float) -> None:
        try:
            url = parse_s3_url(uri, "s3://BUCKET/KEY/manifest.json")
            self.client = make_client(s3, connect_timeout_s=timeout_s, read_timeout_s=timeout_s)
        except S3Error as e:
            raise FetchError(str(e)) from e
        self.bucket = url.bucket
        self.manifest_key = url.key(MANIFEST) if url.is_prefix else url.path
        self.prefix = self.manifest_key.rsplit("/", 1)[0] + "/" if "/" in self.manifest_key else ""
        self.timeout_s = timeout_s
        self.endpoint = s3.endpoint_url

    def key(self, name: str) -> str:
        return self.manifest_key if name == MANIFEST else self.prefix + name

    def describe(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def open(self, name: str) -> _Stream:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        uri = self.describe(name)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(name))
        except ClientError as e:
            error = e.response.get("Error", {})
            code = error_code(e)
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                raise FetchError(f"{uri}: bucket {self.bucket!r} does not exist") from e
            if code in NOT_FOUND_CODES:
                raise _StatusError(f"{uri}: not found (404)", 404) from e
            if code in DENIED_CODES:
                raise _StatusError(
                    f"{uri}: access denied (the device needs s3:GetObject on it; "
                    "without s3:ListBucket S3 also answers 403 for a missing key)",
                    403,
                ) from e
            if code in CREDENTIAL_CODES:
                raise FetchError(f"{uri}: the S3 endpoint rejected the credentials ({code})") from e
            raise _StatusError(f"{uri}: {code}: {error.get('Message') or code}", status) from e
        except NoCredentialsError as e:
            raise FetchError(
                f"{uri}: no AWS credentials found (environment, s3.profile, or an instance role)"
            ) from e
        except EndpointConnectionError as e:
            raise FetchError(f"{uri}: cannot reach the S3 endpoint {self._endpoint_of(e)}") from e
        except (ConnectTimeoutError, ReadTimeoutError) as e:
            raise FetchError(f"{uri}: timed out after {self.timeout_s:g} s") from e
        except BotoCoreError as e:
            raise FetchError(f"{uri}: {e}") from e
        length = response.get("ContentLength")
        body = response["Body"]
        return _Stream(body, int(length) if length is not None else None, read=self._read1(body))

    @staticmethod
    def _read1(body: Any) -> Optional[Callable[[int], bytes]]:
        """A ``read1`` for a GetObject body: what has arrived, at most ``n`` bytes.

        botocore's StreamingBody.read(n), and urllib3's own read(n) inside it, wait until ``n``
        bytes have come, so a trickle would never look like one. urllib3 2.1 and later have
        ``read1``; urllib3 1.26 (what botocore pins on Python 3.9) and 2.0 do not, and then the
        http.client response inside it (``_fp``) is read directly. That is the same bytes:
        botocore asks urllib3 for the body undecoded (``decode_content=False``), and urllib3 adds
        nothing else that matters here, since the size and sha256 of every file are checked as
        it arrives. Closing still goes through ``body`` (it closes the urllib3 response and its
        connection). None (plain ``read``, where only silence is caught) if neither is there."""
        raw = getattr(body, "_raw_stream", None)
        read1 = getattr(raw, "read1", None)
        if read1 is None:
            read1 = getattr(getattr(raw, "_fp", None), "read1", None)
        return read1 if callable(read1) else None

    def _endpoint_of(self, e: Exception) -> str:
        url = str(getattr(e, "kwargs", {}).get("endpoint_url", "") or self.endpoint or "")
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "(default AWS endpoint)"


def _source_for(
    uri: str, s3: S3Config, files: Mapping[str, str], timeout_s: float, cafile: Optional[Path]
) -> _Source:
    parts = urllib.parse.urlsplit(uri)
    source: _Source
    if parts.scheme == "s3":
        source = _S3Source(uri, s3, timeout_s)
    elif parts.scheme in ("https", "http"):
        if parts.path.endswith("/"):
            uri = urllib.parse.urlunsplit(parts._replace(path=parts.path + MANIFEST))
        source = _HttpSource(uri, timeout_s, cafile)
    elif parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(f"{uri}: a file:// URI names a local path (file:///ABS/PATH)")
        path = Path(urllib.parse.unquote(parts.path))
        if parts.path.endswith("/") or path.is_dir():
            path = path / MANIFEST
        source = _FileSource(path)
    else:
        raise FetchError(f"{redact(uri)}: unsupported URI scheme (use s3://, https:// or file://)")
    if files:
        source = _PerFileUrls(source, files, timeout_s, cafile)
    return source


def _cancel_check(cancelled: Optional[threading.Event], what: str) -> None:
    if cancelled is not None and cancelled.is_set():
        raise FetchCancelled(f"{what}: cancelled")


class FetchStalled(FetchError):
    """Less than ``STALL_MIN_BYTES`` arrived within a stall window of waiting (or nothing at all)."""


class _StallGuard:
    """Fails a download that moves less than ``STALL_MIN_BYTES`` within any ``window_s`` of
    waiting for it (SPEC §6.5): a socket timeout alone never fires for a server that sends a
    byte every few seconds.

    The window slides: at the end of every read it looks back over the last ``window_s``, so a
    server cannot stretch its KiB over two windows laid end to end. Its clock runs only inside
    reads (bytes count at the end of the read that returned them): the agent's own time between
    reads, writing and hashing, the fsync that ends each file, the next file's request and
    headers, is no stall of the server's, and an SD card that takes seconds to sync must not make
    a fast server look stalled. A server that sends nothing is caught by the socket timeout
    instead (the same ``window_s``), since a read that never returns is never checked here."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.waited = 0.0  # seconds spent inside reads so far
        # (``waited`` at the end of a read, the bytes it returned) for the reads that can still
        # matter: those within the last window, and of those only the newest that add up to
        # STALL_MIN_BYTES (a later window that holds an older read holds all of these too).
        self.recent: Deque[Tuple[float, int]] = collections.deque()
        self.recent_bytes = 0

    def advance(self, seconds: float, nbytes: int, what: str) -> None:
        """One read took ``seconds`` and returned ``nbytes`` (0 at the end of a file)."""
        self.waited += max(0.0, seconds)
        if nbytes:
            self.recent.append((self.waited, nbytes))
            self.recent_bytes += nbytes
        horizon = self.waited - self.window_s
        while self.recent and (
            self.recent[0][0] <= horizon or self.recent_bytes - self.recent[0][1] >= STALL_MIN_BYTES
        ):
            self.recent_bytes -= self.recent.popleft()[1]
        if self.waited >= self.window_s and self.recent_bytes < STALL_MIN_BYTES:
            raise FetchStalled(
                f"{what}: stalled: {self.recent_bytes} bytes in the last {self.window_s:g} s of "
                f"waiting for it (less than {STALL_MIN_BYTES} within store.timeouts.download_stall_s)"
            )


def _read(stream: _Stream, what: str, timeout_s: float, guard: _StallGuard) -> bytes:
    started = guard.clock()
    try:
        block = stream.read(CHUNK_BYTES)
    except FetchError:
        raise
    except Exception as e:  # socket, TLS, urllib3 and botocore streaming errors alike
        if isinstance(e, (socket.timeout, TimeoutError)) or "timed out" in str(e):
            raise FetchStalled(f"{what}: stalled: nothing arrived for {timeout_s:g} s") from e
        raise FetchError(f"{what}: {_reason(e, timeout_s)}") from e
    guard.advance(guard.clock() - started, len(block), what)
    return block


def _read_small(
    source: _Source, name: str, limit: int, cancelled: Optional[threading.Event], guard: _StallGuard
) -> bytes:
    what = source.describe(name)
    stream = source.open(name)
    try:
        if stream.length is not None and stream.length > limit:
            raise FetchError(f"{what}: {stream.length} bytes, more than the {limit} allowed")
        data = bytearray()
        while True:
            _cancel_check(cancelled, what)
            block = _read(stream, what, source.timeout_s, guard)
            if not block:
                return bytes(data)
            data += block
            if len(data) > limit:
                raise FetchError(f"{what}: more than the {limit} bytes allowed")
    finally:
        stream.close()


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A failed write into staging (a full disk, a read-only file system) as a FetchError that
    names the file and says what the device's owner can do about it."""
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        hint = " (the store's file system is full)" if e.errno == errno.ENOSPC else ""
        raise FetchError(f"{path}: cannot write: {(e.strerror or str(e)).lower()}{hint}") from e


def _write_synced(path: Path, data: bytes) -> None:
    with _writing(path), path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class _ProgressMeter:
    """Calls ``progress`` at each new file and at each whole percent, not at every chunk."""

    def __init__(self, total: int, progress: Optional[Progress]) -> None:
        self.total = total
        self.done = 0
        self.progress = progress
        self.last: Tuple[int, str] = (-1, "")

    def advance(self, nbytes: int, name: str) -> None:
        self.done += nbytes
        if self.progress is None:
            return
        fraction = 1.0 if self.total == 0 else min(1.0, self.done / self.total)
        mark = (int(fraction * 100), name)
        if mark != self.last:
            self.last = mark
            self.progress(fraction, name)


def _stream_file(
    source: _Source,
    name: str,
    sha256: str,
    size: int,
    path: Path,
    meter: _ProgressMeter,
    cancelled: Optional[threading.Event],
    guard: _StallGuard,
) -> None:
    what = source.describe(name)
    _cancel_check(cancelled, what)
    stream = source.open(name)
    try:
        if stream.length is not None and stream.length != size:
            raise FetchIntegrityError(f"{what}: {stream.length} bytes, the manifest lists {size}")
        digest = hashlib.sha256()
        received = 0
        meter.advance(0, name)
        with _writing(path), path.open("xb") as out:
            while True:
                _cancel_check(cancelled, what)
                block = _read(stream, what, source.timeout_s, guard)
                if not block:
                    break
                received += len(block)
                if received > size:
                    raise FetchIntegrityError(f"{what}: more than the {size} bytes the manifest lists")
                digest.update(block)
                out.write(block)
                meter.advance(len(block), name)
            out.flush()
            os.fsync(out.fileno())  # staged files become the installed version by a rename
    finally:
        stream.close()
    if received != size:
        raise FetchIntegrityError(f"{what}: {received} bytes arrived, the manifest lists {size}")
    actual = digest.hexdigest()
    if actual != sha256:
        raise FetchIntegrityError(f"{what}: sha256 {actual} does not match the manifest's {sha256}")


def fetch_bundle(
    uri: str,
    dest: Union[str, Path],
    *,
    s3: S3Config,
    max_bytes: int,
    files: Optional[Mapping[str, str]] = None,
    progress: Optional[Progress] = None,
    cancelled: Optional[threading.Event] = None,
    stall_s: float = 30.0,
    cafile: Optional[Path] = None,
) -> None:
    """Fetch the bundle whose manifest is at ``uri`` into the directory ``dest`` (created when
    missing; it should be empty). ``files`` maps file names to their own https URLs;
    ``cafile`` replaces the system's CA certificates for https. On failure ``dest`` may hold
    partial files: the caller discards it.

    ``stall_s`` (``store.timeouts.download_stall_s``) bounds waiting for the server:

    - it is the socket timeout of every connect and every receive, so a server that falls silent
      fails within it (for s3:// within it per attempt: botocore may retry a request);
    - while a file's bytes stream, less than ``STALL_MIN_BYTES`` within any ``stall_s`` spent
      waiting in reads fails the download as stalled (:class:`FetchStalled`).

    It does not bound name resolution, a response whose status line and headers come a byte at
    a time (each receive returns within the timeout), the agent's own disk time, or the whole
    download: the caller bounds those, by setting ``cancelled`` and giving up (the deploy's
    ``store.timeouts.download_s``)."""
    out = Path(dest)
    source = _source_for(uri, s3, files or {}, stall_s, cafile)
    guard = _StallGuard(stall_s)
    out.mkdir(parents=True, exist_ok=True)
    _cancel_check(cancelled, source.describe(MANIFEST))
    manifest_bytes = _read_small(source, MANIFEST, MAX_MANIFEST_BYTES, cancelled, guard)
    signature: Optional[bytes] = None
    try:
        signature = _read_small(source, SIGNATURE, MAX_SIGNATURE_BYTES, cancelled, guard)
    except _StatusError as e:
        if e.status not in (403, 404):
            raise
        # S3 (and CloudFront in front of it) answers 403 for a missing key to a reader without
        # s3:ListBucket; a required signature is enforced later, when the bundle is verified.
        log.info("no signature for %s (%s)", redact(uri), e)
    try:
        manifest = parse_manifest(manifest_bytes, source.describe(MANIFEST))
    except BundleError as e:
        raise FetchIntegrityError(str(e)) from e

    listed: List[Tuple[str, str, int]] = []
    seen = set()
    for artifact in manifest.artifacts:
        for name, sha256, size in artifact.files():
            if name not in seen:
                seen.add(name)
                listed.append((name, sha256, size))
    total = sum(size for _, _, size in listed)
    if total > max_bytes:
        raise FetchError(
            f"{source.describe(MANIFEST)}: the bundle's files add up to {total} bytes, "
            f"more than the {max_bytes} allowed (store.max_bundle_mb)"
        )

    _write_synced(out / MANIFEST, manifest_bytes)
    if signature is not None:
        _write_synced(out / SIGNATURE, signature)
    meter = _ProgressMeter(total, progress)
    for name, sha256, size in listed:
        _stream_file(source, name, sha256, size, out / name, meter, cancelled, guard)
    if progress is not None and meter.last[0] != 100:
        progress(1.0, listed[-1][0])
