# intent_ref: platform.execution
"""The pure step scheduler: parallel readiness, `when` skips, no new work after a failure, compensation order."""

from __future__ import annotations

from typing import Any

import pytest

from shared.engine.graph import RunState, StepGraph, compensation_order, next_steps
from shared.registry.model import Definition, Step


def steps(*raw: dict[str, Any]) -> list[Step]:
    definition = Definition.model_validate({"steps": list(raw)})
    assert definition.steps is not None
    return definition.steps


DIAMOND = steps(
    {"id": "a", "action": "x", "compensate": {"action": "undo"}},
    {"id": "b", "action": "x", "depends_on": ["a"], "compensate": {"action": "undo"}},
    {"id": "c", "action": "x", "depends_on": ["a"]},
    {"id": "d", "action": "x", "depends_on": ["b", "c"], "compensate": {"action": "undo"}},
)


def test_diamond_runs_the_middle_in_parallel_and_joins() -> None:
    graph = StepGraph.from_steps(DIAMOND)
    assert next_steps(graph, RunState(), {}).ready == ("a",)
    assert next_steps(graph, RunState(running=frozenset({"a"})), {}).ready == ()
    middle = next_steps(graph, RunState(completed={"a": 1}), {})
    assert middle.ready == ("b", "c") and not middle.finished
    assert next_steps(graph, RunState(completed={"a": 1, "b": 2}, running=frozenset({"c"})), {}).ready == ()
    assert next_steps(graph, RunState(completed={"a": 1, "b": 2, "c": 3}), {}).ready == ("d",)
    done = next_steps(graph, RunState(completed={"a": 1, "b": 2, "c": 3, "d": 4}), {})
    assert done == next_steps(graph, RunState(completed=dict.fromkeys("abcd")), {})
    assert done.finished and done.ready == ()


def test_when_false_skips_and_the_skip_counts_as_done_in_the_same_call() -> None:
    graph = StepGraph.from_steps(
        steps(
            {"id": "a", "action": "x"},
            {"id": "b", "action": "x", "when": "${inputs.env} == 'prod'"},
            {"id": "c", "action": "x", "when": "${steps.b.output} == null"},
            {"id": "d", "action": "x", "depends_on": ["a"], "when": "${steps.a.output.ok} == true"},
        )
    )
    first = next_steps(graph, RunState(completed={"a": {"ok": True}}), {"env": "dev"})
    # b is skipped (output null), so c's condition on it holds and c is ready in the same call.
    assert first.skipped == ("b",) and first.ready == ("c", "d")
    prod = next_steps(graph, RunState(completed={"a": {"ok": False}, "b": 1}), {"env": "prod"})
    assert prod.skipped == ("c", "d") and prod.ready == () and prod.finished


def test_skipped_steps_unblock_their_dependents() -> None:
    graph = StepGraph.from_steps(
        steps(
            {"id": "a", "action": "x", "when": "exists ${inputs.flag}"},
            {"id": "b", "action": "x"},
        )
    )
    schedule = next_steps(graph, RunState(), {})
    assert schedule.skipped == ("a",) and schedule.ready == ("b",)
    assert RunState(completed={"b": 2}, skipped=frozenset({"a"})).outputs() == {"a": None, "b": 2}
    assert next_steps(graph, RunState(completed={"b": 2}, skipped=frozenset({"a"})), {}).finished


def test_a_failure_stops_new_work_and_finishes_when_nothing_runs() -> None:
    graph = StepGraph.from_steps(DIAMOND)
    failing = next_steps(graph, RunState(completed={"a": 1}, failed=frozenset({"b"}), running=frozenset({"c"})), {})
    assert failing.ready == () and failing.skipped == () and not failing.finished
    over = next_steps(graph, RunState(completed={"a": 1, "c": 3}, failed=frozenset({"b"})), {})
    assert over.ready == () and over.finished


def test_compensation_order_is_reverse_completion_of_compensable_steps() -> None:
    assert compensation_order(["a", "c", "b"], DIAMOND) == ["b", "a"]
    assert compensation_order(["a", "b", "c", "d"], StepGraph.from_steps(DIAMOND)) == ["d", "b", "a"]
    assert compensation_order([], DIAMOND) == []


def test_default_dependencies_are_the_previous_step_and_bad_graphs_are_refused() -> None:
    graph = StepGraph.from_steps(steps({"id": "a", "action": "x"}, {"id": "b", "action": "x"}))
    assert [node.depends_on for node in graph.nodes] == [(), ("a",)]
    cyclic = [
        Step.model_validate({"id": "a", "action": "x", "depends_on": ["b"]}),
        Step.model_validate({"id": "b", "action": "x", "depends_on": ["a"]}),
    ]
    with pytest.raises(ValueError, match="cycle"):
        StepGraph.from_steps(cyclic)
