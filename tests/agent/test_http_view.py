"""edge_agent.http_view: real HTTP requests to a server on 127.0.0.1 with an OS-picked port."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
import pytest

from edge_agent.errors import EdgewatchError
from edge_agent.http_view import METRICS_CONTENT_TYPE, STREAM_BOUNDARY, HttpView, parse_listen
from tests.waiting import wait_for


def jpeg(value: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((48, 64, 3), value, np.uint8))
    assert ok
    return bytes(buf.tobytes())


class Agent:
    """What the HTTP view reads: a changing frame, a health flag and a metrics text."""

    def __init__(self) -> None:
        self.frame: Optional[bytes] = None
        self.healthy = True
        self.metrics_calls = 0

    def snapshot(self) -> Optional[bytes]:
        return self.frame

    def health(self) -> Tuple[bool, Dict[str, Any]]:
        return self.healthy, {"camera": "ok" if self.healthy else "lost", "fps": 9.5}

    def metrics(self) -> str:
        self.metrics_calls += 1
        return (
            "# TYPE edgewatch_frames_total counter\n"
            f'edgewatch_frames_total{{device="t"}} {self.metrics_calls}\n'
        )


@pytest.fixture()
def agent() -> Agent:
    return Agent()


@pytest.fixture()
def view(agent: Agent) -> Iterator[HttpView]:
    v = HttpView("127.0.0.1:0", agent.snapshot, agent.health, agent.metrics)
    v.start()
    yield v
    v.stop()


def get(view: HttpView, path: str, method: str = "GET") -> Tuple[int, Dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", view.port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def read_part(resp: http.client.HTTPResponse) -> bytes:
    """One part of a multipart/x-mixed-replace body: boundary line, headers, then the JPEG."""
    line = resp.fp.readline()
    while line in (b"\r\n", b"\n"):
        line = resp.fp.readline()
    assert line.strip() == f"--{STREAM_BOUNDARY}".encode(), line
    headers: Dict[str, str] = {}
    while True:
        line = resp.fp.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("ascii").partition(":")
        headers[name.strip().lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    return resp.fp.read(int(headers["content-length"]))


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":9000") == ("", 9000)
    for bad in ("8080", "host:", "host:http", "host:70000"):
        with pytest.raises(EdgewatchError, match="http.listen"):
            parse_listen(bad)


def test_index_page_embeds_stream_and_health(view: HttpView) -> None:
    status, headers, body = get(view, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    page = body.decode("utf-8")
    assert '<img src="/stream.mjpg"' in page
    assert "&quot;camera&quot;: &quot;ok&quot;" in page  # the health JSON, escaped into the page
    assert "http://" not in page and "https://" not in page  # no external assets


def test_snapshot_is_404_until_a_frame_exists(view: HttpView, agent: Agent) -> None:
    status, _, _ = get(view, "/snapshot.jpg")
    assert status == 404
    agent.frame = jpeg(200)
    status, headers, body = get(view, "/snapshot.jpg")
    assert status == 200
    assert headers["content-type"] == "image/jpeg"
    assert body == agent.frame
    decoded = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == (48, 64, 3)


def test_healthz_reflects_health(view: HttpView, agent: Agent) -> None:
    status, headers, body = get(view, "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"healthy": True, "camera": "ok", "fps": 9.5}
    agent.healthy = False
    status, _, body = get(view, "/healthz")
    assert status == 503
    assert json.loads(body) == {"healthy": False, "camera": "lost", "fps": 9.5}


def test_healthz_is_503_when_the_check_raises(agent: Agent) -> None:
    def broken() -> Tuple[bool, Dict[str, Any]]:
        raise RuntimeError("detector thread died")

    v = HttpView("127.0.0.1:0", agent.snapshot, broken, agent.metrics)
    v.start()
    try:
        status, _, body = get(v, "/healthz")
        assert status == 503
        assert "detector thread died" in json.loads(body)["error"]
    finally:
        v.stop()


def test_metrics_are_prometheus_text(view: HttpView) -> None:
    status, headers, body = get(view, "/metrics")
    assert status == 200
    assert headers["content-type"] == METRICS_CONTENT_TYPE
    assert 'edgewatch_frames_total{device="t"} 1\n' in body.decode()


def test_unknown_path_is_404_and_head_has_no_body(view: HttpView) -> None:
    assert get(view, "/nope")[0] == 404
    assert get(view, "/healthz/extra")[0] == 404
    status, headers, body = get(view, "/healthz", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_requests_are_not_logged_to_stderr(view: HttpView, capfd: pytest.CaptureFixture[str]) -> None:
    get(view, "/healthz")
    get(view, "/nope")
    assert capfd.readouterr().err == ""


def test_stream_sends_successive_frames(view: HttpView, agent: Agent) -> None:
    frames = [jpeg(v) for v in (10, 90, 170, 250)]
    agent.frame = frames[0]

    conn = http.client.HTTPConnection("127.0.0.1", view.port, timeout=10)
    conn.request("GET", "/stream.mjpg")
    resp = conn.getresponse()
    try:
        assert resp.status == 200
        assert resp.getheader("Content-Type") == f"multipart/x-mixed-replace; boundary={STREAM_BOUNDARY}"
        received: List[bytes] = [read_part(resp)]
        for frame in frames[1:]:
            agent.frame = frame  # a new frame replaces the last one, as the agent's loop does
            received.append(read_part(resp))
        # Each part is a complete JPEG; the first is the first frame, and the latest frame
        # reaches the viewer (a part may repeat while it waits for the next one).
        assert received[0] == frames[0]
        assert frames[-1] in received
        assert all(part in frames for part in received)
        assert len(set(received)) >= 2
        for part in received:
            assert cv2.imdecode(np.frombuffer(part, np.uint8), cv2.IMREAD_COLOR) is not None
    finally:
        conn.close()


def test_stream_waits_for_the_first_frame(view: HttpView, agent: Agent) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", view.port, timeout=10)
    conn.request("GET", "/stream.mjpg")
    resp = conn.getresponse()
    try:
        assert resp.status == 200
        timer = threading.Timer(0.3, lambda: setattr(agent, "frame", jpeg(77)))
        timer.start()
        assert read_part(resp) == jpeg(77)
    finally:
        conn.close()


def test_a_client_leaving_ends_its_stream(view: HttpView, agent: Agent) -> None:
    agent.frame = jpeg(1)
    conn = http.client.HTTPConnection("127.0.0.1", view.port, timeout=10)
    conn.request("GET", "/stream.mjpg")
    read_part(conn.getresponse())
    assert view._stream_count == 1
    conn.close()
    wait_for(lambda: view._stream_count == 0, 10, "the server to end the stream")


def test_stop_ends_an_open_stream(agent: Agent) -> None:
    agent.frame = jpeg(5)
    v = HttpView("127.0.0.1:0", agent.snapshot, agent.health, agent.metrics)
    v.start()
    port = v.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/stream.mjpg")
    resp = conn.getresponse()
    read_part(resp)
    t0 = time.monotonic()
    v.stop()
    assert time.monotonic() - t0 < 5
    # The server closed the connection: reading drains what was sent, then hits the end.
    deadline = time.monotonic() + 10
    while resp.fp.read(65536):
        assert time.monotonic() < deadline
    conn.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_bind_failure_names_http_listen(agent: Agent) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        v = HttpView(f"127.0.0.1:{port}", agent.snapshot, agent.health, agent.metrics)
        with pytest.raises(EdgewatchError, match=rf"http.listen '127.0.0.1:{port}'.*in use"):
            v.start()
        v.stop()  # a no-op: nothing was started


def test_restart_after_stop(agent: Agent) -> None:
    v = HttpView("127.0.0.1:0", agent.snapshot, agent.health, agent.metrics)
    v.start()
    v.stop()
    v.start()
    try:
        assert get(v, "/healthz")[0] == 200
    finally:
        v.stop()
