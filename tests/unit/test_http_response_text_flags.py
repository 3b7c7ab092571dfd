# intent_ref: platform.modules
"""http.request says when the text it records is not the text sent (`body_replaced`): a byte its charset could not
decode became U+FFFD without the flag, and a surrogate pair a charset left as two halves became two U+FFFD."""

from __future__ import annotations

import httpx

from shared import accepted_json
from shared.modules.http_request import read_body


def _response(content_type: str, content: bytes) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": content_type}, content=content)


def test_a_surrogate_pair_left_as_two_halves_is_joined_and_only_lone_halves_are_replaced() -> None:
    assert accepted_json.replace_unstorable("a\ud83d\ude00b") == "a\U0001f600b"
    assert accepted_json.replace_unstorable("\ud83d\ud83d\ude00\x00") == "\ufffd\U0001f600\ufffd"
    assert accepted_json.replace_unstorable("\ude00\ud83d") == "\ufffd\ufffd"  # the wrong way round: no pair


def test_a_surrogate_pair_a_charset_left_as_two_halves_is_recorded_as_its_character_unflagged() -> None:
    content = b"smile \\ud83d\\ude00"
    body, as_text, replaced = read_body(_response("text/plain; charset=unicode_escape", content), content, False)
    assert (body, as_text, replaced) == ("smile \U0001f600", False, False)


def test_bytes_the_charset_cannot_decode_are_flagged_replaced() -> None:
    content = b"caf\xe9"  # latin-1, labelled UTF-8
    body, as_text, replaced = read_body(_response("text/plain; charset=utf-8", content), content, False)
    assert (body, as_text, replaced) == ("caf\ufffd", False, True)


def test_a_replacement_character_the_body_sent_is_not_flagged() -> None:
    content = "sent \ufffd as is".encode()
    body, as_text, replaced = read_body(_response("text/plain; charset=utf-8", content), content, False)
    assert (body, as_text, replaced) == ("sent \ufffd as is", False, False)


def test_json_brackets_that_do_not_balance_are_text_however_deep() -> None:
    for content in (b"[" * 200, b"[" * 200 + b"oops", b"]" * 200 + b"[" * 200, b"{" * 127 + b"]"):
        body, as_text, replaced = read_body(_response("application/json", content), content, False)
        assert (body, as_text, replaced) == (content.decode(), False, False), content[:8]


def test_json_brackets_closed_by_the_other_kind_are_text_however_deep() -> None:
    # As many closers as openers, none of the kind it closes: counting depth alone called them balanced.
    for content in (
        b"{" * 200 + b"]" * 200,
        b"[" * 200 + b"}" * 200,
        b"[" * 100 + b"{" * 100 + b"]" * 100 + b"}" * 100,
    ):
        body, as_text, replaced = read_body(_response("application/json", content), content, False)
        assert (body, as_text, replaced) == (content.decode(), False, False), content[:8]


def test_json_one_level_short_of_the_accepted_depth_is_kept_as_json() -> None:
    depth = accepted_json.MAX_DEPTH - 1  # the output holds it one level deeper: exactly MAX_DEPTH
    content = b"[" * depth + b"]" * depth
    body, as_text, replaced = read_body(_response("application/json", content), content, False)
    assert not as_text and not replaced and accepted_json.nesting_depth(str(body)) == depth
