# intent_ref: platform.registry
"""The checks on a definition's steps: ids, dependencies and cycles, modules and parameters, references, gates."""

# They read the raw request rather than the parsed model, so that one malformed step does not hide the problems
# of the others, and every pointer lands where the client wrote the offending value.

from __future__ import annotations

import difflib
import re
from collections import deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from shared.engine.protocol import ORCHESTRATOR_ACTIONS
from shared.modules.ssrf import allow_list_refusal, private_network_allowed
from shared.policy.facts import TenantFacts
from shared.policy.gates import TARGET_STEP, check_gates
from shared.registry.catalog import RFC3339_DATE_TIME, ModuleCatalog
from shared.registry.model import (
    ACTION_PATTERN,
    COMPENSATION_FIELDS,
    MAX_TIMEOUT_S,
    STEP_FIELDS,
    Step,
    merged_params,
    raw_step_ids,
)
from shared.registry.problems import MAX_REPORTED_ERRORS, ValidationError, from_schema, pointer
from shared.registry.references import (
    JsonPath,
    Reference,
    ReferenceSyntaxError,
    UnresolvedReferenceError,
    parse_template,
    resolve,
    scan_references,
)
from shared.registry.schemas import EvaluationBudgetExceeded, evaluation_budget
from shared.registry.when import WhenSyntaxError, parse_when, when_references

STEPS: JsonPath = ("definition", "steps")

OUTBOUND_URL_PARAMS: Mapping[str, tuple[str, ...]] = {
    "http.request": ("url",),
    "http.wait_healthy": ("url",),
    "verify-deployment": ("url",),
}
"""The parameters of built-in actions that name a URL the platform itself connects to."""

MAX_DEFINITION_EVALUATION_STEPS = 500_000
"""Keyword applications the parameter schemas of one definition's steps and compensations may make in all (ADR 0016):
each evaluation also keeps its own bound, but 200 steps each evaluating a costly module's schema would otherwise
multiply it by 400."""


@dataclass(frozen=True)
class _StepView:
    index: int
    raw: Any
    id: str
    explicit_id: bool
    deps: list[tuple[int | None, str]]  # (position in depends_on, or None when implied; the dependency's id)

    @property
    def at(self) -> JsonPath:
        return (*STEPS, self.index)


def _views(raw_steps: Sequence[Any]) -> list[_StepView]:
    ids = raw_step_ids(raw_steps)
    views = []
    for index, raw in enumerate(raw_steps):
        raw_deps = raw.get("depends_on") if isinstance(raw, dict) else None
        deps: list[tuple[int | None, str]]
        if raw_deps is None:
            deps = [(None, ids[index - 1])] if index else []
        elif isinstance(raw_deps, list):
            deps = [(k, dep) for k, dep in enumerate(raw_deps) if isinstance(dep, str)]
        else:
            deps = []  # the schema check reports the type
        explicit = isinstance(raw, dict) and isinstance(raw.get("id"), str)
        views.append(_StepView(index, raw, ids[index], explicit, deps))
    return views


MAX_SUGGESTION_CANDIDATES = 200
"""Past this many names to choose from, no "did you mean": each suggestion compares the name with every one."""


