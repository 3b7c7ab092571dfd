# intent_ref: platform.modules
"""`artifact.write`: content or JSON to `<tenant>/executions/<execution>/<step>/<name>` in the artifacts container."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, ClassVar

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient, ContentSettings

from shared.config import get_settings
from shared.modules.contract import Module, ModuleContext, StepFailed
from shared.registry.catalog import ArtifactWriteParams
from shared.storage.blob import artifacts_container
from shared.tenants.offboarding import kept_for_tenant, tenant_blob_prefix


def _default_container() -> ContainerClient:
    return artifacts_container(get_settings())


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def artifact_bytes(params: ArtifactWriteParams) -> bytes:
    """JSON for a JSON content type, UTF-8 for text; anything else cannot be represented."""
    if is_json_type(params.content_type):
        return json.dumps(params.content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if isinstance(params.content, str):
        return params.content.encode("utf-8")
    raise StepFailed(
        f"content for {params.content_type!r} must be a string (or use a JSON content type)", retryable=False
    )


def blob_name(ctx: ModuleContext, name: str) -> str:
    """The artifact's blob name under the tenant's prefix; refuses names that could leave it."""
    segments = name.split("/")
    # Dot segments could be normalised away by a client or proxy and land outside the step's folder.
    if any(segment in ("", ".", "..") for segment in segments):
        raise StepFailed(f"artifact name {name!r} has an empty, '.' or '..' segment", retryable=False)
    return f"{tenant_blob_prefix(ctx.tenant_id)}executions/{ctx.execution_id}/{ctx.step_id}/{name}"


class ArtifactWriteModule(Module[ArtifactWriteParams]):
    action: ClassVar[str] = "artifact.write"
    params_model = ArtifactWriteParams
    timeout_s = 60
    answers_quickly = True

    def __init__(self, container: Callable[[], ContainerClient] = _default_container) -> None:
        self._container = container

    def run(self, ctx: ModuleContext, params: ArtifactWriteParams) -> Any:
        """Store the artifact; a step failure, not retried, when its tenant was erased meanwhile (it is removed)."""
        name = blob_name(ctx, params.name)
        data = artifact_bytes(params)
        digest = hashlib.sha256(data).hexdigest()
        container = self._container()
        # Overwrite: a redelivered attempt writes the same bytes again, and a later attempt's result replaces
        # an earlier one's; the metadata says which attempt wrote it.
        container.upload_blob(
            name,
            data,
            overwrite=True,
            content_settings=ContentSettings(content_type=params.content_type),
            metadata={"idempotency_key": ctx.idempotency_key, "sha256": digest},
        )
        if not kept_for_tenant(ctx.tenant_id, container, name):
            raise StepFailed(f"tenant {ctx.tenant_id} was erased; the artifact was removed", retryable=False)
        return {"container": container.container_name, "blob_name": name, "size": len(data), "sha256": digest}

    def compensate(self, ctx: ModuleContext, params: ArtifactWriteParams, output: Any) -> None:  # noqa: ARG002
        """Delete the artifact; one already gone is fine."""
        try:
            self._container().delete_blob(blob_name(ctx, params.name))
        except ResourceNotFoundError:
            pass
