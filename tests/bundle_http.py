"""A loopback HTTP server for one bundle directory that can misbehave the way real servers do:
hold the model files back until released (a deploy that stays in ``downloading``), or trickle
them a few bytes at a time (a server that is alive but useless). With the bundle laid out as
``directory/BUCKET/KEY…`` it also answers S3 GetObject (path-style, credentials unchecked)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import posixpath
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Optional


class BundleServer:
    """Serves ``directory`` at ``url``; files named ``manifest.json`` and ``manifest.sig`` (at
    any path) always at once.

    ``gated``: the other files wait for ``release()``. ``trickle``: the other files are sent
    ``trickle[0]`` bytes every ``trickle[1]`` seconds, with their full Content-Length."""

    def __init__(
        self, directory: Path, *, gated: bool = False, trickle: Optional[tuple[int, float]] = None
    ) -> None:
        gate = self.gate = threading.Event()
        if not gated:
            gate.set()
        closing = self.closing = threading.Event()

        class Handler(http.server.SimpleHTTPRequestHandler):
            def handle(self) -> None:
                with contextlib.suppress(OSError):  # the client gave up on a slow answer: the point
                    super().handle()

            def do_GET(self) -> None:
                name = posixpath.basename(urllib.parse.urlsplit(self.path).path)
                if name in ("manifest.json", "manifest.sig"):
                    super().do_GET()
                    return
                gate.wait(60)
                if trickle is None:
                    super().do_GET()
                    return
                path = Path(self.translate_path(self.path))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                step, interval = trickle
                for i in range(0, len(data), step):
                    if closing.wait(interval):
                        return
                    self.wfile.write(data[i : i + step])
                    self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
        )
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.started = time.monotonic()

    @property
    def manifest(self) -> str:
        return f"{self.url}/manifest.json"

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.closing.set()
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> BundleServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
