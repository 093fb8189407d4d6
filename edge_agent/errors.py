"""Exceptions shared across the agent. Each carries a message fit for a one-line CLI error."""

from __future__ import annotations


class EdgewatchError(Exception):
    """Base of every error the agent reports to a user."""


class BundleError(EdgewatchError):
    """A model bundle is unusable: names the file and the field at fault."""


class BackendError(EdgewatchError):
    """A backend could not load or run a model."""


class BackendUnavailable(BackendError):
    """A backend's runtime, library or device is absent on this machine."""


class DecoderError(EdgewatchError):
    """Output tensors do not fit the decoder the manifest names."""


class SourceError(EdgewatchError):
    """A frame source could not be opened or stopped delivering frames."""
