# intent_ref: platform.registry
"""A rollback that would close a cycle of intents that run each other is refused as a save is, and takes the same
turn; a save's cycle walk reads before its turn and only verifies under it.

A rollback was not walked: rolling an intent back onto a version that runs an intent which runs it again stored the
cycle, and only the run refused it; and a rollback made at once with an update of the other intent passed both
walks. A rollback onto the current steps is walked for the one path it can make, through a step pinning the version
number it makes. The walk of a save that runs an intent was made under the tenant's `intent-runs` lock: every
definition it read held the turn from other such saves."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest

from shared.db.session import tenant_transaction
from shared.policy.facts import TenantFacts
from shared.registry import service
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_expiry_lock_order import _until_done_or_blocked
from tests.integration.test_registry_api import (
    AUTHOR,
    BLUEPRINTS,
    INTENTS,
    MODULES,
    READER,
    create,
    intent_body,
    problem,
    provision,
    put,
    registry_tables,
    wait_step,
)
from tests.integration.test_registry_cycle_lock_concurrent import versions, while_held
from tests.integration.test_registry_save_cycles import _runs, reads  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration


def _facts(api: ApiHarness, tenant: str) -> TenantFacts:
    return TenantFacts(api.tenants[tenant].id, "active", frozenset({"staging", "production"}), frozenset(MODULES))


def _rollback(api: ApiHarness, tenant: str, item: str, to_version: int, path: str = INTENTS) -> Any:
    return api.client.post(
        f"{path}/{item}/rollback", json={"to_version": to_version}, headers=api.headers(tenant, AUTHOR)
    )


def _refusals(response: Any) -> list[tuple[str, str, str]]:
    return [(e["pointer"], e["code"], e["detail"]) for e in problem(response, 422)["errors"]]


def test_a_rollback_onto_a_version_that_closes_a_cycle_is_refused_and_changes_nothing(api: ApiHarness) -> None:
    tenant = provision(api, "rollback-cycle")
    ping = create(api, tenant, intent_body("ping", wait_step("w"), _runs("go", "pong")))["id"]  # pong: none yet
    assert put(api, tenant, ping, intent_body("ping", wait_step("w"))).status_code == 200
    pong = create(api, tenant, intent_body("pong", _runs("back", "ping")))["id"]  # ping's current runs nothing
    before = registry_tables(api)
    answer = _rollback(api, tenant, ping, 1)
    ((at, code, detail),) = _refusals(answer)
    assert (at, code) == ("/definition/steps/1/params/intent", "recursive_intent")
    assert "'ping' → 'pong' → 'ping'" in detail and "intents cannot run each other" in detail, detail
    assert answer.json()["detail"] == "Version 1 no longer validates: The intent has 1 problem."
    assert registry_tables(api) == before
    # Once the cycle is cut the same rollback is made.
    assert put(api, tenant, pong, intent_body("pong", wait_step("w"))).status_code == 200
    rolled = _rollback(api, tenant, ping, 1)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["origin"] == {"kind": "rollback", "from_version": 1}


def test_a_rollback_onto_a_version_that_runs_itself_is_refused(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version saved before the save-time self check: rolling back onto it from one that does not run itself
    brings the self-run back, as a PUT of it would, which is refused."""
    from shared.registry import step_checks

    tenant = provision(api, "rollback-self")
    with monkeypatch.context() as patched:  # as it was saved before
        patched.setattr(step_checks, "_recursion_problems", lambda *_args, **_kwargs: [])
        selfie = create(api, tenant, intent_body("selfie", wait_step("w"), _runs("again", "selfie")))["id"]
    assert put(api, tenant, selfie, intent_body("selfie", wait_step("w"))).status_code == 200
    before = registry_tables(api)
    ((at, code, detail),) = _refusals(_rollback(api, tenant, selfie, 1))
    assert (at, code) == ("/definition/steps/1/params/intent", "recursive_intent")
    assert "an intent cannot run itself" in detail, detail
    assert registry_tables(api) == before


