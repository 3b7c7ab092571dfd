# intent_ref: platform.modules
"""A response body is bounded as it is decoded: a small compressed body cannot become gigabytes in memory."""

from __future__ import annotations

import gzip
import threading
import tracemalloc
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from shared.modules import ModuleContext, StepFailed, run_module
from shared.modules.http_request import MAX_BODY_BYTES, HttpRequestModule
from shared.modules.ssrf import GuardedClient, read_limited

BOMB = gzip.compress(b"A" * (64 * 1024 * 1024), compresslevel=9)  # about 64 KiB on the wire


class _Server(BaseHTTPRequestHandler):
    """Answers GET /<coding> with a body in that Content-Encoding (see ANSWERS)."""

    def do_GET(self) -> None:
        coding, body = ANSWERS[self.path.strip("/")]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if coding:
            self.send_header("Content-Encoding", coding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        return


raw_deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
ANSWERS = {
    "bomb": ("gzip", BOMB),
    "stacked": ("gzip, gzip", gzip.compress(gzip.compress(b"hello"))),
    "brotli": ("br", b"\x0b\x02\x80hello\x03"),
    "gzip": ("gzip", gzip.compress(b"hello gzip")),
    "zlib": ("deflate", zlib.compress(b"hello zlib")),
    "raw-deflate": ("deflate", raw_deflate.compress(b"hello raw") + raw_deflate.flush()),
    "plain": ("", b"hello plain"),
    "corrupt": ("gzip", b"\x1f\x8b\x08\x00garbage-that-is-not-deflate"),
}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://body.test:{httpd.server_address[1]}"
    httpd.shutdown()


def _get(server: str, path: str, *, decode: bool = True) -> tuple[bytes, bool]:
    with GuardedClient(["body.test"], resolver=lambda *_: ["127.0.0.1"], allow_private=True) as client:
        return read_limited(client.request("GET", f"{server}/{path}"), MAX_BODY_BYTES, decode=decode)


def test_a_compressed_body_is_cut_at_the_limit_without_being_inflated_whole(server: str) -> None:
    # httpx inflated each network read whole before the limit was counted: 64 KiB on the wire became 64 MiB at
    # once (and `gzip, gzip` of a kilobyte, gigabytes), in the module worker every tenant shares.
    tracemalloc.start()
    try:
        content, truncated = _get(server, "bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert truncated and content == b"A" * MAX_BODY_BYTES
    assert peak < 8 * 1024 * 1024, peak


@pytest.mark.parametrize("path", ["stacked", "brotli"])
def test_a_coding_it_does_not_decode_fails_the_step_clearly(server: str, path: str) -> None:
    coding = ANSWERS[path][0]
    with pytest.raises(StepFailed, match=f"Content-Encoding '{coding}' is not supported"):
        _get(server, path)


def test_a_corrupt_body_fails_the_step_clearly(server: str) -> None:
    with pytest.raises(StepFailed, match="the response's body could not be decoded"):
        _get(server, "corrupt")


@pytest.mark.parametrize(
    "path, text",
    [("gzip", b"hello gzip"), ("zlib", b"hello zlib"), ("raw-deflate", b"hello raw"), ("plain", b"hello plain")],
)
def test_the_codings_servers_send_are_decoded(server: str, path: str, text: bytes) -> None:
    assert _get(server, path) == (text, False)


def test_an_answer_that_is_not_kept_is_read_raw(server: str) -> None:
    # A webhook receiver's answer is only drained: an encoding that is not decoded is no failure there.
    content, truncated = _get(server, "stacked", decode=False)
    assert content == ANSWERS["stacked"][1] and not truncated


def test_the_http_request_step_records_the_cut_body(server: str) -> None:
    module = HttpRequestModule(resolver=lambda *_: ["127.0.0.1"], allow_private=True)
    ctx = ModuleContext(uuid.uuid4(), str(uuid.uuid4()), "s", 1, tenant_settings={"allowed_hosts": ["body.test"]})
    output = run_module("http.request", ctx, {"url": f"{server}/bomb"}, {"http.request": module})
    assert output["truncated"] is True and len(output["body"]) == MAX_BODY_BYTES


def test_a_zlib_header_split_across_reads_is_still_told_apart() -> None:
    # The choice between zlib-wrapped and raw deflate was made on the first read, which can bring one byte.
    body = zlib.compress(b"hello zlib deflate")

    class Pieces(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield body[:1]
            yield from (body[i : i + 1] for i in range(1, len(body)))

    response = httpx.Response(200, headers={"Content-Encoding": "deflate"}, stream=Pieces())
    assert read_limited(response, MAX_BODY_BYTES) == (b"hello zlib deflate", False)
