# intent_ref: platform.ingress
"""What an intent-requests event is: its hub metadata, and the body a producer sends (validated, extra forbidden)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.accepted_json import MAX_REFUSALS
from shared.auth.principal import Requester
from shared.engine.start import Conn, StartRequest
from shared.events.trigger import TriggerEvent, batch_properties
from shared.idempotency import IdempotencyKey, key_problem
from shared.registry import service as registry

INTENT_REQUESTS_HUB = "intent-requests"
AUTHORIZATION_PROPERTY = "authorization"
_INTENT_BY_NAME = "SELECT id FROM app.intents WHERE kind = 'intent' AND name = %s"


class TooManyMembersError(ValueError):
    """A body with more members the request does not have than a refusal names: `validation` is the body judged with
    only the first MAX_REFUSALS of them, `total` how many invalid fields the whole body has."""

    def __init__(self, validation: ValidationError, total: int) -> None:
        super().__init__(f"{total} invalid field(s)")
        self.validation, self.total = validation, total


class IntentRequest(BaseModel):
    """An event's body: which intent (by id or by name), its input, and the key that makes redelivery harmless."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"intent": "deploy-web-app", "input": {"version": "1.2.3"}, "idempotency_key": "release-1.2.3"}
            ]
        },
    )

    intent_id: UUID | None = None
    intent: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="The intent's name.")
    input: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(None, ge=1, strict=True, description="A whole number: `true` is not version 1.")
    plan_hash: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    idempotency_key: IdempotencyKey = Field(
        description="Required: delivery is at least once, and this key makes a "
        "redelivered event return the execution it started instead of "
        "starting another (the Idempotency-Key format)."
    )

    @model_validator(mode="after")
    def _one_intent(self) -> IntentRequest:
        if (self.intent_id is None) == (self.intent is None):
            raise ValueError("name the intent by exactly one of intent_id and intent")
        return self

    def start_request(self, conn: Conn, requester: Requester) -> StartRequest:
        """The start this asks for, its intent found by name in the caller's tenant when not given by id."""
        intent_id = self.intent_id
        if intent_id is None:
            row = conn.execute(_INTENT_BY_NAME, (self.intent,)).fetchone()
            if row is None:
                raise registry.NotFoundError(f"No intent named {self.intent}.")
            intent_id = row["id"]
        return StartRequest(
            intent_id=intent_id,
            input=self.input,
            version=self.version,
            plan_hash=self.plan_hash,
            idempotency_key=self.idempotency_key,
            requester=requester,
        )

    @staticmethod
    def key_of(body: bytes) -> str | None:
        """The idempotency key of a body that did not validate, when it has a usable one (so the producer can match
        the rejection to what it sent)."""
        try:
            document = json.loads(body)
        except ValueError:
            return None
        return IntentRequest.key_in(document)

    @staticmethod
    def key_in(document: Any) -> str | None:
        """`key_of` for a body already parsed."""
        key = document.get("idempotency_key") if isinstance(document, dict) else None
        return key if isinstance(key, str) and key_problem(key) is None else None

    @classmethod
    def parse(cls, body: bytes) -> IntentRequest:
        """The request in a body; ValueError (a pydantic ValidationError for a JSON object, TooManyMembersError for one
        naming many members a request does not have) when it is not one."""
        return cls.of_document(json.loads(body))

    @classmethod
    def of_document(cls, document: Any) -> IntentRequest:
        """`parse` for a body already parsed (as `json.loads` gives it)."""
        if isinstance(document, dict) and len(document) > MAX_REFUSALS:
            fields = cls.model_fields
            unknown = [name for name in document if name not in fields]
            if len(unknown) > MAX_REFUSALS:
                # Pydantic would build an error for each (a 1 MB event holds a hundred thousand, a second's work and
                # megabytes of problem document); the refusal names the first few, so only those are judged.
                judged = unknown[:MAX_REFUSALS]
                trimmed = {name: document[name] for name in [*fields, *judged] if name in document}
                try:
                    cls.model_validate(trimmed)
                except ValidationError as exc:
                    raise TooManyMembersError(exc, exc.error_count() + len(unknown) - len(judged)) from None
        return cls.model_validate(document)


class LaxIntentRequest(IntentRequest):
    """A body as the release before the strict `version` read it (`"1"` and `true` taken as version 1): used only to
    find the execution such a body started then (its fingerprint), never to start anything (ADR 0019)."""

    version: int | None = Field(None, ge=1)

    @classmethod
    def of_lax_document(cls, document: Any) -> LaxIntentRequest | None:
        """The request a body the strict model refused was read as by the lax release; None when it was not one."""
        try:
            request = cls.of_document(document)
        except ValueError:
            return None
        return request if isinstance(request, LaxIntentRequest) else None


@dataclass(frozen=True)
class IngressEvent:
    """One event as the hub delivered it; `enqueued_time` is stamped by the hub when it accepted the event."""

    body: bytes
    partition_id: str
    sequence_number: int
    enqueued_time: datetime | None
    properties: Mapping[str, Any] = field(default_factory=dict)
    hub: str = INTENT_REQUESTS_HUB

    @property
    def event_id(self) -> str:
        """Unique within the hub: partition and sequence number."""
        return f"{self.partition_id}/{self.sequence_number}"

    @property
    def authorization(self) -> str | None:
        """The `authorization` application property (its name matched case-insensitively)."""
        for name, value in self.properties.items():
            if name.lower() == AUTHORIZATION_PROPERTY:
                return value if isinstance(value, str) else None
        return None


def from_trigger(events: Sequence[TriggerEvent]) -> list[IngressEvent]:
    """The events of a `cardinality many` batch with their application properties and partition."""
    metadata = (events[0].metadata or {}) if events else {}
    context = metadata.get("PartitionContext") or {}
    partition = str(context.get("PartitionId", "")) if isinstance(context, Mapping) else ""
    out = []
    for event, props in zip(events, batch_properties(events), strict=True):
        out.append(
            IngressEvent(
                body=event.get_body(),
                partition_id=partition or "unknown",
                sequence_number=event.sequence_number or 0,
                enqueued_time=event.enqueued_time,
                properties=props,
            )
        )
    return out
