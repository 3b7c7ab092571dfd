# intent_ref: platform.devhost
"""Read the settings of host.json that the local host honours (route prefix, Event Hubs batching)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class HostJson:
    """The subset of host.json the devhost applies."""

    route_prefix: str = "api"
    eventhub_max_batch_size: int = 100
    raw: dict[str, Any] | None = None


def load_host_json(app_dir: Path) -> HostJson:
    """Parse `app_dir/host.json` (absent: the runtime defaults)."""
    path = app_dir / "host.json"
    if not path.exists():
        return HostJson()
    raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    extensions = raw.get("extensions", {})
    route_prefix = str(extensions.get("http", {}).get("routePrefix", "api")).strip("/")
    batch = int(extensions.get("eventHubs", {}).get("maxEventBatchSize", 100))
    return HostJson(route_prefix=route_prefix, eventhub_max_batch_size=batch, raw=raw)


def load_local_settings(app_dir: Path) -> dict[str, str]:
    """The `Values` of local.settings.json, as `func start` applies them (absent file: none)."""
    path = app_dir / "local.settings.json"
    if not path.exists():
        return {}
    values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    return {str(k): str(v) for k, v in values.items()}


_SETTING_REFERENCE = re.compile(r"^%([^%]+)%$")


class MissingAppSettingError(ValueError):
    """A binding names an app setting (`%NAME%`) that is not set."""


def resolve_app_setting(value: str) -> str:
    """Resolve a `%NAME%` binding expression from the app settings (the environment), like the host does."""
    match = _SETTING_REFERENCE.match(value)
    if not match:
        return value
    resolved = os.environ.get(match.group(1))
    if not resolved:
        raise MissingAppSettingError(f"app setting {match.group(1)!r} (used as {value}) is not set")
    return resolved
