"""The agent's configuration (SPEC §3): one YAML file, every key overridable by an environment
variable ``EDGE_AGENT__SECTION__KEY`` and by ``--set section.key=value`` (in that order of
precedence: file < environment < --set). An invalid configuration is refused with the key path
and the reason."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import EdgewatchError
from .settings import LabelFilter, MaxRate, PublishMode, Threshold

DEFAULT_PATH = Path("/etc/edge-agent/config.yaml")
ENV_PREFIX = "EDGE_AGENT__"


class ConfigError(EdgewatchError):
    pass


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceConfig(Section):
    id: str = Field(default_factory=socket.gethostname)
    groups: List[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        if not v or any(c in v for c in "/+#") or v != v.strip():
            raise ValueError(f"{v!r} cannot be an MQTT topic level (no '/', '+', '#' or spaces at the ends)")
        return v


class CameraConfig(Section):
    source: str = "usb:0"
    width: int = Field(640, gt=0)
    height: int = Field(480, gt=0)
    fps: float = Field(15, gt=0)
    mode: Literal["live", "every"] = "live"


class DetectorConfig(Section):
    backend: str = "auto"
    device: Optional[str] = None
    threads: Optional[int] = Field(None, gt=0)
    # Backend-specific settings (e.g. openvino num_requests, performance_hint), validated by the
    # chosen backend's own options model when the agent starts (edge_agent.loading.check_options).
    options: Dict[str, Any] = Field(default_factory=dict)
    # runtime settings (edge_agent.settings: the `set` command changes them while it runs)
    score_threshold: Threshold = None
    iou_threshold: Threshold = None
    labels: LabelFilter = None


class ModelConfig(Section):
    bundle: Optional[str] = None


class StoreTimeouts(Section):
    """Seconds each deploy stage may take (SPEC §6.5). A download also fails as stalled when less
    than ``STALL_MIN_BYTES`` arrive within any ``download_stall_s`` window: a server that trickles
    a byte every few seconds would otherwise hold the one deploy slot for all of ``download_s``."""

    download_stall_s: float = Field(30, gt=0)
    download_s: float = Field(600, gt=0)
    verifying_s: float = Field(120, gt=0)
    loading_s: float = Field(120, gt=0)
    warming_s: float = Field(60, gt=0)
    activating_s: float = Field(30, gt=0)


class StoreConfig(Section):
    dir: Path = Path("/var/lib/edge-agent")
    keep_versions: int = Field(3, ge=1)
    max_bundle_mb: float = Field(200, gt=0)
    # Release keys (PEM public keys) that sign bundles; empty: commands.trusted_keys serve both roles.
    trusted_keys: List[Path] = Field(default_factory=list)
    timeouts: StoreTimeouts = Field(default_factory=StoreTimeouts)


class TLSConfig(Section):
    ca: Optional[Path] = None
    cert: Optional[Path] = None
    key: Optional[Path] = None
    insecure: bool = False


class BufferConfig(Section):
    max_messages: int = Field(100000, ge=1)


class MQTTConfig(Section):
    host: str = "localhost"
    port: int = Field(1883, gt=0, lt=65536)
    protocol: Literal[5, 311] = 5
    client_id: Optional[str] = None
    username: Optional[str] = None
    password_file: Optional[Path] = None
    tls: TLSConfig = Field(default_factory=TLSConfig)
    keepalive: int = Field(30, ge=5)
    topic_prefix: str = "edgewatch"
    qos: Literal[0, 1, 2] = 1
    buffer: BufferConfig = Field(default_factory=BufferConfig)


class PublishConfig(Section):
    # runtime settings (edge_agent.settings: the `set` command changes them while it runs)
    mode: PublishMode = "detections"
    max_rate_hz: MaxRate = None
    snapshots: bool = False


class CommandsConfig(Section):
    require_signature: bool = True
    trusted_keys: List[Path] = Field(default_factory=list)
    max_clock_skew_s: float = Field(300, ge=0)


class S3Config(Section):
    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    profile: Optional[str] = None


class HTTPConfig(Section):
    listen: Optional[str] = "127.0.0.1:8080"


class AgentConfig(Section):
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    mqtt: MQTTConfig = Field(default_factory=MQTTConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    commands: CommandsConfig = Field(default_factory=CommandsConfig)
    s3: S3Config = Field(default_factory=S3Config)
    http: HTTPConfig = Field(default_factory=HTTPConfig)


def _set_path(doc: Dict[str, Any], dotted: str, value: Any, where: str) -> None:
    parts = [p for p in dotted.split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"{where}: {dotted!r} is not section.key")
    node = doc
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(parts[:-1])} is not a section")
        node = child
    node[parts[-1]] = value


def _parse_value(text: str) -> Any:
    """A YAML scalar or flow value: "5" is 5, "true" is True, "[a, b]" a list, "null" None."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: Sequence[str] = (),
    environ: Optional[Mapping[str, str]] = None,
) -> AgentConfig:
    """File, then ``EDGE_AGENT__SECTION__KEY`` variables, then ``--set`` overrides."""
    doc: Dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(f"{p}: no such configuration file") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the configuration must be a mapping of sections")
        doc = loaded or {}
    env = os.environ if environ is None else environ
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            _set_path(doc, dotted, _parse_value(value), f"environment {name}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        _set_path(doc, key.strip(), _parse_value(value), f"--set {item}")
    try:
        return AgentConfig.model_validate(doc)
    except ValidationError as e:
        reasons = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].replace("Value error, ", "")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            reasons.append(f"{loc}: {msg}")
        raise ConfigError(f"{source}: invalid configuration: " + "; ".join(reasons)) from e


def dump(config: AgentConfig) -> str:
    """The effective configuration as YAML (paths as strings)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
