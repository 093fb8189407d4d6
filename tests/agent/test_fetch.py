"""Fetching bundles from file://, s3:// (a real moto S3 endpoint) and https:// (a loopback TLS
server with a CA made here), hashing as they stream."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytest

from edge_agent.config import S3Config
from edge_agent.store import FetchCancelled, FetchError, FetchIntegrityError, FetchStalled, fetch_bundle
from edge_agent.store import fetch as fetch_module
from tests.agent.test_store import make_bundle
from tests.bundle_http import BundleServer
from tests.pki import make_tls_files
from tests.s3server import CLEARED_ENV, FAKE_ENV, S3

BUNDLE_FILES = ["manifest.json", "model.bin", "model.tflite", "model.xml"]
NO_S3 = S3Config()


def listing(directory: Path) -> List[str]:
    return sorted(p.name for p in directory.iterdir())


def same_files(a: Path, b: Path) -> bool:
    return listing(a) == listing(b) and all((a / n).read_bytes() == (b / n).read_bytes() for n in listing(a))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    # 1 MiB of model: several chunks, so progress and cancelling happen mid-file.
    return make_bundle(tmp_path / "bundle", "1.0.0", model=os.urandom(1 << 20))


# -- file:// -----------------------------------------------------------------------------------


def test_file_uri_copies_the_listed_files_with_progress(bundle: Path, tmp_path: Path) -> None:
    (bundle / "README.txt").write_text("not listed, not copied")
    seen: List[Tuple[float, str]] = []
    dest = tmp_path / "dest"
    fetch_bundle(
        (bundle / "manifest.json").as_uri(),
        dest,
        s3=NO_S3,
        max_bytes=2 << 20,
        progress=lambda f, name: seen.append((f, name)),
    )
    assert listing(dest) == BUNDLE_FILES  # no manifest.sig: an unsigned bundle is fine here
    assert all((dest / n).read_bytes() == (bundle / n).read_bytes() for n in BUNDLE_FILES)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0 < len(seen) <= 110
    assert [name for _, name in seen][0] == "model.tflite" and "model.bin" in {n for _, n in seen}

    # The directory itself, as a URI ending in "/".
    fetch_bundle(bundle.as_uri() + "/", tmp_path / "again", s3=NO_S3, max_bytes=2 << 20)
    assert same_files(dest, tmp_path / "again")


def test_missing_manifest_and_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"nowhere/manifest.json: not found"):
        fetch_bundle((tmp_path / "nowhere" / "manifest.json").as_uri(), tmp_path / "d", s3=NO_S3, max_bytes=1)
    with pytest.raises(FetchError, match=r"ftp://host/m.json: unsupported URI scheme"):
        fetch_bundle("ftp://host/m.json", tmp_path / "d", s3=NO_S3, max_bytes=1)
    with pytest.raises(FetchError, match=r"plain http:// is only allowed for loopback hosts"):
        fetch_bundle("http://example.com/b/manifest.json", tmp_path / "d", s3=NO_S3, max_bytes=1)


def test_size_limit_refused_before_any_file_is_fetched(bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=r"manifest.json: the bundle's files add up to \d+ bytes, more than"):
        fetch_bundle(bundle.as_uri() + "/", dest, s3=NO_S3, max_bytes=1 << 20)
    assert not dest.exists() or listing(dest) == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda p: p.write_bytes(b"\x01" + p.read_bytes()[1:]),
            r"model.tflite: sha256 [0-9a-f]{64} does not match",
        ),
        (
            lambda p: p.write_bytes(p.read_bytes()[:-10]),
            r"model.tflite: 1048566 bytes, the manifest lists 1048576",
        ),
        (
            lambda p: p.write_bytes(p.read_bytes() + b"x"),
            r"model.tflite: 1048577 bytes, the manifest lists 1048576",
        ),
    ],
    ids=["hash", "short", "long"],
)
def test_a_mismatch_names_the_file(bundle: Path, tmp_path: Path, damage, message: str) -> None:
    damage(bundle / "model.tflite")
    with pytest.raises(FetchIntegrityError, match=message):
        fetch_bundle(bundle.as_uri() + "/", tmp_path / "d", s3=NO_S3, max_bytes=2 << 20)


def test_an_invalid_manifest_is_an_integrity_error(bundle: Path, tmp_path: Path) -> None:
    (bundle / "manifest.json").write_text('{"schema": 1, "name": "Bad Name"}')
    with pytest.raises(FetchIntegrityError, match=r"manifest.json: .*name"):
        fetch_bundle(bundle.as_uri() + "/", tmp_path / "d", s3=NO_S3, max_bytes=2 << 20)


def test_cancel_stops_between_chunks(bundle: Path, tmp_path: Path) -> None:
    cancelled = threading.Event()
    seen: List[float] = []

    def progress(fraction: float, name: str) -> None:
        seen.append(fraction)
        if fraction > 0.1:
            cancelled.set()

    with pytest.raises(FetchCancelled, match=r"model.tflite: cancelled"):
        fetch_bundle(
            bundle.as_uri() + "/",
            tmp_path / "d",
            s3=NO_S3,
            max_bytes=2 << 20,
            progress=progress,
            cancelled=cancelled,
        )
    assert max(seen) < 0.5  # it stopped within a chunk of the cancel, not at the end


def test_the_s3_extra_is_imported_only_for_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundle: Path
) -> None:
    code = (
        "import sys, edge_agent.store;"
        "from edge_agent.store import fetch_bundle; from edge_agent.config import S3Config;"
        f"fetch_bundle({(bundle.as_uri() + '/')!r}, {str(tmp_path / 'x')!r}, s3=S3Config(), max_bytes=1<<22);"
        "assert 'boto3' not in sys.modules, 'boto3 imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if the extra were not installed
    with pytest.raises(FetchError, match=r"the s3 extra is not installed \(pip install edgewatch\[s3\]\)"):
        fetch_bundle("s3://bucket/b/manifest.json", tmp_path / "d", s3=NO_S3, max_bytes=1)


def test_a_bad_s3_uri_is_a_fetch_error_naming_it(tmp_path: Path) -> None:
    bad = "'s3:///b/manifest.json' is not an s3://BUCKET/KEY/manifest.json URI: '' is not a valid bucket name"
    with pytest.raises(FetchError, match=f"^{re.escape(bad)}$"):
        fetch_bundle("s3:///b/manifest.json", tmp_path / "d", s3=NO_S3, max_bytes=1)


# -- s3:// -------------------------------------------------------------------------------------


def upload(s3: S3, bundle: Path, prefix: str) -> None:
    for f in bundle.iterdir():
        s3.client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{f.name}", Body=f.read_bytes())


def test_s3_fetch_and_errors(s3: S3, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upload(s3, bundle, "models/shapes/1.0.0")
    config = S3Config(endpoint_url=s3.endpoint_url, region="us-east-1")
    fetch_bundle(s3.uri("models/shapes/1.0.0/manifest.json"), tmp_path / "a", s3=config, max_bytes=2 << 20)
    assert same_files(tmp_path / "a", bundle)
    fetch_bundle(s3.uri("models/shapes/1.0.0/"), tmp_path / "b", s3=config, max_bytes=2 << 20)
    assert same_files(tmp_path / "b", bundle)

    with pytest.raises(
        FetchError, match=rf"s3://{s3.bucket}/models/shapes/9.9.9/manifest.json: not found \(404\)"
    ):
        fetch_bundle(
            s3.uri("models/shapes/9.9.9/manifest.json"), tmp_path / "c", s3=config, max_bytes=2 << 20
        )
    with pytest.raises(FetchError, match=r"bucket 'no-such-bucket' does not exist"):
        fetch_bundle("s3://no-such-bucket/b/manifest.json", tmp_path / "c", s3=config, max_bytes=2 << 20)

    s3.client.delete_object(Bucket=s3.bucket, Key="models/shapes/1.0.0/model.bin")
    with pytest.raises(FetchError, match=r"1.0.0/model.bin: not found \(404\)"):
        fetch_bundle(s3.uri("models/shapes/1.0.0/"), tmp_path / "d", s3=config, max_bytes=2 << 20)

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries with back-off against a closed port
    port = closed_port()
    wrong = S3Config(endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1")
    with pytest.raises(FetchError, match=rf"cannot reach the S3 endpoint http://127.0.0.1:{port}"):
        fetch_bundle(s3.uri("models/shapes/1.0.0/"), tmp_path / "e", s3=wrong, max_bytes=2 << 20, stall_s=2)


def fetch_within(seconds: float, uri: str, dest: Path, **kwargs: Any) -> Optional[BaseException]:
    """fetch_bundle in a thread: what it raised (None when it succeeded), failing the test when it
    is still running after ``seconds`` (the caller then closes the server, which ends it)."""
    raised: List[Optional[BaseException]] = []

    def run() -> None:
        try:
            fetch_bundle(uri, dest, **kwargs)
            raised.append(None)
        except BaseException as e:
            raised.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"fetch_bundle({uri!r}) still running after {seconds:g} s")
    return raised[0]


def test_a_trickling_s3_endpoint_fails_as_stalled(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §6.5 for s3:// too. botocore's StreamingBody.read(n) waits until n bytes have come;
    with urllib3 1.26 (what botocore pins on Python 3.9) so does the response inside it, so a
    trickle must be read from what has arrived, on every urllib3."""
    pytest.importorskip("boto3")
    for k in CLEARED_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in {**FAKE_ENV, "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(k, v)
    root = tmp_path / "s3"
    shutil.copytree(bundle, root / "bucket" / "models" / "1.0.0")  # BUCKET/KEY: path-style S3
    with BundleServer(root, trickle=(1, 0.05)) as server:
        config = S3Config(endpoint_url=server.url, region="us-east-1")
        error = fetch_within(
            10, "s3://bucket/models/1.0.0/", tmp_path / "a", s3=config, max_bytes=2 << 20, stall_s=1.0
        )
    assert isinstance(error, FetchStalled), repr(error)
    assert re.match(r"s3://bucket/models/1\.0\.0/model\.\w+: stalled: \d+ bytes", str(error)), str(error)
    # The same endpoint without the trickle: the layout and the read path deliver the bundle.
    with BundleServer(root) as server:
        config = S3Config(endpoint_url=server.url, region="us-east-1")
        fetch_bundle("s3://bucket/models/1.0.0/", tmp_path / "b", s3=config, max_bytes=2 << 20)
    assert same_files(tmp_path / "b", bundle)


# -- https:// and loopback http:// -------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TLSFiles:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    made = make_tls_files(tmp_path_factory.mktemp("tls"))
    return TLSFiles(ca=made.ca, cert=made.server_cert, key=made.server_key)


@dataclass
class Server:
    url: str  # scheme://127.0.0.1:PORT
    requests: List[str] = field(default_factory=list)  # request paths with their query strings


class _Handler(http.server.SimpleHTTPRequestHandler):
    log: List[str]

    def do_GET(self) -> None:
        self.log.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve(tls: TLSFiles) -> Iterator:
    """serve(directory, https=True) -> Server: a static file server on loopback."""
    servers: List[http.server.ThreadingHTTPServer] = []

    def start(directory: Path, https: bool = True) -> Server:
        log: List[str] = []
        handler = type("Handler", (_Handler,), {"log": log})
        httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
        )
        if https:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(httpd)
        return Server(
            url=f"{'https' if https else 'http'}://127.0.0.1:{httpd.server_address[1]}", requests=log
        )

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_https_with_query_string_siblings(serve, bundle: Path, tls: TLSFiles, tmp_path: Path) -> None:
    server = serve(bundle.parent)
    uri = f"{server.url}/bundle/manifest.json?Policy=abc&Signature=s3cr3t"
    fetch_bundle(uri, tmp_path / "d", s3=NO_S3, max_bytes=2 << 20, cafile=tls.ca)
    assert same_files(tmp_path / "d", bundle)
    assert server.requests == [
        f"/bundle/{name}?Policy=abc&Signature=s3cr3t"
        for name in ["manifest.json", "manifest.sig", "model.tflite", "model.xml", "model.bin"]
    ]


