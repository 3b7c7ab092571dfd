# intent_ref: platform.execution
"""An EXAMPLE remote worker (not part of the platform): fakes the seed tutorial's remote actions."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger("remote_worker")
for _noisy in ("httpx", "azure"):  # a line per request or connection attempt is too much here
    logging.getLogger(_noisy).setLevel(logging.WARNING)

HUB = "module-work"
DEFAULT_GROUP = "example-worker"
DEFAULT_REGISTRY = "example.azurecr.io"
LONG_POLL_S = 20.0
DEVHOST_KEY_FILE = Path(".data/host-keys/master")  # where `make run` keeps the devhost's master key
_POST_ATTEMPTS = 4

DESCRIPTION = """An EXAMPLE remote worker for the seed tutorial's remote actions; not part of the platform.

It reads `module-work` with its own consumer group, takes the work items marked `"remote": true` whose action it
knows, makes up a plausible output (nothing is built, pushed or deployed) and reports it with the item's task token:

    POST {api_base}{complete_url}  {"task_token": "...", "output": {...}}
    POST {api_base}{fail_url}      {"task_token": "...", "error": "...", "retryable": true}

The task token is the only credential. Two transports:

* `--devhost http://127.0.0.1:7071`: the local devhost's read route
  `GET /devhost/eventhubs/module-work/consumergroups/{group}/events` (loopback callers with the devhost's master
  key: `--devhost-key`, else $QP_DEVHOST_KEY, else .data/host-keys/master under the current folder);
* `--eventhubs-namespace <ns>.servicebus.windows.net`: azure-eventhub's EventHubConsumerClient with
  DefaultAzureCredential (needs "Azure Event Hubs Data Receiver"; not exercised by the tests).

