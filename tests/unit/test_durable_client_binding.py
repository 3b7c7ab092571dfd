# intent_ref: platform.gateway
"""The request's Durable client: a request without one is refused as every 503 of the API is, with Retry-After."""

from __future__ import annotations

import contextvars

import pytest

from shared.api.durable import durable_client_var, get_durable_client
from shared.api.problems import ProblemError


def test_a_request_without_a_bound_client_is_a_503_with_retry_after() -> None:
    with pytest.raises(ProblemError) as refused:
        contextvars.Context().run(get_durable_client)
    assert refused.value.status == 503 and refused.value.slug == "orchestration-unavailable"
    assert refused.value.headers == {"Retry-After": "5"}


def test_the_bound_client_is_the_requests() -> None:
    bound = object()

    def read() -> object:
        durable_client_var.set(bound)
        return get_durable_client()

    assert contextvars.Context().run(read) is bound