class _Suggestions:
    """ "Did you mean" hints for one definition. difflib compares a name with every candidate, so a definition with
    thousands of misspelt references to thousands of names would cost minutes: each name is looked up once, and
    only for the problems that are reported."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, int], str] = {}

    def __call__(self, name: str, known: Collection[str]) -> str:
        if len(known) > MAX_SUGGESTION_CANDIDATES:
            return ""
        key = (name, id(known))  # the candidates are the definition's own collections, alive all along
        if key not in self._found:
            close = difflib.get_close_matches(name, list(known), n=1)
            self._found[key] = f" (did you mean '{close[0]}'?)" if close else ""
        return self._found[key]


def _graph(
    views: Sequence[_StepView], suggest: _Suggestions
) -> tuple[dict[str, int], dict[int, list[tuple[int | None, int]]], list[ValidationError]]:
    """Step indexes by id, each step's edges to the steps it depends on, and the id and dependency problems (at
    most MAX_REPORTED_ERRORS of them)."""
    problems: list[ValidationError] = []
    index_of: dict[str, int] = {}
    for view in views:
        if view.id not in index_of:
            index_of[view.id] = view.index
        elif view.explicit_id and len(problems) < MAX_REPORTED_ERRORS:
            problems.append(
                ValidationError(
                    pointer(*view.at, "id"),
                    f"step id '{view.id}' is already used by {pointer(*STEPS, index_of[view.id])}",
                    "duplicate_id",
                )
            )
    edges: dict[int, list[tuple[int | None, int]]] = {}
    for view in views:
        edges[view.index] = []
        seen: set[str] = set()
        for k, dep in view.deps:
            at = pointer(*view.at, "depends_on", k) if k is not None else pointer(*view.at)
            if dep not in index_of:
                if len(problems) < MAX_REPORTED_ERRORS:
                    problems.append(
                        ValidationError(
                            at, f"depends on unknown step '{dep}'{suggest(dep, index_of)}", "unknown_dependency"
                        )
                    )
            elif dep in seen:
                if len(problems) < MAX_REPORTED_ERRORS:
                    problems.append(ValidationError(at, f"step '{dep}' is listed twice", "duplicate_dependency"))
            else:
                edges[view.index].append((k, index_of[dep]))
            seen.add(dep)
    return index_of, edges, problems


def _ancestors(edges: Mapping[int, list[tuple[int | None, int]]]) -> dict[int, set[int]]:
    """Every step each step waits for, directly or transitively (a step on a cycle is its own ancestor)."""
    closure: dict[int, set[int]] = {}
    for start in edges:
        reached: set[int] = set()
        queue = deque(target for _, target in edges[start])
        while queue:
            node = queue.popleft()
            if node not in reached:
                reached.add(node)
                queue.extend(target for _, target in edges[node])
        closure[start] = reached
    return closure


def _cycle_through(
    start: int, edges: Mapping[int, list[tuple[int | None, int]]], members: set[int]
) -> list[tuple[int, int | None, int]]:
    """The shortest cycle from `start` back to it inside one strongly connected component, as edges."""
    parent: dict[int, tuple[int, int | None]] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for k, target in edges[node]:
            if target == start:
                path = [(node, k, start)]
                while node != start:
                    previous, via = parent[node]
                    path.append((previous, via, node))
                    node = previous
                return path[::-1]
            if target in members and target not in parent:
                parent[target] = (node, k)
                queue.append(target)
    raise AssertionError("a member of a strongly connected component lies on a cycle")


def _cycles(
    views: Sequence[_StepView], edges: Mapping[int, list[tuple[int | None, int]]], ancestors: Mapping[int, set[int]]
) -> list[ValidationError]:
    """One problem per cycle of steps, named in dependency order, at an explicit `depends_on` entry that closes it."""
    problems = []
    placed: set[int] = set()
    for start in edges:
        if start in placed or start not in ancestors[start]:
            continue
        members = {node for node in edges if node in ancestors[start] and start in ancestors[node]}
        placed |= members
        cycle = _cycle_through(start, edges, members)
        # An implied dependency points back at the previous step, so some explicit one points forward (or at itself).
        source, k, _ = next(((u, k, v) for u, k, v in cycle if k is not None and v >= u), cycle[0])
        at = pointer(*views[source].at, "depends_on", k) if k is not None else pointer(*views[source].at)
        names = " → ".join([views[cycle[0][0]].id, *(views[v].id for _, _, v in cycle)])
        problems.append(
            ValidationError(at, f"dependency cycle: {names} (each step depends on the next)", "cyclic_dependency")
        )
    return problems


def _param_pointer(base: JsonPath, raw: Mapping[str, Any], known: Collection[str], path: JsonPath) -> str:
    """Where a parameter was written: inside `params`, or beside `action` as in the seed."""
    params = raw.get("params")
    if path:
        inside = isinstance(params, dict) and path[0] in params
        return pointer(*base, "params", *path) if inside else pointer(*base, *path)
    beside = any(key not in known for key in raw)
    return pointer(*base, "params") if isinstance(params, dict) and not beside else pointer(*base)


def _action_of(raw: Any) -> str | None:
    """The well-formed action a step or compensation names (the schema check reports a malformed one)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("action"), str):
        return None
    action: str = raw["action"]
    return action if re.fullmatch(ACTION_PATTERN, action) else None


