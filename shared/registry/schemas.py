# intent_ref: platform.registry
"""Validators for tenant-supplied JSON Schemas: every regular expression runs on RE2, in linear time.

Python's `re` backtracks, so a tenant's `pattern` such as `^(a+)+$` could hold a worker for hours on a short
input. Patterns RE2 cannot compile (backreferences, lookaround) are refused when the schema is registered.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any

import re2  # type: ignore[import-untyped]  # the package ships no type information
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend

JsonPath = tuple[str | int, ...]
MAX_PATTERN_LENGTH = 1000
# Keywords whose values are data, not subschemas: a `pattern` key inside them is not a keyword.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
_PATTERN_CACHE_SIZE = 1024


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is reported to the tenant, not to the process's stderr
    return options


_OPTIONS = _options()


@functools.lru_cache(maxsize=_PATTERN_CACHE_SIZE)
def _compiled(pattern: str) -> tuple[Any, str | None]:
    """The compiled pattern, or None and why RE2 cannot run it."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        return None, f"longer than {MAX_PATTERN_LENGTH} characters"
    try:
        return re2.compile(pattern, _OPTIONS), None
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "unsupported"
        return None, reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be enforced (e.g. a backreference or lookaround), or None when it can."""
    return _compiled(pattern)[1]


def matches(pattern: str, text: str) -> bool:
    """Whether `pattern` matches anywhere in `text` (JSON Schema regexes are unanchored); an unenforceable
    pattern matches nothing, so a schema stored before this rule refuses rather than waves through."""
    regexp = _compiled(pattern)[0]
    return regexp is not None and regexp.search(text) is not None


def pattern_problems(schema: Any) -> list[tuple[JsonPath, str]]:
    """Every `pattern` and `patternProperties` regex in `schema` that RE2 cannot run, with its location."""
    problems: list[tuple[JsonPath, str]] = []
    stack: list[tuple[JsonPath, Any]] = [((), schema)]
    while stack:  # iterative: a tenant's schema may be deep
        path, node = stack.pop()
        if isinstance(node, list):
            stack.extend(((*path, index), item) for index, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                reason = pattern_problem(value)
                if reason is not None:
                    problems.append(((*path, key), f"the pattern {value!r} cannot be used: {reason}"))
            elif key == "patternProperties" and isinstance(value, dict):
                for regex in value:
                    reason = pattern_problem(regex)
                    if reason is not None:
                        problems.append(((*path, key, regex), f"the pattern {regex!r} cannot be used: {reason}"))
            if key not in _DATA_KEYWORDS:
                stack.append(((*path, key), value))
    return sorted(problems, key=lambda problem: [str(part) for part in problem[0]])


# The keyword functions below are jsonschema's own, with RE2 in place of `re`. `additionalProperties` and
# `unevaluatedProperties` are among them because the library matches `patternProperties` inside them too.
def _pattern(validator: Any, pattern: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string") or not isinstance(pattern, str):
        return
    if pattern_problem(pattern) is not None:
        yield ValidationError(f"the pattern {pattern!r} cannot be evaluated")
    elif not matches(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        if pattern_problem(pattern) is not None:
            yield ValidationError(f"the pattern {pattern!r} cannot be evaluated")
            continue
        for key, value in instance.items():
            if matches(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [key for key in instance if key not in properties and not any(matches(pattern, key) for pattern in patterns)]


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        joined = ", ".join(repr(extra) for extra in sorted(extras))
        if "patternProperties" in schema:
            patterns = ", ".join(repr(pattern) for pattern in sorted(schema["patternProperties"]))
            verb = "does" if len(extras) == 1 else "do"
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({joined} {verb} unexpected)")


def _valid(errors: Iterable[ValidationError]) -> bool:
    return next(iter(errors), None) is None


def _evaluated_keys(validator: Any, instance: dict[str, Any], schema: Any) -> set[str]:
    """The keys some keyword of `schema` evaluates (what `unevaluatedProperties` leaves alone)."""
    if validator.is_type(schema, "boolean"):
        return set()
    keys: set[str] = set()
    for keyword in ("$ref", "$dynamicRef"):
        ref = schema.get(keyword)
        if ref is not None:
            resolved = validator._resolver.lookup(ref)
            keys |= _evaluated_keys(
                validator.evolve(schema=resolved.contents, _resolver=resolved.resolver), instance, resolved.contents
            )
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if (subschema := schema.get(keyword)) is not None:
            keys |= {key for key, value in instance.items() if _valid(validator.descend(value, subschema))}
    for pattern in schema.get("patternProperties", {}):
        keys |= {key for key in instance if matches(pattern, key)}
    for name, subschema in schema.get("dependentSchemas", {}).items():
        if name in instance:
            keys |= _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _valid(validator.descend(instance, subschema)):
                keys |= _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys |= _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys |= _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys |= _evaluated_keys(validator, instance, schema["else"])
    return keys


def _unevaluated_properties(
    validator: Any, unevaluated: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    failing = [
        key
        for key in instance
        if key not in evaluated and not _valid(validator.descend(instance[key], unevaluated, path=key, schema_path=key))
    ]
    if failing:
        joined = ", ".join(repr(key) for key in sorted(failing))
        verb = "was" if len(failing) == 1 else "were"
        if unevaluated is False:
            yield ValidationError(f"Unevaluated properties are not allowed ({joined} {verb} unexpected)")
        else:
            yield ValidationError(
                f"Unevaluated properties are not valid under the given schema ({joined} {verb} unevaluated and invalid)"
            )


TenantSchemaValidator: type[Validator] = extend(
    Draft202012Validator,
    {  # type: ignore[no-untyped-call]
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
        "unevaluatedProperties": _unevaluated_properties,
    },
)
"""JSON Schema 2020-12 with RE2 regexes: the one validator class for every schema a tenant supplies."""


def tenant_validator(schema: Any) -> Validator:
    """A validator of instances against a tenant-supplied schema (intent inputs, module parameters)."""
    return TenantSchemaValidator(schema)
