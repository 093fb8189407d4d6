"""The arguments of each command type (SPEC §5), one pydantic model per type.

Strict: a command is a machine-to-machine API, so "0.5" is not a number and "true" not a
boolean, and unknown arguments are refused rather than ignored.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Type
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ..bundle.manifest import SEMVER_RE, SHA256_RE, check_plain_file_name
from ..settings import Settings

MANIFEST_SCHEMES = ("s3", "https", "http", "file")
FILE_URL_SCHEMES = ("https", "http")
_BACKEND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CommandArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ValueError(f"{value!r} has {shown}; use one of: " + ", ".join(f"{s}://" for s in schemes))
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"{value!r}: a file:// URI names an absolute local path (file:///path)")
    elif not parts.netloc:
        what = "bucket" if scheme == "s3" else "host"
        raise ValueError(f"{value!r} has no {what}")
    elif scheme == "s3" and not parts.path.strip("/"):
        raise ValueError(f"{value!r} has no key after the bucket")
    return value


class DeployArgs(CommandArgs):
    """``manifest``: where the bundle's manifest.json is. ``files``: optional pre-signed URLs
    (file name -> http(s) URL) of manifest.sig and the artifact files, so that a device needs
    no S3 credentials; a file not listed there is fetched next to the manifest."""

    manifest: str
    sha256: Optional[str] = None
    backend: Optional[str] = None
    allow_downgrade: bool = False
    files: Optional[Dict[str, str]] = None

    @field_validator("manifest")
    @classmethod
    def _manifest_uri(cls, v: str) -> str:
        return _check_url(v, MANIFEST_SCHEMES)

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not SHA256_RE.match(v):
            raise ValueError("must be 64 lowercase hex digits (the sha256 of manifest.json)")
        return v

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not _BACKEND_RE.match(v):
            raise ValueError(f"{v!r} is not a backend name")
        return v

    @field_validator("files")
    @classmethod
    def _files(cls, v: Optional[Dict[str, str]]) -> Optional[Dict[str, str]]:
        for name, url in (v or {}).items():
            check_plain_file_name(name)
            _check_url(url, FILE_URL_SCHEMES)
        return v


class RollbackArgs(CommandArgs):
    """``version``: the stored version to activate; the previous one when absent."""

    version: Optional[str] = None

    @field_validator("version")
    @classmethod
    def _semver(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not SEMVER_RE.match(v):
            raise ValueError(f"{v!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return v


class SetArgs(Settings, CommandArgs):
    """Runtime settings (``edge_agent.settings.Settings``), at least one; a null is the same as
    leaving the key out. ``changes()`` is what was given."""

    model_config = CommandArgs.model_config

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        # Only for settings: an unknown key is refused whatever its value.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}
        return data

    @model_validator(mode="after")
    def _at_least_one(self) -> SetArgs:
        if not self.model_fields_set:
            raise ValueError("give at least one of: " + ", ".join(type(self).model_fields))
        return self

    def changes(self) -> Dict[str, Any]:
        return self.model_dump(include=self.model_fields_set)


class NoArgs(CommandArgs):
    """status, snapshot, pause, resume: no arguments."""


ARGS_BY_TYPE: Dict[str, Type[CommandArgs]] = {
    "deploy": DeployArgs,
    "rollback": RollbackArgs,
    "set": SetArgs,
    "status": NoArgs,
    "snapshot": NoArgs,
    "pause": NoArgs,
    "resume": NoArgs,
}


def describe_errors(err: ValidationError, prefix: str = "args") -> str:
    """'args.score_threshold: Input should be less than or equal to 1; args.x: unknown argument'."""
    parts = []
    for e in err.errors():
        loc = ".".join([prefix, *(str(x) for x in e["loc"])])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown argument"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_args(command_type: str, args: Dict[str, Any]) -> CommandArgs:
    """The arguments as their type's model. KeyError for an unknown type, ValueError (with
    :func:`describe_errors`'s text) for invalid arguments."""
    model = ARGS_BY_TYPE[command_type]
    try:
        return model.model_validate(args)
    except ValidationError as e:
        raise ValueError(describe_errors(e)) from e
