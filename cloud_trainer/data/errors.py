"""The one error type of dataset import and export."""

from __future__ import annotations

from edge_agent.errors import EdgewatchError


class DatasetError(EdgewatchError):
    """A dataset cannot be read or written. The message names the file and, where there is one,
    the line (``path:line: what is wrong``), fit for a one-line CLI error."""
