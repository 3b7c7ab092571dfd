# intent_ref: platform.access-control
"""A create's or validate's body is decided on before it is validated: only what its model would accept reaches the
Authorizer. A target of a million characters went to the tenant's `like` policies as sent (2 s a decision, 403 after
it); labels of any number and size too."""

from __future__ import annotations

import uuid

import pytest

from shared.api.routers import registry
from shared.api.routers.registry import _SPECS, _body_resource
from shared.registry.model import MAX_LABELS

TENANT = uuid.uuid4()


@pytest.mark.parametrize(
    "target",
    ["t" * 1_000_000, "t" * 129, "-leading-dash", "", 42, None, ["production"]],
)
def test_a_target_its_model_refuses_reaches_the_authorizer_as_none(target: object) -> None:
    resource = _body_resource(_SPECS["intent"], "i-1", TENANT, {"definition": {"target": target}})
    assert resource.attributes["target"] == ""


def test_a_target_its_model_accepts_reaches_the_authorizer_as_sent() -> None:
    resource = _body_resource(_SPECS["intent"], "i-1", TENANT, {"definition": {"target": "prod-eu.1"}})
    assert resource.attributes["target"] == "prod-eu.1"


@pytest.mark.parametrize(
    "labels",
    [
        {f"k{i}": "v" for i in range(65)},  # more than the model's 64
        {"team": "v" * 257},  # a value past 256 characters
        {"Team": "web"},  # a key the model refuses
        {"team": 1},
        ["team=web"],
    ],
)
def test_labels_their_model_refuses_reach_the_authorizer_as_none(labels: object) -> None:
    resource = _body_resource(_SPECS["intent"], "i-1", TENANT, {"definition": {}, "labels": labels})
    assert resource.attributes["labels"] == {}


def test_labels_their_model_accepts_reach_the_authorizer_as_sent() -> None:
    labels = {f"k{i}": "v" * 256 for i in range(64)}
    resource = _body_resource(_SPECS["blueprint"], "b-1", TENANT, {"labels": labels})
    assert resource.attributes["labels"] == labels


def test_labels_past_the_models_count_are_dropped_before_any_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    # A hundred thousand bad keys cost an error each (~55 ms) when validated: counted first, they cost nothing.
    validated: list[object] = []

    class Counting:
        def validate_python(self, value: object) -> dict[str, str]:
            validated.append(value)
            return {}

    monkeypatch.setattr(registry, "_BODY_LABELS", Counting())
    too_many = {f"K{i}": "v" for i in range(MAX_LABELS + 1)}
    resource = _body_resource(_SPECS["intent"], "i-1", TENANT, {"definition": {}, "labels": too_many})
    assert resource.attributes["labels"] == {} and validated == []
    _body_resource(_SPECS["intent"], "i-1", TENANT, {"definition": {}, "labels": {"team": "web"}})
    assert validated == [{"team": "web"}]
