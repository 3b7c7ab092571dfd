# intent_ref: platform.hardening
"""Strong ETags that name a row's version (`"<name>.v<n>"`), and the tags an If-Match header lists."""

from __future__ import annotations

import re


def if_match_tags(header: str | None) -> frozenset[str] | None:
    """The ETags an If-Match lists; None without one or for `*` (any current version). Weak tags never match (RFC
    9110): they name no version below."""
    if header is None:
        return None
    tags = frozenset(tag.strip() for tag in header.split(",") if tag.strip())
    # `*` on several lines, which the edge joins (`*, *`), is still `*`; mixed with tags (not a valid If-Match) the
    # tags alone count, so a stale one fails as it would without the `*`.
    return None if tags and tags <= {"*"} else tags - {"*"}


def versioned(name: str, version: int) -> str:
    """The strong ETag of `name` at `version`."""
    return f'"{name}.v{version}"'


def versions_named(name: str, tags: frozenset[str]) -> list[int]:
    """The versions of `name` the ETags in `tags` name: weak ones, and any `versioned` did not make for `name`, name
    none. At most 18 digits, so that any named fits a bigint."""
    named = re.compile(rf'"{re.escape(name)}\.v([1-9][0-9]{{0,17}})"')
    return sorted({int(found[1]) for tag in tags if (found := named.fullmatch(tag))})
