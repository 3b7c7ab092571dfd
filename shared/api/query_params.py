# intent_ref: platform.gateway
"""A query parameter a route takes once is refused when it is given more than once."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any, Union, get_args, get_origin

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

# Which of several values a framework keeps differs (the gateway in front may check the first while the app reads the
# last), so a repeated value could pass a check it was never put through: one value, or a refusal.
_SEQUENCES = (list, set, frozenset, tuple)


def _repeatable(annotation: Any) -> bool:
    """Whether a parameter of `annotation` takes several values (`list[str] | None` does)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_repeatable(arg) for arg in get_args(annotation))
    return origin in _SEQUENCES or annotation in _SEQUENCES


def _query_fields(dependant: Dependant) -> Iterator[Any]:
    yield from dependant.query_params
    for sub in dependant.dependencies:
        yield from _query_fields(sub)


def _single_valued(route: APIRoute) -> frozenset[str]:
    """The names of the query parameters `route` (its dependencies included) takes once."""
    return frozenset(
        field.alias for field in _query_fields(route.dependant) if not _repeatable(field.field_info.annotation)
    )


def refuse_repeated_query(request: Request) -> None:
    """Refuse (422) a query that gives a single-valued parameter of the matched route more than once.

    Called by the route's permission dependency once it has decided, as the framework's own query validation is
    answered after the dependencies (401 and 403 first: an anonymous caller learns nothing of a route's parameters).
    The route's fields are walked only for a query that repeats a name, which a client following the documentation
    never sends."""
    again = _repeats(request)
    route = request.scope.get("route")
    if not again or not isinstance(route, APIRoute):
        return
    repeated = sorted(again & _single_valued(route))
    if repeated:
        raise RequestValidationError(
            [
                {"type": "repeated", "loc": ("query", name), "msg": "Given more than once.", "input": None}
                for name in repeated
            ]
        )


def _repeats(request: Request) -> set[str]:
    """The names the query gives more than once."""
    seen: set[str] = set()
    again: set[str] = set()
    for name, _ in request.query_params.multi_items():
        (again if name in seen else seen).add(name)
    return again
