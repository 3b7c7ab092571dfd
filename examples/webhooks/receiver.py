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


def make_server(
    secret: str, port: int, on_event: Callable[[Event], None], host: str = "127.0.0.1"
) -> ThreadingHTTPServer:
    """A server that hands every verified event to `on_event` (each `webhook-id` may arrive more than once: at
    least once, so a real receiver remembers the ids it has handled)."""
    webhook = Webhook(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802  # the stdlib's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                event = webhook.verify(body, {k.lower(): v for k, v in self.headers.items()})
            except WebhookVerificationError:
                self.send_response(400)
                self.end_headers()
                return
            on_event(event)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted, printing each verified event as a JSON line."""
    parser = argparse.ArgumentParser(prog="python -m examples.webhooks.receiver", description=__doc__)
    parser.add_argument(
        "--secret", default=os.environ.get("QP_WEBHOOK_SECRET"), help="whsec_... (or $QP_WEBHOOK_SECRET)"
    )
    parser.add_argument("--port", type=int, default=8085)
    options = parser.parse_args(argv)
    if not options.secret:
        parser.error("--secret (the subscription's whsec_... secret) is required")
    server = make_server(options.secret, options.port, lambda event: print(json.dumps(event), flush=True))  # noqa: T201
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
