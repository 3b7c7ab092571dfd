# intent_ref: platform.gateway
"""`qp`, the platform's command line: intents, runs with a live view, executions and their events, webhooks."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import httpx
import typer
from rich.console import Console, Group
from rich.highlighter import JSONHighlighter
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from quantum_platform import shapes, terminal_text
from quantum_platform.client import (
    DEFAULT_URL,
    MAX_ANSWER_BYTES,
    TERMINAL_EVENTS,
    ApiResponse,
    Client,
    RetryWait,
    _events,
    _page,
)
from quantum_platform.credentials import Credential, DevhostCredential, StaticToken
from quantum_platform.errors import PlatformError, ProblemError, UnexpectedAnswer
from quantum_platform.shapes import Shape

app = typer.Typer(help="Quantum Platform: intents, runs and executions.", no_args_is_help=True)
intents_app = typer.Typer(help="Create, read, change and plan intents.", no_args_is_help=True)
executions_app = typer.Typer(help="List, read, cancel, approve and retry executions.", no_args_is_help=True)
webhooks_app = typer.Typer(
    help="Subscribe URLs to domain events, and manage the subscriptions (Tenant.Admin).", no_args_is_help=True
)
app.add_typer(intents_app, name="intents")
app.add_typer(executions_app, name="executions")
app.add_typer(webhooks_app, name="webhooks")

Output = Literal["table", "json"]
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="table or json")]
EXIT_FAILED, EXIT_CANCELLED, EXIT_PROBLEM, EXIT_USAGE, EXIT_SOFTWARE = 1, 2, 3, 64, 70
EXIT_READER_GONE = 141
"""`qp run --follow` exits 0 when the execution succeeded, 1 failed, 2 cancelled; any refused call exits 3; a command
line `qp` cannot read (an unknown option, a missing argument, a bad value) exits 64 (EX_USAGE), never 2, which a
script reads as "cancelled"; a fault of `qp` itself (an exception it does not expect) exits 70 (EX_SOFTWARE) after its
traceback on stderr, never 1, which a script reads as "failed"; a command whose output's reader went away exits 141
(128 + SIGPIPE, as one killed by it), never 0: `qp run --follow` then exits with its run's outcome when it read it;
one interrupted (Ctrl-C) exits 130."""
_CLICK_ERRORS = importlib.import_module(typer.BadParameter.__module__)
"""The exceptions of the click that typer runs on: its own copy in recent versions, click itself in older ones (the
real click's UsageError is not the one a recent typer raises)."""
_CLICK_GLOBALS = importlib.import_module(typer.BadParameter.__module__.rpartition(".")[0] + ".globals")
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_DEFAULT_ROLES = "Intent.Reader,Intent.Author,Intent.Executor,Intent.Deployer,Intent.Approver"


class _ReaderGone(Exception):  # noqa: N818  # not an error: the reader of stdout stopped reading
    """The reader of `qp`'s output went away (`qp events -o json | head -1`): the command ends there, quietly, and
    exits `code`: EXIT_READER_GONE, or the outcome of a followed run whose end was read (`qp run --follow | true`
    must not pass a failed run for a succeeded one)."""

    code = EXIT_READER_GONE


class _Output(Console):
    """`qp`'s standard output, whose reader may stop reading before the end (`| head -1`)."""

    def on_broken_pipe(self) -> None:
        """The output ends: nothing more is written (later writes, the interpreter's last flush among them, go to
        the null device), and the command stops (`main` exits `_ReaderGone.code`). The console's default said exit
        1: "failed"."""
        self.quiet = True
        with contextlib.suppress(OSError, ValueError):  # no descriptor to redirect: the output is gone all the same
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.file.fileno())
            os.close(null)
        raise _ReaderGone


out = _Output()
err = Console(stderr=True)


# ------------------------------------------------------------------------------------------ profile and client
def _profile_path() -> Path:
    """Where `qp login` keeps the profile: `QP_PROFILE`, else ~/.config/qp/profile.json. Looked up at each use, not
    at import, so whoever runs `qp` in-process (tests, wrappers) can move it."""
    return Path(os.environ.get("QP_PROFILE") or Path.home() / ".config" / "qp" / "profile.json")


