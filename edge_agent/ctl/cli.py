"""``edge-ctl``: the operator's command line (SPEC §7).

Broker options (``--broker``, ``--prefix``, TLS, credentials) go before or after the
subcommand. Every error is one line on stderr and exit status 1; ``--wait`` adds 0 (succeeded),
1 (failed or rejected) and 2 (timed out).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, NoReturn, Optional, Sequence

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .. import __version__
from ..bundle.signing import load_private_key, write_keypair
from ..cli_support import run as run_cli
from ..commands.args import parse_args
from ..commands.envelope import canonical_json, new_command, sign_envelope
from ..errors import EdgewatchError
from ..settings import Settings, parse_setting
from .client import Connection, ConnectOptions, parse_broker_url
from .presign import MAX_URL_EXPIRES_S, is_channel_uri, presign_bundle, resolve_channel
from .waiting import EXIT_SUCCEEDED, ExtraWait, ResultTracker, follow
from .watch import watch

PROG = "edge-ctl"
DEFAULT_TIMEOUT_S = 120.0
URL_EXPIRY_MARGIN_S = 3600


class Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit 1 like every other error: 2 means a timeout here."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: {message} (see --help)\n")


def _note(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


# Options


def _add_broker_options(p: argparse.ArgumentParser, top_level: bool) -> None:
    # Repeated on every subcommand with SUPPRESS defaults, so that a value given before the
    # subcommand is not overwritten by the subcommand's default.
    def default(value: Any) -> Any:
        return value if top_level else argparse.SUPPRESS

    g = p.add_argument_group("broker")
    g.add_argument(
        "--broker",
        default=default(os.environ.get("EDGE_CTL_BROKER", "mqtt://localhost")),
        help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (default $EDGE_CTL_BROKER or mqtt://localhost)",
    )
    g.add_argument("--prefix", default=default("edgewatch"), help="topic prefix (default edgewatch)")
    g.add_argument("--protocol", type=int, choices=(5, 311), default=default(5), help="MQTT version (5)")
    g.add_argument("--ca", type=Path, default=default(None), help="CA certificate (PEM) for mqtts://")
    g.add_argument("--cert", type=Path, default=default(None), help="client certificate (PEM)")
    g.add_argument("--key-file", type=Path, default=default(None), help="the client certificate's key")
    g.add_argument("--username", default=default(None))
    g.add_argument("--password-file", type=Path, default=default(None), help="file holding the password")
    g.add_argument("-v", "--verbose", action="count", default=default(0), help="log more (-vv: MQTT)")


def _add_command_options(p: argparse.ArgumentParser, group_allowed: bool = True) -> None:
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", help="device id")
    if group_allowed:
        target.add_argument("--group", help="device group: every device in it obeys")
    p.add_argument(
        "--key",
        type=Path,
        default=os.environ.get("EDGE_CTL_KEY"),
        help="private key (PEM) that signs the command (default $EDGE_CTL_KEY)",
    )
    p.add_argument("--expires", type=float, metavar="S", help="devices refuse the command after S seconds")
    p.add_argument("--wait", action="store_true", help="print results as JSON lines until the command ends")
    p.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S", help="give up after S s (120)"
    )
    if group_allowed:
        p.add_argument(
            "--settle",
            type=float,
            metavar="S",
            help="with --group --wait: stop once every device that answered has finished and none "
            "has said anything for S s (default: wait the whole --timeout)",
        )


def connect_options(args: argparse.Namespace) -> ConnectOptions:
    return ConnectOptions(
        broker=parse_broker_url(args.broker),
        protocol=args.protocol,
        ca=args.ca,
        cert=args.cert,
        key_file=args.key_file,
        username=args.username,
        password_file=args.password_file,
    )


def _topic_level(value: str, option: str) -> str:
    if not value or any(c in value for c in "/+#\x00"):
        raise EdgewatchError(f"{option} {value!r}: not usable as an MQTT topic level")
    return value


def _check_seconds(value: Optional[float], option: str) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise EdgewatchError(f"{option} must be a positive number of seconds")


# Sending a command


def build_envelope(
    args: argparse.Namespace, command_type: str, command_args: Dict[str, Any]
) -> Dict[str, Any]:
    """The envelope to send, its arguments checked as a device checks them, signed with --key."""
    try:
        parse_args(command_type, command_args)
    except ValueError as e:
        raise EdgewatchError(f"{command_type}: {e}") from e
    target = args.device if args.device is not None else args.group
    doc = new_command(command_type, target, command_args, args.expires)
    return doc if args.key is None else sign_envelope(doc, load_private_key(args.key))


def _is_group(args: argparse.Namespace) -> bool:
    return getattr(args, "group", None) is not None


def _command_topic(args: argparse.Namespace) -> str:
    if _is_group(args):
        return f"{args.prefix}/group/{_topic_level(args.group, '--group')}/cmd"
    return f"{args.prefix}/{_topic_level(args.device, '--device')}/cmd"


def _publish_properties(
    envelope: Dict[str, Any], response_topic: Optional[str], expires_s: Optional[float]
) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1
    props.ContentType = "application/json"
    if expires_s is not None:
        # The broker need not deliver to a device that comes back after the command expired.
        props.MessageExpiryInterval = math.ceil(expires_s)
    if response_topic is not None:
        props.ResponseTopic = response_topic
        props.CorrelationData = envelope["id"].encode("utf-8")
    return props


def send(
    args: argparse.Namespace,
    command_type: str,
    command_args: Dict[str, Any],
    extra: Optional[ExtraWait] = None,
) -> int:
    """Send one command and, with --wait or an ``extra`` thing to wait for, follow it."""
    _check_seconds(args.timeout, "--timeout")
    _check_seconds(args.expires, "--expires")
    _check_seconds(getattr(args, "settle", None), "--settle")
    envelope = build_envelope(args, command_type, command_args)
    topic = _command_topic(args)
    follows = args.wait or extra is not None
    with Connection(connect_options(args)) as conn:
        response_topic = None
        if follows:
            # Subscribed before sending, so that no result can come back before we listen.
            topics = [f"{args.prefix}/{'+' if _is_group(args) else args.device}/cmd/result"]
            if conn.is_v5 and not _is_group(args):
                # A device answers on a Response Topic only under its own P/D/cmd/result/ (SPEC §4),
                # so a group's devices cannot share one: their results come on P/+/cmd/result.
                response_topic = f"{topics[0]}/edge-ctl-{uuid.uuid4().hex}"
                topics.append(response_topic)
            conn.subscribe([*topics, *(extra.topics if extra else [])], qos=1)
        properties = _publish_properties(envelope, response_topic, args.expires) if conn.is_v5 else None
        conn.publish(topic, canonical_json(envelope), qos=1, properties=properties, timeout=args.timeout)
        if "sig" not in envelope:
            _note("sent unsigned (no --key): devices that require signed commands reject it")
        if not follows:
            print(envelope["id"], flush=True)
            return EXIT_SUCCEEDED
        tracker = ResultTracker(envelope["id"], group=_is_group(args))
        return follow(conn, tracker, args.timeout, getattr(args, "settle", None), args.wait, extra)


# Subcommands


def cmd_keygen(args: argparse.Namespace) -> int:
    private_path, public_path = write_keypair(args.name, force=args.force)
    print(f"{private_path}: private key; keep it secret, sign commands with --key {private_path}")
    print(f"{public_path}: public key; list it in commands.trusted_keys on the devices (it commands them)")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    if is_channel_uri(args.manifest):
        pointer = resolve_channel(args.manifest, args.endpoint_url)
        if args.sha256 and args.sha256 != pointer.sha256:
            raise EdgewatchError(
                f"{args.manifest} points at {pointer.version} (sha256 {pointer.sha256}),"
                f" not --sha256 {args.sha256}"
            )
        _note(f"{args.manifest} -> {pointer.version} ({pointer.manifest})")
        args.manifest, args.sha256 = pointer.manifest, pointer.sha256
    deploy_args: Dict[str, Any] = {"manifest": args.manifest}
    if args.sha256:
        deploy_args["sha256"] = args.sha256
    if args.backend:
        deploy_args["backend"] = args.backend
    if args.allow_downgrade:
        deploy_args["allow_downgrade"] = True
    if args.presign:
        url_expires = args.url_expires
        if url_expires is None:
            url_expires = min(int(args.expires or 0) + URL_EXPIRY_MARGIN_S, MAX_URL_EXPIRES_S)
        bundle = presign_bundle(args.manifest, url_expires, args.endpoint_url, args.sha256)
        deploy_args.update(manifest=bundle.manifest_url, sha256=bundle.manifest_sha256, files=bundle.files)
    elif args.url_expires:
        raise EdgewatchError("--url-expires goes with --presign")
    return send(args, "deploy", deploy_args)


def cmd_rollback(args: argparse.Namespace) -> int:
    return send(args, "rollback", {"version": args.version} if args.version else {})


def parse_settings(items: Sequence[str]) -> Dict[str, Any]:
    """``["score_threshold=0.5", "labels=a,b"]`` -> ``{"score_threshold": 0.5, "labels": ["a", "b"]}``."""
    settings: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in Settings.model_fields:
            known = ", ".join(Settings.model_fields)
            raise EdgewatchError(f"set {item!r}: expected KEY=VALUE with KEY one of {known}")
        if key in settings:
            raise EdgewatchError(f"set: {key} given twice")
        try:
            settings[key] = parse_setting(key, text.strip())
        except ValueError as e:
            raise EdgewatchError(f"set {item!r}: {text!r} is not a number") from e
    return settings


def cmd_set(args: argparse.Namespace) -> int:
    return send(args, "set", parse_settings(args.settings))


def cmd_simple(args: argparse.Namespace) -> int:
    return send(args, args.command, {})


class SnapshotCatcher:
    """Writes the first JPEG that arrives on P/D/snapshot to ``out`` (atomically)."""

    def __init__(self, topic: str, out: Path) -> None:
        self.topics = [topic]
        self.out = out
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def handle(self, topic: str, payload: bytes) -> None:
        if self._done:
            return
        partial = self.out.with_name(self.out.name + ".part")
        try:
            partial.write_bytes(payload)
            partial.replace(self.out)
        except OSError as e:
            raise EdgewatchError(f"{self.out}: {e.strerror}") from e
        self._done = True
        _note(f"wrote {self.out} ({len(payload)} bytes)")

    def missing(self) -> str:
        return f"no snapshot on {self.topics[0]}"


def cmd_snapshot(args: argparse.Namespace) -> int:
    topic = f"{args.prefix}/{_topic_level(args.device, '--device')}/snapshot"
    return send(args, "snapshot", {}, extra=SnapshotCatcher(topic, args.out))


def cmd_watch(args: argparse.Namespace) -> int:
    device = _topic_level(args.device, "--device") if args.device else None
    with Connection(connect_options(args)) as conn:
        return watch(conn, args.prefix, device, args.json, args.count)


# The parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Operate edgewatch devices over MQTT (SPEC §7).")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_broker_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def command(name: str, help: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _add_broker_options(p, top_level=False)
        p.set_defaults(func=func)
        return p

    p = command("keygen", "write NAME.key (private, mode 0600) and NAME.pub, Ed25519 PEM", cmd_keygen)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")

    p = command("deploy", "install a model bundle and switch to it without stopping", cmd_deploy)
    _add_command_options(p)
    p.add_argument(
        "manifest",
        metavar="MANIFEST_URI",
        help="s3://, https://, http:// or file:// manifest.json, or an s3://…/channels/NAME.json channel",
    )
    p.add_argument("--sha256", help="sha256 of manifest.json: the device refuses any other")
    p.add_argument("--allow-downgrade", action="store_true", help="allow a lower version than the current")
    p.add_argument("--backend", help="backend to load it on (default: the device's)")
    p.add_argument(
        "--presign",
        action="store_true",
        help="send pre-signed URLs of every file instead of the s3:// URI: devices need no AWS credentials",
    )
    p.add_argument("--endpoint-url", help="S3 endpoint (MinIO, ...) for --presign and channel URIs")
    p.add_argument(
        "--url-expires",
        type=int,
        metavar="S",
        help="with --presign: URL lifetime in seconds (default: --expires + 3600)",
    )

    p = command("rollback", "activate the previous stored version (or --version)", cmd_rollback)
    _add_command_options(p)
    p.add_argument("--version", help="the stored version to activate")

    p = command("set", "change settings: " + ", ".join(Settings.model_fields) + " (labels=a,b)", cmd_set)
    _add_command_options(p)
    p.add_argument("settings", nargs="+", metavar="KEY=VALUE")

    for name, help in (
        ("status", "ask for the device's status (in the result's data)"),
        ("pause", "stop processing frames"),
        ("resume", "start processing frames again"),
    ):
        _add_command_options(command(name, help, cmd_simple))

    p = command("snapshot", "save the device's current frame, boxes drawn, as a JPEG", cmd_snapshot)
    _add_command_options(p, group_allowed=False)
    p.add_argument("--out", type=Path, default=Path("snapshot.jpg"), help="JPEG file (snapshot.jpg)")

    p = command("watch", "print devices' status and detections as they come, until Ctrl-C", cmd_watch)
    p.add_argument("--device", help="only this device")
    p.add_argument("--json", action="store_true", help='print {"topic", "payload"} JSON lines')
    p.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, args)