def test_a_declaration_rolled_back_onto_a_blueprint_version_that_comes_back_round_is_refused(
    api: ApiHarness,
) -> None:
    """A declaration's rollback brings back the blueprint version it pinned, whose steps are the ones walked."""
    tenant = provision(api, "rollback-declared")
    runner = create(api, tenant, {"name": "runner", "definition": {"steps": [_runs("s", "relay")]}}, BLUEPRINTS)
    relay = create(api, tenant, intent_body("relay", wait_step("w")))["id"]
    declared = create(api, tenant, {"name": "declared", "definition": {"target": "staging", "blueprint": "runner"}})
    headers = {**api.headers(tenant, AUTHOR), "If-Match": f'"{runner["id"]}.v1"'}
    plain = {"name": "runner", "definition": {"steps": [wait_step("w")]}}
    assert api.client.put(f"{BLUEPRINTS}/{runner['id']}", json=plain, headers=headers).status_code == 200
    # Saved again, the declaration pins the blueprint's version 2, which runs no intent: relay may run it.
    again = {"name": "declared", "description": "again", "definition": {"target": "staging", "blueprint": "runner"}}
    assert put(api, tenant, declared["id"], again).status_code == 200
    assert put(api, tenant, relay, intent_body("relay", _runs("s", "declared"))).status_code == 200
    before = registry_tables(api)
    ((at, code, detail),) = _refusals(_rollback(api, tenant, declared["id"], 1))
    assert (at, code) == ("/definition/blueprint", "recursive_intent")
    assert "blueprint step 's'" in detail and "'declared' → 'relay' → 'declared'" in detail, detail
    assert registry_tables(api) == before


