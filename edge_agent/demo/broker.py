"""An MQTT broker inside the demo process, so that `edge-agent demo` needs nothing installed.

It is amqtt (an optional dependency, Python 3.10+) running in a background thread with its own
asyncio loop, listening on loopback only, anonymous, keeping nothing on disk.

amqtt speaks MQTT 3.1.1 only: it refuses an MQTT 5 CONNECT (protocol level 5) with "unacceptable
protocol version". Clients of the embedded broker, the agent included, must therefore use
``mqtt.protocol: 311``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any, Dict, Optional

from ..errors import EdgewatchError

log = logging.getLogger(__name__)

MQTT_PROTOCOL = 311  # the only MQTT version amqtt's broker accepts

_MISSING_AMQTT = (
    "the embedded broker needs amqtt (pip install 'edgewatch[demo]', Python 3.10+); "
    "or give --broker mqtt://HOST:PORT"
)


def _broker_class() -> Any:
    try:
        from amqtt.broker import Broker
    except ImportError as e:  # not installed; on Python 3.9 it cannot be
        raise EdgewatchError(_MISSING_AMQTT) from e
    return Broker


def _broker_config(host: str, port: int) -> Dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        # Only anonymous access: no event/packet loggers, no $SYS publisher, and no persistence
        # plugin, so the broker writes no files anywhere.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


class EmbeddedBroker:
    """amqtt in a background thread with its own asyncio loop, listening on 127.0.0.1 only."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._requested_port = port  # 0: the OS picks a free port
        self._port: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_requested: Optional[asyncio.Event] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise EdgewatchError("the embedded MQTT broker is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{self._host}:{self.port}"

    def start(self, timeout: float = 10.0) -> int:
        """Start listening; returns the port once the broker accepts connections."""
        if self._thread is not None:
            raise EdgewatchError("the embedded MQTT broker is already started")
        broker_class = _broker_class()
        amqtt_log = logging.getLogger("amqtt")
        if amqtt_log.level == logging.NOTSET:
            # amqtt logs every connection at INFO; the demo's output is about detections.
            amqtt_log.setLevel(logging.WARNING)
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, args=(broker_class,), name="embedded-mqtt-broker", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise EdgewatchError(f"the embedded MQTT broker did not start within {timeout:g} s")
        if self._error is not None or self._port is None:
            thread, self._thread = self._thread, None
            thread.join(timeout)
            where = f"{self._host}:{self._requested_port}"
            raise EdgewatchError(f"the embedded MQTT broker cannot listen on {where}: {self._error}")
        log.info("embedded MQTT broker (MQTT 3.1.1) listening on %s", self.url)
        return self._port

    def stop(self) -> None:
        """Disconnect every client and close the listener; a no-op when not running."""
        thread, loop, stop_requested = self._thread, self._loop, self._stop_requested
        if thread is None:
            return
        if loop is not None and stop_requested is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                loop.call_soon_threadsafe(stop_requested.set)
        thread.join(15.0)
        if thread.is_alive():
            log.warning("the embedded MQTT broker did not stop within 15 s")
        self._thread = None
        self._port = None

    def _run(self, broker_class: Any) -> None:
        try:
            asyncio.run(self._serve(broker_class))
        except BaseException as e:  # reported to start(), or logged when it happens later
            if self._ready.is_set():
                log.error("the embedded MQTT broker stopped: %s", e)
            else:
                self._error = e
        finally:
            self._ready.set()

    async def _serve(self, broker_class: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        broker = broker_class(_broker_config(self._host, self._requested_port))
        try:
            await broker.start()
        except Exception as e:
            # amqtt wraps the OSError; its cause says why (e.g. the address is in use).
            self._error = e.__cause__ or e
            return
        try:
            self._port = _listening_port(broker)
            self._ready.set()
            await self._stop_requested.wait()
        finally:
            await broker.shutdown()


def _listening_port(broker: Any) -> int:
    """The port the default listener got (the OS picks it when asked for port 0)."""
    # amqtt has no public accessor for its listening sockets; ``_servers`` holds one
    # ``Server`` per listener, whose ``instance`` is the asyncio server.
    server = broker._servers["default"].instance
    return int(server.sockets[0].getsockname()[1])