def test_https_uses_the_system_ca_store_and_verifies_it(
    serve, bundle: Path, tls: TLSFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(bundle.parent)
    with pytest.raises(FetchError, match=r"bundle/manifest.json: TLS certificate verification failed"):
        fetch_bundle(f"{server.url}/bundle/", tmp_path / "a", s3=NO_S3, max_bytes=2 << 20)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))  # how a device adds a private CA
    fetch_bundle(f"{server.url}/bundle/", tmp_path / "b", s3=NO_S3, max_bytes=2 << 20)
    assert same_files(tmp_path / "b", bundle)


def test_per_file_urls_override_siblings(serve, bundle: Path, tls: TLSFiles, tmp_path: Path) -> None:
    # As S3 pre-signed URLs: every object at its own URL with its own signature.
    objects = tmp_path / "objects"
    objects.mkdir()
    for i, name in enumerate(sorted(p.name for p in bundle.iterdir())):
        (objects / f"obj{i}").write_bytes((bundle / name).read_bytes())
    names = sorted(p.name for p in bundle.iterdir())
    server = serve(objects)
    urls = {name: f"{server.url}/obj{i}?X-Amz-Signature=sig{i}" for i, name in enumerate(names)}
    manifest_url = urls.pop("manifest.json")
    fetch_bundle(manifest_url, tmp_path / "d", s3=NO_S3, max_bytes=2 << 20, files=urls, cafile=tls.ca)
    assert same_files(tmp_path / "d", bundle)
    # No manifest.sig among the URLs: not asked for (a derived sibling URL could not be valid).
    expected = ["/" + url.split("/", 3)[3] for url in [manifest_url, *urls.values()]]
    assert sorted(server.requests) == sorted(expected)