def test_a_rollback_that_keeps_the_steps_is_refused_only_for_a_step_pinning_its_new_version(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Onto a version whose definition is the current one's (only the description differs), a rollback changes no
    step: a cycle stored before the check rolls back onto itself. Its new version number is all it makes, and a
    step that pinned that number started nothing before: through one, the rollback closes a cycle, and is refused."""
    from shared.registry import step_checks

    tenant = provision(api, "rollback-same-steps")
    with monkeypatch.context() as patched:  # as they were saved before
        patched.setattr(service, "_cycle_problems", lambda *_args, **_kwargs: [])
        ping = create(api, tenant, intent_body("ping", _runs("s", "pong"), description="one"))["id"]
        create(api, tenant, intent_body("pong", _runs("s", "ping")))
        assert put(api, tenant, ping, intent_body("ping", _runs("s", "pong"), description="two")).status_code == 200
    rolled = _rollback(api, tenant, ping, 1)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["description"] == "one"
    # hub's version 3 would run relay, which runs hub's version 3: none yet, so relay was saved.
    hub = create(api, tenant, intent_body("hub", _runs("s", "relay"), description="one"))["id"]
    assert put(api, tenant, hub, intent_body("hub", wait_step("w"))).status_code == 200
    create(api, tenant, intent_body("relay", _runs("s", "hub", version=3)))
    before = registry_tables(api)
    ((at, code, detail),) = _refusals(_rollback(api, tenant, hub, 1))
    assert (at, code) == ("/definition/steps/0/params/intent", "recursive_intent")
    assert "'hub' → 'relay' → 'hub'" in detail, detail
    assert registry_tables(api) == before
    # An intent whose own step pins the version the rollback makes would run itself.
    with monkeypatch.context() as patched:  # as it was saved before the self check
        patched.setattr(step_checks, "_recursion_problems", lambda *_args, **_kwargs: [])
        loop = create(api, tenant, intent_body("loop", wait_step("w"), _runs("s", "loop", version=3)))["id"]
        same = intent_body("loop", wait_step("w"), _runs("s", "loop", version=3), description="two")
        assert put(api, tenant, loop, same).status_code == 200
    before = registry_tables(api)
    ((at, code, detail),) = _refusals(_rollback(api, tenant, loop, 1))
    assert (at, code) == ("/definition/steps/1/params/intent", "recursive_intent")
    assert "'loop' → 'loop'" in detail and "an intent cannot run itself" in detail, detail
    assert registry_tables(api) == before


def _rollback_held(item: str, to_version: int) -> Callable[[Any, TenantFacts], object]:
    def save(conn: Any, facts: TenantFacts) -> object:
        return service.rollback(
            conn, "intent", UUID(item), to_version, if_match=None, tenant=facts, created_by="author"
        )

    return save


def test_a_rollback_and_an_update_closing_a_cycle_at_once_save_one(api: ApiHarness) -> None:
    """The rollback of ping onto the version that runs pong is held uncommitted while pong is updated to run ping:
    the update waits for the rollback's turn, then walks what it committed and is refused."""
    tenant = provision(api, "rollback-cycle-race")
    ping = create(api, tenant, intent_body("ping", _runs("go", "pong")))["id"]
    assert put(api, tenant, ping, intent_body("ping", wait_step("w"))).status_code == 200
    pong = create(api, tenant, intent_body("pong", wait_step("w")))["id"]
    facts = _facts(api, tenant)
    answer, answered_first = while_held(
        api,
        tenant,
        lambda conn: _rollback_held(ping, 1)(conn, facts),
        lambda: put(api, tenant, pong, intent_body("pong", _runs("back", "ping"))),
    )
    ((at, code, detail),) = _refusals(answer)
    assert (at, code) == ("/definition/steps/0/intent", "recursive_intent")
    assert "'pong' → 'ping' → 'pong'" in detail, detail
    assert not answered_first
    assert versions(api, tenant, ping) == [1, 2, 3]
    assert versions(api, tenant, pong) == [1]


def test_an_update_and_a_rollback_closing_a_cycle_at_once_save_one(api: ApiHarness) -> None:
    """The other way round: the update of pong to run ping is held uncommitted while ping is rolled back onto the
    version that runs pong; the rollback waits for the update's turn, then walks what it committed."""
    tenant = provision(api, "rollback-cycle-race-2")
    ping = create(api, tenant, intent_body("ping", _runs("go", "pong")))["id"]
    assert put(api, tenant, ping, intent_body("ping", wait_step("w"))).status_code == 200
    pong = create(api, tenant, intent_body("pong", wait_step("w")))["id"]
    facts = _facts(api, tenant)

    def update_pong(conn: Any) -> object:
        body = intent_body("pong", _runs("back", "ping"))
        return service.update(conn, "intent", UUID(pong), body, if_match=None, tenant=facts, created_by="a")

    answer, answered_first = while_held(api, tenant, update_pong, lambda: _rollback(api, tenant, ping, 1))
    ((at, code, detail),) = _refusals(answer)
    assert (at, code) == ("/definition/steps/0/params/intent", "recursive_intent")
    assert "'ping' → 'pong' → 'ping'" in detail, detail
    assert not answered_first
    assert versions(api, tenant, ping) == [1, 2]
    assert versions(api, tenant, pong) == [1, 2]


def _held_reads(
    api: ApiHarness, tenant: str, hold: Callable[[Any], object], request: Callable[[], Any], reads: list[str]
) -> tuple[Any, list[str]]:
    """`request()`'s response, sent while `hold(conn)` is written and not committed, and the intents whose steps the
    request's walk had read once it waited for that transaction (or was done)."""
    answers: list[Any] = []
    failures: list[BaseException] = []

    def send() -> None:
        try:
            answers.append(request())
        except BaseException as exc:  # reported below: an exception in a thread would otherwise pass unseen
            failures.append(exc)

    with tenant_transaction(api.tenants[tenant].id) as conn:
        hold(conn)
        reads.clear()
        sender = threading.Thread(target=send)
        sender.start()
        _until_done_or_blocked(api.admin_url, sender, conn.info.backend_pid, timeout_s=60)
        assert sender.is_alive(), "the request did not wait for the held save's turn"
        read_while_waiting = list(reads)
    sender.join(60)
    assert not sender.is_alive() and not failures, failures
    return answers[0], read_while_waiting


def test_a_walk_reads_before_its_turn_and_walks_again_only_if_a_head_it_looked_up_moved(
    api: ApiHarness, reads: list[str]
) -> None:
    """A create's walk waited for the turn before its first read, so its reads (up to 64 definitions) held the
    turn; they are made before it, and under it only the heads looked up are checked. An unrelated save committed
    meanwhile costs no second walk; one that moved an intent the walk followed does, and is seen."""
    tenant = provision(api, "cycle-walk-first")
    create(api, tenant, intent_body("leaf", wait_step("w")))
    create(api, tenant, intent_body("middle", _runs("s", "leaf")))
    other = create(api, tenant, intent_body("other", wait_step("w")))["id"]
    facts = _facts(api, tenant)
    author = api.headers(tenant, AUTHOR)

    def update(item: str, body: dict[str, Any]) -> Callable[[Any], object]:
        return lambda conn: service.update(
            conn, "intent", UUID(item), body, if_match=None, tenant=facts, created_by="a"
        )

    unrelated = update(other, intent_body("other", _runs("s", "leaf")))  # runs an intent: takes the turn
    top = intent_body("top", _runs("s", "middle"))
    answer, read_while_waiting = _held_reads(
        api, tenant, unrelated, lambda: api.client.post(INTENTS, json=top, headers=author), reads
    )
    assert answer.status_code == 201, answer.text
    assert read_while_waiting == ["middle", "leaf"]
    assert reads == ["middle", "leaf"]  # not walked again: no head it looked up moved
    # leaf is updated to run the intent being created: the walk made before the turn missed it, the one after sees it.
    leaf = api.client.get(f"{INTENTS}?name_prefix=leaf", headers=api.headers(tenant, READER)).json()["items"][0]
    closing = update(leaf["id"], intent_body("leaf", _runs("s", "top-2")))
    top_2 = intent_body("top-2", _runs("s", "middle"))
    answer, read_while_waiting = _held_reads(
        api, tenant, closing, lambda: api.client.post(INTENTS, json=top_2, headers=author), reads
    )
    assert read_while_waiting == ["middle", "leaf"]
    assert reads == ["middle", "leaf", "leaf"]  # again under the turn: only the version that moved is read
    ((at, code, detail),) = _refusals(answer)
    assert (at, code) == ("/definition/steps/0/intent", "recursive_intent")
    assert "'top-2' → 'middle' → 'leaf' → 'top-2'" in detail, detail


def test_a_head_or_a_pinned_version_made_under_the_walk_is_seen(api: ApiHarness) -> None:
    """The check under the turn covers names the walk found nothing for: one made meanwhile, and a pinned version
    made meanwhile, are walked again."""
    tenant = provision(api, "cycle-walk-pinned")
    facts = _facts(api, tenant)
    author = api.headers(tenant, AUTHOR)
    relay = create(api, tenant, intent_body("relay", wait_step("w")))["id"]

    def relay_v2(conn: Any) -> object:  # version 2, which the request pins before it exists
        body = intent_body("relay", _runs("s", "starter"))
        return service.update(conn, "intent", UUID(relay), body, if_match=None, tenant=facts, created_by="a")

    starter = intent_body("starter", _runs("s", "relay", version=2))
    answer, _ = while_held(api, tenant, relay_v2, lambda: api.client.post(INTENTS, json=starter, headers=author))
    ((at, code, detail),) = _refusals(answer)
    assert (at, code) == ("/definition/steps/0/intent", "recursive_intent")
    assert "'starter' → 'relay' → 'starter'" in detail, detail

    def made(conn: Any) -> object:  # an intent the request names, made while the request walks
        body = intent_body("late", _runs("s", "early"))
        return service.create(conn, "intent", body, item_id=uuid.uuid4(), tenant=facts, created_by="a")

    early = intent_body("early", _runs("s", "late"))
    answer, _ = while_held(api, tenant, made, lambda: api.client.post(INTENTS, json=early, headers=author))
    ((at, code, detail),) = _refusals(answer)
    assert "'early' → 'late' → 'early'" in detail, detail
