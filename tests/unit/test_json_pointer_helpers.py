# intent_ref: platform.hardening
"""One RFC 6901 escaping and one JSON string pattern, used by every place that builds pointers or skips strings."""

from __future__ import annotations

import re

import pytest

from shared import accepted_json
from shared.api.accepted_input import MAX_BODY_CONTAINERS, containers
from shared.field_errors import json_pointer
from shared.registry.schema_refs import reference_problems

# Names whose escaping depends on the order of the two replacements: `~` first when writing, `~1` first when reading.
TRICKY = ["a/b", "~", "~1", "~0", "/~", "~/", "~01", ""]


@pytest.mark.parametrize("name", TRICKY)
def test_a_reference_token_is_escaped_in_rfc_6901_order_and_read_back_as_the_name(name: str) -> None:
    token = accepted_json.escaped_token(name)
    assert "/" not in token
    assert accepted_json.unescaped_token(token) == name


def test_every_pointer_builder_writes_the_same_pointer_for_the_same_path() -> None:
    path = ("definition", "a/b", "~1", 3, "")
    expected = "/definition/a~1b/~01/3/"
    assert accepted_json.escaped_token("a/b~") == "a~1b~0"
    assert accepted_json.path_pointer(path) == expected
    assert json_pointer(("body", *path)) == expected
    assert json_pointer(list(path)) == expected
    assert json_pointer(("body",)) == "" == accepted_json.path_pointer(())
    found = accepted_json.refusals({"definition": {"a/b": {"~1": [0, 1, 2, {"": "\x00"}]}}})
    assert [refusal.pointer for refusal in found] == ["/definition/a~1b/~01/3/"]


def test_a_refused_member_name_is_escaped_then_written_storable() -> None:
    found = accepted_json.refusals({"x/\x00~": 1})
    assert [refusal.pointer for refusal in found] == ["/x~1\\u0000~0"]


def test_a_schema_reference_cycle_is_named_by_escaped_pointers() -> None:
    schema = {"$defs": {"a/b~": {"$ref": "#/$defs/a~1b~0"}}, "$ref": "#/$defs/a~1b~0"}
    [(where, message)] = reference_problems(schema)
    assert where == ("$defs", "a/b~", "$ref")
    assert "(#/$defs/a~1b~0 -> #/$defs/a~1b~0)" in message


@pytest.mark.parametrize(
    ("text", "strings"),
    [
        ('"plain"', ['"plain"']),
        ('"with \\" quote [" ]', ['"with \\" quote ["']),
        ('"é{" "\\\\"', ['"é{"', '"\\\\"']),
        ('"never closed [[', ['"never closed [[']),
        ('"ends in a backslash \\', ['"ends in a backslash \\']),
    ],
)
def test_the_json_string_pattern_finds_the_same_strings_in_text_and_in_its_bytes(text: str, strings: list[str]) -> None:
    as_text = re.compile(accepted_json.JSON_STRING, re.DOTALL).findall(text)
    as_bytes = re.compile(accepted_json.JSON_STRING.encode("ascii"), re.DOTALL).findall(text.encode())
    assert as_text == strings
    assert [found.decode() for found in as_bytes] == strings


def test_brackets_in_strings_count_neither_as_containers_nor_as_nesting() -> None:
    inside = '"' + "[" * (MAX_BODY_CONTAINERS + 1) + '"'
    body = f'[{inside}, {{"é\\"[": [{inside}]}}]'
    assert containers(body.encode()) == 3
    assert accepted_json.nesting_depth(body) == 3
