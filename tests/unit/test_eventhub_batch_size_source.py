# intent_ref: platform.devhost-eventhubs
"""The devhost's Event Hubs batch size comes from the host.json beside the script its app was loaded from, even once
another app's function_app.py has taken the same module name in the process (tests load several apps in one)."""

from __future__ import annotations

import sys

import pytest

from devhost.eventhubs.host import host_json_batch_size
from tests.e2e.conformance_index import conformance_index


def test_the_batch_size_is_read_beside_the_apps_script_after_another_app_took_its_module_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index = conformance_index()
    assert host_json_batch_size(index) == 10  # tests/conformance_app/host.json
    # Another function_app.py imported since (the platform's, say) is now sys.modules["function_app"].
    for name, module in list(sys.modules.items()):
        if any(value is index.app for value in vars(module).values()):
            monkeypatch.delitem(sys.modules, name)
    assert host_json_batch_size(index) == 10