def _unknown_action_problems(
    base: JsonPath, raw: Any, catalog: ModuleCatalog, suggest: _Suggestions
) -> list[ValidationError]:
    action = _action_of(raw)
    if action is None or action in catalog:
        return []
    return [
        ValidationError(
            pointer(*base, "action"), f"unknown action '{action}'{suggest(action, catalog)}", "unknown_action"
        )
    ]


def _params_problems(base: JsonPath, raw: Any, known: Collection[str], catalog: ModuleCatalog) -> list[ValidationError]:
    """The parameters of a catalogued action against its module's schema (an evaluation of the tenant's schema)."""
    action = _action_of(raw)
    spec = catalog.get(action) if action is not None else None
    if action is None or spec is None:
        return []
    params = merged_params(raw, known)
    if params is None:
        return []
    return from_schema(
        spec.params_schema,
        {**spec.defaults, **params},
        lambda path: _param_pointer(base, raw, known, path),
        code="invalid_params",
        subject=action,
    )


def _budget_problem(base: JsonPath, raw: Any, known: Collection[str]) -> ValidationError:
    """The problem of the step or compensation whose parameters' evaluation exhausted the definition's budget."""
    return ValidationError(
        _param_pointer(base, raw, known, ()),
        f"{raw['action']}: the schema cannot be evaluated (checking the parameters of all the definition's steps"
        f" takes more than {MAX_DEFINITION_EVALUATION_STEPS:,} steps; use fewer steps with this module, or a module"
        " whose parameter schema costs less)",
        "invalid_params",
    )


def _compensation_problems(base: JsonPath, raw: Any) -> list[ValidationError]:
    """A compensation is module work: an action the engine carries out itself cannot undo a step."""
    if not isinstance(raw, dict) or raw.get("action") not in ORCHESTRATOR_ACTIONS:
        return []
    return [
        ValidationError(
            pointer(*base, "action"),
            f"'{raw['action']}' cannot undo a step: a compensation runs a module's work"
            f" (not {', '.join(sorted(ORCHESTRATOR_ACTIONS))})",
            "unsupported_compensation",
        )
    ]


def _recursion_problems(base: JsonPath, raw: Mapping[str, Any], name: str | None) -> list[ValidationError]:
    """An intent.run step that starts the intent being saved, named literally: its run would start itself until
    the engine refuses it (ADR 0014), so it is refused here at once. An intent coming round through others is
    refused at save by the registry service, which reads them; a name built from references is left to that
    run-time check."""
    if name is None or raw.get("action") != "intent.run":
        return []
    params = merged_params(raw, STEP_FIELDS)
    target = params.get("intent") if params is not None else None
    if not isinstance(target, str):
        return []  # the module's schema reports a missing or malformed name
    try:
        parts = parse_template(target)
    except ReferenceSyntaxError:
        return []  # the reference check reports it
    if any(isinstance(part, Reference) for part in parts) or "".join(map(str, parts)) != name:
        return []
    return [
        ValidationError(
            _param_pointer(base, raw, STEP_FIELDS, ("intent",)),
            f"the step runs intent '{name}', the intent being saved: an intent cannot run itself",
            "recursive_intent",
        )
    ]


