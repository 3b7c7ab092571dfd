# intent_ref: platform.tenants
"""Checks on the settings a Tenant.Admin writes: its SSRF allow-list names only hosts this deployment may open, and its
audit retention keeps the trail at least the platform's floor."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from shared.audit.factory import AUDIT_MAX_RETENTION_DAYS, AUDIT_MIN_RETENTION_DAYS, AUDIT_RETENTION_SETTING
from shared.modules.ssrf import a_label_refusal, allow_list_refusal, host_key

MAX_ALLOWED_HOSTS = 100
MAX_HOST_LENGTH = 253
"""The longest DNS name."""


# A host name as a URL writes it: dot-separated labels of letters, digits, hyphens and underscores (no hyphen at either
# end of one), an optional final dot. Ports, paths, wildcards, ranges and white space have no place in it.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?", re.IGNORECASE)
_NOT_A_HOST = (
    "{entry!r} is not a host name or an IP address (no white space, wildcard, CIDR range, port, scheme or brackets):"
    " an entry is matched exactly against a URL's host"
)


def _host_shape_problem(entry: str) -> str | None:
    """Why `entry` could never match a URL's host as the outbound guard (`shared.modules.ssrf.check_url`) compares
    them, or None. That guard compares both in one form (`host_key`: a name as the HTTP client sends it, in IDNA
    A-labels, lower-cased and without a final dot; an IP address compressed), and no URL's host holding '%' (an
    IPv6 zone id, an escape) is ever called."""
    if "%" in entry:
        return (
            f"{entry!r} holds '%' (an IPv6 zone id or an escape): a URL whose host holds one is never called, so the"
            " entry would match nothing"
        )
    try:
        ipaddress.ip_address(entry)
    except ValueError:
        pass
    else:
        return None
    key = host_key(entry)
    if key is None or not _HOST_NAME.fullmatch(key):
        return _NOT_A_HOST.format(entry=entry)
    return _a_label_problem(entry, key)


def _a_label_problem(entry: str, key: str) -> str | None:
    """Why the name `key` (the entry `entry` as `host_key` writes it) holds a label that claims to be an IDNA A-label
    (`xn--`) but is not one, or None: the guard calls no URL whose host holds one (`a_label_refusal`), so the entry
    would match nothing while its tenant believed the host allowed."""
    refusal = a_label_refusal(key)
    if refusal is None:
        return None
    return f"{entry!r}: {refusal}; an 'xn--' label must decode to a name, so the entry would match no URL's host"


def settings_problems(
    settings: Mapping[str, Any], *, allow_private: bool, stored: Mapping[str, Any] | None = None
) -> list[tuple[str, str]]:
    """Each problem of a settings change as (JSON pointer into the request, what is wrong); empty when none. `stored`
    is the tenant's settings as they are, read in the change's transaction (None: none stored)."""
    return [
        *_retention_problems(settings, stored or {}),
        *_allowed_hosts_problems(settings, allow_private=allow_private),
    ]


def unchanged_retention(settings: Mapping[str, Any], stored: Mapping[str, Any]) -> bool:
    """Whether the change sends the audit retention exactly as it is stored (as JSON text: 90.0 is not 90, `true` is
    not 1). Such a change of it changes nothing, so it is not checked against the bounds: a value stored before the
    floor existed is sent back as read (the read-edit-write of ADR 0045), and it stays, applied as the floor."""
    if AUDIT_RETENTION_SETTING not in settings or AUDIT_RETENTION_SETTING not in stored:
        return False
    return _json_text(settings[AUDIT_RETENTION_SETTING]) == _json_text(stored[AUDIT_RETENTION_SETTING])


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _retention_problems(settings: Mapping[str, Any], stored: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The audit retention, when the change sets it to anything but the value stored: a whole number of days within
    the platform's bounds (ADR 0012, amended 2026-12-07), or null (no retention: the records are kept until the
    tenant is erased). JSON `true` is no number of days, nor is 1.5, 90.0 or "90"."""
    if AUDIT_RETENTION_SETTING not in settings or unchanged_retention(settings, stored):
        return []
    days = settings[AUDIT_RETENTION_SETTING]
    if days is None or (
        isinstance(days, int)
        and not isinstance(days, bool)
        and AUDIT_MIN_RETENTION_DAYS <= days <= AUDIT_MAX_RETENTION_DAYS
    ):
        return []
    shown = json.dumps(days)  # as the request wrote it: `true`, not Python's `True`
    if len(shown) > 40:  # a setting may be 32 KiB; the answer names what it refuses, not all of it
        shown = shown[:37] + "..."
    return [
        (
            f"/settings/{AUDIT_RETENTION_SETTING}",
            f"{AUDIT_RETENTION_SETTING} is a whole number of days from {AUDIT_MIN_RETENTION_DAYS} to"
            f" {AUDIT_MAX_RETENTION_DAYS}, or null to keep the records until the tenant is erased, not {shown}: the"
            f" platform keeps every tenant's audit trail at least {AUDIT_MIN_RETENTION_DAYS} days",
        )
    ]


def _allowed_hosts_problems(settings: Mapping[str, Any], *, allow_private: bool) -> list[tuple[str, str]]:
    hosts = settings.get("allowed_hosts")
    at = "/settings/allowed_hosts"
    if hosts is None:
        return []
    if not isinstance(hosts, list):
        return [(at, "allowed_hosts is a list of host names")]
    if len(hosts) > MAX_ALLOWED_HOSTS:
        return [(at, f"at most {MAX_ALLOWED_HOSTS} allowed hosts")]
    problems = []
    for index, entry in enumerate(hosts):
        if not isinstance(entry, str) or not 0 < len(entry) <= MAX_HOST_LENGTH:
            problems.append((f"{at}/{index}", f"a host name of 1 to {MAX_HOST_LENGTH} characters, not {entry!r}"))
            continue
        shape = _host_shape_problem(entry)
        if shape is not None:
            problems.append((f"{at}/{index}", shape))
            continue
        reason = allow_list_refusal(entry, allow_private=allow_private)
        if reason is not None:
            problems.append((f"{at}/{index}", f"{reason}: steps of this platform may not reach it"))
    return problems
