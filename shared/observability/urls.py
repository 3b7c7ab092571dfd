# intent_ref: platform.telemetry
"""What of a tenant's URL telemetry may keep: scheme, host and port, never the path, query or user info."""

from __future__ import annotations

import re

import httpx

_URL_IN_TEXT = re.compile(r"""\b[A-Za-z][A-Za-z0-9+.-]{0,15}://(?:[^\s"<>`']|'(?![\s,;:)\]}]|$))+""")
"""A URL inside free text (an error message): a scheme, then everything up to white space, a double quote, an angle
bracket or a backtick (which a URL holds only percent-encoded), or a single quote that closes the URL's text (white
space, punctuation or the end after it). A single quote inside it does not end it: user info and paths may hold one
unencoded (an RFC 3986 sub-delimiter), and what followed it was kept."""
_CLOSING = ".,;:!?'\"`)]}>"
"""Characters that end a URL's sentence rather than the URL: peeled off its end and kept in the text."""


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


def kept_url(url: str) -> str:
    """What `outbound_url` keeps of a URL a tenant gave, which need not parse (an audit detail is written before the
    URL is checked): only its scheme when it does not, nothing when it is not one URL."""
    if _URL_IN_TEXT.fullmatch(url) is None:
        return "REDACTED"
    return _kept(url)


def _kept_part(match: re.Match[str]) -> str:
    found = match.group(0)
    url = found.rstrip(_CLOSING)
    return _kept(url) + found[len(url) :]


def _kept(url: str) -> str:
    try:
        return outbound_url(url)
    except (httpx.InvalidURL, ValueError):
        # Nothing of a URL that does not parse is kept: its host cannot be told from its secret.
        return url.split("://", 1)[0] + "://REDACTED"
