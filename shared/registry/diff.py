# intent_ref: platform.registry
"""Structured differences between two definitions: steps added, removed and changed, with a one-paragraph summary."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from shared.registry.model import raw_step_ids
from shared.registry.problems import pointer
from shared.registry.when import json_equal


@dataclass(frozen=True)
class FieldChange:
    """One changed value: a JSON pointer (into the definition, or into the step for a step's change)."""

    path: str
    kind: Literal["added", "removed", "changed"]
    old: Any = None
    new: Any = None


@dataclass(frozen=True)
class StepChange:
    id: str
    changes: tuple[FieldChange, ...]


@dataclass(frozen=True)
class DefinitionDiff:
    steps_added: tuple[str, ...]
    steps_removed: tuple[str, ...]
    steps_changed: tuple[StepChange, ...]
    steps_reordered: bool
    fields_changed: tuple[FieldChange, ...]
    summary: str
    changes_left_out: int = 0
    """Changes found past the diff's budget (MAX_LISTED_CHANGES) and not listed."""

    @property
    def is_empty(self) -> bool:
        return not (
            self.steps_added
            or self.steps_removed
            or self.steps_changed
            or self.steps_reordered
            or self.fields_changed
            or self.changes_left_out
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MAX_LISTED_CHANGES = 200
"""Changes one diff lists at most (steps' and fields' together); the rest are only counted: past a few hundred a
reader learns nothing more, and each listed change carries its path, old and new value."""

MAX_DESCENDED_PATH = 1024
"""Characters of a JSON pointer past which a changed object is compared as one value, not key by key: otherwise a
long key above many changed leaves repeats in every leaf's path (keys x leaves characters)."""


class _Budget:
    """One diff's budget of listed changes, and the count of changes found past it."""

    def __init__(self) -> None:
        """A fresh budget: nothing listed, nothing left out."""
        self.left = MAX_LISTED_CHANGES
        self.left_out = 0

    def take(
        self, path: tuple[str | int, ...], kind: Literal["added", "removed", "changed"], old: Any, new: Any
    ) -> list[FieldChange]:
        """The change as one entry while the budget lasts; past it, none (counted as left out)."""
        if self.left <= 0:
            self.left_out += 1
            return []
        self.left -= 1
        # The pointer is built only for a listed change: building one per leaf is the cost being bounded.
        return [FieldChange(pointer(*path), kind, old, new)]


def _changes(
    old: Any, new: Any, budget: _Budget, path: tuple[str | int, ...] = (), length: int = 0
) -> list[FieldChange]:
    """Objects are compared key by key while their path is short (`length` is its pointer's); any other value
    (arrays included) as a whole. Past the budget, changes are counted, not listed."""
    if isinstance(old, dict) and isinstance(new, dict) and length <= MAX_DESCENDED_PATH:
        changes: list[FieldChange] = []
        for key in [*old, *(key for key in new if key not in old)]:
            if key not in new:
                changes.extend(budget.take((*path, key), "removed", old[key], None))
            elif key not in old:
                changes.extend(budget.take((*path, key), "added", None, new[key]))
            else:
                changes.extend(_changes(old[key], new[key], budget, (*path, key), length + len(pointer(key))))
        return changes
    return [] if json_equal(old, new) else budget.take(path, "changed", old, new)


def _steps_by_id(definition: dict[str, Any]) -> dict[str, Any]:
    # Stored versions are normalized (every step has an id); a raw one gets the ids the model would generate.
    steps = definition.get("steps")
    if not isinstance(steps, list):
        return {}
    return dict(zip(raw_step_ids(steps), steps, strict=True))


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "…"


MAX_DESCRIBED_PATH = 120
"""Characters of a change's path the summary shows; the full path is in the change itself."""


def _describe(change: FieldChange) -> str:
    where = change.path.lstrip("/") or "the value"
    where = where if len(where) <= MAX_DESCRIBED_PATH else where[: MAX_DESCRIBED_PATH - 3] + "…"
    if change.kind == "added":
        return f"{where} added ({_short(change.new)})"
    if change.kind == "removed":
        return f"{where} removed"
    return f"{where} {_short(change.old)} → {_short(change.new)}"


def _plural(items: tuple[Any, ...], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _joined(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _summary(diff: DefinitionDiff) -> str:
    if diff.is_empty:
        return "No changes."
    parts = []
    if diff.steps_added:
        parts.append(f"adds {_plural(diff.steps_added, 'step')} ({', '.join(diff.steps_added)})")
    if diff.steps_removed:
        parts.append(f"removes {_plural(diff.steps_removed, 'step')} ({', '.join(diff.steps_removed)})")
    if diff.steps_changed:
        described = []
        for step in diff.steps_changed:
            shown = [_describe(change) for change in step.changes[:3]]
            more = len(step.changes) - len(shown)
            described.append(f"{step.id}: {'; '.join(shown)}{f'; {more} more' if more else ''}")
        parts.append(f"changes {_plural(diff.steps_changed, 'step')} ({'; '.join(described)})")
    if diff.steps_reordered:
        parts.append("reorders steps")
    if diff.fields_changed:
        parts.append("changes " + ", ".join(_describe(change) for change in diff.fields_changed))
    left_out = f" {diff.changes_left_out} more changes are not listed." if diff.changes_left_out else ""
    return f"The new version {_joined(parts)}.{left_out}"


def diff_definitions(old: dict[str, Any], new: dict[str, Any]) -> DefinitionDiff:
    """What changed from `old` to `new` (normalized definitions); steps are matched by id."""
    old_steps, new_steps = _steps_by_id(old), _steps_by_id(new)
    added = tuple(step_id for step_id in new_steps if step_id not in old_steps)
    removed = tuple(step_id for step_id in old_steps if step_id not in new_steps)
    budget = _Budget()  # one for the whole diff: steps' changes (their params included) and fields' alike
    changed = tuple(
        StepChange(step_id, tuple(_changes(old_steps[step_id], new_steps[step_id], budget)))
        for step_id in new_steps
        if step_id in old_steps
        # A step changed past the budget is still named, with the changes listed for it (maybe none).
        if not json_equal(old_steps[step_id], new_steps[step_id])
    )
    common_old = [step_id for step_id in old_steps if step_id in new_steps]
    common_new = [step_id for step_id in new_steps if step_id in old_steps]
    fields = tuple(
        _changes({k: v for k, v in old.items() if k != "steps"}, {k: v for k, v in new.items() if k != "steps"}, budget)
    )
    draft = DefinitionDiff(
        added, removed, changed, common_old != common_new, fields, summary="", changes_left_out=budget.left_out
    )
    return replace(draft, summary=_summary(draft))