def _profile() -> dict[str, Any]:
    try:
        loaded = json.loads(_profile_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _save_profile(profile: dict[str, Any]) -> None:
    """Replace the profile in one step with a file that is 0600 from its creation: it may hold a bearer token, so it
    is never readable by others, not even between a write and a chmod, and a crash leaves the old profile whole."""
    path = _profile_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    descriptor = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(profile, file)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _same_url(saved: object, used: str) -> bool:
    """Whether the profile was saved for the URL in use. A saved Entra token is for that API only: sent to another
    host (a `QP_URL` pointing elsewhere), it would hand the user's identity to whoever runs that host."""
    if not isinstance(saved, str) or not saved:
        return False
    try:
        return httpx.URL(saved.rstrip("/")) == httpx.URL(used.rstrip("/"))
    except httpx.InvalidURL:
        return False


def _is_checkout(folder: str | Path | None) -> bool:
    """Whether `folder` is the platform's checkout: `python -m devhost token` runs there to mint dev tokens."""
    return folder is not None and str(folder) != "" and (Path(folder) / "devhost" / "__main__.py").is_file()


def _here_and_above() -> list[Path]:
    here = Path.cwd()
    return [here, *here.parents]


def _find_checkout(*candidates: str | Path | None) -> Path | None:
    """The first of `candidates` that is the platform's checkout, else the checkout this package is installed from
    (`make run` installs it editable). Whatever folder `qp login` ran in was saved before, and a login from
    elsewhere made every later command fail (`No module named devhost`)."""
    installed = Path(__file__).resolve().parents[3:4]  # clients/python/quantum_platform/cli.py in a checkout
    for found in [*candidates, *installed]:
        if found is not None and _is_checkout(found):
            return Path(found).resolve()
    return None


_NO_AZURE = (
    "signing in to Entra ID needs azure-identity: pip install 'quantum-platform-client[azure]' (or log in to a local "
    "devhost, or set QP_TOKEN)"
)
_NO_CHECKOUT = (
    "cannot find the platform's checkout (the folder holding devhost/) to mint dev tokens: run `qp login` in it, "
    "or pass --project-dir (or set QP_PROJECT_DIR)"
)


def _credential(profile: dict[str, Any], url: str, *, environment: bool = True) -> Credential:
    """QP_TOKEN (when `environment`), else the token `qp login` saved for this very URL (Azure), else dev tokens
    from the local devhost."""
    if environment and os.environ.get("QP_TOKEN"):
        return StaticToken(os.environ["QP_TOKEN"])
    if profile.get("token") and _same_url(profile.get("url"), url) and _expires_on(profile) > time.time() + 60:
        return StaticToken(str(profile["token"]))
    location = httpx.URL(url)
    if location.host in _LOCAL_HOSTS:
        project = _find_checkout(os.environ.get("QP_PROJECT_DIR"), profile.get("project"), *_here_and_above())
        if project is None:
            raise PlatformError(_NO_CHECKOUT)
        roles = str(profile.get("roles") or _DEFAULT_ROLES).split(",")
        return DevhostCredential(
            str(profile.get("tenant") or "contoso"),
            roles=roles,
            oid=str(profile["oid"]) if profile.get("oid") else None,
            project_dir=project,
            data_dir=profile.get("data_dir"),
            port=location.port,
        )
    raise PlatformError(f"not signed in to {url}: run `qp login --url {url}` (or set QP_TOKEN)")


def _expires_on(profile: dict[str, Any]) -> float:
    """When the profile's saved token expires (0, long past, when the profile says nothing usable)."""
    try:
        return float(profile.get("expires_on") or 0)
    except (TypeError, ValueError):
        return 0.0


@app.callback()
def _options(
    max_answer_bytes: Annotated[
        int,
        typer.Option(
            min=1,
            envvar="QP_MAX_ANSWER_BYTES",
            help="the most bytes of one answer qp reads (raise it for executions with large inline outputs)",
        ),
    ] = MAX_ANSWER_BYTES,
) -> None:
    """Quantum Platform: intents, runs and executions."""


def _max_answer_bytes() -> int:
    """The `--max-answer-bytes` given before the command (the default outside a command line)."""
    context = _CLICK_GLOBALS.get_current_context(silent=True)
    given = context.find_root().params.get("max_answer_bytes") if context is not None else None
    return given if isinstance(given, int) else MAX_ANSWER_BYTES


@contextmanager
def _client() -> Iterator[Client]:
    profile = _profile()
    url = os.environ.get("QP_URL") or str(profile.get("url") or DEFAULT_URL)
    credential = _credential(profile, url)
    with Client(url, credential=credential, max_answer_bytes=_max_answer_bytes(), on_retry=_waiting) as client:
        yield client


def _waiting(wait: RetryWait) -> None:
    """One line on stderr before each wait for a repetition: a 429 may hold a command for minutes, not in silence."""
    seconds = f"{round(wait.seconds, 1):g}"
    line = f"waiting {seconds} s: {wait.reason} (retry {wait.attempt} of {wait.max_retries})"
    _note(line)


_REFUSALS = (PlatformError, httpx.HTTPError, httpx.InvalidURL)
"""What ends a command as one line and exit 3: the client's own errors (the API's refusals, an answer it cannot use, a
token the devhost could not mint: `CredentialError`), qp's (an unreadable input file, a profile it cannot save) and
the transport's (an unreachable or timed-out platform, a URL it cannot use), which must not pass for a failed
execution (exit 1) behind a long traceback. Nothing broader: an OSError, RuntimeError or ValueError raised by a fault
of qp's own is that fault (exit 70, with its traceback), not a refusal."""


def _run(action: Callable[[], None], *, json_lines: bool = False) -> None:
    """Run a command; a refusal is one clear line on stderr (then one line per problem when the API named several)
    and exit code 3. With `--output json` the API's problem document is printed as well, one line of JSON, so a
    script reads every problem, not the text meant for a person: on stdout, where a command's one document would
    have been; on stderr before the summary for a command whose stdout is `json_lines` of events, which a script
    filters by `type` (a problem has one too) and where a refusal may come after some of them."""
    try:
        action()
    except ProblemError as exc:
        if _output() == "json":
            document = terminal_text.json_text(exc.document)
            if json_lines:
                err.print(_text(document), highlight=False, soft_wrap=True)
            else:
                _line(document)
        # The summary names the first problem; the others were lost (a definition fixed one problem per attempt).
        # When all of them are listed below it, the summary leaves the first out rather than print it twice.
        if len(exc.problems) > 1:
            _fail(exc.headline, exc.problems)
        _fail(exc.summary)
    except _REFUSALS as exc:
        _fail(_reason(exc))
    except Exception as exc:
        if isinstance(exc, _azure_errors()):
            _fail(_reason(exc))  # a refused or abandoned Entra sign-in is a refusal too, not a failed execution
        raise


def _azure_errors() -> tuple[type[Exception], ...]:
    """azure-core's base error when the `azure` extra is installed (imported only when something was raised: `qp`
    runs without the extra)."""
    try:
        from azure.core.exceptions import AzureError
    except ImportError:
        return ()
    return (AzureError,)


def _output() -> str:
    """The running command's `--output` (table for a command without one)."""
    context = _CLICK_GLOBALS.get_current_context(silent=True)
    return str(context.params.get("output") or "table") if context is not None else "table"


_MAX_LINE_CHARS = 2000
"""The most of one error line `qp` prints (the message, each problem): a server's detail of megabytes is cut, with the
count of what was left out."""
_MAX_PROBLEMS = 50
"""The most problems listed under a refusal's summary; the count of the others follows them."""


def _fail(message: str, details: list[str] | None = None) -> NoReturn:
    # Text, not markup: the message quotes the server and the user (a `[/x]` in it raised MarkupError, a `[a-z0-9]`
    # vanished), and its controls shown, not acted on. soft_wrap and the whitespace folded: one line at any width,
    # also when stderr is not a terminal. Bounded: a person reads the start of a long text, and `-o json` prints the
    # whole document for a program.
    line = Text.assemble(("error", "red"), ": ", _cut(terminal_text.one_line(message)))
    err.print(line, highlight=False, soft_wrap=True)
    listed = details or []
    for detail in listed[:_MAX_PROBLEMS]:
        err.print(_text("  " + _cut(terminal_text.one_line(detail))), highlight=False, soft_wrap=True)
    if len(listed) > _MAX_PROBLEMS:
        err.print(_text(f"  …and {len(listed) - _MAX_PROBLEMS} more"), highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_PROBLEM)


def _cut(line: str) -> str:
    """`line` up to `_MAX_LINE_CHARS`, then a marker counting the characters left out."""
    if len(line) <= _MAX_LINE_CHARS:
        return line
    return f"{line[:_MAX_LINE_CHARS]}… ({len(line) - _MAX_LINE_CHARS} more characters)"


def _reason(exc: BaseException) -> str:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.HTTPError):
        try:
            return f"{exc.request.method} {exc.request.url} failed: {detail} ({type(exc).__name__})"
        except RuntimeError:  # no request attached
            return f"{detail} ({type(exc).__name__})"
    return detail


