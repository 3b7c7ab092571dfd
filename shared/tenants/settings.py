# intent_ref: platform.tenants
"""Checks on the settings a Tenant.Admin writes: its SSRF allow-list names only hosts this deployment may open."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.modules.ssrf import allow_list_refusal

MAX_ALLOWED_HOSTS = 100
MAX_HOST_LENGTH = 253
"""The longest DNS name."""


def settings_problems(settings: Mapping[str, Any], *, allow_private: bool) -> list[tuple[str, str]]:
    """Each problem of a settings change as (JSON pointer into the request, what is wrong); empty when none."""
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
        reason = allow_list_refusal(entry, allow_private=allow_private)
        if reason is not None:
            problems.append((f"{at}/{index}", f"{reason}: steps of this platform may not reach it"))
    return problems
