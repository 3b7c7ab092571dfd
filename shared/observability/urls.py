# intent_ref: platform.telemetry
"""What of a tenant's URL telemetry may keep: scheme, host and port, never the path, query or user info."""

from __future__ import annotations

import re

import httpx

_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{0,15}://[^\s\"'<>`]+")
"""A URL inside free text (an error message): a scheme, then everything up to white space or a quote."""


def outbound_url(url: object) -> str:
    """The part of an outbound URL a span may keep: scheme, host and port. Tenants' URLs carry secrets in their
    query (`api_key=`, a function key's `code=`) and in their path (a chat service's webhook path is its token)."""
    parsed = httpx.URL(str(url))
    port = f":{parsed.port}" if parsed.port is not None else ""
    hidden = "REDACTED" if parsed.path not in ("", "/") or parsed.query else ""
    return f"{parsed.scheme}://{parsed.host}{port}/{hidden}"


def hide_urls(text: str) -> str:
    """`text` with every URL in it cut to what `outbound_url` keeps: a step's error message quotes the URL its
    tenant wrote, and the message goes to telemetry the operator reads."""
    return _URL_IN_TEXT.sub(_kept_part, text)


def _kept_part(match: re.Match[str]) -> str:
    found = match.group(0)
    try:
        return outbound_url(found)
    except (httpx.InvalidURL, ValueError):
        # Nothing of a URL that does not parse is kept: its host cannot be told from its secret.
        return found.split("://", 1)[0] + "://REDACTED"
