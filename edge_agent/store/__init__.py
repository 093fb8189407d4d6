"""The model store, bundle fetching and the staged deploy (SPEC §6)."""

from __future__ import annotations

from .deploy import DeployBusy, Deployer, DeployFailed, DeployRequest, Report, RollbackRequest
from .fetch import FetchCancelled, FetchError, FetchIntegrityError, FetchStalled, Progress, fetch_bundle
from .models import ModelStore, StoredVersion, StoreError

__all__ = [
    "DeployBusy",
    "DeployFailed",
    "DeployRequest",
    "Deployer",
    "FetchCancelled",
    "FetchStalled",
    "FetchError",
    "FetchIntegrityError",
    "ModelStore",
    "Progress",
    "Report",
    "RollbackRequest",
    "StoreError",
    "StoredVersion",
    "fetch_bundle",
]