It is self-contained on purpose (httpx, plus azure-eventhub/azure-identity for Azure): a tenant's worker does not
import the platform's code. See examples/workers/README.md.
"""

Handler = Callable[[dict[str, Any], argparse.Namespace], dict[str, Any]]


# ------------------------------------------------------------------------------------------ fake actions
def _sha256(*parts: Any) -> str:
    """A stable fake digest of `parts`."""
    return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _image_ref(params: dict[str, Any], options: argparse.Namespace) -> str:
    image = str(params.get("image") or "app:latest")
    registry = str(params.get("registry") or options.registry)
    return image if image.startswith(f"{registry}/") else f"{registry}/{image}"


def build_image(params: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    """build-container / build-docker-image: the image reference and a digest derived from the parameters."""
    return {
        "image": _image_ref(params, options),
        "digest": _sha256(params.get("image"), params.get("context", ".")),
        "context": params.get("context", "."),
    }


def push_image(params: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    """push-to-registry: where the image went."""
    reference = _image_ref(params, options)
    return {
        "pushed": reference,
        "registry": str(params.get("registry") or options.registry),
        "digest": _sha256(params.get("image"), "pushed"),
    }


def deploy(params: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    """deploy-to-kubernetes: the namespace, replica count and a revision number derived from the parameters."""
    revision = int(_sha256(params)[7:15], 16) % 1000 + 1
    output: dict[str, Any] = {
        "namespace": params.get("namespace", "default"),
        "replicas": params.get("replicas") if params.get("replicas") is not None else 1,
        "revision": revision,
    }
    if params.get("image"):
        output["image"] = _image_ref(params, options)
    return output


HANDLERS: dict[str, Handler] = {
    "build-container": build_image,
    "build-docker-image": build_image,
    "push-to-registry": push_image,
    "deploy-to-kubernetes": deploy,
}


# ------------------------------------------------------------------------------------------ work items
def handle_item(item: Any, api: httpx.Client, options: argparse.Namespace) -> str:
    """Handle one `module-work` body; returns what happened (for logs and tests): skipped, completed, ..."""
    if not isinstance(item, dict) or item.get("type") != "step.work":
        return "skipped: not a work item"
    if not item.get("remote"):
        return "skipped: not remote (the platform's own worker runs it)"
    action, phase = str(item.get("action")), item.get("phase", "run")
    handler = HANDLERS.get(action)
    if handler is None:
        return f"skipped: unknown action {action}"
    token, complete_url, fail_url = item.get("task_token"), item.get("complete_url"), item.get("fail_url")
    if not (token and complete_url and fail_url):
        return "skipped: no task token or completion URLs"
    where = f"{item.get('execution_id')}/{item.get('step_id')} {phase} attempt {item.get('attempt')} ({action})"
    if action in options.fail_action and int(item.get("attempt", 1)) <= options.fail_times:
        body: dict[str, Any] = {
            "task_token": token,
            "retryable": True,
            "error": f"example worker: injected failure of {action} (--fail-action)",
        }
        return _report(api, str(fail_url), body, f"failed {where}")
    params = item["params"] if isinstance(item.get("params"), dict) else {}
    output = handler(params, options) if phase == "run" else {"compensated": action, "undone": True}
    return _report(api, str(complete_url), {"task_token": token, "output": output}, f"completed {where}")


def _report(api: httpx.Client, url: str, body: dict[str, Any], done: str) -> str:
    """POST a result; retried on network errors, 429 and 5xx; 401/403/404/409/422 are final (logged, not fatal)."""
    for attempt in range(1, _POST_ATTEMPTS + 1):
        try:
            response = api.post(url, json=body)
        except httpx.TransportError as exc:
            logger.warning("POST %s failed (%s); attempt %d of %d", url, exc, attempt, _POST_ATTEMPTS)
        else:
            if response.status_code == 200:
                logger.info("%s -> %s", done, response.json().get("state"))
                return done
            if response.status_code == 409:  # delivered twice, or reported by another worker already
                logger.info("%s: already reported (409)", done)
                return "duplicate"
            if response.status_code in (401, 403, 404, 422):  # expired/forged token, wrong step: never retried
                logger.warning("%s refused (%d): %s", done, response.status_code, response.text[:300])
                return f"refused: {response.status_code}"
            logger.warning("POST %s answered %d; attempt %d of %d", url, response.status_code, attempt, _POST_ATTEMPTS)
        if attempt < _POST_ATTEMPTS:
            time.sleep(min(2.0**attempt, 10.0))
    logger.error("%s: gave up reporting; the attempt will time out and the step's retry policy decides", done)
    return "gave up"


# ------------------------------------------------------------------------------------------ transports
def devhost_key(given: str | None) -> str | None:
    """The devhost's master key: given, from the environment, or read from the default data folder."""
    if given:
        return given
    if os.environ.get("QP_DEVHOST_KEY"):
        return os.environ["QP_DEVHOST_KEY"]
    return DEVHOST_KEY_FILE.read_text().strip() if DEVHOST_KEY_FILE.is_file() else None


def devhost_batches(base: str, group: str, *, once: bool, key: str | None = None) -> Iterator[list[Any]]:
    """Event bodies from the devhost's read route; with `once`, stop at the first empty read."""
    url = f"{base.rstrip('/')}/devhost/eventhubs/{HUB}/consumergroups/{group}/events"
    wait = 0.0 if once else LONG_POLL_S
    headers = {"x-functions-key": key} if key else {}
    with httpx.Client(timeout=wait + 10.0, headers=headers) as client:
        while True:
            try:
                response = client.get(url, params={"limit": 50, "wait": wait})
                response.raise_for_status()
            except httpx.HTTPError as exc:
                if once:
                    raise
                logger.warning("reading %s failed (%s); retrying in 2 s", url, exc)
                time.sleep(2.0)
                continue
            events = response.json()["events"]
            if not events and once:
                return
            yield [event.get("body") for event in events]