def _text(value: object, style: str = "", *, lines: bool = True) -> Text:
    """`value` as text for a person: never read as markup, and every control, separator or bidirectional character in
    it shown as an escape (terminal_text.shown), not handed to the terminal; `lines`: its line feeds and tabs kept."""
    return Text(terminal_text.shown(value, lines=lines), style=style)


def _json_view(data: Any) -> Text:
    """`data` as indented, coloured JSON that parses back to the same strings and holds no raw control or
    bidirectional character (terminal_text.json_text), never wrapped."""
    view = JSONHighlighter()(terminal_text.json_text(data, indent=2))
    view.no_wrap = True
    view.overflow = None
    return view


def _line(text: str, *, lines: bool = True) -> None:
    """One line of output as text (never markup or emoji codes, never a control), unwrapped whatever the width;
    without `lines`, a line feed in it is shown as `\\n` and cannot start a line that passes for another record."""
    out.print(_text(text, lines=lines), highlight=False, soft_wrap=True)


def _note(text: str) -> None:
    """One line on stderr, as `_line` writes one on stdout (a line feed in it shown as `\\n`): progress for a
    person, out of the way of the command's output."""
    err.print(_text(text, lines=False), highlight=False, soft_wrap=True)


def _show(data: Any, output: Output, columns: list[str] | None = None) -> None:
    if output == "json":
        out.print(_json_view(data), soft_wrap=True)
        return
    # Every header and cell is Text: a plain str is read as markup, and a tenant's `[/x]` (a description, a name)
    # raised MarkupError for the whole listing; its controls and bidirectional characters are shown as escapes.
    rows = data.get("items") if isinstance(data, dict) and "items" in data else data
    if isinstance(rows, list):
        keys = columns or (list(rows[0]) if rows and isinstance(rows[0], dict) else ["value"])
        cells = [[_cell(row.get(key) if isinstance(row, dict) else row) for key in keys] for row in rows]
        out.print(_listing(keys, cells), crop=False)
        return
    table = Table("field", "value", show_header=False)
    for key, value in data.items() if isinstance(data, dict) else [("value", data)]:
        table.add_row(_text(key, lines=False), _cell(value))
    out.print(table)


_OTHER_MIN_WIDTH = 10
"""Where the other columns of a listing stop shrinking (a status such as `succeeded` still reads whole)."""


def _is_id(key: str) -> bool:
    """Whether a column holds what other commands take as an argument (an id, an intent's name): never cut."""
    return key in ("id", "name") or key.endswith("_id")


def _listing(keys: list[str], cells: list[list[Text]]) -> Table:
    """The rows as a table whose id (and name) columns are never cut: an id copied from a listing (`b3fa0512-0d57-40…`)
    named nothing in the next command. The other columns shrink first; where even the ids do not fit, the table is wider
    than the console (printed uncropped) rather than losing an id or a column."""
    table = Table()
    needed = 1  # the left edge; each column adds its padding and its right border below
    for index, key in enumerate(keys):
        if _is_id(key):
            width = max([len(key), *(row[index].cell_len for row in cells)])
            table.add_column(_text(key, lines=False), no_wrap=True, min_width=width)
        else:
            width = min(_OTHER_MIN_WIDTH, max([len(key), *(row[index].cell_len for row in cells)]))
            table.add_column(_text(key, lines=False), min_width=width)
        needed += width + 3
    for row in cells:
        table.add_row(*row)
    if needed > out.width:
        table.width = needed
    return table


def _cell(value: Any) -> Text:
    if value is None:
        return Text("")
    if isinstance(value, dict | list):
        text = json.dumps(value, default=str)
        return _text(text if len(text) <= 80 else text[:77] + "...")
    return _text(value)


def _checked(answer: ApiResponse, shape: Shape) -> dict[str, Any]:
    """An answer's body of the route's documented `shape` (an execution, a start, a page); UnexpectedAnswer otherwise,
    so a server answering `[1, 2, 3]` or an execution without its status ends `qp` with one line and exit 3, not a
    traceback passing for a failed run, nor the wrong answer printed as if it were the right one."""
    return shape.check(answer.json(), f"{answer.http.request.method} {answer.http.request.url.path}")


