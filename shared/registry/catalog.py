# intent_ref: platform.registry
"""The module catalog: every action a tenant may use, with its parameter JSON Schema, defaults and timeout."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import InitVar, dataclass, field
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator
from pydantic import BaseModel, ConfigDict, Field

from shared.registry.model import ACTION_PATTERN, SLUG_PATTERN
from shared.registry.problems import too_many_subschemas
from shared.registry.schemas import tenant_validator


@dataclass(frozen=True)
class ModuleSpec:
    """One action: what it does, the JSON Schema of its parameters, their defaults, and where it runs."""

    action: str
    description: str
    params_schema: dict[str, Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    timeout_s: int = 300
    remote: bool = False
    alias_of: str | None = None
    stored: InitVar[bool] = False
    """A registration read back from the database: its schema was checked when it was registered, and a
    registration is never updated, so it is not checked again (one stored before a check existed stays usable:
    every evaluation of it is bounded on its own, ADR 0016)."""

    def __post_init__(self, stored: bool) -> None:
        if not re.fullmatch(ACTION_PATTERN, self.action):
            raise ValueError(f"{self.action!r} is not a valid action name")
        if stored:
            return
        # Counted first: the meta-schema's work grows with the subschemas, and nothing else bounds them here.
        crowded = too_many_subschemas(self.params_schema)
        if crowded is not None:
            raise ValueError(f"the parameter schema of {self.action!r} is refused: {crowded}")
        # A broken schema is refused when the module is registered, not when some intent is validated.
        Draft202012Validator.check_schema(self.params_schema)

    @classmethod
    def from_model(
        cls,
        action: str,
        model: type[BaseModel],
        *,
        description: str,
        timeout_s: int,
        remote: bool = False,
        alias_of: str | None = None,
    ) -> ModuleSpec:
        """A spec whose schema and defaults come from a pydantic model of the parameters."""
        defaults = {
            name: info.default
            for name, info in model.model_fields.items()
            if not info.is_required() and info.default is not None and info.default_factory is None
        }
        schema = {**model.model_json_schema(), "title": action}
        return cls(action, description, schema, defaults, timeout_s, remote, alias_of)

    def validator(self) -> Validator:
        return tenant_validator(self.params_schema)


class ModuleCatalog(Mapping[str, ModuleSpec]):
    """The actions a validation may use, by name; immutable."""

    def __init__(self, specs: Iterable[ModuleSpec] = ()) -> None:
        self._specs: dict[str, ModuleSpec] = {}
        for spec in specs:
            if spec.action in self._specs:
                raise ValueError(f"module {spec.action!r} is in the catalog twice")
            self._specs[spec.action] = spec

    def __getitem__(self, action: str) -> ModuleSpec:
        return self._specs[action]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def with_modules(self, specs: Iterable[ModuleSpec]) -> ModuleCatalog:
        """This catalog plus `specs`; a name already present is refused (a tenant cannot shadow a built-in)."""
        return ModuleCatalog([*self._specs.values(), *specs])


HttpUrl = Annotated[str, Field(pattern=r"^https?://\S+$", max_length=2048)]
Seconds = Annotated[float, Field(gt=0, le=30 * 24 * 3600)]
StatusCode = Annotated[int, Field(ge=100, le=599)]
_ONE_OF_URL: dict[str, Any] = {"anyOf": [{"required": ["url"]}, {"required": ["health_check"]}]}


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpRequestParams(_Params):
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: HttpUrl
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    body: Any = Field(None, description="Sent as JSON.")
    expect_status: list[StatusCode] | None = Field(None, description="Default: any 2xx.")


class HttpWaitHealthyParams(_Params):
    url: HttpUrl
    timeout: Seconds = Field(300, description="Give up after this many seconds.")
    interval: Seconds = Field(5, description="Seconds between probes.")
    expect_status: list[StatusCode] = Field(default_factory=lambda: [200])


class VerifyDeploymentParams(_Params):
    model_config = ConfigDict(json_schema_extra=_ONE_OF_URL)

    url: HttpUrl | None = None
    health_check: str | None = Field(None, min_length=1, description="A health path on the deployed app.")
    timeout: Seconds = 300
    interval: Seconds = 5


_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
"""An RFC 9110 token: one or more tchar."""
MEDIA_TYPE_PATTERN = (
    rf'^[ \t]*{_TCHARS}/{_TCHARS}(?:[ \t]*;[ \t]*(?:{_TCHARS}=(?:{_TCHARS}|"(?:[\t !#-\[\]-~]|\\[\t -~])*"))?)*[ \t]*$'
)
"""A media type with its parameters (RFC 9110 8.3.1: optional whitespace of spaces and tabs, empty parameters), in
printable ASCII and tabs: no line break, NUL or other control character, which the blob store refuses (the attempt
failed, retried, each time after the SDK's own retries)."""


ARTIFACT_NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_-])?(?:/[A-Za-z0-9._-]*[A-Za-z0-9_-])*$"
"""An artifact's name under its step's folder: segments of letters, digits, '.', '_' and '-' between single slashes,
the first starting with a letter or digit, none ending with a dot. Azure's blob naming rules say no path segment
should end with a dot: such a name ('a./b', 'x...') may be stored under another name than the one asked, or not read
back; and it covers '.' and '..', which could be resolved into another folder on the way to the store."""