def test_http_errors_name_the_url_without_its_query(
    serve, bundle: Path, tls: TLSFiles, tmp_path: Path
) -> None:
    server = serve(bundle.parent)
    with pytest.raises(FetchError) as e:
        fetch_bundle(
            f"{server.url}/missing/manifest.json?token=s3cr3t",
            tmp_path / "a",
            s3=NO_S3,
            max_bytes=1,
            cafile=tls.ca,
        )
    assert str(e.value) == f"{server.url}/missing/manifest.json?…: HTTP 404 File not found"
    (bundle / "model.xml").unlink()
    with pytest.raises(FetchError, match=r"/bundle/model.xml: HTTP 404"):
        fetch_bundle(f"{server.url}/bundle/", tmp_path / "b", s3=NO_S3, max_bytes=2 << 20, cafile=tls.ca)


def test_size_limit_is_checked_before_downloading(serve, bundle: Path, tmp_path: Path) -> None:
    server = serve(bundle.parent, https=False)  # plain http: loopback only
    with pytest.raises(FetchError, match=r"add up to 1050\d+ bytes, more than the 1000000 allowed"):
        fetch_bundle(f"{server.url}/bundle/", tmp_path / "d", s3=NO_S3, max_bytes=1_000_000)
    assert server.requests == ["/bundle/manifest.json", "/bundle/manifest.sig"]


