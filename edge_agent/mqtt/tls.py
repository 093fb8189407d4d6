"""TLS and credentials for an MQTT client: the agent's link (from ``mqtt.tls`` and
``mqtt.password_file``) and edge-ctl's connection (from ``--ca``, ``--cert``, ``--key-file`` and
``--password-file``) build them here, with errors that name the setting at fault.

Only the standard library and the configuration: the operator's tool uses this without the
agent's link, outbox or anything else of the device.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Dict, Optional

from ..config import ConfigError, MQTTConfig


def _readable(path: Path, key: str) -> Path:
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror or e}") from e
    return path


def read_password(path: Path, key: str = "mqtt.password_file") -> str:
    """The password in a password file (``key`` names it in errors): its text without the
    trailing newline."""
    _readable(path, key)
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: cannot read {path}: {e}") from e


# How errors name the TLS files: the agent's configuration keys, or edge-ctl's options.
CONFIG_TLS_KEYS = {"ca": "mqtt.tls.ca", "cert": "mqtt.tls.cert", "key": "mqtt.tls.key"}


def tls_context(config: MQTTConfig) -> Optional[ssl.SSLContext]:
    """The client's TLS context, or None for plain TCP. TLS is on when any ``mqtt.tls`` key is set
    or the port is 8883 (then with the system's CAs)."""
    tls = config.tls
    if tls.ca is None and tls.cert is None and tls.key is None and not tls.insecure and config.port != 8883:
        return None
    return build_tls_context(tls.ca, tls.cert, tls.key, tls.insecure)


def build_tls_context(
    ca: Optional[Path],
    cert: Optional[Path],
    key: Optional[Path],
    insecure: bool = False,
    names: Optional[Dict[str, str]] = None,
) -> ssl.SSLContext:
    """A verifying TLS 1.2+ client context: the CA file (else the system's CAs) and an optional
    client certificate for mutual TLS. ``insecure`` skips the host name check only, as
    ``mosquitto_pub --insecure`` does: the chain is still verified."""
    n = names or CONFIG_TLS_KEYS
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(_readable(ca, n["ca"])))
        except ssl.SSLError as e:
            raise ConfigError(f"{n['ca']}: {ca} holds no usable CA certificate: {e}") from e
    else:
        context.load_default_certs()
    if key is not None and cert is None:
        raise ConfigError(f"{n['key']}: a client key needs its certificate in {n['cert']}")
    if cert is not None:
        _readable(cert, n["cert"])
        if key is not None:
            _readable(key, n["key"])
        try:
            context.load_cert_chain(certfile=str(cert), keyfile=None if key is None else str(key))
        except ssl.SSLError as e:
            raise ConfigError(f"{n['cert']}/{n['key']}: not a matching certificate and key: {e}") from e
    if insecure:
        context.check_hostname = False
    return context
