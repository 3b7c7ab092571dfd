# intent_ref: platform.devhost-durable
"""The durableClient binding JSON and the instance management URLs (BindingHelper / HttpApiHandler shapes)."""

from __future__ import annotations

import json
from urllib.parse import quote

WEBHOOK_PATH = "/runtime/webhooks/durabletask"
RPC_PATH = "/durabletask/"  # the extension's loopback RPC listener; every SDK call goes to rpcBaseUrl
CONNECTION_NAME = "Storage"
INSTANCE_PLACEHOLDER = "INSTANCEID"


def management_urls(origin: str, task_hub: str, instance_id: str, *, encode: bool = True) -> dict[str, str]:
    """The check-status payload of one instance (also the binding's managementUrls, for INSTANCEID)."""
    base = origin.rstrip("/") + WEBHOOK_PATH
    instance = f"{base}/instances/{quote(instance_id, safe='') if encode else instance_id}"
    # The real host appends its system key (code=...); the devhost checks no keys, so there is none to add.
    query = f"taskHub={quote(task_hub, safe='')}&connection={CONNECTION_NAME}"
    return {
        "id": instance_id,
        "statusQueryGetUri": f"{instance}?{query}",
        "sendEventPostUri": f"{instance}/raiseEvent/{{eventName}}?{query}",
        "terminatePostUri": f"{instance}/terminate?reason={{text}}&{query}",
        "rewindPostUri": f"{instance}/rewind?reason={{text}}&{query}",
        "purgeHistoryDeleteUri": f"{instance}?{query}",
        "restartPostUri": f"{instance}/restart?{query}",
        "suspendPostUri": f"{instance}/suspend?reason={{text}}&{query}",
        "resumePostUri": f"{instance}/resume?reason={{text}}&{query}",
    }


def client_binding(base_url: str, task_hub: str, origin: str | None = None) -> dict[str, object]:
    """What BindingHelper.DurableOrchestrationClientToString gives a durable_client_input parameter."""
    public = (origin or base_url).rstrip("/")
    webhook = public + WEBHOOK_PATH
    create = webhook + "/orchestrators/{functionName}[/{instanceId}]"
    return {
        "taskHubName": task_hub,
        "connectionName": None,
        "creationUrls": {
            "createNewInstancePostUri": create + "?",
            "createAndWaitOnNewInstancePostUri": create + "?timeout={timeoutInSeconds}"
                                                          "&pollingInterval={intervalInSeconds}&",
        },
        "managementUrls": management_urls(public, task_hub, INSTANCE_PLACEHOLDER, encode=False),
        "baseUrl": webhook,
        "requiredQueryStringParameters": "",
        "rpcBaseUrl": base_url.rstrip("/") + RPC_PATH,
        "httpBaseUrl": None,
    }


def client_binding_json(base_url: str, task_hub: str, origin: str | None = None) -> str:
    return json.dumps(client_binding(base_url, task_hub, origin))