def _etag(answer: ApiResponse) -> str:
    """The ETag of a read item, which its update sends as If-Match (the route requires it); an answer without one is
    UnexpectedAnswer (one line, exit 3) before anything is changed, not a PUT without it that could only be a 428."""
    etag = answer.headers.get("ETag")
    if not etag:
        request = answer.http.request
        raise UnexpectedAnswer(
            f"{request.method} {request.url.path} answered no ETag, which an update needs to send as If-Match"
        )
    return str(etag)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file (- for stdin); anything else is a PlatformError naming the file, so `qp` answers one
    line (the helpers' `dict(body)` raised on a list or a string)."""
    name = "stdin" if str(path) == "-" else str(path)
    try:
        body = json.loads(sys.stdin.read() if str(path) == "-" else path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise PlatformError(f"{name} is not UTF-8 text") from None
    except OSError as exc:  # said as a person would, not as `[Errno 2] No such file or directory: '...'`
        raise PlatformError(f"cannot read {name}: {exc.strerror or type(exc).__name__}") from None
    except ValueError as exc:
        raise PlatformError(f"{name} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PlatformError(f"{name} must hold a JSON object ({{...}}), not a {type(body).__name__}")
    return body


# ------------------------------------------------------------------------------------------ login
@app.command()
def login(
    url: Annotated[str, typer.Option(envvar="QP_URL", help="the platform's base URL")] = DEFAULT_URL,
    tenant: Annotated[str, typer.Option(help="locally: the demo tenant to act as")] = "contoso",
    roles: Annotated[str, typer.Option(help="locally: the app roles of the dev token")] = _DEFAULT_ROLES,
    scope: Annotated[str, typer.Option(help="in Azure: the API's scope")] = "api://quantum-platform/.default",
    entra_tenant: Annotated[str | None, typer.Option(help="in Azure: your Entra tenant id")] = None,
    data_dir: Annotated[str | None, typer.Option(help="locally: the devhost's data folder (default .data)")] = None,
    oid: Annotated[
        str | None, typer.Option(help="locally: the user's object id in the dev token (default: the demo user)")
    ] = None,
    project_dir: Annotated[
        Path | None,
        typer.Option(envvar="QP_PROJECT_DIR", help="locally: the platform's checkout (default: found from here)"),
    ] = None,
) -> None:
    """Sign in: a dev token from the local devhost, or a device-code sign-in with Entra ID in Azure."""

    def act() -> None:
        local = httpx.URL(url).host in _LOCAL_HOSTS
        if project_dir is not None and not _is_checkout(project_dir):
            raise PlatformError(f"{project_dir} is not the platform's checkout (it holds no devhost/)")
        # The current folder, else the checkout the working login used, else the installed one: a login from another
        # folder keeps a project whose devhost can mint tokens, or (locally) fails below without saving anything.
        project = _find_checkout(project_dir, *_here_and_above(), _profile().get("project"))
        profile: dict[str, Any] = {
            "url": url,
            "tenant": tenant,
            "roles": roles,
            "oid": oid,
            "project": str(project) if project else None,
            # Absolute: tokens are minted in the checkout, not in the folder this login ran in.
            "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        }
        if not local:
            try:
                from azure.identity import DeviceCodeCredential  # the client's `azure` extra
            except ImportError:
                raise PlatformError(_NO_AZURE) from None
            token = DeviceCodeCredential(tenant_id=entra_tenant).get_token(scope)
            profile.update(token=token.token, expires_on=token.expires_on, tenant=None)
        # Checked with the new sign-in's own credential before anything is saved: a failed login leaves the working
        # one in place.
        with Client(url, credential=_credential(profile, url, environment=False)) as client:
            me = _checked(client.get("/api/v1/me"), shapes.ME)
        try:
            _save_profile(profile)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise PlatformError(f"cannot save the profile {_profile_path()}: {why}") from None
        # One line, whatever the answer's names hold.
        _line(f"signed in to {url} as {me['principal_id']} ({me['tenant_name']})", lines=False)

    _run(act)


# ------------------------------------------------------------------------------------------ intents
@intents_app.command("create")
def intents_create(
    file: Annotated[Path, typer.Argument(help="the intent as JSON ({name, definition}); - reads stdin")],
    output: OutputOption = "table",
) -> None:
    """Create an intent (version 1)."""
    _run(lambda: _with(lambda c: _show(_checked(c.intents.create(_read_json(file)), shapes.INTENT), output)))


@intents_app.command("get")
def intents_get(intent: str, output: OutputOption = "table") -> None:
    """One intent: its current version and definition."""
    _run(lambda: _with(lambda c: _show(_checked(c.intents.get(_intent_id(c, intent)), shapes.INTENT), output)))


LimitOption = Annotated[
    int | None, typer.Option(min=1, max=200, help="items per page (the API's default: 50; at most 200)")
]
CursorOption = Annotated[str | None, typer.Option(help="the page after a listing's next_cursor")]
AllOption = Annotated[bool, typer.Option("--all", help="every page, not only the first")]


@intents_app.command("list")
def intents_list(
    name_prefix: Annotated[str | None, typer.Option(help="names starting with this")] = None,
    label: Annotated[list[str] | None, typer.Option(help="key:value; repeat to require several")] = None,
    status: Annotated[str | None, typer.Option(help="active or archived")] = None,
    limit: LimitOption = None,
    cursor: CursorOption = None,
    every: AllOption = False,
    output: OutputOption = "table",
) -> None:
    """The tenant's intents, by name: a page of them (--all: every page)."""
    columns = ["id", "name", "version", "status", "description", "updated_at"]

    def act(client: Client) -> None:
        _show_pages(
            lambda after: client.intents.list(
                name_prefix=name_prefix, label=label, status=status, limit=limit, cursor=after
            ),
            _INTENTS_PAGE,
            cursor,
            every=every,
            output=output,
            columns=columns,
        )

    _run(lambda: _with(act))


_INTENTS_PAGE = shapes.page_of("a page of intents", shapes.INTENT_SUMMARY)
_VERSIONS_PAGE = shapes.page_of("a page of versions", shapes.VERSION)
_EXECUTIONS_PAGE = shapes.page_of("a page of executions", shapes.EXECUTION_SUMMARY)
_SUBSCRIPTIONS = shapes.page_of("a list of webhook subscriptions", shapes.SUBSCRIPTION, cursor=False)
_DELIVERIES = shapes.page_of("a list of deliveries", shapes.DELIVERY, cursor=False)


def _show_pages(
    page_at: Callable[[str | None], ApiResponse],
    shape: Shape,
    cursor: str | None,
    *,
    every: bool,
    output: Output,
    columns: list[str],
) -> None:
    """A listing's page at `cursor` (each of the `shape` documented), or with `every` the items of it and every page
    after it; a page that is not the last one says (on stderr, in table mode) how to ask for the next, instead of
    passing for the whole list."""
    page = _checked(page_at(cursor), shape)
    # Every cursor of the walk is remembered (the client's own rule): a server answering A, B, A pages forever.
    seen = {cursor} if cursor else set()
    items, after = _page(page, seen)
    if every:
        while after is not None:
            more, after = _page(_checked(page_at(after), shape), seen)
            items += more
        page = {"items": items, "next_cursor": None}
    _show(page, output, columns)
    if output == "table" and page.get("next_cursor"):
        hint = f"more: the next page is --cursor {page['next_cursor']}"
        err.print(_text(hint, lines=False), highlight=False, soft_wrap=True)


@intents_app.command("update")
def intents_update(intent: str, file: Path, output: OutputOption = "table") -> None:
    """A new version of an intent from a definition file (the current version's ETag is sent as If-Match)."""

    def act(client: Client) -> None:
        item_id = _intent_id(client, intent)
        etag = _etag(client.intents.get(item_id))
        answer = client.intents.update(item_id, _read_json(file), if_match=etag)
        _show(_checked(answer, shapes.INTENT), output)

    _run(lambda: _with(act))


@intents_app.command("versions")
def intents_versions(
    intent: str,
    limit: LimitOption = None,
    cursor: CursorOption = None,
    every: AllOption = False,
    output: OutputOption = "table",
) -> None:
    """An intent's versions, oldest first: a page of them (--all: every page)."""
    columns = ["version", "created_at", "created_by", "origin"]

    def act(client: Client) -> None:
        item_id = _intent_id(client, intent)
        _show_pages(
            lambda after: client.intents.versions(item_id, limit=limit, cursor=after),
            _VERSIONS_PAGE,
            cursor,
            every=every,
            output=output,
            columns=columns,
        )

    _run(lambda: _with(act))


@intents_app.command("diff")
def intents_diff(
    intent: str,
    from_version: Annotated[int, typer.Option("--from")],
    to_version: Annotated[int, typer.Option("--to")],
    output: OutputOption = "json",
) -> None:
    """What changed between two versions."""
    _run(
        lambda: _with(
            lambda c: _show(
                _checked(
                    c.intents.diff(_intent_id(c, intent), from_version=from_version, to_version=to_version),
                    shapes.DIFF,
                ),
                output,
            )
        )
    )


@intents_app.command("rollback")
def intents_rollback(
    intent: str, to: Annotated[int, typer.Option(help="the version to copy")], output: OutputOption = "table"
) -> None:
    """A new version equal to an old one."""
    _run(lambda: _with(lambda c: _show(_checked(c.intents.rollback(_intent_id(c, intent), to), shapes.INTENT), output)))


@intents_app.command("plan")
def intents_plan(intent: str, output: OutputOption = "json") -> None:
    """The dry run: execution levels, modules, decisions, quota headroom."""
    _run(lambda: _with(lambda c: _show(_checked(c.intents.plan(_intent_id(c, intent)), shapes.PLAN), output)))


@intents_app.command("validate")
def intents_validate(file: Path, output: OutputOption = "json") -> None:
    """Validate an intent without saving it."""
    _run(lambda: _with(lambda c: _show(_checked(c.intents.validate(_read_json(file)), shapes.VALIDATION), output)))


def _with(action: Callable[[Client], None]) -> None:
    with _client() as client:
        action(client)


def _intent_id(client: Client, intent: str) -> str:
    """An intent's id from its id or its exact name."""
    try:
        # Only a real UUID is taken as an id: a name of 36 characters with four dashes is still a name.
        if str(uuid.UUID(intent)) == intent.lower():
            return intent
    except ValueError:
        pass
    # Every page of the prefix: the name may sit past the first 50 (archived ones, or a long shared prefix).
    for item in client.intents.iterate(name_prefix=intent):
        if shapes.INTENT_SUMMARY.check(item, "GET /api/v1/intents")["name"] == intent:
            return str(item["id"])
    raise PlatformError(f"no intent named {intent!r} in this tenant")


# ------------------------------------------------------------------------------------------ runs
@app.command()
def run(
    intent: Annotated[str, typer.Argument(help="the intent's name or id")],
    input_file: Annotated[Path | None, typer.Option("--input", help="the execution's input as JSON")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="show the steps live until the end")] = False,
    output: OutputOption = "table",
) -> None:
    """Execute an intent; with --follow, a live view of its steps, and the exit code is the outcome."""
    settled: list[str] = []
    """The followed execution's final status, once read: its exit code, even when the output's reader is gone."""

    def act(client: Client) -> None:
        body = _read_json(input_file) if input_file is not None else None
        started = _checked(client.executions.start(_intent_id(client, intent), input=body), shapes.STARTED)
        execution_id = str(started["execution_id"])
        if not follow:
            _show(started, output)
            return
        if output == "table":
            _follow_live(client, execution_id, settled)
        else:
            _follow_json(client, execution_id, settled)

    try:
        _run(lambda: _with(act), json_lines=follow)
    except _ReaderGone as gone:
        # `qp run --follow | true`: the view is not shown, but a failed run still exits as one; a run whose end was
        # not read exits 141, never 0.
        if settled:
            gone.code = _outcome(settled[0])
        raise
    raise typer.Exit(_outcome(settled[0]) if settled else 0)


def _outcome(status: str) -> int:
    """The exit code of a followed execution that ended `status`."""
    return {"succeeded": 0, "cancelled": EXIT_CANCELLED}.get(status, EXIT_FAILED)


def _follow_json(client: Client, execution_id: str, settled: list[str]) -> None:
    for event in client.stream(f"/api/v1/executions/{execution_id}/events"):
        _line(terminal_text.json_text(event))
    settled.append(str(_checked(client.executions.get(execution_id), shapes.EXECUTION)["status"]))


_REDRAW_S = 1.0
"""The least time between two reads of the execution while `run --follow` redraws its view: an intent of 120 steps
sends hundreds of events within seconds, and a read after each one held the tenant's bound of requests in flight (429)
against its other clients. Between two reads the view follows the events themselves (`_moved`)."""
_clock = time.monotonic


def _follow_live(client: Client, execution_id: str, settled: list[str]) -> None:
    """Redraw the steps' table as events come until the execution ends; its final status, once read, goes into
    `settled`. On a terminal the view follows the events (`_follow_view`). Off a terminal, where the view is drawn only
    at the end, the execution is read once, at its end, and its id and each event go to stderr as they come."""
    live_view = out.is_terminal
    path = f"/api/v1/executions/{execution_id}/events"
    if not live_view:
        _note(f"execution {execution_id} started")
    with Live(console=out, refresh_per_second=8, transient=False) as live:
        if live_view:
            _follow_view(client, execution_id, live)
        else:
            for event in client.stream(path):
                _note(_event_text(event))
                if event.get("type") in TERMINAL_EVENTS:
                    break
        execution = _checked(client.executions.get(execution_id), shapes.EXECUTION)
        settled.append(str(execution["status"]))
        live.update(_view(execution))
    if not out.is_terminal:
        out.line()  # the live view ends its last line only on a terminal


_COALESCED = frozenset(
    {
        "step_started",
        "step_completed",
        "step_retrying",
        "step_skipped",
        "step_cancelled",
        "compensation_started",
        "compensation_completed",
        "compensation_retrying",
    }
)
"""The events a busy run sends by the hundred, each only moving one step's state (a run failing at its 100th step
sends two compensation events for each step before it): between two reads the view moves the step itself (`_moved`).
Any other event (an approval asked for or decided, the execution waiting, a step failed) changes what the view shows
beyond a step's state (the status, why it waits, its error): the execution is read again, at once if the last read
is `_REDRAW_S` old, else `_REDRAW_S` after it."""


def _follow_view(client: Client, execution_id: str, live: Live) -> None:
    """The live view on a terminal until the terminal event. The events are taken a batch at a time (all those queued:
    one read and one redraw for the batch). The execution is read at the first batch, at a batch that comes at least
    `_REDRAW_S` after the last read, and `_REDRAW_S` after the last read when a batch held an event outside
    `_COALESCED`; the events between move the steps' states in the view. Once the events pause for `_REDRAW_S`, it is
    read once more (a catch-up): the view of a run that waits (for an approval, for a long step) shows what a read
    says, not what the last of a burst of events left it at. At most one read in `_REDRAW_S`, but for the first and a
    catch-up; the terminal event ends the view, and its caller reads the execution once more."""
    feed = _Feed(client.stream(f"/api/v1/executions/{execution_id}/events"))
    try:
        execution: dict[str, Any] | None = None
        read_at = 0.0
        due: float | None = None  # when to read again: `_REDRAW_S` after the last read or the last event heard of
        owed = False  # an event outside `_COALESCED` came since the last read: read at `read_at + _REDRAW_S`
        while True:
            batch = feed.batch(None if due is None else max(due - _clock(), 0.0))
            now = _clock()
            for event in batch:
                if event is _ENDED or event.get("type") in TERMINAL_EVENTS:
                    return
                owed = owed or event.get("type") not in _COALESCED
                if execution is not None:
                    execution = _moved(execution, event)
            if execution is None or not batch or now - read_at >= _REDRAW_S:
                # the first batch, the events paused (a catch-up, or the read owed), or the last read is old enough
                execution, read_at, owed = _checked(client.executions.get(execution_id), shapes.EXECUTION), now, False
                due = now + _REDRAW_S if batch else None
            else:
                due = read_at + _REDRAW_S if owed else now + _REDRAW_S
            live.update(_view(execution))
    finally:
        feed.close()


_ENDED = object()
"""What `_Feed.batch` ends with once the events have ended."""
_FEED_QUEUED = 64
"""The most events `_Feed` holds for the view: past it, its thread reads no more of the stream until the view takes
them (2,000 events of 100 KB, read faster than the view read the execution, held 233 MB)."""


class _Feed:
    """An execution's events read on a thread of their own (a daemon: it never holds `qp` open), so the view waiting
    for the next one can stop waiting to read the execution again. What the stream raises is raised by `batch`. At most
    `_FEED_QUEUED` events wait for the view; `close` stops the thread at its next event and closes the stream."""

    def __init__(self, events: Iterator[dict[str, Any]]) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=_FEED_QUEUED)
        self._stopped = threading.Event()
        self.thread = threading.Thread(target=self._pump, args=(events,), name="qp-follow-events", daemon=True)
        self.thread.start()

    def _pump(self, events: Iterator[dict[str, Any]]) -> None:
        try:
            for event in events:
                if self._stopped.is_set():
                    return
                self._queue.put(("event", event))
        except BaseException as exc:  # noqa: BLE001  # handed to the reader, raised on its thread
            if not self._stopped.is_set():
                self._queue.put(("raised", exc))
        else:
            if not self._stopped.is_set():
                self._queue.put(("ended", None))
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # a generator's: its response is closed

    def batch(self, wait: float | None) -> list[Any]:
        """The events queued (at most `_FEED_QUEUED` more than the first, for the thread goes on queueing meanwhile),
        at least one: none when none came within `wait` seconds (None: wait for one); the last is `_ENDED` once the
        events have ended."""
        try:
            taken = [self._queue.get(timeout=wait)]
        except queue.Empty:
            return []
        while taken[-1][0] == "event" and len(taken) <= _FEED_QUEUED:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                break
        kind, value = taken[-1]
        if kind == "raised":
            raise value
        return [value for _, value in taken[:-1]] + [_ENDED if kind == "ended" else value]

    def close(self) -> None:
        """Stop the thread at its next event (its stream then closed), taking what it queued so it is not held on a
        full queue."""
        self._stopped.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


_STATE_AFTER = {
    "step_started": "running",
    "step_completed": "succeeded",
    "step_failed": "failed",
    "step_retrying": "retrying",
    "step_skipped": "skipped",
    "step_cancelled": "cancelled",
    "compensation_started": "compensating",
    "compensation_retrying": "compensating",
    "compensation_completed": "compensated",
    "compensation_failed": "compensation_failed",
}
"""The state a step's event moves it to, as the next read of the execution will show it."""


def _moved(execution: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """`execution` as `event` leaves it, without reading it again: its step's state moved (`_STATE_AFTER`); any other
    event leaves the view as it is until the next read."""
    state, step_id = _STATE_AFTER.get(str(event.get("type"))), event.get("step_id") or event.get("step")
    steps = execution.get("steps")
    if state is None or step_id is None or not isinstance(steps, list):
        return execution
    moved = [
        {**step, "state": state} if isinstance(step, dict) and step.get("step_id") == step_id else step
        for step in steps
    ]
    return {**execution, "steps": moved}


def _view(execution: dict[str, Any]) -> Group:
    listed = execution.get("steps")
    steps = [step for step in listed if isinstance(step, dict)] if isinstance(listed, list) else []
    done = sum(1 for step in steps if step.get("state") in ("succeeded", "skipped", "reused"))
    # As text, not markup, like the error below: step ids and actions come from the tenant's definition.
    description = TextColumn("{task.description}", markup=False)
    progress = Progress(description, BarColumn(), TextColumn("{task.completed}/{task.total}"))
    progress.add_task(
        terminal_text.shown(f"execution {execution.get('id')} {execution.get('status')}", lines=False),
        total=max(len(steps), 1),
        completed=done,
    )
    table = Table("step", "action", "state", "attempt", "duration")
    for index, step in enumerate(steps):
        table.add_row(
            _text(step.get("step_id"), lines=False),
            _text(step.get("action"), lines=False),
            _text(step.get("state"), lines=False),
            _text(step.get("attempt") or "", lines=False),
            _duration(execution, index, step),
        )
    parts: list[Any] = [progress, table]
    # As text, not markup: an error quotes what an endpoint answered, and a `[/x]` in it would stop the view (and its
    # controls, raw, would rewrite the screen around it).
    if execution.get("wait_reason"):
        parts.append(_text(execution["wait_reason"], style="yellow"))
    if execution.get("error"):
        parts.append(_text(execution["error"], style="red"))
    return Group(*parts)


def _duration(execution: dict[str, Any], index: int, step: dict[str, Any]) -> str:
    """How long the execution's step `index` ran (so far, while it has no end)."""
    if not step.get("started_at"):
        return ""
    begin = _time(execution, index, step, "started_at")
    end = _time(execution, index, step, "finished_at") if step.get("finished_at") else datetime.now(UTC)
    return f"{(end - begin).total_seconds():.1f} s"


def _time(execution: dict[str, Any], index: int, step: dict[str, Any], field: str) -> datetime:
    """A step's time. Its shape says only that it is text: one that is not an ISO 8601 time with its offset (the API
    answers every time so) is a wrong answer, refused as the shape's own failures are."""
    value = step[field]
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise UnexpectedAnswer(
            f"GET /api/v1/executions/{execution.get('id')} answered something other than {shapes.EXECUTION.name}: "
            f"/steps/{index}/{field} is {shapes.kind(value)} that is not an ISO 8601 time with its offset"
        )
    return moment


# ------------------------------------------------------------------------------------------ executions
@executions_app.command("list")
def executions_list(
    status: Annotated[str | None, typer.Option(help="only executions in this status")] = None,
    intent: Annotated[str | None, typer.Option(help="only executions of this intent (its name or id)")] = None,
    limit: LimitOption = None,
    cursor: CursorOption = None,
    every: AllOption = False,
    output: OutputOption = "table",
) -> None:
    """The tenant's executions, newest first: a page of them (--all: every page)."""
    columns = ["id", "intent_id", "intent_version", "status", "target", "created_at"]

    def act(client: Client) -> None:
        intent_id = _intent_id(client, intent) if intent is not None else None
        _show_pages(
            lambda after: client.executions.list(status=status, intent_id=intent_id, limit=limit, cursor=after),
            _EXECUTIONS_PAGE,
            cursor,
            every=every,
            output=output,
            columns=columns,
        )

    _run(lambda: _with(act))


@executions_app.command("get")
def executions_get(execution: str, output: OutputOption = "table") -> None:
    """One execution: status, steps and why it waits."""
    _run(lambda: _with(lambda c: _show(_checked(c.executions.get(execution), shapes.EXECUTION), output)))


@executions_app.command("cancel")
def executions_cancel(execution: str, output: OutputOption = "table") -> None:
    """Cancel an execution: it compensates what completed and ends cancelled (refused, 409 already-failing, while it
    compensates for a failed step: it ends failed)."""
    _run(lambda: _with(lambda c: _show(_checked(c.executions.cancel(execution), shapes.CANCELLED), output)))


@executions_app.command("approve")
def executions_approve(
    execution: str,
    step: str,
    reject: Annotated[bool, typer.Option(help="reject instead")] = False,
    comment: Annotated[str, typer.Option()] = "",
    output: OutputOption = "table",
) -> None:
    """Approve (or reject) a waiting approval step."""
    _run(
        lambda: _with(
            lambda c: _show(
                _checked(c.executions.approve(execution, step, reject=reject, comment=comment), shapes.DECIDED), output
            )
        )
    )


@executions_app.command("retry")
def executions_retry(execution: str, output: OutputOption = "table") -> None:
    """A new execution that reuses the steps that succeeded."""
    _run(lambda: _with(lambda c: _show(_checked(c.executions.retry(execution), shapes.STARTED), output)))


@app.command()
def events(
    execution: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="wait for new events until the end")] = False,
    after: Annotated[int, typer.Option(help="only events after this number")] = 0,
    output: OutputOption = "table",
) -> None:
    """An execution's events; with --follow, as they are recorded, until its end."""

    def act(client: Client) -> None:
        path = f"/api/v1/executions/{execution}/events"
        stream = client.stream(path, after=after) if follow else _recorded_events(client, execution, after)
        for event in stream:
            if output == "json":
                _line(terminal_text.json_text(event))
            else:
                _line(_event_text(event), lines=False)

    _run(lambda: _with(act), json_lines=True)


def _event_text(event: dict[str, Any]) -> str:
    """An event as the one line `qp events` prints: its number, type, step and error or result."""
    # A step's error quotes what an endpoint answered (`GET /[/api] ...`): printed as text, one line each.
    detail = event.get("error") or (json.dumps(event["result"]) if event.get("result") is not None else "")
    return f"{event.get('seq')!s:>4}  {event.get('type')!s:<24} {event.get('step') or '':<24} {detail}"


def _recorded_events(client: Client, execution: str, after: int) -> Iterator[dict[str, Any]]:
    """Every event recorded so far after `after`, page after page (one answer holds at most 100): all of them, not
    the first page passing for all."""
    while True:
        # Only events past `after` (the rule `stream` follows too): a page that does not move on ends the listing
        # instead of repeating itself.
        items, after, _ = _events(client.executions.events(execution, after=after).json(), after)
        yield from items
        if not items:
            return


# ------------------------------------------------------------------------------------------ webhooks
_SUBSCRIPTION_COLUMNS = ["id", "url", "event_types", "enabled", "consecutive_failures", "disabled_reason"]


@webhooks_app.command("create")
def webhooks_create(
    url: Annotated[str, typer.Argument(help="where the deliveries go (https outside local development)")],
    event: Annotated[
        list[str],
        typer.Option(
            "--event",
            "-e",
            help="an event type the platform emits, e.g. execution.completed (* for all; docs/webhooks.md); repeat",
        ),
    ],
    description: Annotated[str, typer.Option(help="what the subscription is for")] = "",
    output: OutputOption = "table",
) -> None:
    """Subscribe URL to event types; the answer shows the signing secret, this once."""
    _run(
        lambda: _with(
            lambda c: _show(
                _checked(c.webhooks.create(url, event, description=description), shapes.SUBSCRIPTION), output
            )
        )
    )


@webhooks_app.command("list")
def webhooks_list(output: OutputOption = "table") -> None:
    """The tenant's subscriptions (never their secrets)."""
    _run(lambda: _with(lambda c: _show(_checked(c.webhooks.list(), _SUBSCRIPTIONS), output, _SUBSCRIPTION_COLUMNS)))


@webhooks_app.command("get")
def webhooks_get(subscription: str, output: OutputOption = "table") -> None:
    """One subscription."""
    _run(lambda: _with(lambda c: _show(_checked(c.webhooks.get(subscription), shapes.SUBSCRIPTION), output)))


@webhooks_app.command("enable")
def webhooks_enable(subscription: str, output: OutputOption = "table") -> None:
    """Enable a subscription; one that was disabled sends its failed delivery again, then the rest in order."""
    _run(
        lambda: _with(
            lambda c: _show(_checked(c.webhooks.update(subscription, enabled=True), shapes.SUBSCRIPTION), output)
        )
    )


@webhooks_app.command("disable")
def webhooks_disable(subscription: str, output: OutputOption = "table") -> None:
    """Stop sending to a subscription; its deliveries wait until it is enabled again."""
    _run(
        lambda: _with(
            lambda c: _show(_checked(c.webhooks.update(subscription, enabled=False), shapes.SUBSCRIPTION), output)
        )
    )


@webhooks_app.command("rotate-secret")
def webhooks_rotate_secret(subscription: str, output: OutputOption = "table") -> None:
    """A new signing secret, shown this once; deliveries from now on are signed with it."""
    _run(lambda: _with(lambda c: _show(_checked(c.webhooks.rotate_secret(subscription), shapes.SECRET), output)))


@webhooks_app.command("deliveries")
def webhooks_deliveries(subscription: str, output: OutputOption = "table") -> None:
    """The subscription's last 100 deliveries, newest first: state, attempts, the receiver's last answer."""
    columns = ["message_id", "event_type", "state", "attempts", "last_status", "last_error", "created_at"]
    _run(lambda: _with(lambda c: _show(_checked(c.webhooks.deliveries(subscription), _DELIVERIES), output, columns)))


@webhooks_app.command("delete")
def webhooks_delete(subscription: str) -> None:
    """Remove a subscription and its delivery log."""

    def act(client: Client) -> None:
        client.webhooks.delete(subscription)
        _line(f"deleted {subscription}")

    _run(lambda: _with(act))


def main(args: list[str] | None = None) -> NoReturn:
    """The `qp` entry point. A usage error is printed as click prints it (on stderr) and exits EXIT_USAGE, not
    click's 2: `qp run --follow` exits 2 for a cancelled execution, and a typo must not pass for one. An exception
    `qp` does not expect prints its traceback and exits EXIT_SOFTWARE; output whose reader went away (`qp events -o
    json | head -1`) ends the command quietly, exit EXIT_READER_GONE (`qp run --follow`: its run's outcome when it
    read it)."""
    try:
        code = app(args=args, standalone_mode=False)
    except _CLICK_ERRORS.UsageError as exc:
        _show_click_error(exc)
        sys.exit(EXIT_USAGE)
    except _CLICK_ERRORS.ClickException as exc:
        _show_click_error(exc)
        sys.exit(exc.exit_code)
    except typer.Abort:  # typer's own (its copy of click has none)
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except _ReaderGone as gone:  # the output's reader went away (`| head -1`, `| true`): quietly, never 0
        sys.exit(gone.code)
    except Exception:  # a fault of qp's own: its traceback, and a code no outcome or refusal has
        traceback.print_exc()
        sys.exit(EXIT_SOFTWARE)
    # Without standalone mode click answers a command's exit code (typer.Exit, --help's 0) instead of exiting.
    sys.exit(code if isinstance(code, int) else 0)


def _show_click_error(exc: Any) -> None:
    """As click would have printed it in standalone mode: typer's framed message when rich is there."""
    try:
        from typer import rich_utils
    except ImportError:  # typer without rich
        exc.show()
        return
    rich_utils.rich_format_error(exc)


if __name__ == "__main__":
    main()
