# intent_ref: platform.hardening
"""Field errors as a refusal lists them (the API's problem documents, the ingress's rejection records): where, as a
JSON pointer, and bounded, since one hostile body can hold a hundred thousand invalid fields (ADR 0016, ADR 0019)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

from shared.accepted_json import MAX_REFUSALS, path_pointer
from shared.registry.schema_refs import short_message

_Value = TypeVar("_Value")


def json_pointer(location: tuple[Any, ...] | list[Any]) -> str:
    """A JSON pointer (RFC 6901) for a pydantic error location, without its 'body' prefix (a request part's name)."""
    return path_pointer(location[1:] if location and location[0] == "body" else location)


def bounded(errors: Sequence[Mapping[str, _Value]], limit: int = MAX_REFUSALS) -> list[dict[str, _Value]]:
    """The first `limit` errors, each text member (pointer, detail) cut by `short_message`: a pointer names a member
    of the body, whose name may be as long as the body, and a message may quote a value."""
    return [{name: _cut(value) for name, value in error.items()} for error in errors[:limit]]


def count_text(total: int, listed: int) -> str:
    """The `detail` of a validation refusal: how many fields are invalid, and how many are listed when not all."""
    return f"{total} invalid field(s)" if total == listed else f"{total} invalid field(s), the first {listed} listed"


def _cut(value: _Value) -> _Value:
    return cast(_Value, short_message(value)) if isinstance(value, str) else value
