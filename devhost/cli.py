# intent_ref: platform.devhost
"""Command line: `python -m devhost run` serves the app; `token` mints a dev token; `key` prints the master key;
`trace` prints one execution's trace from the local telemetry file."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
from pathlib import Path

from devhost.host import HostOptions, apply_local_settings, serve

DEFAULT_PORT = 7071
DEFAULT_DATA_DIR = ".data"
DEVHOST = ".venv/bin/python -m devhost"
"""How the banner's hints start a devhost command (from the project's folder, where `run` is usually started)."""


def _default_port() -> int:
    # `run` and `token` both read it, so a token minted in the devhost's shell names the devhost's port.
    return int(os.environ.get("QP_DEVHOST_PORT", DEFAULT_PORT))


def _hint_options(args: argparse.Namespace, *, port: bool) -> str:
    """The options a hint's command needs to reach this devhost: its port and data folder, unless defaults."""
    options = []
    # Named unless it is the default in every shell: the hint may be pasted where QP_DEVHOST_PORT is not set.
    if port and (args.port != DEFAULT_PORT or _default_port() != DEFAULT_PORT):
        options.append(f"--port {args.port}")
    if args.data_dir != DEFAULT_DATA_DIR:
        options.append(f"--data-dir {shlex.quote(args.data_dir)}")
    return "".join(f" {option}" for option in options)


def _banner(args: argparse.Namespace, options: HostOptions) -> list[str]:
    """What the devhost prints once it serves: where it is and how to call it."""
    ready = [
        "",
        "Quantum Platform is running at {base_url}",
        "  liveness:  curl -s {base_url}/api/health",
        "  readiness: curl -s {base_url}/api/ready",
    ]
    if args.seed_demo:
        from devhost.identity import longest_token_lifetime_s, mint_token_cli

        token = mint_token_cli(
            options.data_dir.resolve(),
            f"http://{args.host}:{args.port}",
            "contoso",
            ["Tenant.Admin", "Intent.Author", "Intent.Executor"],
            [],
            None,
            longest_token_lifetime_s(),
            False,
        )
        ready.append(f'  as contoso: curl -s -H "Authorization: Bearer {token}" {{base_url}}/api/v1/me')
        ready.append(
            f"  other tokens: {DEVHOST} token{_hint_options(args, port=True)} --tenant fabrikam --roles Intent.Reader"
        )
    ready.append(
        '  the Durable API and /devhost/eventhubs need the master key: -H "x-functions-key: '
        f'$({DEVHOST} key{_hint_options(args, port=False)})"'
    )
    ready.append("Press Ctrl-C to stop.")
    return ready


def _run(args: argparse.Namespace) -> int:
    app_dir = Path(args.app).resolve()
    if not (app_dir / "function_app.py").exists():
        print(f"devhost: no function_app.py in {app_dir}", file=sys.stderr)
        return 2
    apply_local_settings(app_dir)
    options = HostOptions(
        app_dir=app_dir, host=args.host, port=args.port, data_dir=Path(args.data_dir), seed_demo=args.seed_demo
    )
    asyncio.run(serve(options, _banner(args, options)))
    return 0


def _token_refusal(tenant: str, roles: list[str], scopes: list[str]) -> str | None:
    """Why a token for `tenant` with `roles` and `scopes` could never be used, or None. Printed with exit 2 instead
    of a token that every call answers 401: the app refuses a token without a role or scope ("not an access token"),
    and a name that is neither a demo tenant nor a GUID maps to an Entra tenant no tenant of the platform has."""
    import uuid

    from devhost.provision import DEMO_TENANTS

    if not roles and not scopes:
        return "a token needs at least one role (--roles) or scope (--scopes); the API refuses one without"
    try:
        uuid.UUID(tenant)
    except ValueError:
        if tenant.strip().lower() not in DEMO_TENANTS:
            return (
                f"--tenant {tenant!r} is neither a demo tenant ({', '.join(DEMO_TENANTS)}) nor an Entra tenant GUID"
                " (the entra_tenant_id a tenant was provisioned with)"
            )
    return None


def _token(args: argparse.Namespace) -> int:
    from devhost.identity import mint_token_cli

    roles = [r for r in (args.roles or "").split(",") if r]
    scopes = [s for s in (args.scopes or "").split(",") if s]
    refusal = _token_refusal(args.tenant, roles, scopes)
    if refusal is not None:
        print(f"devhost token: {refusal}", file=sys.stderr)
        return 2
    base_url = f"http://127.0.0.1:{args.port}"
    try:
        token = mint_token_cli(
            Path(args.data_dir).resolve(),
            base_url,
            args.tenant,
            roles,
            scopes,
            args.oid,
            args.expires_in,
            args.app_only,
        )
    except ValueError as exc:  # a claim the token cannot carry (scopes on an app-only token, a blank role)
        print(f"devhost token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _key(args: argparse.Namespace) -> int:
    from devhost.keys import load_or_create_master_key

    print(load_or_create_master_key(Path(args.data_dir).resolve()))
    return 0


def _trace(args: argparse.Namespace) -> int:
    from devhost.trace_tree import report

    code, text = report(Path(args.file), args.execution_id, args.statements)
    print(text, file=sys.stderr if code else sys.stdout)
    return code


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve function_app.py locally")
    run.add_argument("--app", default=".", help="folder holding function_app.py and host.json")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=_default_port())
    run.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where the host keeps its state")
    run.add_argument("--seed-demo", action="store_true", help="seed the demo tenants contoso, fabrikam and tenant-123")
    run.set_defaults(handler=_run)
    token = sub.add_parser("token", help="print a dev access token shaped like an Entra ID v2 token")
    token.add_argument("--tenant", required=True, help="a demo tenant name (contoso, fabrikam, tenant-123) or a GUID")
    token.add_argument("--roles", default="", help="comma-separated app roles, e.g. Intent.Reader,Intent.Author")
    token.add_argument("--scopes", default="", help="comma-separated delegated scopes")
    token.add_argument("--oid", default=None, help="object id of the user (default: a stable demo user)")
    token.add_argument("--expires-in", type=int, default=3600, help="lifetime in seconds")
    token.add_argument("--app-only", action="store_true", help="an application token (idtyp=app)")
    token.add_argument(
        "--port", type=int, default=_default_port(), help="port of the devhost that serves the JWKS (QP_DEVHOST_PORT)"
    )
    token.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    token.set_defaults(handler=_token)
    key = sub.add_parser("key", help="print the host's master key (created on first use; stable per data folder)")
    key.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    key.set_defaults(handler=_key)
    trace = sub.add_parser("trace", help="print one execution's trace (spans and durations) as a tree")
    trace.add_argument("execution_id")
    trace.add_argument("--file", default=".data/telemetry.jsonl", help="the devhost's QP_TELEMETRY_FILE")
    trace.add_argument("--statements", action="store_true", help="show each database statement too")
    trace.set_defaults(handler=_trace)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx's INFO line is each request's full URL, a tenant's secrets included (ssrf.py raises it too).
    for noisy in ("azure", "aiohttp.access", "psycopg.pool", "pgserver", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return int(args.handler(args))