def _engine_action_problems(
    base: JsonPath, raw: Mapping[str, Any], catalog: ModuleCatalog, now: datetime
) -> list[ValidationError]:
    """What the engine's own `intent.run` and `wait` cannot do as written (ADR 0014).

    `intent.run` with a `wait` other than a literal true (`false`, or a reference): the step always waits for its
    child's end (its output is the child's outputs, and a stopping parent cancels it); fire-and-forget is not carried
    out, so the flag is refused rather than ignored (a reference too: its value is never read).
    A `wait` whose literal `seconds`, or `until` from now, is past the step's timeout (its `timeout_s`, else the
    module's, 30 days): it could only time out. A value a reference gives is left to the run, which fails such a
    wait as it starts (reducer rules 11)."""
    action = raw.get("action")
    if action not in ("intent.run", "wait"):
        return []
    params = merged_params(raw, STEP_FIELDS)
    if params is None:
        return []
    if action == "intent.run":
        if "wait" not in params or params["wait"] is True:
            return []
        # Anything but a literal true is refused, a reference too: the engine never reads `wait`, so an input that
        # came to false would be ignored as silently as a literal false was.
        refused = "false" if params["wait"] is False else "a value other than a literal true"
        return [
            ValidationError(
                _param_pointer(base, raw, STEP_FIELDS, ("wait",)),
                f"intent.run: wait: {refused} is not supported: the step always waits for its child execution to end"
                " (its output is the child's outputs); leave wait out",
                "unsupported_wait",
            )
        ]
    spec = catalog.get("wait")
    given = raw.get("timeout_s")
    limit = given if isinstance(given, int) and not isinstance(given, bool) and given > 0 else None
    if limit is None and spec is not None:
        limit = spec.timeout_s
    if limit is None:
        return []
    seconds, until = params.get("seconds"), params.get("until")
    if seconds is not None and until is not None:
        return []  # the module's schema reports that only one may be given
    if isinstance(until, str) and "${" not in until:
        at = _literal_time(until)
        if at is None:
            return []  # the module's schema reports a malformed time
        away = (at - now).total_seconds()
        if away <= limit:
            return []
        pointed, shown = ("until",), f"until {until} is {away:.0f} s from now"
    elif isinstance(seconds, int | float) and not isinstance(seconds, bool):
        if seconds <= limit or seconds > MAX_TIMEOUT_S:
            return []  # within its timeout, or past what the module's schema allows (which reports it)
        pointed, shown = ("seconds",), f"seconds {seconds:g}"
    else:
        return []
    return [
        ValidationError(
            _param_pointer(base, raw, STEP_FIELDS, pointed),
            f"wait: {shown}, past the step's timeout of {limit} s: a wait step waits at most its timeout_s"
            f" (at most {MAX_TIMEOUT_S} s); raise timeout_s or wait in several steps",
            "wait_past_timeout",
        )
    ]


