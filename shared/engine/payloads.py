# intent_ref: platform.execution
"""Claim checks: a step output over the inline limit is stored as a blob and travels as a reference."""

from __future__ import annotations

import hashlib
import json
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
