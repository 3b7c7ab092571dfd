# intent_ref: platform.gateway
"""Request ids: the caller's X-Request-Id when well-formed, else a fresh one; the same rule at every layer."""

from __future__ import annotations

import re
import uuid
from typing import Any

REQUEST_ID_HEADER = "x-request-id"
# Whole-string matches only: `$` also matches before a final newline, so `forged\n` passed `.match` and was echoed.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-:]{1,128}")


def choose_request_id(incoming: str | None) -> str:
    """The caller's id when it is safe to echo and log, otherwise a new UUID."""
    return incoming if incoming and _VALID_REQUEST_ID.fullmatch(incoming) else str(uuid.uuid4())


def scope_request_id(scope: Any) -> str | None:
    """The id the request-id middleware gave this ASGI request, if it ran."""
    state = scope.get("state") if isinstance(scope, dict) else None
    value = state.get("request_id") if isinstance(state, dict) else None
    return value if isinstance(value, str) else None