def _literal_time(text: str) -> datetime | None:
    """A literal `until` as the engine reads it (a trailing Z is UTC, no offset is UTC); None if it is none (the
    module's schema reports a value not in the RFC 3339 form)."""
    if re.match(RFC3339_DATE_TIME, text) is None:
        return None
    try:
        at = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _reference_problems(
    view: _StepView,
    index_of: Mapping[str, int],
    ancestors: Mapping[int, set[int]],
    declared: Collection[str] | None,
    suggest: _Suggestions,
    room: int,
) -> list[ValidationError]:
    """The problems of a step's references, at most `room` of them: a step may hold thousands."""
    if not isinstance(view.raw, dict):
        return []
    problems: list[ValidationError] = []
    upstream = ancestors[view.index]
    located: list[tuple[str, Reference, set[int]]] = []
    # A compensation runs after its own step completed, so it may read that step's output too.
    sources: list[tuple[JsonPath, dict[str, Any], Collection[str], set[int]]] = [
        (view.at, view.raw, STEP_FIELDS, upstream)
    ]
    compensate = view.raw.get("compensate")
    if isinstance(compensate, dict):
        sources.append(((*view.at, "compensate"), compensate, COMPENSATION_FIELDS, upstream | {view.index}))
    for base, raw, known, allowed in sources:
        params = merged_params(raw, known)
        if params is None:
            continue
        scan = scan_references(params)
        located.extend((_param_pointer(base, raw, known, path), ref, allowed) for path, ref in scan.found)
        problems.extend(
            ValidationError(_param_pointer(base, raw, known, path), message, "invalid_reference")
            for path, message in scan.errors
        )
    when = view.raw.get("when")
    if isinstance(when, str):
        try:
            located.extend((pointer(*view.at, "when"), ref, upstream) for ref in when_references(parse_when(when)))
        except WhenSyntaxError:
            pass  # the schema check reports it
    for at, ref, allowed in located:
        if len(problems) >= room:
            break
        if ref.source == "inputs":
            if declared is not None and ref.name not in declared:
                problems.append(
                    ValidationError(
                        at,
                        f"{ref} reads input '{ref.name}', which /definition/inputs does not declare"
                        f"{suggest(ref.name, declared)}",
                        "reference_undeclared_input",
                    )
                )
        elif ref.name not in index_of:
            problems.append(
                ValidationError(
                    at,
                    f"{ref} reads step '{ref.name}', which does not exist{suggest(ref.name, index_of)}",
                    "reference_unknown_step",
                )
            )
        elif index_of[ref.name] not in allowed:
            problems.append(
                ValidationError(
                    at,
                    f"{ref} reads step '{ref.name}', which is not upstream of step '{view.id}': add it to "
                    "depends_on (directly or through another step)",
                    "reference_not_upstream",
                )
            )
    return problems[:room]


def literal_host(url: str) -> str | None:
    """The host `url` connects to when that can be read before run time; None when a reference (`${...}`, or
    the `$${` escape) comes before the authority ends, or the URL does not parse (the schema check reports that)."""
    cut = url.find("$")
    fixed = url if cut < 0 else url[:cut]
    _, separator, rest = fixed.partition("://")
    # A reference inside the authority could extend the host (`http://10.0.0.1${inputs.suffix}`), so only a
    # prefix whose authority is closed by a path, query or fragment is judged.
    if not separator or (cut >= 0 and not any(mark in rest for mark in "/?#")):
        return None
    try:
        host = httpx.URL(fixed).host
    except (httpx.InvalidURL, UnicodeError):
        return None
    return host or None


def _network_problems(
    base: JsonPath, raw: Any, known: Collection[str], allow_private: bool | None
) -> list[ValidationError]:
    """URLs in outbound steps that can never run here: a literal private, loopback or metadata host (ADR 0016).
    With private networks open (local development) every literal URL may run, as before."""
    if not isinstance(raw, dict) or raw.get("action") not in OUTBOUND_URL_PARAMS:
        return []
    params = merged_params(raw, known)
    if params is None:
        return []
    problems = []
    for name in OUTBOUND_URL_PARAMS[raw["action"]]:
        url = params.get(name)
        refusal = _url_refusal(url, allow_private) if isinstance(url, str) else None
        if refusal is not None:
            problems.append(
                ValidationError(
                    _param_pointer(base, raw, known, (name,)),
                    f"{refusal}: steps on this platform reach public addresses only",
                    "url_not_public",
                )
            )
    return problems


