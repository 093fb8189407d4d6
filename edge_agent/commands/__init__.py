"""Signed commands (SPEC §5): the envelope and its signature, per-type arguments, the
admission checks a device runs on every command, and the results it sends back."""

from .args import ARGS_BY_TYPE, CommandArgs, DeployArgs, NoArgs, RollbackArgs, SetArgs
from .checker import Command, CommandChecker, CommandRejected
from .envelope import Envelope, canonical_json, new_command, parse_rfc3339, sign_envelope, verify_envelope
from .replay import SeenIds
from .results import FINAL_STATUSES, CommandResult

__all__ = [
    "ARGS_BY_TYPE",
    "FINAL_STATUSES",
    "Command",
    "CommandArgs",
    "CommandChecker",
    "CommandRejected",
    "CommandResult",
    "DeployArgs",
    "Envelope",
    "NoArgs",
    "RollbackArgs",
    "SeenIds",
    "SetArgs",
    "canonical_json",
    "new_command",
    "parse_rfc3339",
    "sign_envelope",
    "verify_envelope",
]
