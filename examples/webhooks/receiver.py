# intent_ref: platform.events
"""An EXAMPLE webhook receiver (not part of the platform): verifies each delivery's Standard Webhooks signature
with the subscription's secret, answers 204, and prints the event; anything unsigned or tampered gets 400."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

Event = dict[str, Any]
MAX_BODY = 1024 * 1024
"""The largest body read (1 MiB): the platform's events are far smaller, and a longer one would only hold memory."""


def make_server(
    secret: str, port: int, on_event: Callable[[Event], None], host: str = "127.0.0.1", *, timeout_s: float = 10.0
) -> ThreadingHTTPServer:
    """A server that hands every verified event to `on_event` (each `webhook-id` may arrive more than once: at
    least once, so a real receiver remembers the ids it has handled)."""
    webhook = Webhook(secret)

    class Handler(BaseHTTPRequestHandler):
        # A socket timeout: a sender that stops mid-request (or announces more body than it sends) frees its thread
        # after this long instead of holding it for ever. The platform sends a delivery within its own 10 s.
        timeout = timeout_s

        def do_POST(self) -> None:  # noqa: N802  # the stdlib's name
            length = _content_length(self.headers.get("Content-Length", "0"))
            if length is None:  # -1 would read until the sender hangs up; anything unparsable is refused
                self._answer(400)
                return
            body = self.rfile.read(length)
            try:
                event = webhook.verify(body, {k.lower(): v for k, v in self.headers.items()})
            except WebhookVerificationError:
                self._answer(400)
                return
            on_event(event)
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    return ThreadingHTTPServer((host, port), Handler)


def _content_length(value: str) -> int | None:
    """The body's length when it is plain ASCII digits within MAX_BODY (`int` alone takes "-1", " 5_0", "²")."""
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()):
        return None
    length = int(digits)
    return length if length <= MAX_BODY else None


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted, printing each verified event as a JSON line."""
    parser = argparse.ArgumentParser(prog="python -m examples.webhooks.receiver", description=__doc__)
    parser.add_argument(
        "--secret",
        default=os.environ.get("QP_WEBHOOK_SECRET"),
        help="the subscription's whsec_... secret; prefer $QP_WEBHOOK_SECRET (a command line is visible in ps)",
    )
    parser.add_argument("--port", type=int, default=8085)
    options = parser.parse_args(argv)
    if not options.secret:
        parser.error("set QP_WEBHOOK_SECRET (or --secret) to the subscription's whsec_... secret")
    try:
        Webhook(options.secret)  # a malformed secret (the docs' placeholder pasted as is) is one line, not a traceback
    except Exception as exc:  # noqa: BLE001  # the library's errors for a malformed secret share no base class
        parser.error(f"QP_WEBHOOK_SECRET (or --secret) is not a subscription's whsec_... secret: {exc}")
    server = make_server(options.secret, options.port, lambda event: print(json.dumps(event), flush=True))  # noqa: T201
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
