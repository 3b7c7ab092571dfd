# intent_ref: platform.registry
"""The registry API's response models, their OpenAPI examples and error documents (the routes are in registry.py)."""

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi.openapi.models import Example
from pydantic import BaseModel, ConfigDict, Field

from shared.api.responses import UNAUTHORIZED, problem_doc
from shared.registry.repository import Kind, Status

# --- examples ---------------------------------------------------------------------------------------------------

_EXAMPLE_ID = "0b6f3c1e-5d2a-4c1f-9e7b-2a8d4f6c9e10"
_EXAMPLE_PRINCIPAL = "72f988bf-86f1-41af-91ab-2d7cd011db47/1b2c3d4e-0000-4000-8000-000000000001"
_EXAMPLE_TIME = "2025-01-04T10:00:00Z"
_INTENT_WITH_STEPS: dict[str, Any] = {
    "name": "deploy-web-app",
    "description": "Build, push and deploy the web app.",
    "labels": {"team": "web"},
    "definition": {
        "target": "production",
        "steps": [
            {"action": "build-docker-image", "image": "myapp:latest", "context": "./app"},
            {"action": "push-to-registry", "registry": "azurecr.io", "image": "myapp:latest"},
            {"action": "deploy-to-kubernetes", "namespace": "production", "replicas": 3},
        ],
    },
}
_INTENT_DECLARATION: dict[str, Any] = {
    "name": "deploy-application",
    "definition": {"target": "production", "version": "1.2.3", "environment": "azure-westus"},
}
_BLUEPRINT: dict[str, Any] = {
    "name": "deploy-application",
    "description": "Build, deploy and verify an application version.",
    "labels": {"team": "platform"},
    "definition": {
        "inputs": {
            "type": "object",
            "required": ["version", "environment"],
            "properties": {
                "target": {"type": "string"},
                "version": {"type": "string"},
                "environment": {"type": "string"},
            },
        },
        "steps": [
            {"id": "build", "action": "build-container", "image": "myapp:${inputs.version}"},
            {"id": "deploy", "action": "deploy-to-kubernetes", "namespace": "${inputs.target}"},
            {"id": "verify", "action": "verify-deployment", "health_check": "/health"},
        ],
    },
}
_NORMALIZED_STEPS: dict[str, Any] = {
    "target": "production",
    "steps": [
        {
            "id": "build-docker-image",
            "action": "build-docker-image",
            "params": {"image": "myapp:latest", "context": "./app"},
            "depends_on": [],
        },
        {
            "id": "push-to-registry",
            "action": "push-to-registry",
            "params": {"registry": "azurecr.io", "image": "myapp:latest"},
            "depends_on": ["build-docker-image"],
        },
        {
            "id": "deploy-to-kubernetes",
            "action": "deploy-to-kubernetes",
            "params": {"namespace": "production", "replicas": 3},
            "depends_on": ["push-to-registry"],
        },
    ],
}
_ITEM_EXAMPLE: dict[str, Any] = {
    "id": _EXAMPLE_ID,
    "name": "deploy-web-app",
    "description": "Build, push and deploy the web app.",
    "labels": {"team": "web"},
    "status": "active",
    "version": 2,
    "definition": _NORMALIZED_STEPS,
    "blueprint_ref": None,
    "origin": {"kind": "update", "from_version": 1},
    "created_by": _EXAMPLE_PRINCIPAL,
    "created_at": _EXAMPLE_TIME,
    "updated_at": "2025-01-05T09:30:00Z",
    "archived_at": None,
    "version_created_by": _EXAMPLE_PRINCIPAL,
    "version_created_at": "2025-01-05T09:30:00Z",
}
_SUMMARY_EXAMPLE = {
    key: _ITEM_EXAMPLE[key]
    for key in ("id", "name", "description", "labels", "status", "version", "created_at", "updated_at", "archived_at")
}
_VERSION_EXAMPLE: dict[str, Any] = {
    "version": 2,
    "description": "Build, push and deploy the web app.",
    "labels": {"team": "web"},
    "definition": _NORMALIZED_STEPS,
    "definition_sha256": "9f2c" + "0" * 60,
    "origin": {"kind": "update", "from_version": 1},
    "blueprint_ref": None,
    "created_by": _EXAMPLE_PRINCIPAL,
    "created_at": "2025-01-05T09:30:00Z",
}
_DIFF_EXAMPLE: dict[str, Any] = {
    "from_version": 1,
    "to_version": 2,
    "steps_added": ["verify"],
    "steps_removed": [],
    "steps_changed": [
        {"id": "deploy-to-kubernetes", "changes": [{"path": "/params/replicas", "kind": "changed", "old": 2, "new": 3}]}
    ],
    "steps_reordered": False,
    "fields_changed": [],
    "metadata_changed": [],
    "summary": "The new version adds 1 step (verify) and changes 1 step (deploy-to-kubernetes: params/replicas 2 → 3).",
}
_PLAN_EXAMPLE: dict[str, Any] = {
    "id": _EXAMPLE_ID,
    "name": "deploy-web-app",
    "version": 2,
    "status": "active",
    "target": "production",
    "blueprint_ref": None,
    "levels": [["build-docker-image"], ["push-to-registry"], ["deploy-to-kubernetes"]],
    "steps": [
        {
            "id": "build-docker-image",
            "action": "build-docker-image",
            "module": "build-docker-image",
            "remote": True,
            "timeout_s": 1800,
            "depends_on": [],
            "level": 0,
            "when": None,
            "compensate": None,
            "authorization": {"action": "intent.execute", "allowed": False, "reason": "production_requires_deployer"},
        }
    ],
    "quota": {"max_concurrent_executions": 10, "running_executions": 0, "headroom": 10},
    "caller_may_execute": False,
    "plan_hash": "3b1f" + "0" * 60,
}
_VALIDATION_EXAMPLE: dict[str, Any] = {
    "valid": True,
    "name": "deploy-web-app",
    "description": "",
    "labels": {},
    "definition": _NORMALIZED_STEPS,
    "levels": _PLAN_EXAMPLE["levels"],
    "blueprint_ref": None,
    "plan_hash": "3b1f" + "0" * 60,
}

