# intent_ref: platform.settings
"""local.settings.sample.json names every setting the app reads, and host.json takes the hub from one."""

from __future__ import annotations

import json
from pathlib import Path

from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_sample_lists_every_setting_the_app_reads() -> None:
    values = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    missing = sorted(set(Settings.model_fields) - set(values))
    assert missing == []


def test_host_json_reads_the_task_hub_from_a_setting() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    hub = host["extensions"]["durableTask"]["hubName"]
    assert hub.startswith("%") and hub.strip("%") in Settings.model_fields
    assert host["extensions"]["http"]["routePrefix"] == ""
