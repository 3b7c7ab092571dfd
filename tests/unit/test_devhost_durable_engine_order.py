# intent_ref: platform.devhost-durable
"""While instances wait for an episode slot, one woken by its own new message does not take a slot ahead of them:
the dispatcher's pass gives it to the instance whose message came first; likewise an episode's new activities do not
start ahead of queued ones. A message that comes while its instance's episode runs, however it comes, is served after
that episode."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest

from devhost.durable.engine import Engine
from devhost.durable.protocol import RuntimeStatus
from devhost.durable.store import Dispatchable, WorkItem


class _Db:
    backend_pids: frozenset[int] = frozenset()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[None]:
        yield None


class _Store:
    """Runnable instances in the order their messages came (`queue`), as the store's query answers."""

    hub = "h"

    def __init__(self) -> None:
        self.queue: list[str] = ["a", "b", "first"]
        self.work: list[WorkItem] = []

    async def dispatchable(
        self,
        conn: object,
        now: datetime,
        *,
        running_episodes: Sequence[str],
        episode_limit: int,
        running_work: Sequence[int],
        work_limit: int,
    ) -> Dispatchable:
        ids = [i for i in self.queue if i not in running_episodes]
        items = [item for item in self.work if item.id not in running_work]
        running = sorted({i for i in self.queue if i in running_episodes})
        return Dispatchable(ids[:episode_limit], items[:work_limit], None, running)


class _Engine(Engine):
    """Episodes that only record their start and wait to be let go."""

    def __init__(self, store: _Store) -> None:
        super().__init__(
            cast(Any, None), cast(Any, _Db()), cast(Any, store), max_episodes=2, max_activities=2, poll_interval=600
        )
        self.spawned: list[str] = []
        self.ran: list[int] = []
        self.gates: dict[object, asyncio.Event] = {}
        self.store = store

    async def _guarded_episode(self, instance_id: str) -> None:
        self.spawned.append(instance_id)
        self.store.queue.remove(instance_id)
        await self.gates.setdefault(instance_id, asyncio.Event()).wait()

    async def _run_activity(self, item: WorkItem) -> None:
        self.ran.append(item.id)
        self.store.work.remove(item)
        await self.gates.setdefault(item.id, asyncio.Event()).wait()


def _item(item_id: int) -> WorkItem:
    return WorkItem(id=item_id, instance_id=f"i{item_id}", execution_id="e", task_id=0, name="act", input=None)


async def _until(check: Any) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.01)


def test_an_instance_woken_by_its_message_waits_behind_instances_whose_messages_came_first() -> None:
    async def main() -> list[str]:
        store = _Store()
        engine = _Engine(store)
        await engine.start()
        await _until(lambda: engine.spawned == ["a", "b"])
        assert engine.spawned == ["a", "b"]  # "first" waits for a slot

        def busy_woken(_: asyncio.Task[None]) -> None:
            # Right after "a" gave its slot back, before any pass: a busy instance's result is committed.
            store.queue.append("busy")
            engine.wake_instance("busy")

        engine._episodes["a"].add_done_callback(busy_woken)
        engine.gates.setdefault("a", asyncio.Event()).set()
        await _until(lambda: len(engine.spawned) == 3)
        spawned = list(engine.spawned)
        for gate in engine.gates.values():
            gate.set()
        for instance_id in ("first", "busy"):
            engine.gates.setdefault(instance_id, asyncio.Event()).set()
        await asyncio.wait_for(engine.stop(), 5)
        return spawned

    assert asyncio.run(main()) == ["a", "b", "first"]


def test_an_episodes_new_activities_wait_behind_activities_queued_first() -> None:
    async def main() -> list[int]:
        store = _Store()
        store.queue = []
        store.work = [_item(1), _item(2), _item(3)]
        engine = _Engine(store)
        await engine.start()
        await _until(lambda: engine.ran == [1, 2])
        assert engine.ran == [1, 2]  # 3 waits for a slot

        def episode_committed(_: asyncio.Task[None]) -> None:
            # Right after 1 gave its slot back, before any pass: an episode committed and queued activity 9.
            store.work.append(_item(9))
            engine._start_added("i9", None, [_item(9)])

        engine._activities[1].add_done_callback(episode_committed)
        engine.gates.setdefault(1, asyncio.Event()).set()
        await _until(lambda: len(engine.ran) == 3)
        ran = list(engine.ran)
        for key in (2, 3, 9):
            engine.gates.setdefault(key, asyncio.Event()).set()
        await asyncio.wait_for(engine.stop(), 5)
        return ran

    assert asyncio.run(main()) == [1, 2, 3]


class _PlainEngine(Engine):
    """Episodes that read what is due when they start, wait to be let go, and end plain (they only waited)."""

    def __init__(self, store: _Store) -> None:
        super().__init__(cast(Any, None), cast(Any, _Db()), cast(Any, store), max_episodes=4, poll_interval=600)
        self.spawned: list[str] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.store = store

    async def _guarded_episode(self, instance_id: str) -> None:
        number = len(self.spawned)
        self.spawned.append(instance_id)
        self.store.queue.remove(instance_id)  # its messages due now are read, and consumed by its commit
        await self.gates.setdefault(number, asyncio.Event()).wait()
        plain = SimpleNamespace(status=RuntimeStatus.Running, timers=[], children=[], activities=[])
        self._start_added(instance_id, cast(Any, plain), [])


@pytest.mark.parametrize("woken_by", ["its instance", "a pass"])
def test_a_message_that_comes_while_its_instances_episode_runs_gets_an_episode_without_the_poll(woken_by: str) -> None:
    # The pass the message woke left out the running instance, and the episode's plain end woke nothing: the message
    # waited for the safety poll (found by review). A result or a raised event wakes its instance; a timer falling
    # due, a child's end or another writer's message wakes a pass.
    async def main() -> list[str]:
        store = _Store()
        store.queue = []
        engine = _PlainEngine(store)
        await engine.start()
        store.queue.append("x")
        engine.wake_instance("x")  # a first result
        await _until(lambda: engine.spawned == ["x"])
        store.queue.append("x")  # a second message, while the first's episode runs
        if woken_by == "its instance":
            engine.wake_instance("x")
        else:
            engine.wake()
        await asyncio.sleep(0.05)
        engine.gates.setdefault(0, asyncio.Event()).set()  # that episode commits without having read it
        await _until(lambda: len(engine.spawned) == 2)
        spawned = list(engine.spawned)
        engine.gates.setdefault(1, asyncio.Event()).set()
        await asyncio.wait_for(engine.stop(), 5)
        return spawned

    assert asyncio.run(main()) == ["x", "x"]