# --- models -----------------------------------------------------------------------------------------------------


class BlueprintRef(BaseModel):
    """The blueprint version a declaration was validated against (its steps come from exactly this version)."""

    id: UUID
    name: str
    version: int


class RegistryItemSummary(BaseModel):
    """An item in a listing (GET the item for its definition)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SUMMARY_EXAMPLE]})

    id: UUID
    name: str
    description: str
    labels: dict[str, str]
    status: Status
    version: int
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None


class RegistryItem(RegistryItemSummary):
    """An intent or blueprint with its current version."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ITEM_EXAMPLE]})

    version: int = Field(description="The current version; the ETag identifies it.")
    definition: dict[str, Any] = Field(description="The normalized definition (step ids and dependencies filled in).")
    blueprint_ref: BlueprintRef | None = Field(description="A declaration's pinned blueprint version; else null.")
    origin: dict[str, Any] = Field(
        description='How the current version came to be: {"kind": "create"|"update"|"rollback", "from_version": n}.'
    )
    created_by: str
    version_created_by: str
    version_created_at: datetime


class RegistryItemPage(BaseModel):
    """One page of items by name."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_SUMMARY_EXAMPLE], "next_cursor": None}]})

    items: list[RegistryItemSummary]
    next_cursor: str | None


class RegistryVersion(BaseModel):
    """One immutable version."""

    model_config = ConfigDict(json_schema_extra={"examples": [_VERSION_EXAMPLE]})

    version: int
    description: str
    labels: dict[str, str]
    definition: dict[str, Any]
    definition_sha256: str
    origin: dict[str, Any]
    blueprint_ref: BlueprintRef | None
    created_by: str
    created_at: datetime


class RegistryVersionPage(BaseModel):
    """One page of versions, oldest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_VERSION_EXAMPLE], "next_cursor": None}]})

    items: list[RegistryVersion]
    next_cursor: str | None


class RollbackRequest(BaseModel):
    """Which version the new version copies."""

    # Strict like the definitions' models: `true` or `1e3` read as a version would write a rollback nobody asked for.
    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra={"examples": [{"to_version": 1}]})

    to_version: int = Field(ge=1)


class FieldChangeOut(BaseModel):
    """One changed value, at a JSON pointer."""

    path: str
    kind: Literal["added", "removed", "changed"]
    old: Any = None
    new: Any = None


class StepChangeOut(BaseModel):
    """The changes of one step present in both versions (matched by id)."""

    id: str
    changes: list[FieldChangeOut]


class RegistryDiff(BaseModel):
    """What changed from one version to another."""

    model_config = ConfigDict(json_schema_extra={"examples": [_DIFF_EXAMPLE]})

    from_version: int
    to_version: int
    steps_added: list[str]
    steps_removed: list[str]
    steps_changed: list[StepChangeOut]
    steps_reordered: bool
    fields_changed: list[FieldChangeOut] = Field(description="Changes of the definition outside its steps.")
    metadata_changed: list[FieldChangeOut] = Field(description="Changes of description, labels and blueprint pin.")
    summary: str
    changes_left_out: int = Field(
        0,
        description="Changes of the definition found but not listed: a diff lists at most 200 (steps' and fields' "
        "together); an object whose path passes 1,024 characters is compared as one value.",
    )


class StepAuthorization(BaseModel):
    """The caller's authorization decision for executing this step (not audited per step; the plan request is)."""

    action: str
    allowed: bool
    reason: str


class PlannedStepOut(BaseModel):
    """One step of a plan."""

    id: str
    action: str
    module: str = Field(description="What the tenant's allow-list names to permit the action.")
    remote: bool = Field(description="Handled by a tenant worker, which leases it from the tenant's work queue.")
    timeout_s: int
    depends_on: list[str]
    level: int
    when: str | None
    compensate: str | None = Field(description="The compensating action, if any.")
    authorization: StepAuthorization | None = Field(
        description="Null for a blueprint: blueprints run only through the intents that declare them."
    )


