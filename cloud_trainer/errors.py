"""The errors cloud_trainer reports to a user. Each message is fit for a one-line CLI error
(``cloud-trainer: <message>``, exit 1): it names the file, and where there is one the line or
field, and says what is wrong."""

from __future__ import annotations

from edge_agent.errors import EdgewatchError


class TrainerError(EdgewatchError):
    """A user-facing failure of a trainer command: printed as one line, exit 1."""


class DatasetError(TrainerError):
    """A dataset cannot be read or written. The message names the file and, where there is one,
    the line (``path:line: what is wrong``)."""


class PackageError(TrainerError):
    """A model file cannot be packaged as it is: the message names the file and says what is
    missing or ambiguous, and which option (``--labels``, ``--decoder``…) settles it."""
