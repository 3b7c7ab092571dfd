# intent_ref: platform.execution
"""Child executions are bounded: no intent runs below itself, nesting stops at 8, one root's active tree is capped."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.progress import record_progress
from shared.engine.start import MAX_CHILD_DEPTH, descendant_limit
from shared.engine.steps import AttemptKey, StepSeed
from shared.registry import service as registry
from shared.tenants.models import Tenant, TenantQuotas
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Reader"]
ACTIVE = ("pending", "running", "waiting", "compensating")


class Tree:
    """A tenant whose concurrent-execution quota is 1, and the intents a test saves in it, by name."""

    def __init__(self, api: ApiHarness, quota: int = 1) -> None:
        """Provision the tenant (allowed `wait` and `intent` only, as the reviewer's bomb was) with concurrent-execution
        quota `quota`."""
        self.api = api
        self.key = f"bounds-{uuid.uuid4().hex[:8]}"
        quotas = {"requests_per_minute": 100000, "burst": 10000, "max_concurrent_executions": quota}
        handle = api.provision(self.key, quotas=quotas, allowed_modules=["wait", "intent"])
        with tenant_transaction(handle.id) as conn:
            tenant = get_tenant(conn, handle.id)
        assert tenant is not None
        self.tenant: Tenant = tenant
        self.ids: dict[str, uuid.UUID] = {}
        self.requester = Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset({"Intent.Deployer"}), app_only=False)

    def save(self, name: str, *runs: str) -> None:
        """Save intent `name`: one intent.run step per name in `runs` (step ids s0, s1, ...), else one wait."""
        steps: list[dict[str, Any]] = [
            {"id": f"s{i}", "action": "intent.run", "intent": child} for i, child in enumerate(runs)
        ] or [{"id": "pause", "action": "wait", "seconds": 1}]
        body = {"name": name, "definition": {"target": "staging", "steps": steps}}
        created = self.api.client.post("/api/v1/intents", json=body, headers=self.api.headers(self.key, AUTHOR))
        assert created.status_code == 201, created.text
        self.ids[name] = uuid.UUID(created.json()["id"])

    def root(self, name: str, *steps: str) -> repo.Execution:
        """A root execution of intent `name` (pending, as a parent's start left it) with intent.run steps `steps`."""
        with tenant_transaction(self.tenant.id) as conn:
            version = registry.get(conn, "intent", self.ids[name]).version.version
            root, _ = repo.create_execution(
                conn,
                execution_id=uuid.uuid4(),
                intent_id=self.ids[name],
                intent_version=version,
                target="staging",
                input={},
                requester=self.requester,
            )
            store.seed_steps(conn, root.id, [StepSeed(step, "intent.run", 1) for step in steps])
        return root

    def start_child(self, parent: uuid.UUID, step: str, intent: str) -> dict[str, Any]:
        """What the dispatch's start of `parent`'s intent.run step `step` (attempt 1) answers."""
        answer: dict[str, Any] = record_progress(
            {
                "kind": "start_child",
                "execution_id": str(parent),
                "tenant_id": str(self.tenant.id),
                "step_id": step,
                "attempt": 1,
                "params": {"intent": intent},
            }
        )
        return answer

    def execution(self, execution_id: uuid.UUID) -> repo.Execution:
        """The execution as recorded now."""
        with tenant_transaction(self.tenant.id) as conn:
            return repo.get_execution(conn, execution_id)

    def children(self, parent: uuid.UUID, step: str | None = None) -> int:
        """How many executions `parent` started (by its step `step`, when given)."""
        with tenant_transaction(self.tenant.id) as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM app.executions WHERE parent_execution_id = %s"
                " AND parent_step_id = coalesce(%s, parent_step_id)",
                (parent, step),
            ).fetchone()
        assert row is not None
        return int(row["n"])

    def active(self) -> int:
        """How many of the tenant's executions have not ended, roots and children."""
        with tenant_transaction(self.tenant.id) as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM app.executions WHERE status = ANY(%s)", (list(ACTIVE),)
            ).fetchone()
        assert row is not None
        return int(row["n"])

    def fill(self, root: repo.Execution, intent: str, count: int) -> None:
        """`count` active children of `root` running `intent`, as earlier starts of its steps would have left them."""
        with tenant_transaction(self.tenant.id) as conn:
            version = registry.get(conn, "intent", self.ids[intent]).version.version
            for _ in range(count):
                repo.create_execution(
                    conn,
                    execution_id=uuid.uuid4(),
                    intent_id=self.ids[intent],
                    intent_version=version,
                    target="staging",
                    input={},
                    requester=self.requester,
                    parent_execution_id=root.id,
                    parent_step_id="earlier",
                    root_execution_id=root.id,
                )

    def assert_refused(self, answer: dict[str, Any], parent: repo.Execution, step: str, error: str) -> None:
        """The step failed through the normal path (its attempt failed, not retryable), its parent otherwise as it
        was, and no child recorded."""
        assert "execution_id" not in answer, answer
        verdict = answer["verdict"]
        assert (verdict["ok"], verdict["retryable"]) == (False, False), verdict
        assert verdict["error"] == error
        with tenant_transaction(self.tenant.id) as conn:
            attempt = store.get_attempt(conn, AttemptKey(parent.id, step, "run", 1))
            assert attempt is not None and attempt.state == "failed" and attempt.error == error
            after = repo.get_execution(conn, parent.id)
        assert (after.status, after.output, after.error) == (parent.status, parent.output, parent.error)
        assert self.children(parent.id, step) == 0