def test_connection_refused_and_timeout(tmp_path: Path) -> None:
    port = closed_port()
    with pytest.raises(FetchError, match=rf"http://127.0.0.1:{port}/b/manifest.json: connection refused"):
        fetch_bundle(f"http://127.0.0.1:{port}/b/", tmp_path / "a", s3=NO_S3, max_bytes=1)
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/b/manifest.json"
        with pytest.raises(FetchError, match=r"/b/manifest.json: timed out after 0.3 s"):
            fetch_bundle(url, tmp_path / "b", s3=NO_S3, max_bytes=1, stall_s=0.3)


def test_a_trickling_server_fails_as_stalled_within_the_stall_window(bundle: Path, tmp_path: Path) -> None:
    """SPEC §6.5: a server that sends a byte every so often never trips a socket timeout, but
    less than 1 KiB within a whole ``stall_s`` window is a stall."""
    with BundleServer(bundle, trickle=(1, 0.05)) as server:
        started = time.monotonic()
        with pytest.raises(FetchStalled, match=r"/model\.\w+: stalled: \d+ bytes in the last [\d.]+ s"):
            fetch_bundle(server.manifest, tmp_path / "a", s3=NO_S3, max_bytes=2 << 20, stall_s=1.0)
        assert time.monotonic() - started < 10  # one window, not the whole file's 20,000 s
    # Slow but moving is no stall: 4 KiB every 0.1 s is 40 KiB in a 2 s window, 40 times the
    # least, and a gap of 0.1 s against a socket timeout of 2 s leaves room for a slow machine.
    small = make_bundle(tmp_path / "small", "1.0.0", model=os.urandom(64 << 10))
    with BundleServer(small, trickle=(4 << 10, 0.1)) as server:
        fetch_bundle(server.manifest, tmp_path / "b", s3=NO_S3, max_bytes=2 << 20, stall_s=2.0)
    assert same_files(tmp_path / "b", small)