def declared_url_problems(
    steps: Sequence[Step], inputs: Mapping[str, Any], declared: Collection[str], at: str, allow_private: bool | None
) -> list[ValidationError]:
    """URLs a blueprint's outbound steps build from a declaration's inputs alone (`inputs`: its declared values over
    the blueprint's defaults), refused as the same URL written in a step is: the value is known when the declaration
    is saved, so it need not wait until run time to fail. Pointed at the declared fields of the URL's address, or
    at `at` when its address comes from the blueprint's defaults."""
    problems: list[ValidationError] = []
    for where, param, url in _outbound_urls(steps):
        try:
            parts = parse_template(url)
            refs = [part for part in parts if isinstance(part, Reference)]
            if not refs or any(ref.source != "inputs" for ref in refs):
                continue  # a literal URL is checked with the blueprint; a step's output is known at run time only
            resolved = resolve(url, inputs, {})
        except (UnresolvedReferenceError, ReferenceSyntaxError):
            continue  # an input the declaration does not set (reported as missing, or given at start), or a typo
        refusal = _url_refusal(resolved, allow_private) if isinstance(resolved, str) else None
        if refusal is None:
            continue
        message = (
            f"{refusal}: blueprint step '{where}' builds its {param} from the declaration's inputs, and steps on "
            "this platform reach public addresses only"
        )
        fields = sorted({field for field in _address_inputs(parts) if field in declared})
        locations = [pointer("definition", field) for field in fields] or [at]
        problems.extend(ValidationError(location, message, "url_not_public") for location in locations)
    return problems


def _outbound_urls(steps: Sequence[Step]) -> Iterator[tuple[str, str, str]]:
    """(step, parameter, URL template) of every URL the steps and their compensations connect to."""
    for step in steps:
        calls = [(step.step_id, step.action, step.params)]
        if step.compensate is not None:
            calls.append((f"{step.step_id}/compensate", step.compensate.action, step.compensate.params))
        for where, action, params in calls:
            for param in OUTBOUND_URL_PARAMS.get(action, ()):
                url = params.get(param)
                if isinstance(url, str):
                    yield where, param, url


def _url_refusal(url: str, allow_private: bool | None) -> str | None:
    """Why a step may never connect to `url` here (its literal host is private, loopback, metadata or a
    private-only name, and private networks are closed), or None, also when its host is not fixed yet."""
    host = literal_host(url)
    refusal = allow_list_refusal(host, allow_private=False) if host is not None else None
    # The setting is read only when there is something to refuse: most definitions name public hosts.
    return refusal if refusal is not None and not private_network_allowed(allow_private) else None


def _address_inputs(parts: Sequence[str | Reference]) -> list[str]:
    """The inputs a parsed URL template's address (its scheme and authority) is built from, in order: the ones to
    blame for where it connects, not those of its path."""
    names: list[str] = []
    text = ""
    for part in parts:
        if isinstance(part, Reference):
            names.append(part.name)
            continue
        text += part
        _, scheme_end, authority = text.partition("://")
        if scheme_end and any(mark in authority for mark in "/?#"):
            break
    return names


def gate_problems(
    tenant: TenantFacts | None, target: Any, actions: Mapping[str, tuple[str, str]]
) -> list[ValidationError]:
    """The tenant gates (ADR 0011) as problems; `actions` maps a key to (action, pointer of where it is named)."""
    return _gate_problems(tenant, target, actions)[0]


def _gate_problems(
    tenant: TenantFacts | None, target: Any, actions: Mapping[str, tuple[str, str]]
) -> tuple[list[ValidationError], set[str]]:
    """`gate_problems`, and the keys of `actions` whose module the tenant may not use."""
    if tenant is None:
        return [], set()
    violations = check_gates(
        tenant, target if isinstance(target, str) else None, {key: action for key, (action, _) in actions.items()}
    )
    refused = {violation.step for violation in violations if violation.step != TARGET_STEP}
    return [
        ValidationError(
            "/definition/target", f"target '{violation.value}' is not allowed for this tenant", violation.reason
        )
        if violation.step == TARGET_STEP
        else ValidationError(
            actions[violation.step][1], f"module '{violation.value}' is not allowed for this tenant", violation.reason
        )
        for violation in violations
    ], refused


