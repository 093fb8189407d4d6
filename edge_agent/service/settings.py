"""Runtime settings an operator changes with the ``set`` command. They start from the
configuration file; what ``set`` changed is kept in the store (only those keys), so it survives
a restart while later edits of the configuration file still apply to everything else."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

from pydantic import ValidationError

from ..config import AgentConfig
from ..settings import Settings

log = logging.getLogger(__name__)


class RuntimeSettings:
    def __init__(self, path: Path, config: AgentConfig, overrides: Optional[Dict[str, Any]] = None):
        self.path = path
        self.base = Settings.from_config(config)
        self.overrides: Dict[str, Any] = dict(overrides or {})
        self.effective = Settings.model_validate({**self.base.model_dump(), **self.overrides})

    @classmethod
    def load(cls, path: Path, config: AgentConfig) -> RuntimeSettings:
        try:
            return cls(path, config, json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return cls(path, config)
        except (ValueError, TypeError, ValidationError) as e:
            # A damaged settings file must not stop the service: the configuration still applies.
            log.warning("%s: ignored (%s)", path, e)
            return cls(path, config)

    def update(self, changes: Dict[str, Any]) -> None:
        """Validate and apply ``changes`` and save the overrides atomically."""
        overrides = {**self.overrides, **changes}
        self.effective = Settings.model_validate({**self.base.model_dump(), **overrides})
        self.overrides = overrides
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(overrides, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def public(self) -> Dict[str, Any]:
        return self.effective.model_dump(mode="json")
