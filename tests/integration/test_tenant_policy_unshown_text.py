# intent_ref: platform.access-control
"""A tenant policy's text is refused when it holds a character that would act where it is shown (a control character,
a line separator, a bidirectional override or isolate), in a comment or a string as anywhere else: it is shown back as
written, and U+202E in a comment can make a reader see a condition the engine never reads. Line feeds, tabs and CRLF
line ends are kept."""

from __future__ import annotations

import pytest

from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import ADMIN, problem, provision

pytestmark = pytest.mark.integration

POLICIES = "/api/v1/policies"
FORBID = 'forbid (principal, action == QP::Action::"intent.read", resource) when { resource.target == "%s" };'


@pytest.mark.parametrize(
    ("name", "text", "found"),
    [
        ("comment-override", "// allowed for \u202e{ }\n" + FORBID % "production", "U+202E"),
        ("string-escape", FORBID % "prod\x1b[2Juction", "U+001B"),
        ("lone-return", FORBID % "production" + "\r// written over", "U+000D"),
        ("isolate", FORBID % "prod\u2066uction", "U+2066"),
        # Invisible: the policy reads as forbidding "prod" and never matches it.
        ("zero-width-space", FORBID % "prod\u200b", "U+200B"),
        ("right-to-left-mark", FORBID % "prod\u200f", "U+200F"),
        ("byte-order-mark", FORBID % "prod\ufeff", "U+FEFF"),
        ("word-joiner", FORBID % "prod\u2060", "U+2060"),
        ("arabic-letter-mark", FORBID % "prod\u061c", "U+061C"),
    ],
)
def test_a_policy_text_that_acts_where_shown_is_refused(
    api: ApiHarness,  # noqa: F811
    name: str,
    text: str,
    found: str,
) -> None:
    tenant = provision(api, f"unshown-{name}")
    admin = api.headers(tenant, ADMIN)
    refused = problem(api.client.post(POLICIES, json={"name": name, "policy": text}, headers=admin), 422)
    assert [error["pointer"] for error in refused["errors"]] == ["/policy"], refused
    assert found in refused["errors"][0]["detail"], refused
    raw = api.client.post(POLICIES, json={"name": name, "policy": text}, headers=admin).text
    assert not any(char in raw for char in "\u202e\x1b\r\u2066")  # never echoed back
    assert api.client.get(POLICIES, headers=admin).json()["items"] == []


def test_a_policy_text_with_tabs_and_crlf_line_ends_is_saved_as_written(api: ApiHarness) -> None:  # noqa: F811
    tenant = provision(api, "unshown-lines")
    admin = api.headers(tenant, ADMIN)
    text = "// no production reads\r\n\t" + FORBID % "production" + "\r\n"
    saved = api.client.post(POLICIES, json={"name": "crlf", "policy": text}, headers=admin)
    assert saved.status_code == 201, saved.text
    assert saved.json()["policy"] == text
