# intent_ref: platform.gateway
"""The API's problem+json answers as typed exceptions, each carrying the document and its `errors[]`."""

from __future__ import annotations

import json
from typing import Any

import httpx

from quantum_platform.terminal_text import folded


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def strict_json(text: str | bytes) -> Any:
    """`text` parsed as JSON (RFC 8259): NaN, Infinity and -Infinity, which Python's parser takes by default, are
    refused (ValueError), for what the client hands on (`qp -o json` among them) must parse as JSON again. A document
    nested past the parser's recursion (`[[[...]]]` of any server) is a ValueError too, not a RecursionError."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("nested too deeply") from None


class PlatformError(Exception):
    """Any failure the client reports."""


class UnexpectedAnswer(PlatformError, ValueError):
    """An answer the client cannot use: not JSON, JSON of another shape than the route's, larger than the client
    reads, or a listing or event stream that does not move on. A ValueError too, as reading such a body raised
    before."""


class CredentialError(PlatformError, RuntimeError):
    """A token the credential could not get (the local devhost could not mint one). A RuntimeError too, as it was
    raised before."""


class ProblemError(PlatformError):
    """An answer of 4xx/5xx: `status`, `type`, `title`, `detail`, `errors` (per field), `reason` (the machine code
    of a refusal, e.g. `production_requires_deployer`) and `request_id`."""

    def __init__(self, status: int, document: dict[str, Any], response: httpx.Response | None = None) -> None:
        self.status = status
        self.document = document
        self.response = response
        self.type = str(document.get("type") or "about:blank")
        self.title = str(document.get("title") or httpx.codes.get_reason_phrase(status))
        self.detail = document.get("detail")
        reason = document.get("reason")
        self.reason: str | None = reason if isinstance(reason, str) and reason else None
        errors = document.get("errors")
        self.errors: list[dict[str, Any]] = (
            [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
        )
        self.request_id = document.get("request_id") or (response.headers.get("X-Request-Id") if response else None)
        super().__init__(self.summary)

    @property
    def code(self) -> str:
        """The last part of the problem type, e.g. `not-found`."""
        return self.type.rstrip("/").rsplit("/", 1)[-1]

    @property
    def summary(self) -> str:
        """One line: status, title, detail, the refusal's reason unless the detail says it, and the first field
        error, e.g. `403 Forbidden: Not allowed to intent.execute. (reason: production_requires_deployer)` or
        `422 Unprocessable content: The intent has 1 problem. (/name: Field required)`. One line whatever the server
        put in its texts, and inert: a control, separator or bidirectional character in them is shown as an escape
        (`\\x1b`), as is every line of `headline` and `problems` (`document` keeps them as answered)."""
        line = self.headline
        if self.errors:
            first = self.errors[0]
            where, why = first.get("pointer"), first.get("detail")
            line += " " + folded(f"({where or '/'}: {why})" if why else f"({first})")
        return line

    @property
    def headline(self) -> str:
        """The summary without its first field error: status, title, detail and reason, one line (what precedes
        `problems` when every one of them is listed)."""
        line = f"{self.status} {self.title}"
        if self.detail:
            line += f": {self.detail}"
        # The detail of a refusal may be a generic "Not allowed to ..."; the reason is what says why.
        if self.reason and self.reason not in line:
            line += f" (reason: {self.reason})"
        return folded(line)

    @property
    def problems(self) -> list[str]:
        """Every field error as one line `pointer: detail`, in the order of `errors` (the summary names only the
        first: a definition with three problems needs all three to be fixed in one go)."""
        lines = []
        for error in self.errors:
            where, why = error.get("pointer"), error.get("detail")
            line = f"{where or '/'}: {why}" if why else str(error)
            lines.append(folded(line))
        return lines


class BadRequest(ProblemError):
    """400."""


class Unauthorized(ProblemError):
    """401: no token, or one the platform refuses."""


class Forbidden(ProblemError):
    """403: the caller's roles or the tenant's policies refuse it."""


class NotFound(ProblemError):
    """404 (another tenant's items are not found either)."""


class Conflict(ProblemError):
    """409."""


class ValidationFailed(ProblemError):
    """422: `errors` names each field."""


class RateLimited(ProblemError):
    """429, after the client's own retries."""


class Unavailable(ProblemError):
    """503, after the client's own retries."""


_BY_STATUS: dict[int, type[ProblemError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: Conflict,
    415: BadRequest,
    422: ValidationFailed,
    429: RateLimited,
    503: Unavailable,
}


def problem_from(response: httpx.Response) -> ProblemError:
    """The exception for an error answer (a body that is not problem+json still gives a typed error)."""
    try:
        document = strict_json(response.content)
    except (ValueError, httpx.ResponseNotRead):
        document = {"detail": response.text[:500] or None}
    if not isinstance(document, dict):
        document = {"detail": str(document)[:500]}
    return _BY_STATUS.get(response.status_code, ProblemError)(response.status_code, document, response)