@pytest.fixture
def tree(api: ApiHarness) -> Tree:
    """A fresh tenant for one test's tree."""
    return Tree(api)


def test_an_intent_that_runs_itself_is_refused_its_first_child(tree: Tree) -> None:
    # The reviewer's bomb: two steps each running `bomb` doubled the tenant's active executions every generation,
    # 63 against a quota of 1 after five, since children are exempt from the quota. Its own name written in its
    # steps is refused at save now (`recursive_intent`); a name taken from its input (`bomb` here) only a run knows.
    tree.save("bomb", "${inputs.next}", "${inputs.next}")
    root = tree.root("bomb", "s0", "s1")
    for step in ("s0", "s1"):
        answer = tree.start_child(root.id, step, "bomb")
        expected = f"child intent bomb cannot start: it is already running above this step (execution {root.id})"
        tree.assert_refused(answer, root, step, expected)
    assert tree.children(root.id) == 0


def test_an_intent_that_runs_itself_through_another_is_refused_where_it_comes_round(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Saved as before the save-time cycle check: stored cycles still run, and the engine refuses where they come round.
    monkeypatch.setattr(registry, "_cycle_problems", lambda *_a, **_k: [])
    tree.save("ping", "pong")
    tree.save("pong", "ping")
    root = tree.root("ping", "s0")
    child = tree.start_child(root.id, "s0", "pong")
    assert "execution_id" in child, child
    pong = tree.execution(uuid.UUID(child["execution_id"]))
    answer = tree.start_child(pong.id, "s0", "ping")
    expected = f"child intent ping cannot start: it is already running above this step (execution {root.id})"
    tree.assert_refused(answer, pong, "s0", expected)
    assert tree.children(pong.id) == 0


def test_a_chain_of_distinct_intents_is_refused_below_depth_eight(tree: Tree) -> None:
    assert MAX_CHILD_DEPTH == 8
    names = [f"level{depth}" for depth in range(MAX_CHILD_DEPTH + 2)]  # level0 (the root) .. level9
    tree.save(names[-1])
    for depth in reversed(range(MAX_CHILD_DEPTH + 1)):
        tree.save(names[depth], names[depth + 1])
    root = tree.root(names[0], "s0")
    parent = root
    for depth in range(1, MAX_CHILD_DEPTH + 1):
        answer = tree.start_child(parent.id, "s0", names[depth])
        assert "execution_id" in answer, (depth, answer)
        child = tree.execution(uuid.UUID(answer["execution_id"]))
        assert (child.parent_execution_id, child.root_execution_id) == (parent.id, root.id)
        parent = child
    answer = tree.start_child(parent.id, "s0", names[MAX_CHILD_DEPTH + 1])
    expected = "child intent level9 cannot start: it would nest deeper than 8 levels below its root execution"
    tree.assert_refused(answer, parent, "s0", expected)
    assert tree.children(parent.id) == 0


def test_a_root_whose_active_descendants_reach_the_bound_starts_no_more(tree: Tree) -> None:
    bound = descendant_limit(tree.tenant.quotas)
    assert bound == 100  # a quota of 1 still leaves ordinary trees their room
    tree.save("leaf")
    tree.save("mid", "leaf", "leaf", "leaf")
    tree.save("top", "mid")
    root = tree.root("top", "s0")
    answer = tree.start_child(root.id, "s0", "mid")
    mid = tree.execution(uuid.UUID(answer["execution_id"]))
    assert mid.root_execution_id == root.id
    # The rest of the tree, as started children of `mid` would leave it; all but one active.
    fillers = []
    with tenant_transaction(tree.tenant.id) as conn:
        leaf_version = registry.get(conn, "intent", tree.ids["leaf"]).version.version
        for _ in range(bound - 1):
            filler, _ = repo.create_execution(
                conn,
                execution_id=uuid.uuid4(),
                intent_id=tree.ids["leaf"],
                intent_version=leaf_version,
                target="staging",
                input={},
                requester=tree.requester,
                parent_execution_id=mid.id,
                parent_step_id="earlier",
                root_execution_id=root.id,
            )
            fillers.append(filler)
        repo.transition(conn, fillers[0].id, "cancelled")  # ended: no longer counted
    # `mid` and bound - 2 active fillers: room for one more grandchild, which joins the root's tree.
    answer = tree.start_child(mid.id, "s0", "leaf")
    assert "execution_id" in answer, answer
    assert tree.execution(uuid.UUID(answer["execution_id"])).root_execution_id == root.id
    answer = tree.start_child(mid.id, "s1", "leaf")
    expected = (
        f"child intent leaf cannot start: its root execution {root.id} already has {bound} active descendants,"
        " the most one root may have"
    )
    tree.assert_refused(answer, mid, "s1", expected)
    with tenant_transaction(tree.tenant.id) as conn:
        repo.transition(conn, fillers[1].id, "cancelled")  # one descendant ends: its place is free again
    # The refused start run again (a re-executed activity) answers its recorded verdict: its step is failed and
    # its orchestration may have moved on, so a child started now would run for a step that no longer waits.
    tree.assert_refused(tree.start_child(mid.id, "s1", "leaf"), mid, "s1", expected)
    answer = tree.start_child(mid.id, "s2", "leaf")
    assert "execution_id" in answer, answer


def test_the_tenants_roots_together_hold_at_most_the_bound_of_active_descendants(api: ApiHarness) -> None:
    # The reviewer's count: with a quota of 2, two roots each started 100 children (the bound was per root only),
    # 202 active executions. The bound now holds for all the tenant's roots together: at most quota + bound.
    tree = Tree(api, quota=2)
    bound = descendant_limit(tree.tenant.quotas)
    assert bound == 100
    tree.save("leaf")
    tree.save("top", "leaf")
    steps = [f"s{i}" for i in range(bound + 1)]  # each root tries for more children than the bound
    first, second = tree.root("top", *steps), tree.root("top", *steps)
    tree.fill(first, "leaf", bound - 3)  # the first root's earlier children: room for three more in the tenant
    started: dict[tuple[uuid.UUID, str], uuid.UUID] = {}
    refused: list[tuple[repo.Execution, str, dict[str, Any]]] = []
    for step in steps[:4]:
        for root in (first, second):
            answer = tree.start_child(root.id, step, "leaf")
            if "execution_id" in answer:
                started[root.id, step] = uuid.UUID(answer["execution_id"])
            else:
                refused.append((root, step, answer))
            assert tree.active() <= 2 + bound
    assert list(started) == [(first.id, "s0"), (second.id, "s0"), (first.id, "s1")]
    assert tree.active() == 2 + bound
    expected = (
        f"child intent leaf cannot start: the tenant's executions already have {bound} active descendants,"
        " the most all its roots may have together"
    )
    assert len(refused) == 5
    for root, step, answer in refused:
        # The second root holds one descendant only: the tenant's bound refuses it, not its own.
        tree.assert_refused(answer, root, step, expected)
    with tenant_transaction(tree.tenant.id) as conn:
        # One descendant ends: its place is free again, for any of the tenant's roots.
        repo.transition(conn, started[second.id, "s0"], "cancelled")
    answer = tree.start_child(second.id, "s4", "leaf")
    assert "execution_id" in answer, answer
    assert tree.active() == 2 + bound


def test_an_ordinary_child_of_another_intent_still_starts(tree: Tree) -> None:
    tree.save("leaf")
    tree.save("top", "leaf")
    root = tree.root("top", "s0")
    answer = tree.start_child(root.id, "s0", "leaf")
    assert "execution_id" in answer and answer["input"]["intent_id"] == str(tree.ids["leaf"]), answer
    child = tree.execution(uuid.UUID(answer["execution_id"]))
    assert (child.parent_execution_id, child.parent_step_id, child.root_execution_id) == (root.id, "s0", root.id)
    assert child.status == "pending"
    # Run again (a re-executed activity): the same child, none more.
    again = tree.start_child(root.id, "s0", "leaf")
    assert again["execution_id"] == str(child.id)
    assert tree.children(root.id) == 1


def test_the_bound_grows_with_the_tenants_quota_within_its_floor_and_ceiling() -> None:
    assert descendant_limit(TenantQuotas(max_concurrent_executions=0)) == 100
    assert descendant_limit(TenantQuotas(max_concurrent_executions=20)) == 200
    assert descendant_limit(TenantQuotas(max_concurrent_executions=100_000)) == 10_000
