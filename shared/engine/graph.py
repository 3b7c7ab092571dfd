# intent_ref: platform.execution
"""A pure, I/O-free scheduler over an intent's steps: what is ready, what `when` skips, when the run is over."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.registry.model import Step
from shared.registry.plan import dependencies, execution_levels
from shared.registry.references import scan_references
from shared.registry.when import evaluate_when, parse_when, when_references


@dataclass(frozen=True)
class StepNode:
    """What the scheduler needs of one step: its id, dependencies, condition and whether it can be undone."""

    id: str
    depends_on: tuple[str, ...]
    when: str | None = None
    compensable: bool = False


@dataclass(frozen=True)
class StepGraph:
    """The steps in definition order; ready steps are always reported in that order, so replays agree."""

    nodes: tuple[StepNode, ...]

    @classmethod
    def from_steps(cls, steps: Sequence[Step]) -> StepGraph:
        """The graph of a definition's steps; raises ValueError on unknown, duplicate or cyclic dependencies."""
        execution_levels(steps)  # validates the graph: a cycle would otherwise leave the run waiting forever
        graph = dependencies(steps)
        return cls(
            tuple(
                StepNode(step.step_id, tuple(graph[step.step_id]), step.when, step.compensate is not None)
                for step in steps
            )
        )

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(node.id for node in self.nodes)


@dataclass(frozen=True)
class RunState:
    """Where a run stands: outputs of completed steps by id, and the steps skipped, failed or running."""

    completed: Mapping[str, Any] = field(default_factory=dict)
    skipped: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()
    running: frozenset[str] = frozenset()

    def outputs(self) -> dict[str, Any]:
        """Outputs for references and conditions: a skipped step reads as done with output null."""
        return {**{step_id: None for step_id in self.skipped}, **self.completed}


@dataclass(frozen=True)
class Schedule:
    """The scheduler's answer: steps to start now, steps newly skipped by `when`, and whether the run is over."""

    ready: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    finished: bool = False


def next_steps(graph: StepGraph, state: RunState, inputs: Mapping[str, Any]) -> Schedule:
    """Steps whose dependencies are all done (completed or skipped) and that are not yet started.

    A step whose `when` is false is skipped, and since a skip counts as done, its dependents are decided in the
    same call. After a failure nothing new starts; the run is finished once nothing is running.
    """
    if state.failed:
        return Schedule(finished=not state.running)
    done = set(state.completed) | state.skipped
    outputs = state.outputs()
    started = done | state.failed | state.running
    ready: list[str] = []
    skipped: list[str] = []
    progress = True
    while progress:
        progress = False
        for node in graph.nodes:
            if node.id in started or not all(dep in done for dep in node.depends_on):
                continue
            started.add(node.id)
            if node.when is not None and not evaluate_when(node.when, inputs, outputs):
                skipped.append(node.id)
                done.add(node.id)
                outputs[node.id] = None
                progress = True  # a skip may unblock (or skip) its dependents in this same call
            else:
                ready.append(node.id)
    finished = not ready and not state.running and all(node.id in done for node in graph.nodes)
    return Schedule(tuple(ready), tuple(skipped), finished)


def compensation_order(completed_in_order: Sequence[str], steps: Sequence[Step] | StepGraph) -> list[str]:
    """The steps to undo after a failure: those that completed and declare `compensate`, last completed first."""
    graph = steps if isinstance(steps, StepGraph) else StepGraph.from_steps(steps)
    compensable = {node.id for node in graph.nodes if node.compensable}
    return [step_id for step_id in reversed(completed_in_order) if step_id in compensable]


def referenced_output_paths(steps: Sequence[Step]) -> dict[str, frozenset[tuple[str, ...]]]:
    """For each step whose output is referenced, the paths into it that parameters, compensations and `when`
    conditions read (an empty path: the whole output)."""
    paths: dict[str, set[tuple[str, ...]]] = {}
    for step in steps:
        references = [reference for _, reference in scan_references(step.params).found]
        if step.compensate is not None:
            references += [reference for _, reference in scan_references(step.compensate.params).found]
        if step.when is not None:
            references += when_references(parse_when(step.when))
        for reference in references:
            if reference.source == "steps":
                paths.setdefault(reference.name, set()).add(reference.path)
    return {step_id: frozenset(found) for step_id, found in paths.items()}


def output_readers(steps: Sequence[Step]) -> dict[str, tuple[str, ...]]:
    """For each step whose output is read by another step's parameters or `when`, those steps in definition order (a
    compensation's reads are not counted: it runs only once its step has completed)."""
    readers: dict[str, list[str]] = {}
    for step in steps:
        references = [reference for _, reference in scan_references(step.params).found]
        if step.when is not None:
            references += when_references(parse_when(step.when))
        for name in dict.fromkeys(ref.name for ref in references if ref.source == "steps" and ref.name != step.step_id):
            readers.setdefault(name, []).append(step.step_id)
    return {step_id: tuple(found) for step_id, found in readers.items()}
