# intent_ref: platform.execution
"""Claim checks: a step output over the inline limit is stored as a blob and travels as a reference."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from azure.storage.blob import ContainerClient, ContentSettings

from shared.config import get_settings
from shared.engine.steps import AttemptKey
from shared.storage.blob import artifacts_container
from shared.tenants.offboarding import tenant_blob_prefix

BLOB_REF = "$blob"
"""The one key of an output that was stored as a blob: {"$blob": {"container", "name", "size", "sha256"}}."""


def is_blob_ref(value: Any) -> bool:
    """Whether `value` is a stored output's reference rather than the output itself."""
    return isinstance(value, dict) and set(value) == {BLOB_REF}


def blob_name(tenant_id: UUID, key: AttemptKey) -> str:
    """Where an attempt's output is stored: under the tenant's prefix, so erasure finds it."""
    return (f"{tenant_blob_prefix(tenant_id)}executions/{key.execution_id}/outputs/"
            f"{key.step_id}.{key.phase}.{key.attempt}.json")


def claim_check(tenant_id: UUID, key: AttemptKey, output: Any, *, limit: int | None = None,
                container: ContainerClient | None = None) -> Any:
    """`output` itself when its JSON fits in `limit` bytes (QP_PAYLOAD_INLINE_MAX_BYTES), else its blob reference.

    The blob name is fixed per attempt, so a redelivered result overwrites the same blob with the same bytes.
    """
    body = json.dumps(output, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) <= (limit if limit is not None else get_settings().QP_PAYLOAD_INLINE_MAX_BYTES):
        return output
    target = container or artifacts_container(get_settings())
    name = blob_name(tenant_id, key)
    target.upload_blob(name, body, overwrite=True, content_settings=ContentSettings(content_type="application/json"))
    return {BLOB_REF: {"container": target.container_name, "name": name, "size": len(body),
                       "sha256": hashlib.sha256(body).hexdigest()}}


def load(value: Any, *, container: ContainerClient | None = None) -> Any:
    """The output a reference stands for (or `value` itself when it is not a reference)."""
    if not is_blob_ref(value):
        return value
    target = container or artifacts_container(get_settings())
    return json.loads(target.download_blob(value[BLOB_REF]["name"]).readall())


def project(output: Any, paths: Iterable[tuple[str, ...]]) -> Any:
    """The parts of `output` that `paths` point at, in their places (what references read of a stored output).

    An empty path, or an output that is not an object, gives the whole output. A list on the way is taken whole,
    since an index into a thinned-out list would point at another element.
    """
    ordered = sorted(set(paths), key=len)
    if not isinstance(output, dict) or not ordered or ordered[0] == ():
        return output
    parts: dict[str, Any] = {}
    for path in ordered:
        _copy_path(output, parts, path)
    return parts


def _copy_path(source: dict[str, Any], target: dict[str, Any], path: tuple[str, ...]) -> None:
    head, rest = path[0], path[1:]
    if head not in source:
        return  # absent stays absent: the reference resolves (or `when` reads it) as it would on the whole
    value = source[head]
    if not rest or not isinstance(value, dict):
        target[head] = value
        return
    child = target.setdefault(head, {})
    if child is not value:  # a shorter path took the whole object already
        _copy_path(value, child, rest)


def load_parts(tenant_id: UUID, reference: Any, paths: Iterable[tuple[str, ...]], *,
               container: ContainerClient | None = None) -> Any:
    """The referenced parts of a stored output, read from the tenant's own prefix only."""
    if not is_blob_ref(reference):
        return project(reference, paths)
    if not str(reference[BLOB_REF].get("name", "")).startswith(tenant_blob_prefix(tenant_id)):
        raise ValueError("the stored output is not under the tenant's prefix")
    return project(load(reference, container=container), paths)
