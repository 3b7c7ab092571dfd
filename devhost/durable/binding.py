# intent_ref: platform.devhost-durable
"""The durableClient binding JSON and the instance management URLs (BindingHelper / HttpApiHandler shapes)."""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit, urlunsplit

WEBHOOK_PATH = "/runtime/webhooks/durabletask"
RPC_PATH = "/durabletask/"  # the extension's loopback RPC listener; every SDK call goes to rpcBaseUrl
CONNECTION_NAME = "Storage"
INSTANCE_PLACEHOLDER = "INSTANCEID"
RPC_USER = "devhost"  # any name does; the key is the Basic password


def management_urls(
    origin: str, task_hub: str, instance_id: str, *, encode: bool = True, system_key: str | None = None
) -> dict[str, str]:
    """The check-status payload of one instance (also the binding's managementUrls, for INSTANCEID)."""
    base = origin.rstrip("/") + WEBHOOK_PATH
    instance = f"{base}/instances/{quote(instance_id, safe='') if encode else instance_id}"
    query = f"taskHub={quote(task_hub, safe='')}&connection={CONNECTION_NAME}"
    if system_key:
        query += f"&{required_query(system_key)}"  # as the real host: these URLs work for whoever holds them
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


def required_query(system_key: str | None) -> str:
    """The binding's requiredQueryStringParameters: the system key, when the host asks for one."""
    return f"code={quote(system_key, safe='')}" if system_key else ""


def rpc_base_url(base_url: str, system_key: str | None) -> str:
    """Where the SDK sends every client call; with a key, as URL credentials.

    The SDK appends paths to this URL and adds no query of its own, so a `code=` cannot ride on it. Its HTTP
    client sends URL credentials as a Basic Authorization header, which the host's guard reads.
    """
    url = base_url.rstrip("/") + RPC_PATH
    if not system_key:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{RPC_USER}:{quote(system_key, safe='')}@{parts.netloc}"))


def client_binding(
    base_url: str, task_hub: str, origin: str | None = None, system_key: str | None = None
) -> dict[str, object]:
    """What BindingHelper.DurableOrchestrationClientToString gives a durable_client_input parameter."""
    public = (origin or base_url).rstrip("/")
    webhook = public + WEBHOOK_PATH
    create = webhook + "/orchestrators/{functionName}[/{instanceId}]"
    required = required_query(system_key)
    return {
        "taskHubName": task_hub,
        "connectionName": None,
        "creationUrls": {
            "createNewInstancePostUri": create + "?" + required,
            "createAndWaitOnNewInstancePostUri": create + "?timeout={timeoutInSeconds}"
            "&pollingInterval={intervalInSeconds}&" + required,
        },
        "managementUrls": management_urls(public, task_hub, INSTANCE_PLACEHOLDER, encode=False, system_key=system_key),
        "baseUrl": webhook,
        "requiredQueryStringParameters": required,
        "rpcBaseUrl": rpc_base_url(base_url, system_key),
        "httpBaseUrl": None,
    }


def client_binding_json(base_url: str, task_hub: str, origin: str | None = None, system_key: str | None = None) -> str:
    return json.dumps(client_binding(base_url, task_hub, origin, system_key))