def test_a_slow_disk_between_files_is_no_stall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stall window counts time spent waiting for the server, never the agent's own disk: an
    SD card that takes 10 s to fsync each file must not make a fast server look stalled. (The
    files here are small: counted in wall time, a window across an fsync holds less than 1 KiB.)"""
    small = make_bundle(tmp_path / "small", "1.0.0", model=os.urandom(100))
    skew = [0.0]
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        real_fsync(fd)
        skew[0] += 10.0

    def clock() -> float:  # the time as the guard sees it: the slow fsyncs included
        return time.monotonic() + skew[0]

    monkeypatch.setattr(os, "fsync", slow_fsync)
    monkeypatch.setattr(fetch_module, "_StallGuard", functools.partial(fetch_module._StallGuard, clock=clock))
    with BundleServer(small) as server:
        fetch_bundle(server.manifest, tmp_path / "d", s3=NO_S3, max_bytes=2 << 20, stall_s=1.0)
    assert same_files(tmp_path / "d", small) and skew[0] >= 30  # the slow fsyncs did happen


class _FakeStream:
    """A stream whose reads take the given (fake) seconds and return the given bytes."""

    def __init__(self, now: List[float], reads: List[Tuple[float, int]]) -> None:
        self.now = now
        self.reads = list(reads)

    def read(self, n: int) -> bytes:
        seconds, nbytes = self.reads.pop(0)
        self.now[0] += seconds
        return b"x" * nbytes


def test_the_stall_window_slides_and_counts_only_waiting_for_the_server() -> None:
    """SPEC §6.5's "less than 1 KiB within any window" holds for every window, not only for
    windows laid end to end: 1 KiB, then a byte a second, is stalled one window after that KiB,
    even where the KiB fell at the end of one consecutive window and the next KiB at the end of
    the next."""
    now = [0.0]
    guard = fetch_module._StallGuard(10.0, clock=lambda: now[0])
    stream = _FakeStream(now, [(1.0, 1024)] + [(1.0, 1)] * 18 + [(0.5, 1024)] + [(0.5, 1)] * 20)
    with pytest.raises(FetchStalled, match=r"x: stalled: 10 bytes in the last 10 s"):
        while True:
            fetch_module._read(stream, "x", 10.0, guard)
    assert now[0] == 11.0  # the first read more than one window after the one that brought the KiB

    # A steady 128 bytes a second (1280 in any 10 s) is never stalled, however long the agent
    # itself spends between reads (writing, syncing): only the time inside reads counts.
    now[0] = 0.0
    guard = fetch_module._StallGuard(10.0, clock=lambda: now[0])
    stream = _FakeStream(now, [(1.0, 128)] * 100)
    for _ in range(100):
        assert fetch_module._read(stream, "x", 10.0, guard)
        now[0] += 100.0  # an fsync on a slow SD card


def test_redirects_to_plain_http_are_refused(tmp_path: Path, serve, tls: TLSFiles) -> None:
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://example.com/manifest.json")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with pytest.raises(
            FetchError, match=r"refused redirect: http://example.com/manifest.json: plain http://"
        ):
            fetch_bundle(
                f"https://127.0.0.1:{httpd.server_address[1]}/b/",
                tmp_path / "d",
                s3=NO_S3,
                max_bytes=1,
                cafile=tls.ca,
            )
    finally:
        httpd.shutdown()
        httpd.server_close()