def eventhubs_batches(namespace: str, group: str, *, once: bool) -> Iterator[list[Any]]:
    """Event bodies from Azure Event Hubs (DefaultAzureCredential); UNTESTED here: there is no namespace locally.

    Without a checkpoint store it starts at the beginning of the retained stream each time: items whose token was
    used or has expired answer 409/401 and are skipped. Production workers add a checkpoint store
    (azure-eventhub-checkpointstoreblob) and call `partition_context.update_checkpoint()`.
    """
    import queue
    import threading

    from azure.eventhub import EventHubConsumerClient  # lazily: only this transport needs them
    from azure.identity import DefaultAzureCredential

    client = EventHubConsumerClient(
        fully_qualified_namespace=namespace,
        eventhub_name=HUB,
        consumer_group=group,
        credential=DefaultAzureCredential(),
    )
    batches: queue.Queue[list[Any] | None] = queue.Queue(maxsize=4)
    failures: list[BaseException] = []
    idle_s, last_event = 5.0, [time.monotonic()]

    def on_batch(_context: Any, events: list[Any]) -> None:
        if not events:  # called per partition when idle_s passed with nothing new
            if once and time.monotonic() - last_event[0] >= idle_s:
                batches.put(None)
            return
        last_event[0] = time.monotonic()
        bodies: list[Any] = []
        for event in events:
            try:
                bodies.append(event.body_as_json())
            except (TypeError, ValueError):
                bodies.append(None)
        batches.put(bodies)

    def receive() -> None:
        try:
            client.receive_batch(
                on_event_batch=on_batch, starting_position="-1", max_batch_size=50, max_wait_time=idle_s
            )
        except BaseException as exc:  # re-raised by the generator, on the caller's thread
            failures.append(exc)
        finally:
            batches.put(None)

    threading.Thread(target=receive, name="eventhubs-receive", daemon=True).start()
    try:
        while True:
            try:  # with --once, give up when nothing at all arrives (no connection: the SDK retries forever)
                batch = batches.get(timeout=idle_s * 6 if once else None)
            except queue.Empty:
                logger.warning("--once: nothing from %s within %.0f s; stopping", namespace, idle_s * 6)
                break
            if batch is None:
                break
            yield batch
        if failures:
            raise failures[0]
    finally:
        client.close()


# ------------------------------------------------------------------------------------------ entry point
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.workers.remote_worker",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--devhost", metavar="URL", help="read module-work from a local devhost (e.g. http://127.0.0.1:7071)"
    )
    source.add_argument(
        "--eventhubs-namespace",
        metavar="FQDN",
        help="read module-work from Azure Event Hubs (<ns>.servicebus.windows.net, DefaultAzureCredential)",
    )
    parser.add_argument(
        "--devhost-key",
        metavar="KEY",
        help=f"the devhost's master key (default: $QP_DEVHOST_KEY, else {DEVHOST_KEY_FILE})",
    )
    parser.add_argument("--api-base", metavar="URL", help="the platform's base URL (default: the --devhost URL)")
    parser.add_argument("--consumer-group", default=DEFAULT_GROUP, help=f"default: {DEFAULT_GROUP}")
    parser.add_argument("--once", action="store_true", help="process what is there now, then exit")
    parser.add_argument(
        "--fail-action",
        action="append",
        default=[],
        metavar="ACTION",
        help="report failure (retryable) for this action, to see retries; repeatable",
    )
    parser.add_argument(
        "--fail-times",
        type=int,
        default=1,
        metavar="N",
        help="fail only attempts 1..N of --fail-action (default 1: the retry succeeds)",
    )
    parser.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry for images that name none")
    options = parser.parse_args(argv)
    options.api_base = options.api_base or options.devhost
    if not options.api_base:
        parser.error("--api-base is required with --eventhubs-namespace")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker until interrupted (or, with --once, until nothing is left)."""
    options = parse_args(argv)
    if options.devhost:
        batches = devhost_batches(
            options.devhost, options.consumer_group, once=options.once, key=devhost_key(options.devhost_key)
        )
    else:
        batches = eventhubs_batches(options.eventhubs_namespace, options.consumer_group, once=options.once)
    with httpx.Client(base_url=options.api_base, timeout=30.0) as api:
        try:
            for batch in batches:
                for item in batch:
                    outcome = handle_item(item, api, options)
                    logger.debug("%s", outcome)
        except KeyboardInterrupt:
            logger.info("stopped")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sys.exit(main())
