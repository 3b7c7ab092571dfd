# intent_ref: platform.execution
"""An EXAMPLE remote worker (not part of the platform): runs the seed tutorial's remote actions from its tenant's
work queue."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

logger = logging.getLogger("remote_worker")
for _noisy in ("httpx", "azure"):  # a line per request or connection attempt is too much here
    logging.getLogger(_noisy).setLevel(logging.WARNING)

DEFAULT_REGISTRY = "example.azurecr.io"
LONG_POLL_S = 20.0
_POST_ATTEMPTS = 4
_RESEND_S = 5.0
_LEAST_RETRY_S = 0.1  # a heartbeat's retries stop when less than twice this is left of its lease
TASK_TOKEN_HEADER = "X-Task-Token"  # noqa: S105  # a header name, not a secret

DESCRIPTION = """An EXAMPLE remote worker for the seed tutorial's remote actions; not part of the platform.

It leases its tenant's queued work through the platform's worker API, with a token of its tenant carrying the
Module.Worker app role (nothing else: it cannot read intents, executions or another tenant's anything):

    POST {api}/api/v1/work/lease              {"actions": [...], "max_items": 4, "lease_s": 60, "wait_s": 20}
    POST {api}{heartbeat_url}                 {"lease_id": "...", "extend_s": 60, "progress": {...}}
    POST {api}{complete_url}  X-Task-Token: ...  {"task_token": "...", "output": {...}}
    POST {api}{fail_url}      X-Task-Token: ...  {"task_token": "...", "error": "...", "retryable": true}

It makes up a plausible output (nothing is built, pushed or deployed). What a real worker must do, shown here:
heartbeat every item it holds from the moment it is leased, and start none whose lease is gone (a heartbeat that
answers `cancelled` means stop: the execution was cancelled); key side effects so that doing one again finds the
earlier one: the item's `idempotency_key` names one attempt only, and a retry after a lost lease or a timeout is a
new attempt with a new key, so an effect that must happen once per step is keyed on `step_key(item)`
(`<execution_id>:<step_id>:<phase>`); say whether a failure is worth another attempt (`retryable`); send a finished
result again through network trouble until it is answered (a repeat is answered as the first was); and send the
item's `traceparent` as a header of its heartbeats and its result, so that the worker's part shows in the
execution's trace; and send a result's task token in the `X-Task-Token` header (the body's copy may be left out),
which the platform verifies before it reads the body, so the result never waits behind bodies without a valid token.

Tokens: `--token` (or $QP_TOKEN) as given; `--devhost-tenant NAME` mints one from the local devhost's dev
identity (`python -m devhost token ... --roles Module.Worker --app-only`) and again when it expires; in Azure,
`--azure-scope api://<app id>/.default` asks DefaultAzureCredential (azure-identity) for the daemon's token.
See examples/workers/README.md.
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


# ------------------------------------------------------------------------------------------ tokens
class TokenSource:
    """The worker's bearer token: given, minted from the devhost, or from azure-identity; renewed when refused."""

    def __init__(self, options: argparse.Namespace) -> None:
        self._options = options
        self._token: str | None = options.token or os.environ.get("QP_TOKEN")
        self._lock = threading.Lock()

    def get(self, *, renew: bool = False) -> str:
        with self._lock:
            if self._token is None or (renew and self.renewable):
                self._token = self._fetch()
            return self._token

    @property
    def renewable(self) -> bool:
        return bool(self._options.devhost_tenant or self._options.azure_scope)

    def _fetch(self) -> str:
        options = self._options
        if options.devhost_tenant:
            command = [
                sys.executable,
                "-m",
                "devhost",
                "token",
                "--tenant",
                options.devhost_tenant,
                "--roles",
                "Module.Worker",
                "--app-only",
                # The devhost this worker calls: its issuer names its port, and its key lives in its data folder.
                "--port",
                str(httpx.URL(options.api).port or 7071),
                "--data-dir",
                options.devhost_data_dir,
            ]
            return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()  # noqa: S603
        if options.azure_scope:
            from azure.identity import DefaultAzureCredential  # lazily: only this source needs it

            return str(DefaultAzureCredential().get_token(options.azure_scope).token)
        raise SystemExit("no token: pass --token, set QP_TOKEN, or use --devhost-tenant / --azure-scope")


# ------------------------------------------------------------------------------------------ the API
@dataclass
class Api:
    """The worker's calls to the platform, each retried on network errors, 429 and 5xx."""

    client: httpx.Client
    tokens: TokenSource
    stop: threading.Event = field(default_factory=threading.Event)

    def post(
        self,
        url: str,
        body: dict[str, Any],
        *,
        timeout: float = 30.0,
        traceparent: str | None = None,
        task_token: str | None = None,
        until: float | None = None,
    ) -> httpx.Response:
        """POST with the worker's token; `traceparent` (an item's) puts the call into its execution's trace, and
        `task_token` (a result's) goes in its header, verified before the platform reads the body. `until` (a
        heartbeat's: when its lease runs out as last heard, monotonic clock) is the retries' budget instead of
        `_POST_ATTEMPTS`: a busy platform (429, 5xx) or no answer is tried again while the lease lasts, each wait cut
        to half the time left, so that a retry still comes while it counts."""
        response: httpx.Response | None = None
        attempt, tries = 0, (f" of {_POST_ATTEMPTS}" if until is None else " (while the lease lasts)")
        while True:
            attempt += 1
            headers = {"Authorization": f"Bearer {self.tokens.get()}"}
            if traceparent:
                headers["traceparent"] = traceparent
            if task_token is not None:
                headers[TASK_TOKEN_HEADER] = task_token
            try:
                response = self.client.post(url, json=body, timeout=timeout, headers=headers)
            except httpx.TransportError as exc:
                logger.warning("POST %s failed (%s); attempt %d%s", url, exc, attempt, tries)
            else:
                if response.status_code == 401 and self.tokens.renewable and attempt == 1:
                    self.tokens.get(renew=True)  # expired: get a fresh one and try again at once
                    continue
                if response.status_code < 500 and response.status_code != 429:
                    return response
                logger.warning("POST %s answered %d; attempt %d%s", url, response.status_code, attempt, tries)
            delay = self._delay(response, attempt)
            if until is None:
                if attempt >= _POST_ATTEMPTS:
                    break
            else:
                left = until - time.monotonic()
                if left < 2 * _LEAST_RETRY_S:
                    break  # the lease runs out (as last heard) before another try could count
                delay = min(delay, left / 2)
            if self.stop.wait(delay):
                break  # told to stop: answer with what there is
        if response is None:
            raise httpx.ConnectError(f"POST {url}: no answer after {attempt} attempts")
        return response

    @staticmethod
    def _delay(response: httpx.Response | None, attempt: int) -> float:
        after = response.headers.get("Retry-After") if response is not None else None
        return float(after) if after and after.isdigit() else min(2.0**attempt, 10.0)

    def lease(self, actions: Sequence[str], *, max_items: int, lease_s: float, wait_s: float, worker: str) -> list[Any]:
        body = {
            "actions": list(actions),
            "max_items": max_items,
            "lease_s": lease_s,
            "wait_s": wait_s,
            "worker": worker,
        }
        response = self.post("/api/v1/work/lease", body, timeout=wait_s + 30.0)
        if response.status_code != 200:
            raise RuntimeError(f"lease refused ({response.status_code}): {response.text[:300]}")
        items: list[Any] = response.json()["items"]
        return items


# ------------------------------------------------------------------------------------------ one item
def step_key(item: dict[str, Any]) -> str:
    """`<execution_id>:<step_id>:<phase>`, the same for every attempt of the step's phase: the key of an effect that
    must happen once per step. `idempotency_key` ends with the attempt, and a retry after a lost lease or a timeout
    is a new attempt, while the worker that lost the lease may still be at work."""
    return f"{item['execution_id']}:{item['step_id']}:{item['phase']}"


class Heartbeats:
    """Keeps one item's lease alive while its work runs; `cancelled` is set when the platform says stop, `lost` when
    the lease is gone. Entering beats once before the work starts, so that none starts on a lease already gone. Only
    the platform's answer that the lease is gone (404, 409) says so: a beat that gets no answer (network trouble) or
    any other (429 while the tenant is over its request rate, a 5xx, a 401 of a token being renewed) changes nothing,
    and the lease is held as last heard: `held_until`, when it runs out as this worker last heard (monotonic clock),
    after which it is taken as lost. A beat's retries have the time left of the lease as their budget."""

    def __init__(self, api: Api, item: dict[str, Any], lease_s: float) -> None:
        self._api, self._item, self._lease_s = api, item, lease_s
        self.held_until = time.monotonic() + lease_s  # leased just now
        self._done = threading.Event()
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{item['id']}", daemon=True)

    def __enter__(self) -> Heartbeats:
        # Asking the platform, not comparing lease_expires_at with this machine's clock, which may be skewed.
        self.beat()
        if not (self.cancelled.is_set() or self.lost.is_set()):
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def beat(self, progress: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"lease_id": self._item["lease_id"], "extend_s": self._lease_s}
        if progress:
            body["progress"] = progress
        sent, name = time.monotonic(), self._item["idempotency_key"]
        try:
            response = self._api.post(
                self._item["heartbeat_url"], body, traceparent=self._item.get("traceparent"), until=self.held_until
            )
        except httpx.HTTPError as exc:  # the lease may still be live: the next beat, or the result, may get through
            logger.warning("%s: heartbeat got no answer (%s)", name, exc)
        else:
            if response.status_code == 200 and response.json().get("state") == "leased":
                self.held_until = sent + self._lease_s
                return
            if response.status_code == 200 and response.json().get("state") == "cancelled":
                logger.info("%s: cancelled by the platform; stopping", name)
                self.cancelled.set()
                return
            if response.status_code in (404, 409):  # 409: the lease ran out or moved on; 404: gone. Stop either way.
                logger.warning("%s: heartbeat refused (%d); stopping", name, response.status_code)
                self.lost.set()
                return
            # Not an answer about the lease (a 429 of a busy tenant, a 5xx, a token being renewed): as last heard.
            logger.warning("%s: heartbeat answered %d; the lease holds as last heard", name, response.status_code)
        if time.monotonic() > self.held_until:
            logger.warning("%s: no heartbeat got through before the lease ran out; stopping", name)
            self.lost.set()

    def _run(self) -> None:
        while not self._done.wait(self._lease_s / 3):
            try:
                self.beat()
            except Exception as exc:  # network trouble: the next beat may get through before the lease runs out
                logger.warning("heartbeat failed: %s", exc)
            if self.cancelled.is_set() or self.lost.is_set():
                return


def handle_item(item: dict[str, Any], api: Api, options: argparse.Namespace) -> str:
    """Run one leased item and report it; returns what happened (for logs and tests): completed, failed, ..."""
    action, phase = str(item["action"]), item.get("phase", "run")
    where = f"{item['execution_id']}/{item['step_id']} {phase} attempt {item['attempt']} ({action})"
    handler = HANDLERS.get(action)
    if handler is None:  # leased only for actions asked for, so this is a bug here: say so, final
        error = {"error": f"no handler for {action}", "retryable": False}
        return _report(api, item["fail_url"], item, error, until=time.monotonic() + options.lease_s)
    with Heartbeats(api, item, options.lease_s) as heartbeats:
        # A real worker does its work here. An effect that must happen once per step is keyed on step_key(item)
        # and made conditional in the target system (create if absent): after a lost lease the retry's worker and
        # this one may both be at it. item["idempotency_key"] covers only repeats within this attempt (this worker
        # retrying a call whose answer it never saw). The fake work below only waits.
        deadline = time.monotonic() + options.work_seconds
        while time.monotonic() < deadline:
            if heartbeats.cancelled.is_set() or heartbeats.lost.is_set():
                return "cancelled" if heartbeats.cancelled.is_set() else "lease lost"
            if api.stop.is_set():  # interrupted: the lease runs out and the step's retry policy takes over
                return "stopped"
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        if options.work_seconds > 0:
            heartbeats.beat({"percent": 100, "message": f"{action} done"})
        if heartbeats.cancelled.is_set() or heartbeats.lost.is_set():
            return "cancelled" if heartbeats.cancelled.is_set() else "lease lost"
    until = heartbeats.held_until
    if action in options.fail_action and int(item["attempt"]) <= options.fail_times:
        error = {"error": f"example worker: injected failure of {action} (--fail-action)", "retryable": True}
        return _report(api, item["fail_url"], item, error, until, f"failed {where}")
    if action in options.fail_final:
        error = {"error": f"example worker: {action} cannot succeed (--fail-final)", "retryable": False}
        return _report(api, item["fail_url"], item, error, until, f"failed {where}")
    params = item["params"] if isinstance(item.get("params"), dict) else {}
    output = handler(params, options) if phase == "run" else {"compensated": action, "undone": True}
    return _report(api, item["complete_url"], item, {"output": output}, until, f"completed {where}")


def _until_deadline(item: dict[str, Any], until: float) -> float:
    """The later of `until` and the item's `deadline` (its task token's end) on this worker's monotonic clock; `until`
    when the item has no deadline this can read."""
    try:
        deadline = datetime.fromisoformat(str(item["deadline"]))
    except (KeyError, ValueError):
        return until
    if deadline.tzinfo is None:
        return until
    return max(until, time.monotonic() + (deadline - datetime.now(UTC)).total_seconds())


def _report(api: Api, url: str, item: dict[str, Any], body: dict[str, Any], until: float, done: str = "failed") -> str:
    """POST a result with the item's task token until it is answered; 401/403/404/409/422 are final (logged, not
    fatal). No answer, a 5xx or a 429: the same result is sent again (the platform answers a repeat as it answered
    the first) until the lease runs out (`until`), after which the step's retry policy decides. Once it was answered
    5xx or not at all, it may be recorded already with only its hand-over to the execution missing (503
    `orchestration-unavailable`, or a host stopped after the commit): the platform takes a repeat of a recorded
    result until the item's `deadline`, whatever the lease, and only a repeat gets it handed over, so it is sent
    until then. A result that was not recorded is answered 409 `lease-expired` once the lease is gone, which ends it."""
    recorded_maybe = extended = False
    token = str(item["task_token"])
    while True:
        try:
            # In the header, verified before the body is read: a result never waits behind hostile bodies without a
            # valid token (ADR 0027). In the body too, the same, for a platform from before the header.
            response = api.post(
                url, {"task_token": token, **body}, traceparent=item.get("traceparent"), task_token=token
            )
        except httpx.HTTPError as exc:
            problem, recorded_maybe = str(exc), True
        else:
            if response.status_code == 200:
                logger.info("%s -> %s", done, response.json().get("state"))
                return done
            if response.status_code == 409:  # another result was reported, or the lease expired
                logger.info("%s: not recorded (409): %s", done, response.json().get("detail"))
                return "conflict"
            if response.status_code == 422 and url == item["complete_url"]:
                # An output the platform cannot store (a number past 64 bits, a NUL): sending it again, or letting the
                # lease run out to a retry, gives the same output the same refusal. Failed, final, saying why.
                logger.warning("%s refused (422): %s; reporting it failed", done, response.text[:300])
                failure = {"error": _refusal(response), "retryable": False}
                return _report(api, item["fail_url"], item, failure, until, f"failed, output refused: {done}")
            if response.status_code < 500 and response.status_code != 429:
                logger.warning("%s refused (%d): %s", done, response.status_code, response.text[:300])
                return f"refused: {response.status_code}"
            problem = f"answered {response.status_code}"
            recorded_maybe = recorded_maybe or response.status_code >= 500
        if recorded_maybe and not extended:
            until, extended = _until_deadline(item, until), True  # read once: the time left, on the monotonic clock
        if api.stop.is_set() or time.monotonic() >= until:
            logger.warning("%s: not reported (%s); its time has run out or the worker is stopping", done, problem)
            return "unreported"
        logger.warning("%s: not reported yet (%s); sending the same result again", done, problem)
        api.stop.wait(_RESEND_S)


def _refusal(response: httpx.Response) -> str:
    """Why the platform refused a result (its problem's detail and each error's), within a failure's 4000 characters."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        return f"the platform refused the output ({response.status_code}): {response.text[:3000]}"
    parts = [str(problem.get("detail") or problem.get("title") or "refused")]
    for error in problem.get("errors") or []:
        if isinstance(error, dict):
            parts.append(f"{error.get('pointer', '')}: {error.get('detail') or error.get('code')}")
    return f"the platform refused the output ({response.status_code}): {'; '.join(parts)}"[:4000]


def run_batch(items: list[dict[str, Any]], api: Api, options: argparse.Namespace) -> list[str]:
    """Run one lease's items at once, each under its own heartbeats. One after the other, an item waiting behind a
    slow one would lose its lease before its turn (its attempt timed out, a retry spent); so lease no more items
    (`--max-items`) than can run at once."""
    with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="item") as pool:
        futures = [pool.submit(handle_item, item, api, options) for item in items]
        try:
            return [future.result() for future in futures]
        except KeyboardInterrupt:
            api.stop.set()  # Ctrl-C: stop the others too instead of waiting for them here
            raise


# ------------------------------------------------------------------------------------------ entry point
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.workers.remote_worker",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--api", required=True, metavar="URL", help="the platform's base URL")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token", metavar="JWT", help="a bearer token with the Module.Worker role (or $QP_TOKEN)")
    tokens.add_argument("--devhost-tenant", metavar="NAME", help="mint dev tokens for this devhost tenant")
    tokens.add_argument("--azure-scope", metavar="SCOPE", help="DefaultAzureCredential scope, api://<app>/.default")
    parser.add_argument(
        "--devhost-data-dir", default=".data", metavar="DIR", help="the devhost's --data-dir (with --devhost-tenant)"
    )
    parser.add_argument("--action", action="append", default=[], help="only these actions (default: all it knows)")
    parser.add_argument("--name", default=f"example-worker-{os.getpid()}", help="this worker's name in the queue")
    parser.add_argument("--max-items", type=int, default=4, help="items per lease (run at once)")
    parser.add_argument("--lease-s", type=float, default=60.0, help="lease length; heartbeats every third of it")
    parser.add_argument("--work-seconds", type=float, default=0.0, help="pretend each item takes this long")
    parser.add_argument("--once", action="store_true", help="process what is queued now, then exit")
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
    parser.add_argument(
        "--fail-final", action="append", default=[], metavar="ACTION", help="report a final (not retryable) failure"
    )
    parser.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry for images that name none")
    options = parser.parse_args(argv)
    unknown = sorted(set(options.action) - set(HANDLERS))
    if unknown:
        parser.error(f"no handler for {', '.join(unknown)}; known: {', '.join(sorted(HANDLERS))}")
    return options


def run(options: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Lease and run items until `stop` is set, interrupted, or (with --once) nothing is queued."""
    actions = options.action or sorted(HANDLERS)
    with httpx.Client(base_url=options.api) as client:
        api = Api(client, TokenSource(options), stop or threading.Event())
        while not api.stop.is_set():
            try:
                items = api.lease(
                    actions,
                    max_items=options.max_items,
                    lease_s=options.lease_s,
                    wait_s=0.0 if options.once else LONG_POLL_S,
                    worker=options.name,
                )
            except (httpx.HTTPError, RuntimeError) as exc:
                if options.once:
                    raise
                logger.warning("leasing failed (%s); retrying in 2 s", exc)
                api.stop.wait(2.0)
                continue
            if not items:
                if options.once:
                    return 0
                continue
            try:
                logger.debug("%s", run_batch(items, api, options))
            except Exception:  # a bug in one item's handling: its lease runs out, the other items were finished
                if options.once:
                    raise
                logger.exception("a batch failed; leasing on")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker until interrupted (or, with --once, until nothing is left)."""
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt:
        logger.info("stopped")
        return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sys.exit(main())
