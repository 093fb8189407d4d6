"""The agent's small HTTP server (config ``http.listen``): a live view, health and metrics.

Routes:

* ``/``              an HTML page (no external assets): the live view and the health JSON
* ``/stream.mjpg``   ``multipart/x-mixed-replace`` MJPEG of the annotated frames, up to ~10 fps
* ``/snapshot.jpg``  the latest annotated frame (404 until there is one)
* ``/healthz``       200 and JSON when healthy, 503 and JSON otherwise
* ``/metrics``       Prometheus text exposition format 0.0.4

It is the standard library's ``ThreadingHTTPServer`` in a daemon thread: one thread per client,
which suits a handful of viewers and a scraper. Requests are logged to the ``logging`` module at
debug level, never to stderr.
"""

from __future__ import annotations

import html
import json
import logging
import select
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Optional, Tuple, cast
from urllib.parse import urlsplit

from . import __version__
from .errors import EdgewatchError

log = logging.getLogger(__name__)

SnapshotFn = Callable[[], Optional[bytes]]
HealthFn = Callable[[], Tuple[bool, Dict[str, Any]]]
MetricsFn = Callable[[], str]

STREAM_BOUNDARY = "edgewatch-frame"
STREAM_INTERVAL_S = 0.1  # at most ~10 frames a second per viewer
STREAM_RESEND_S = 1.0  # an unchanged frame is sent again this often, for proxies and picky clients
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STOP_DRAIN_S = 2.0  # how long stop() waits for open streams to end

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgewatch live view</title>
<style>
  body {{ font-family: system-ui, sans-serif; margin: 1rem; background: #111; color: #ddd; }}
  img {{ max-width: 100%; background: #222; min-height: 120px; display: block; }}
  pre {{ background: #1b1b1b; padding: .75rem; overflow-x: auto; }}
  .bad {{ color: #f66; }} .ok {{ color: #6c6; }}
  a {{ color: #8bf; }}
</style>
</head>
<body>
<h1>edgewatch <small>agent {version}</small></h1>
<img src="/stream.mjpg" alt="live view (waiting for the first frame)">
<h2>Health: <span id="state" class="{state_class}">{state}</span></h2>
<pre id="health">{health}</pre>
<p><a href="/snapshot.jpg">snapshot.jpg</a> · <a href="/healthz">healthz</a> ·
<a href="/metrics">metrics</a></p>
<script>
async function refresh() {{
  try {{
    const r = await fetch("/healthz", {{cache: "no-store"}});
    const body = await r.json();
    document.getElementById("health").textContent = JSON.stringify(body, null, 2);
    const s = document.getElementById("state");
    s.textContent = r.ok ? "healthy" : "unhealthy";
    s.className = r.ok ? "ok" : "bad";
  }} catch (e) {{
    const s = document.getElementById("state");
    s.textContent = "agent unreachable";
    s.className = "bad";
  }}
}}
setInterval(refresh, 2000);
</script>
</body>
</html>
"""


def parse_listen(listen: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[V6ADDR]:PORT`` for IPv6; an empty host means every interface)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise EdgewatchError(f"http.listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive

    def __init__(self, address: Tuple[str, int], view: HttpView) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.view = view
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = f"edgewatch/{__version__}"
    timeout = 10.0  # a client that stops reading or sending is dropped after this long

    @property
    def view(self) -> HttpView:
        return cast(_Server, self.server).view

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def _route(self, head: bool) -> None:
        path = urlsplit(self.path).path
        try:
            if path in ("/", "/index.html"):
                self._page(head)
            elif path == "/stream.mjpg":
                self._stream(head)
            elif path == "/snapshot.jpg":
                self._snapshot(head)
            elif path == "/healthz":
                self._health(head)
            elif path == "/metrics":
                self._metrics(head)
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n", head)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True  # the client went away; nothing to answer

    def _send(self, status: HTTPStatus, content_type: str, body: bytes, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _failed(self, what: str, head: bool) -> None:
        log.exception("http view: %s failed", what)
        self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", b"internal error\n", head)

    def _health_body(self) -> Tuple[bool, Dict[str, Any]]:
        try:
            healthy, details = self.view._health_fn()
            return bool(healthy), {"healthy": bool(healthy), **details}
        except Exception as e:
            log.exception("http view: the health check failed")
            return False, {"healthy": False, "error": f"health check failed: {e}"}

    def _page(self, head: bool) -> None:
        healthy, body = self._health_body()
        page = _PAGE.format(
            version=html.escape(__version__),
            state="healthy" if healthy else "unhealthy",
            state_class="ok" if healthy else "bad",
            health=html.escape(json.dumps(body, indent=2, default=str)),
        )
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", page.encode("utf-8"), head)

    def _health(self, head: bool) -> None:
        healthy, body = self._health_body()
        status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
        data = (json.dumps(body, default=str) + "\n").encode("utf-8")
        self._send(status, "application/json", data, head)

    def _metrics(self, head: bool) -> None:
        try:
            text = self.view._metrics_fn()
        except Exception:
            self._failed("metrics", head)
            return
        self._send(HTTPStatus.OK, METRICS_CONTENT_TYPE, text.encode("utf-8"), head)

    def _latest_frame(self) -> Optional[bytes]:
        try:
            return self.view._snapshot_fn()
        except Exception:
            log.exception("http view: taking a snapshot failed")
            return None

    def _snapshot(self, head: bool) -> None:
        frame = self._latest_frame()
        if frame is None:
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"no frame yet\n", head)
            return
        self._send(HTTPStatus.OK, "image/jpeg", frame, head)

    def _client_gone(self) -> bool:
        """True once the viewer closed its end (a viewer sends nothing after its request, so a
        readable socket with no data is an end of file)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def _stream(self, head: bool) -> None:
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={STREAM_BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        if head:
            return
        stopping = self.view._stopping
        with self.view._streams_open:
            self.view._stream_count += 1
        try:
            last: Optional[bytes] = None
            last_sent = 0.0
            while not stopping.is_set() and not self._client_gone():
                frame = self._latest_frame()
                now = time.monotonic()
                # A new frame goes out at once (at most every STREAM_INTERVAL_S); an unchanged
                # one is repeated now and then, so that the connection never looks idle.
                if frame is not None and (frame is not last or now - last_sent >= STREAM_RESEND_S):
                    part_header = (
                        f"--{STREAM_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(frame)}\r\n\r\n"
                    ).encode("ascii")
                    self.wfile.write(part_header + frame + b"\r\n")
                    last, last_sent = frame, now
                stopping.wait(STREAM_INTERVAL_S)
        finally:
            with self.view._streams_open:
                self.view._stream_count -= 1
                self.view._streams_open.notify_all()


class HttpView:
    """Serves the live view, ``/healthz`` and ``/metrics`` from a daemon thread."""

    def __init__(
        self,
        listen: str,
        snapshot: SnapshotFn,
        health: HealthFn,
        metrics: MetricsFn,
    ) -> None:
        """``listen``: "HOST:PORT" (config ``http.listen``; port 0 picks a free one);
        ``snapshot``: the latest annotated JPEG, or None before the first frame;
        ``health``: (healthy, details); ``metrics``: Prometheus text exposition.
        The callables are called from the server's threads and must be thread-safe."""
        self.listen = listen
        self._address = parse_listen(listen)
        self._snapshot_fn = snapshot
        self._health_fn = health
        self._metrics_fn = metrics
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._streams_open = threading.Condition()
        self._stream_count = 0

    @property
    def port(self) -> int:
        """The port being served (the one the OS picked when asked for port 0)."""
        if self._server is None:
            raise EdgewatchError("the HTTP view is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve; raises EdgewatchError naming ``http.listen`` when it cannot bind."""
        if self._server is not None:
            raise EdgewatchError("the HTTP view is already running")
        host, port = self._address
        self._stopping.clear()
        try:
            server = _Server((host, port), self)
        except OSError as e:
            why = e.strerror or str(e)
            raise EdgewatchError(f"http.listen {self.listen!r}: cannot listen on {host}:{port}: {why}") from e
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http-view", daemon=True
        )
        self._thread.start()
        shown = f"[{host}]" if ":" in host else host or "0.0.0.0"
        log.info("live view on http://%s:%d/", shown, self.port)

    def stop(self) -> None:
        """Stop serving and end every open stream; a no-op when not running."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(5.0)
        deadline = time.monotonic() + _STOP_DRAIN_S
        with self._streams_open:
            while self._stream_count > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("http view: %d stream(s) still open after stop", self._stream_count)
                    break
                self._streams_open.wait(left)
        self._server = None
        self._thread = None
