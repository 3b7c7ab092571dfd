# intent_ref: platform.registry
"""An intent's free text sent to be saved (its description, its labels' values, an approval's message) is refused
when it would act where it is shown; one already stored still plans (the rule is for new text only)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import INTENTS, etag_of
from tests.integration.test_registry_check_outside_txn import AUTHOR, _body, _created, _put, _tenant

pytestmark = pytest.mark.integration


def _pointers(response: Any) -> list[str]:
    return [error["pointer"] for error in response.json()["errors"]]


def test_a_create_or_update_with_text_that_acts_where_shown_is_refused_and_changes_nothing(api: ApiHarness) -> None:
    tenant = _tenant(api, "free-text")
    refused = api.client.post(
        INTENTS,
        json={**_body("screen"), "description": "fine\x1b[2J", "labels": {"owner": "a\u202eb"}},
        headers=api.headers(tenant, AUTHOR),
    )
    assert refused.status_code == 422, refused.text
    assert _pointers(refused) == ["/description", "/labels/owner"]
    assert "\x1b" not in refused.text and "\u202e" not in refused.text
    listed = api.client.get(INTENTS, headers=api.headers(tenant, AUTHOR))
    assert listed.json()["items"] == []

    item_id = _created(api, tenant, {**_body("screen"), "description": "Ships the web app.\n\tTwo lines."})
    etag = etag_of(api, tenant, item_id)
    changed = _put(api, tenant, item_id, {**_body("screen"), "description": "over\rwritten"}, etag)
    assert changed.status_code == 422, changed.text
    assert _pointers(changed) == ["/description"]
    assert etag_of(api, tenant, item_id) == etag
