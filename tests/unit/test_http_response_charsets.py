# intent_ref: platform.modules
"""http.request records a response's text whatever charset its server names: one that names no text encoding
(`rot13`, `hex`, `zlib`, `base64`, `undefined`) raised, and the step failed (retried) with its answer lost."""

from __future__ import annotations

import httpx
import pytest

from shared.modules.http_request import decode_body


def _response(charset: str, content: bytes) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": f"text/plain; charset={charset}"}, content=content)


@pytest.mark.parametrize("charset", ["rot13", "hex", "zlib", "base64", "bz2", "undefined", "idna", "nonsense"])
def test_a_charset_naming_no_usable_text_encoding_is_read_as_utf_8(charset: str) -> None:
    content = "héllo\xff".encode() + b"\xff"
    assert decode_body(_response(charset, content), content, False) == "héllo\xff\ufffd"


def test_a_text_charset_is_still_used() -> None:
    content = "héllo".encode("latin-1")
    assert decode_body(_response("latin-1", content), content, False) == "héllo"
    assert decode_body(_response("utf-16", "hé".encode("utf-16")), "hé".encode("utf-16"), False) == "hé"