def _step_actions(views: Sequence[_StepView], catalog: ModuleCatalog) -> dict[str, tuple[str, str]]:
    """The catalogued actions of steps and compensations, keyed by position (ids may be duplicated here)."""
    actions: dict[str, tuple[str, str]] = {}
    for view in views:
        if not isinstance(view.raw, dict):
            continue
        compensate = view.raw.get("compensate")
        for key, holder, at in (
            (str(view.index), view.raw, view.at),
            (f"{view.index}/compensate", compensate, (*view.at, "compensate")),
        ):
            if isinstance(holder, dict) and isinstance(holder.get("action"), str) and holder["action"] in catalog:
                actions[key] = (holder["action"], pointer(*at, "action"))
    return actions


def declared_inputs(inputs: Any) -> set[str] | None:
    """The input names a definition's `inputs` schema declares; None when it gives no schema (anything goes)."""
    if not isinstance(inputs, dict):
        return None
    properties = inputs.get("properties")
    return set(properties) if isinstance(properties, dict) else set()


def check_steps(
    raw_definition: Mapping[str, Any],
    catalog: ModuleCatalog,
    tenant: TenantFacts | None,
    *,
    allow_private: bool | None = None,
    name: str | None = None,
) -> list[ValidationError]:
    """The problems of a definition's steps, at most MAX_REPORTED_ERRORS (the caller has checked that `steps` is a
    list); `allow_private` overrides QP_ALLOW_PRIVATE_NETWORK_HOSTS for the URL checks (None reads the setting);
    `name` is the name it is saved under, which no intent.run step may name (None: not checked).

    Unknown actions and the tenant's gates are checked before any parameter schema is evaluated, and a module the
    tenant may not use is never evaluated. Every evaluation of the steps' parameters draws from one budget of
    MAX_DEFINITION_EVALUATION_STEPS: past it the remaining parameters are not checked and the definition is refused.
    """
    suggest = _Suggestions()
    now = datetime.now(UTC)
    views = _views(raw_definition["steps"])
    index_of, edges, problems = _graph(views, suggest)
    ancestors = _ancestors(edges)
    problems.extend(_cycles(views, edges, ancestors))
    declared = declared_inputs(raw_definition.get("inputs"))
    for view in views:
        if len(problems) >= MAX_REPORTED_ERRORS:
            break  # each unknown action may cost a suggestion
        if isinstance(view.raw, dict):
            problems.extend(_unknown_action_problems(view.at, view.raw, catalog, suggest))
            compensate = view.raw.get("compensate")
            problems.extend(_unknown_action_problems((*view.at, "compensate"), compensate, catalog, suggest))
    gated, refused = _gate_problems(tenant, raw_definition.get("target"), _step_actions(views, catalog))
    problems.extend(gated)
    exhausted = False
    with evaluation_budget(MAX_DEFINITION_EVALUATION_STEPS) as budget:
        for view in views:
            # Past the cap the client learns nothing more, and the checks (a suggestion above all) cost work.
            if len(problems) >= MAX_REPORTED_ERRORS:
                break
            if not isinstance(view.raw, dict):
                continue
            holders = (
                (str(view.index), view.at, view.raw, STEP_FIELDS),
                (f"{view.index}/compensate", (*view.at, "compensate"), view.raw.get("compensate"), COMPENSATION_FIELDS),
            )
            for key, base, raw, known in holders:
                if exhausted or key in refused:
                    continue
                try:
                    problems.extend(_params_problems(base, raw, known, catalog))
                except EvaluationBudgetExceeded as exc:
                    if exc.budget is not budget:
                        raise
                    problems.append(_budget_problem(base, raw, known))
                    exhausted = True
            problems.extend(_compensation_problems((*view.at, "compensate"), view.raw.get("compensate")))
            problems.extend(_recursion_problems(view.at, view.raw, name))
            problems.extend(_engine_action_problems(view.at, view.raw, catalog, now))
            for _, base, raw, known in holders:
                problems.extend(_network_problems(base, raw, known, allow_private))
            problems.extend(
                _reference_problems(
                    view, index_of, ancestors, declared, suggest, max(0, MAX_REPORTED_ERRORS - len(problems))
                )
            )
    return problems[:MAX_REPORTED_ERRORS]
