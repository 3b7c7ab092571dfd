# intent_ref: platform.devhost-eventhubs
"""An eventHubTrigger as the host sees it, and the Datum plus trigger metadata it sends the worker."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import azure.functions as func
from azure.functions import meta
from azure.functions.decorators.core import Cardinality, DataType

from devhost.eventhubs.store import StoredEvent
from devhost.hostjson import resolve_app_setting
from devhost.retry_policy import RetryPolicy

DEFAULT_CONSUMER_GROUP = "$Default"
LOCAL_NAMESPACE = "localhost"


@dataclass(frozen=True)
class EventHubTriggerSpec:
    """What the host needs of one eventHubTrigger function, with %app setting% references resolved."""

    function: func.Function
    function_name: str
    hub: str
    consumer_group: str
    many: bool
    binary: bool
    namespace: str
    retry: RetryPolicy | None = None
    """The function's `@app.retry` policy: a failed invocation runs again before the checkpoint moves on."""

    @classmethod
    def from_function(cls, function: func.Function) -> EventHubTriggerSpec:
        """Read the trigger binding; an omitted cardinality means one, as for every non-.NET language."""
        trigger: Any = function.get_trigger()
        connection = str(trigger.connection or "")
        return cls(
            function=function,
            function_name=str(function.get_function_name()),
            hub=resolve_app_setting(str(trigger.event_hub_name)),
            consumer_group=resolve_app_setting(str(trigger.consumer_group or DEFAULT_CONSUMER_GROUP)),
            many=trigger.cardinality == Cardinality.MANY,
            binary=data_type(trigger) == DataType.BINARY,
            namespace=os.environ.get(f"{connection}__fullyQualifiedNamespace") or LOCAL_NAMESPACE,
            retry=RetryPolicy.of(function),
        )

    @property
    def parameter(self) -> str:
        """The trigger's parameter name (the binding's `name`)."""
        trigger: Any = self.function.get_trigger()
        return str(trigger.name)


def data_type(trigger: Any) -> DataType | None:
    """The binding's `dataType` as the host reads it from the indexed binding (function.json's member, any case)."""
    # The SDK's `data_type` property is the enum's number (2), which never equals the enum member itself.
    value = trigger.get_dict_repr().get("dataType")
    return value if isinstance(value, DataType) else DataType.__members__.get(str(value).upper())


def dotnet_utc(moment: datetime) -> str:
    """A UTC time as .NET writes it: seven fractional digits and Z (the converter trims to six)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def trigger_input(
    spec: EventHubTriggerSpec, partition_id: int, events: Sequence[StoredEvent]
) -> tuple[dict[str, meta.Datum], dict[str, meta.Datum]]:
    """The inputs and trigger metadata of one invocation (one event unless cardinality is many)."""
    if not events:
        raise ValueError("an invocation needs at least one event")
    if not spec.many and len(events) != 1:
        raise ValueError("cardinality one delivers exactly one event per invocation")
    context = _json(
        {
            "FullyQualifiedNamespace": spec.namespace,
            "EventHubName": spec.hub,
            "ConsumerGroup": spec.consumer_group,
            "PartitionId": str(partition_id),
        }
    )
    metadata: dict[str, meta.Datum] = {"PartitionContext": context, "TriggerPartitionContext": context}
    if spec.many:
        data = _collection(events, spec.binary)
        metadata.update(
            PartitionKeyArray=_json([e.partition_key for e in events]),
            OffsetArray=_json([str(e.offset) for e in events]),
            SequenceNumberArray=_json([e.sequence_number for e in events]),
            EnqueuedTimeUtcArray=_json([dotnet_utc(e.enqueued_time) for e in events]),
            PropertiesArray=_json([e.properties for e in events]),
            SystemPropertiesArray=_json([system_properties(e) for e in events]),
        )
    else:
        event = events[0]
        data = meta.Datum(event.body, "bytes") if spec.binary else meta.Datum(_text(event.body), "string")
        if event.partition_key is not None:
            metadata["PartitionKey"] = meta.Datum(event.partition_key, "string")
        metadata.update(
            Offset=meta.Datum(event.offset, "int"),
            OffsetString=meta.Datum(str(event.offset), "string"),
            SequenceNumber=meta.Datum(event.sequence_number, "int"),
            EnqueuedTimeUtc=meta.Datum(dotnet_utc(event.enqueued_time), "string"),
            Properties=_json(event.properties),
            SystemProperties=_json(system_properties(event)),
        )
    return {spec.parameter: data}, metadata


def system_properties(event: StoredEvent) -> dict[str, Any]:
    """EventData.SystemProperties (the AMQP annotations) plus the keys the extension adds for bindings."""
    enqueued = dotnet_utc(event.enqueued_time)
    annotations: dict[str, Any] = {
        "x-opt-sequence-number": event.sequence_number,
        "x-opt-offset": str(event.offset),
        "x-opt-enqueued-time": enqueued,
    }
    if event.partition_key is not None:
        annotations["x-opt-partition-key"] = event.partition_key
    return {
        **annotations,
        "SequenceNumber": event.sequence_number,
        "Offset": event.offset,
        "OffsetString": str(event.offset),
        "PartitionKey": event.partition_key,
        "EnqueuedTimeUtc": enqueued,
    }


def _collection(events: Sequence[StoredEvent], binary: bool) -> meta.Datum:
    # The worker hands the converter a protobuf message with a repeated `bytes` or `string` field.
    if binary:
        return meta.Datum(SimpleNamespace(bytes=[e.body for e in events]), "collection_bytes")
    return meta.Datum(SimpleNamespace(string=[_text(e.body) for e in events]), "collection_string")


def _text(body: bytes) -> str:
    # The host decodes a string-typed body as UTF-8, replacing what is not.
    return body.decode("utf-8", errors="replace")


def _json(value: Any) -> meta.Datum:
    return meta.Datum(json.dumps(value, separators=(",", ":")), "json")
