# intent_ref: platform.modules
"""`artifact.write`: content or JSON to `<tenant>/executions/<execution>/<step>/<name>` in the artifacts container."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import ContainerClient, ContentSettings

from shared.config import get_settings
from shared.modules.contract import Abandoned, Module, ModuleContext, StepFailed
from shared.registry.catalog import ArtifactWriteParams
from shared.storage.blob import StorageCall, artifacts_container
from shared.tenants.offboarding import kept_for_tenant, tenant_blob_prefix

T = TypeVar("T")

CONNECT_TIMEOUT_S = 20.0
"""The longest a try waits to connect (the Blob SDK's own default), less when the attempt's deadline is nearer."""
READ_TIMEOUT_S = 60.0
"""The longest a try waits on one read (the Blob SDK's own default), less when the attempt's deadline is nearer."""
MAX_BACKOFF_S = 15.0
"""The longest pause between tries under a deadline (the SDK's first pause); the first pauses are 1, 2, 4, 8 s."""
MAX_RETRY_WINDOW_S = 90.0
"""How long one operation is retried under a deadline, about what the SDK's own policy rides out (four tries 15 to 27
s apart): a deadline days away must not keep a module thread retrying through a whole outage, and a blip of a few
seconds inside a normal one must not fail the step; past it the step's retries take over."""
MAX_SERVICE_TIMEOUT_S = 300
"""The longest the service is asked to keep working on one try (its `timeout`), however far the deadline is."""
_NOT_RETRIED = frozenset({501, 505})
"""5xx statuses the Blob SDK does not retry either (they repeat)."""


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


def _transient(exc: AzureError) -> bool:
    """Whether the Blob SDK's own retry policy would try again after `exc` (`is_retry` in its policies)."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return True  # not connected, or no (complete) answer
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        return status == 408 or (status is not None and status >= 500 and status not in _NOT_RETRIED)
    return False


def within_deadline(ctx: ModuleContext, what: str, call: Callable[..., T]) -> T:
    """`call(**options)`, one storage operation, ended by the attempt's deadline with a retryable step failure.

    The client's retry policy (a shared client; by default 3 retries after 15 to 27 s, each try waiting up to 20 s to
    connect and 60 s per read) knows no deadline, and its pauses cannot be shortened per call: an outage held the
    module thread, and its tenant's share of them, for minutes past the deadline (ADR 0026). Under a deadline each
    try is the SDK's alone (`retry_total=0`), every socket wait and the service's own `timeout` are capped by what is
    left, and this loop retries what the SDK would retry, pausing on `abandoned` so that a cancel ends it at once.
    Without a deadline the client's policy applies, as before."""
    if ctx.deadline is None:
        return call()
    tries = 0
    last = "none"
    window_ends = time.monotonic() + MAX_RETRY_WINDOW_S
    while True:
        left = ctx.time_left() or 0.0
        if ctx.abandoned.is_set() or left <= 0 or (tries and time.monotonic() >= window_ends):
            if ctx.abandoned.is_set():
                when = "when its attempt was abandoned"
            elif left <= 0:
                when = "by its attempt's deadline"
            else:
                when = f"within {MAX_RETRY_WINDOW_S:g} s of retries"
            # Retryable: the store was slow or away, and the next attempt (its own deadline) may find it back.
            stopped = Abandoned if ctx.abandoned.is_set() else StepFailed
            raise stopped(
                f"{what} not done {when} ({tries} {'try' if tries == 1 else 'tries'}; last error: {last})",
                details={"tries": tries, "last": last},
            )
        tries += 1
        try:
            return call(
                retry_total=0,
                connection_timeout=min(CONNECT_TIMEOUT_S, left),
                read_timeout=min(READ_TIMEOUT_S, left),
                # The service gives up on the operation by then too (whole seconds), rather than applying it later.
                timeout=max(min(int(left), MAX_SERVICE_TIMEOUT_S), 1),
            )
        except AzureError as exc:
            if not _transient(exc):
                raise
            last = f"{type(exc).__name__}: {exc}".splitlines()[0]
        pause = min(2.0 ** (tries - 1), MAX_BACKOFF_S, ctx.time_left() or 0.0, max(window_ends - time.monotonic(), 0.0))
        ctx.abandoned.wait(pause)


REMOVAL_WINDOW_S = 10.0
"""The least time an erased tenant's blob is tried for, whatever is left of the attempt: past the erasure's last pass
nobody else removes it, so a deadline spent on the upload must not leave it unattempted."""


def bounded_by(ctx: ModuleContext, *, at_least_s: float = 0.0) -> StorageCall:
    """`within_deadline` for `ctx`, as the storage helpers take it (the container's first check, an erased tenant's
    removal); `at_least_s` from now when the attempt's deadline is nearer."""

    def within(what: str, call: Callable[..., T], /) -> T:
        bounded = ctx
        if ctx.deadline is not None and at_least_s > 0:
            bounded = replace(ctx, deadline=max(ctx.deadline, time.monotonic() + at_least_s))
        return within_deadline(bounded, what, call)

    return within


def blob_name(ctx: ModuleContext, name: str) -> str:
    """The artifact's blob name under the tenant's prefix; refuses names that could leave it."""
    segments = name.split("/")
    # Dot segments could be normalised away by a client or proxy and land outside the step's folder; and Azure's
    # naming rules say no segment should end with a dot ('a./b', 'x...'), which covers '.' and '..' too. Checked
    # here as well as by the parameters' pattern: a name built from references is known only when the step runs.
    if any(segment == "" or segment.endswith(".") for segment in segments):
        raise StepFailed(
            f"artifact name {name!r} has an empty segment or one ending with '.' (such as '.' or '..')",
            retryable=False,
        )
    return f"{tenant_blob_prefix(ctx.tenant_id)}executions/{ctx.execution_id}/{ctx.step_id}/{name}"


class ArtifactWriteModule(Module[ArtifactWriteParams]):
    action: ClassVar[str] = "artifact.write"
    params_model = ArtifactWriteParams
    timeout_s = 60
    answers_quickly = True

    def __init__(self, container: Callable[[], ContainerClient] | None = None) -> None:
        """`container`: where to write (by default the process's artifacts container)."""
        self._container = container

    def _client(self, ctx: ModuleContext) -> ContainerClient:
        if self._container is not None:
            return self._container()
        # The process's first use checks (locally, creates) the container: by the deadline too, as the writes are.
        return artifacts_container(get_settings(), within=bounded_by(ctx))

    def run(self, ctx: ModuleContext, params: ArtifactWriteParams) -> Any:
        """Store the artifact; a step failure, not retried, when its tenant was erased meanwhile (it is removed)."""
        name = blob_name(ctx, params.name)
        data = artifact_bytes(params)
        digest = hashlib.sha256(data).hexdigest()
        container = self._client(ctx)
        # Overwrite: a redelivered attempt writes the same bytes again, and a later attempt's result replaces
        # an earlier one's; the metadata says which attempt wrote it.
        # One Put Blob: the service stores all of the bytes or none, so a try cut off by the deadline leaves no
        # partial artifact; one it applied anyway is the same bytes a later attempt overwrites.
        within_deadline(
            ctx,
            f"artifact.write of {params.name!r}",
            lambda **options: container.upload_blob(
                name,
                data,
                overwrite=True,
                content_settings=ContentSettings(content_type=params.content_type),
                metadata={"idempotency_key": ctx.idempotency_key, "sha256": digest},
                **options,
            ),
        )
        if not kept_for_tenant(ctx.tenant_id, container, name, within=bounded_by(ctx, at_least_s=REMOVAL_WINDOW_S)):
            raise StepFailed(f"tenant {ctx.tenant_id} was erased; the artifact is not kept", retryable=False)
        return {"container": container.container_name, "blob_name": name, "size": len(data), "sha256": digest}

    def compensate(self, ctx: ModuleContext, params: ArtifactWriteParams, output: Any) -> None:  # noqa: ARG002
        """Delete the artifact; one already gone is fine."""
        name = blob_name(ctx, params.name)
        container = self._client(ctx)
        try:
            within_deadline(
                ctx,
                f"artifact.write's removal of {params.name!r}",
                lambda **options: container.delete_blob(name, **options),
            )
        except ResourceNotFoundError:
            pass
