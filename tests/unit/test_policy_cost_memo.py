# intent_ref: platform.access-control
"""A policy's cost is parsed once per text: a create counts its tenant's stored policies without parsing them again."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import cedarpy
import pytest

from shared.policy.policy_text import policy_cost
from shared.policy.remembered import Remembered


def _forbid(marker: str) -> str:
    return (
        'forbid (principal, action == QP::Action::"execution.read", resource) '
        f'when {{ resource.labels.contains("{marker}") }};'
    )


def _counting_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    parsed: list[str] = []
    parse: Callable[[str], Any] = cedarpy.policies_to_pst

    def counting(text: str) -> Any:
        parsed.append(text)
        return parse(text)

    monkeypatch.setattr(cedarpy, "policies_to_pst", counting)
    return parsed


def test_a_text_counted_before_is_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = _counting_parses(monkeypatch)
    text, other = _forbid(uuid.uuid4().hex), _forbid(uuid.uuid4().hex + "x")
    first = policy_cost(text)
    assert policy_cost(text) == first > 0
    assert parsed == [text]
    policy_cost(other)
    assert parsed == [text, other]


def test_a_text_that_does_not_parse_is_refused_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = _counting_parses(monkeypatch)
    broken = _forbid(uuid.uuid4().hex).replace(".contains(", ".contains(+")
    for _ in range(2):
        with pytest.raises(ValueError):
            policy_cost(broken)
    assert parsed == [broken, broken]


def test_the_least_recently_used_cost_is_forgotten_first() -> None:
    known: Remembered[int] = Remembered(2)
    known.put(b"a", 1)
    known.put(b"b", 2)
    assert known.get(b"a") == 1  # now the most recent
    known.put(b"c", 3)
    assert (known.get(b"a"), known.get(b"b"), known.get(b"c")) == (1, None, 3)