class QuotaHeadroomOut(BaseModel):
    """The tenant's room for one more execution."""

    max_concurrent_executions: int = Field(description="The tenant's quota (the platform default when it sets none).")
    running_executions: int = Field(
        description="Root executions that have not ended (children count against no quota; their roots bound them)."
    )
    headroom: int = Field(description="How many more executions may start now (0: an execute answers 429).")


class RegistryPlan(BaseModel):
    """A dry run of executing the current version: nothing is saved or started."""

    model_config = ConfigDict(json_schema_extra={"examples": [_PLAN_EXAMPLE]})

    id: UUID
    name: str
    version: int
    status: Status
    target: str | None
    blueprint_ref: str | None = Field(description="name@version of the blueprint a declaration expands through.")
    levels: list[list[str]] = Field(description="Step ids by level; each level runs after the previous one.")
    steps: list[PlannedStepOut]
    quota: QuotaHeadroomOut
    caller_may_execute: bool | None = Field(
        description="Active, every step allowed and quota left; null for a blueprint."
    )
    plan_hash: str = Field(description="An execute request may carry it to insist on exactly this plan.")


class RegistryValidation(BaseModel):
    """A definition that validates, as it would be saved, with its plan."""

    model_config = ConfigDict(json_schema_extra={"examples": [_VALIDATION_EXAMPLE]})

    valid: Literal[True] = True
    name: str
    description: str
    labels: dict[str, str]
    definition: dict[str, Any]
    levels: list[list[str]]
    blueprint_ref: str | None = Field(description="name@version a declaration would be pinned to.")
    plan_hash: str


# --- OpenAPI responses ------------------------------------------------------------------------------------------


E401 = UNAUTHORIZED
E403 = problem_doc(
    403,
    "forbidden",
    "Forbidden",
    "Not allowed to intent.update.",
    "The caller's roles or the tenant's policies do not allow it, or the tenant is suspended",
    reason="role_required",
)
E404 = problem_doc(
    404,
    "not-found",
    "Not found",
    f"No intent {_EXAMPLE_ID}.",
    "No such item in the caller's tenant (another tenant's item is not found either)",
)
E409_ARCHIVED = problem_doc(
    409, "archived", "Conflict", "The intent is archived; it takes no new versions.", "The item is archived"
)
E409_NAME = problem_doc(
    409,
    "conflict",
    "Conflict",
    "An intent named 'deploy-web-app' exists (archived ones keep their name).",
    "The name is taken in the tenant",
)
E412 = problem_doc(
    412,
    "precondition-failed",
    "Precondition failed",
    "The item changed since that ETag was issued; GET it again.",
    "If-Match holds a stale ETag",
)
E422 = problem_doc(
    422,
    "invalid-definition",
    "Unprocessable content",
    "The intent has 2 problems.",
    "The definition does not validate (its problems listed, at most 50 from each check), or the request is malformed",
    errors=[
        {
            "pointer": "/definition/steps/1/action",
            "code": "unknown_action",
            "detail": "unknown action 'deploy-to-kubernets' (did you mean 'deploy-to-kubernetes'?)",
        },
        {
            "pointer": "/definition/steps/2/action",
            "code": "module_not_allowed",
            "detail": "module 'http' is not on the tenant's allow-list",
        },
    ],
)
E428 = problem_doc(
    428, "precondition-required", "Precondition required", "Send If-Match with the item's ETag.", "If-Match is required"
)
E429 = problem_doc(
    429,
    "rate-limited",
    "Too many requests",
    "This tenant is over its request rate; retry in 3 s.",
    "Over the tenant's request rate (`rate-limited`) or its requests in flight (`tenant-busy`), or a large "
    "definition's check (16 KiB or more as JSON: a create, update, rollback, plan or validate) waited past the "
    "pool's wait for the tenant's other costly check to end (`check-busy`); see Retry-After",
)
E400 = problem_doc(
    400,
    "invalid-cursor",
    "Bad request",
    "the cursor is not one this list issued",
    "A malformed cursor, or another list's",
)
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {401: E401, 403: E403, 429: E429}
ITEM_ERRORS: dict[int | str, dict[str, Any]] = {**COMMON_ERRORS, 404: E404, 422: E422}


def request_examples(kind: Kind) -> dict[str, Example]:
    """The request-body examples of one kind's create and update routes."""
    if kind == "blueprint":
        return {"blueprint": Example(summary="The seed's deploy-application blueprint", value=_BLUEPRINT)}
    return {
        "steps": Example(
            summary="Steps, parameters beside the action (the seed's deploy-web-app)", value=_INTENT_WITH_STEPS
        ),
        "declaration": Example(
            summary="A declaration expanded by the deploy-application blueprint", value=_INTENT_DECLARATION
        ),
    }