class ArtifactWriteParams(_Params):
    name: str = Field(
        pattern=ARTIFACT_NAME_PATTERN,
        max_length=256,
        description="Path segments of letters, digits, '.', '_' and '-' between single slashes, the first starting"
        " with a letter or digit, none ending with '.'; at most 256 characters.",
    )
    content: Any
    content_type: str = Field(
        "application/json",
        pattern=MEDIA_TYPE_PATTERN,
        max_length=255,
        description="A media type such as text/plain; charset=utf-8.",
    )


class EventEmitParams(_Params):
    type: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    data: dict[str, Any] = Field(default_factory=dict)


class ApprovalParams(_Params):
    message: str | None = Field(None, max_length=2000)
    approvers: list[str] = Field(default_factory=list, description="Object ids; empty: any Intent.Approver.")


# RFC 3339's date-time; the offset may be left out (the engine reads such a time as UTC, as it always has, so intents
# saved with one still start). Checked by the tenant schema validator (RE2, unanchored search: hence ^ and $), which
# takes no `format`; [0-9], not \d, so both RE2 and pydantic read ASCII digits. A day the month lacks (02-30) passes
# here and fails the step at run time.
RFC3339_DATE_TIME = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?$"
)


class WaitParams(_Params):
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["seconds"]}, {"required": ["until"]}]})

    seconds: Seconds | None = None
    until: str | None = Field(
        None,
        pattern=RFC3339_DATE_TIME,
        description="An RFC 3339 date-time such as 2030-01-01T09:00:00Z (without an offset it is UTC).",
    )


class IntentRunParams(_Params):
    intent: str = Field(pattern=SLUG_PATTERN)
    version: int | None = Field(None, ge=1, description="Default: the current version.")
    inputs: dict[str, Any] = Field(default_factory=dict)
    wait: bool = Field(
        True,
        description="Only true: the step waits for the child execution to end, its output the child's outputs;"
        " false (fire-and-forget) is refused.",
    )


class _RemoteParams(BaseModel):
    # Remote workers belong to tenants and may take more than the catalog knows: typed, but open.
    model_config = ConfigDict(extra="allow")


class BuildContainerParams(_RemoteParams):
    image: str = Field(min_length=1)


class BuildDockerImageParams(_RemoteParams):
    image: str = Field(min_length=1)
    context: str = "."


class PushToRegistryParams(_RemoteParams):
    registry: str = Field(min_length=1)
    image: str = Field(min_length=1)


class DeployToKubernetesParams(_RemoteParams):
    namespace: str = Field(pattern=r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
    replicas: int | None = Field(None, ge=0)
    image: str | None = None


_DAY = 24 * 3600


@functools.cache
def builtin_catalog() -> ModuleCatalog:
    """The platform's own modules (built once: each spec checks its schema, a few milliseconds apiece)."""
    return ModuleCatalog(
        [
            ModuleSpec.from_model(
                "http.request",
                HttpRequestParams,
                timeout_s=60,
                description=(
                    "Send an HTTP request; the output is the status, headers and JSON body. A JSON body an output"
                    " cannot hold (an integer outside the signed 64-bit range, NaN or Infinity, a NUL or a lone"
                    " surrogate in a string or a name, nesting 128 levels or deeper, as the output holds it one level"
                    " down) is kept as its text, with body_as_text: true. A NUL or lone surrogate in a text body, and"
                    " bytes its charset cannot decode, are replaced with U+FFFD, with body_replaced: true."
                ),
            ),
            ModuleSpec.from_model(
                "http.wait_healthy",
                HttpWaitHealthyParams,
                timeout_s=900,
                description="Poll a URL until it answers with an expected status.",
            ),
            ModuleSpec.from_model(
                "verify-deployment",
                VerifyDeploymentParams,
                timeout_s=900,
                alias_of="http.wait_healthy",
                description="Wait until a deployment's health check (or URL) answers healthy.",
            ),
            ModuleSpec.from_model(
                "artifact.write",
                ArtifactWriteParams,
                timeout_s=60,
                description="Store an artifact of the execution in blob storage.",
            ),
            ModuleSpec.from_model(
                "event.emit", EventEmitParams, timeout_s=30, description="Publish a custom event on platform-events."
            ),
            ModuleSpec.from_model(
                "approval",
                ApprovalParams,
                timeout_s=7 * _DAY,
                description="Wait for an approver's decision (POST .../approvals/{step}).",
            ),
            ModuleSpec.from_model(
                "wait",
                WaitParams,
                timeout_s=30 * _DAY,
                description="Wait a number of seconds or until a point in time (a durable timer).",
            ),
            ModuleSpec.from_model(
                "intent.run",
                IntentRunParams,
                timeout_s=_DAY,
                description="Run another intent of the tenant as a sub-orchestration.",
            ),
        ]
    )


@functools.cache
def seed_remote_modules() -> tuple[ModuleSpec, ...]:
    """The seed tutorial's actions, handled by remote workers over `module-work`."""
    return (
        ModuleSpec.from_model(
            "build-container", BuildContainerParams, timeout_s=1800, remote=True, description="Build a container image."
        ),
        ModuleSpec.from_model(
            "build-docker-image",
            BuildDockerImageParams,
            timeout_s=1800,
            remote=True,
            description="Build a Docker image from a build context.",
        ),
        ModuleSpec.from_model(
            "push-to-registry",
            PushToRegistryParams,
            timeout_s=900,
            remote=True,
            description="Push an image to a container registry.",
        ),
        ModuleSpec.from_model(
            "deploy-to-kubernetes",
            DeployToKubernetesParams,
            timeout_s=1800,
            remote=True,
            description="Deploy to a Kubernetes namespace.",
        ),
    )
