# intent_ref: platform.access-control
"""The edge changes no framework class: a permission-checked route's body is parsed by its permission check and
handed to FastAPI's own validation by the route class (`GuardedRoute`), whatever kind of JSON it holds."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import typing
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import pytest
from fastapi import APIRouter, Body, Depends, FastAPI
from fastapi._compat import ModelField
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from shared.accepted_json import loads as accepted_loads
from shared.api import accepted_input, permissions
from shared.api.accepted_input import AcceptedInputMiddleware
from shared.api.app import create_app
from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import install_problem_handlers
from shared.api.security import RequestContext, authenticated
from shared.auth.principal import Principal
from shared.config import get_settings
from shared.policy.actions import Action
from shared.tenants.models import Tenant

ROOT = Path(__file__).resolve().parents[2]

_SNAPSHOT = textwrap.dedent(
    """
    import importlib, json, os, pkgutil, sys

    def modules(package):
        found = [importlib.import_module(package)]
        for info in pkgutil.walk_packages(found[0].__path__, package + "."):
            if info.name.rsplit(".", 1)[-1] == "__main__":
                continue  # a command line, which runs when imported
            try:
                found.append(importlib.import_module(info.name))
            except Exception:
                pass  # needs an optional extra that is not installed
        return found

    def bindings():
        seen = {}
        for package in ("fastapi", "starlette"):
            for module in modules(package):
                for name, value in list(vars(module).items()):
                    if callable(value) and getattr(value, "__module__", None) == module.__name__:
                        seen[f"{module.__name__}.{name}"] = value
                    if isinstance(value, type) and value.__module__ == module.__name__:
                        for attr, member in list(vars(value).items()):
                            if attr != "__slotnames__":  # what copying an instance caches on its class
                                seen[f"{module.__name__}.{name}.{attr}"] = member
        return seen

    before = bindings()
    for key, value in {
        "QP_DATABASE_URL": "host=/nonexistent",
        "QP_DATABASE_CONTROL_URL": "host=/nonexistent",
        "QP_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true",
    }.items():
        os.environ.setdefault(key, value)
    sys.path.insert(0, os.getcwd())
    from shared.api.app import create_app
    import function_app  # the Functions app, which serves the gateway

    create_app()
    after = bindings()
    changed = sorted(
        name for name in before.keys() | after.keys() if before.get(name, None) is not after.get(name, None)
    )
    print(json.dumps(changed))
    """
)


def test_importing_and_building_the_app_replaces_no_attribute_of_the_framework() -> None:
    # In a process of its own: this one has imported the app long ago, and tests may patch what they spy on.
    run = subprocess.run(
        [sys.executable, "-c", _SNAPSHOT], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    changed = json.loads(run.stdout.strip().splitlines()[-1])
    assert changed == [], f"replaced at import: {changed}"


def test_fastapi_validates_a_body_with_its_own_function() -> None:
    import shared.api.app  # noqa: F401  # every router and its route class imported

    validate = vars(ModelField)["validate"]
    assert validate.__module__ == ModelField.__module__, validate.__module__
    assert validate.__qualname__ == "ModelField.validate"


AUTHOR = Principal(UUID(int=1), UUID(int=2), UUID(int=3), frozenset({"Intent.Author"}), frozenset(), False)
READER = Principal(UUID(int=1), UUID(int=2), UUID(int=4), frozenset({"Intent.Reader"}), frozenset(), False)
_TENANT = Tenant.model_validate(
    {
        "id": UUID(int=1),
        "name": "bodies",
        "display_name": "Bodies",
        "entra_tenant_id": UUID(int=2),
        "status": "active",
        "quotas": {},
        "allowed_modules": [],
        "allowed_targets": [],
        "created_at": datetime.now(UTC),
        "updated_at": datetime.now(UTC),
    }
)


class Options(BaseModel):
    """A body that may be left out or sent as null."""

    model_config = ConfigDict(extra="forbid")
    note: str = ""


Create = Annotated[RequestContext, Depends(permission(Action.INTENT_CREATE))]


def _router() -> APIRouter:
    router = APIRouter(prefix="/bodies", route_class=GuardedRoute)

    @router.post("/object")
    async def an_object(context: Create, body: dict[str, Any]) -> Any:
        return {"body": body}

    @router.post("/options")
    async def options(context: Create, body: Options | None = None) -> Any:
        return {"body": None if body is None else body.model_dump()}

    @router.post("/members")
    async def members(context: Create, name: Annotated[str, Body()], size: Annotated[int, Body()]) -> Any:
        return {"name": name, "size": size}

    return router


@pytest.fixture
def principal() -> list[Principal]:
    return [AUTHOR]


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    seen: list[bytes] = []

    def recorded(body: bytes) -> Any:
        seen.append(body)
        return accepted_loads(body)

    monkeypatch.setattr(accepted_input, "loads", recorded)
    return seen


@pytest.fixture
def client(principal: list[Principal]) -> Iterator[TestClient]:
    app = FastAPI()
    install_problem_handlers(app)
    outer = APIRouter()
    outer.include_router(_router())  # included twice over, as FastAPI serves an included router's routes
    app.include_router(outer)
    app.add_middleware(AcceptedInputMiddleware)

    async def signed_in() -> RequestContext:
        return RequestContext(principal[0], _TENANT, "req-1")

    app.dependency_overrides[authenticated] = signed_in
    with TestClient(app) as client:
        yield client


def _post(client: TestClient, path: str, body: bytes) -> Any:
    return client.post(path, content=body, headers={"Content-Type": "application/json"})


def _errors(response: Any) -> list[tuple[str, str]]:
    assert response.status_code == 422, response.text[:500]
    return [(error["pointer"], error["detail"]) for error in response.json()["errors"]]


def test_an_object_body_is_validated_as_the_document_the_permission_check_parsed(
    client: TestClient, parses: list[bytes]
) -> None:
    body = b' \n{"b": [1, {"c": null}], "a": "x"}'
    answer = _post(client, "/bodies/object", body)
    assert answer.status_code == 200, answer.text
    assert list(answer.json()["body"].items()) == [("b", [1, {"c": None}]), ("a", "x")]
    assert parses == [body]


@pytest.mark.parametrize("body", [b"[]", b'[{"a": 1}]', b'"text"', b"12", b"-1.5e3", b"true", b"false", b"null"])
def test_a_body_of_another_kind_is_refused_as_fastapi_refuses_it(
    client: TestClient, parses: list[bytes], body: bytes
) -> None:
    assert _errors(_post(client, "/bodies/object", body)) == [("", "Input should be a valid dictionary")]
    assert parses == [body]


def test_a_null_body_is_an_optional_body_left_out(client: TestClient) -> None:
    assert _post(client, "/bodies/options", b"null").json() == {"body": None}
    assert _post(client, "/bodies/options", b'{"note": "n"}').json() == {"body": {"note": "n"}}
    assert _errors(_post(client, "/bodies/options", b'"null"')) == [
        ("", "Input should be a valid dictionary or object to extract fields from")
    ]
    assert _errors(_post(client, "/bodies/options", b'{"other": 1}')) == [("/other", "Extra inputs are not permitted")]


def test_members_of_a_body_are_read_from_the_document(client: TestClient) -> None:
    assert _post(client, "/bodies/members", b'{"size": 3, "name": "n"}').json() == {"name": "n", "size": 3}
    missing = [("/name", "Field required"), ("/size", "Field required")]
    for body in (b'["name", "size"]', b'"name"', b"7", b"null"):
        assert _errors(_post(client, "/bodies/members", body)) == missing, body


def test_a_body_that_is_not_json_is_refused_by_the_permission_check(client: TestClient) -> None:
    for body in (b"nope", b"tru", b'{"a": 1', b"[1] x", b"-"):
        answer = _post(client, "/bodies/object", body)
        assert answer.status_code == 422, answer.text
        assert [error["code"] for error in answer.json()["errors"]] == ["invalid_json"], body


def test_a_caller_without_the_role_is_refused_before_any_body_is_parsed(
    client: TestClient, principal: list[Principal], parses: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    denied: list[Action] = []
    monkeypatch.setattr(permissions, "_record_deny", lambda _context, action, *_: denied.append(action))
    principal[0] = READER
    for body in (b'{"a": 1}', b"nope", b'"text"'):
        assert _post(client, "/bodies/object", body).status_code == 403
    assert parses == []
    assert denied == [Action.INTENT_CREATE] * 3


def _guarded(endpoint: Callable[..., Any], body: Any) -> None:
    # The annotations as objects: this module's are strings, which FastAPI would look up among its globals.
    endpoint.__annotations__ = {"context": Create, "body": body, "return": None}
    APIRouter(route_class=GuardedRoute).post("/x")(endpoint)


@pytest.mark.parametrize("kind", [str, int, float, Any, dict[str, Any] | str, Annotated[dict[str, Any], "x"] | int])
def test_a_permission_checked_body_a_string_or_number_could_pass_is_refused_at_import(kind: Any) -> None:
    # Such a body would be validated as a stand-in of its kind, not its value: the route is not built at all.
    async def bare(context: RequestContext, body: Any) -> None:
        return None

    with pytest.raises(TypeError, match="must be an object or an array"):
        _guarded(bare, Annotated[kind, Body()])


def test_a_permission_checked_body_of_objects_arrays_or_null_is_built() -> None:
    async def objects(context: RequestContext, body: Any = None) -> None:
        return None

    _guarded(objects, dict[str, Any] | list[int] | Options | None)
    _guarded(objects, Annotated[Options, Body(embed=True)])  # read as the member `body`, which may be anything
    _guarded(objects, Annotated[str, Body(embed=True)])


def test_a_stand_in_is_refused_as_every_string_and_number_is(monkeypatch: pytest.MonkeyPatch) -> None:
    # What makes a stand-in of its kind enough, for every permission-checked body of the app.
    for name in ("QP_DATABASE_URL", "QP_DATABASE_CONTROL_URL"):
        monkeypatch.setenv(name, "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    get_settings.cache_clear()
    try:
        app = create_app()
    finally:
        get_settings.cache_clear()
    routes = [context.original_route for context in iter_route_contexts(app.routes)]
    bodies = [
        route.body_field.field_info.annotation
        for route in routes
        if isinstance(route, GuardedRoute) and route.parses_body_after_permission and route.body_field is not None
    ]
    assert len(bodies) > 10

    def errors(adapter: TypeAdapter[Any], value: Any) -> str:
        try:
            adapter.validate_python(value, from_attributes=True)
        except ValidationError as exc:
            return str([(e["type"], e["loc"], e["msg"]) for e in exc.errors()])
        return "valid"

    kinds: list[Any] = [*bodies, Options | None]
    for body in kinds:
        adapter: TypeAdapter[Any] = TypeAdapter(body)
        stand_ins = {errors(adapter, value) for value in ("", 0)}
        assert len(stand_ins) == 1 and "valid" not in stand_ins, body
        assert {errors(adapter, value) for value in ("x", "null", 1, -5, 1.5, 1e300, 10**18)} == stand_ins, body


async def _note_of(note: Annotated[str, Body()]) -> str:
    return note


async def _sized(note: Annotated[dict[str, Any], Body()]) -> int:
    return len(note)


async def _labelled(label: Annotated[str, Body()] = "") -> str:
    return label


def test_a_string_body_declared_in_a_dependency_is_refused_at_import() -> None:
    # FastAPI validates the body against every body parameter of a route, its dependencies' too: `"hello"` reached
    # `_note_of` as its stand-in, an empty string, and the route answered 200 {"note": ""}.
    router = APIRouter(route_class=GuardedRoute)

    async def noted(context: Create, note: Annotated[str, Depends(_note_of)]) -> Any:
        return {"note": note}

    with pytest.raises(TypeError, match="must be an object or an array"):
        router.post("/noted")(noted)

    async def both(
        context: Create, size: Annotated[int, Depends(_sized)], note: Annotated[str, Depends(_note_of)]
    ) -> Any:
        return {"size": size, "note": note}  # one body parameter's name, a dict in one dependency, a string in another

    with pytest.raises(TypeError, match="must be an object or an array"):
        router.post("/both")(both)

    async def own_and_dependency(
        context: Create, note: dict[str, Any], other: Annotated[str, Depends(_note_of)]
    ) -> Any:
        return {"note": note, "other": other}

    with pytest.raises(TypeError, match="must be an object or an array"):
        router.post("/own")(own_and_dependency)


def test_object_bodies_and_members_declared_in_dependencies_are_built() -> None:
    router = APIRouter(route_class=GuardedRoute)

    async def sized(context: Create, size: Annotated[int, Depends(_sized)]) -> Any:
        return {"size": size}

    async def members(
        context: Create, size: Annotated[int, Depends(_sized)], label: Annotated[str, Depends(_labelled)]
    ) -> Any:
        return {"size": size, "label": label}  # two names: members of an object, read with `.get`

    router.post("/sized")(sized)
    router.post("/members")(members)


@pytest.mark.parametrize(
    ("path", "body"),
    [("/bodies/object", b'{"a": 1}'), ("/bodies/object", b'{"a": 1'), ("/bodies/options", b"null")],
)
def test_a_route_whose_permission_check_never_ran_does_not_run_on_its_stand_in(path: str, body: bytes) -> None:
    # A permission callable replaced by one that allows parses nothing: the route was handed an empty stand-in (or
    # one of the body's kind) and answered 200 {"body": {}}, a change applied with its defaults.
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(_router())
    app.add_middleware(AcceptedInputMiddleware)
    checked = typing.get_args(Create)[1].dependency

    async def allowed() -> RequestContext:
        return RequestContext(AUTHOR, _TENANT, "req-1")

    app.dependency_overrides[checked] = allowed
    with TestClient(app) as client, pytest.raises(RuntimeError, match="its permission check never parsed"):
        _post(client, path, body)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = _post(client, path, body)
    assert answer.status_code == 500, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
