# intent_ref: platform.modules
"""The module contract and the SSRF guard's address rules, without a network."""

from __future__ import annotations

import ipaddress
import time
import uuid
from typing import Any, ClassVar

import pytest

from shared.modules import BUILTIN_MODULES, Module, ModuleContext, StepFailed, run_module
from shared.modules.artifact_write import artifact_bytes, blob_name
from shared.modules.contract import Abandoned
from shared.modules.event_emit import EventEmitModule, event_id
from shared.modules.ssrf import UrlRefused, check_url, refusal_reason
from shared.registry.catalog import ArtifactWriteParams, EventEmitParams, builtin_catalog

TENANT = uuid.UUID("11111111-2222-3333-4444-555555555555")


def ctx(**settings: Any) -> ModuleContext:
    return ModuleContext(TENANT, "exec-1", "step-a", 2, tenant_settings=settings)


class Echo(Module[EventEmitParams]):
    action: ClassVar[str] = "test.echo"
    params_model = EventEmitParams

    def run(self, ctx: ModuleContext, params: EventEmitParams) -> Any:
        if params.type == "boom":
            raise RuntimeError("kaput")
        if params.type == "set":
            return {1, 2}
        return {"type": params.type, "key": ctx.idempotency_key}


class Returns(Module[EventEmitParams]):
    """Returns `Returns.output` whatever it is given."""

    action: ClassVar[str] = "test.returns"
    params_model = EventEmitParams
    output: ClassVar[Any] = None

    def run(self, ctx: ModuleContext, params: EventEmitParams) -> Any:
        return self.output


@pytest.mark.parametrize(
    "output",
    [{"emoji": "\U0001f600"}, {"text": "a literal \\u0000, not a NUL"}, {"deep": [[[["fine"]]]]}],
    ids=["paired-surrogates", "escaped-text", "shallow"],
)
def test_an_output_that_can_be_stored_is_kept_as_it_is(output: Any) -> None:
    Returns.output = output
    assert run_module("test.returns", ctx(), {"type": "x"}, {"test.returns": Returns()}) == output


def test_an_output_that_cannot_be_stored_is_a_failed_step_that_names_the_place() -> None:
    Returns.output = {"items": [{"name": "ok"}, {"name": "a\x00b"}]}
    with pytest.raises(StepFailed, match="cannot be stored: /items/1/name: NUL") as failed:
        run_module("test.returns", ctx(), {"type": "x"}, {"test.returns": Returns()})
    assert failed.value.retryable is False


def test_a_failure_message_quoting_a_nul_or_a_lone_surrogate_is_kept_as_escapes() -> None:
    failed = StepFailed("GET http://x answered 'a\x00b\ud800'")
    assert failed.message == "GET http://x answered 'a\\u0000b\\ud800'" == str(failed)


def test_idempotency_key_names_execution_step_and_attempt() -> None:
    assert ctx().idempotency_key == "exec-1:step-a:2"


def test_a_compensation_has_an_idempotency_key_and_an_event_id_of_its_own() -> None:
    undo = ModuleContext(TENANT, "exec-1", "step-a", 2, phase="compensate")
    assert undo.idempotency_key == "exec-1:step-a:compensate:2"
    assert event_id(undo) != event_id(ctx())


def test_builtins_match_the_catalog() -> None:
    catalog = builtin_catalog()
    assert set(BUILTIN_MODULES) == {
        "http.request",
        "http.wait_healthy",
        "verify-deployment",
        "artifact.write",
        "event.emit",
    }
    for action, module in BUILTIN_MODULES.items():
        spec = catalog[action]
        assert module.action == action
        assert {**module.params_model.model_json_schema(), "title": action} == spec.params_schema
        assert module.timeout_s == spec.timeout_s
    assert BUILTIN_MODULES["artifact.write"].has_compensation
    assert not BUILTIN_MODULES["http.request"].has_compensation


def test_run_module_validates_and_runs() -> None:
    modules = {"test.echo": Echo()}
    assert run_module("test.echo", ctx(), {"type": "x"}, modules) == {"type": "x", "key": "exec-1:step-a:2"}


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"type": "x", "extra": 1}, "extra: Extra inputs are not permitted"),
        ({}, "type: Field required"),
        ({"type": "not valid!"}, "type: String should match pattern"),
        ("a string", "(params): Input should be a valid dictionary"),
    ],
)
def test_invalid_params_are_a_clear_non_retryable_failure(raw: Any, fragment: str) -> None:
    with pytest.raises(StepFailed) as failure:
        run_module("test.echo", ctx(), raw, {"test.echo": Echo()})
    assert failure.value.retryable is False
    assert failure.value.message.startswith("invalid parameters for test.echo: ")
    assert fragment in failure.value.message


def test_invalid_params_of_a_builtin() -> None:
    with pytest.raises(StepFailed, match=r"invalid parameters for http.request: url: String should match"):
        run_module("http.request", ctx(), {"url": "ftp://example.com/"})


def test_unknown_action_and_handler_errors_are_step_failures() -> None:
    with pytest.raises(StepFailed, match="unknown action 'nope'"):
        run_module("nope", ctx(), {})
    with pytest.raises(StepFailed, match="test.echo failed: RuntimeError: kaput") as failure:
        run_module("test.echo", ctx(), {"type": "boom"}, {"test.echo": Echo()})
    assert failure.value.retryable
    with pytest.raises(StepFailed, match="not JSON"):
        run_module("test.echo", ctx(), {"type": "set"}, {"test.echo": Echo()})


@pytest.mark.parametrize(
    "address, reason",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("172.16.5.5", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("100.64.0.1", "non-public"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),
        # Special-purpose blocks the stdlib's flags leave global: refused by the guard's own list.
        ("192.0.0.9", "special-purpose"),
        ("192.0.0.255", "special-purpose"),
        ("::ffff:192.0.0.9", "special-purpose"),
        ("192.88.99.1", "6to4 relay anycast"),
        ("2002:c058:6301::1", "6to4 relay anycast"),
        ("fec0::1", "site-local"),
        ("feff:ffff::1", "site-local"),
        ("93.184.215.14", None),
        ("2606:4700::1111", None),
    ],
)
def test_refusal_reasons(address: str, reason: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://localhost:8080/x",
        "http://[::1]/",
        "http://10.0.0.5/",
        "http://169.254.169.254/latest",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://[::ffff:169.254.169.254]/",
        "http://0x7f000001/",
        "http://2130706433/",
    ],
)
def test_internal_urls_are_refused(url: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        check_url(url)
    assert refused.value.retryable is False


def test_a_name_resolving_to_any_private_address_is_refused() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.7"]  # one bad record among good ones is enough

    with pytest.raises(UrlRefused, match=r"api.example.com resolves to a non-public address \(private\)"):
        check_url("https://api.example.com/", resolver=resolver)
    target = check_url("https://api.example.com/", ["API.example.com"], resolver=resolver, allow_private=True)
    assert target.addresses == ("93.184.215.14", "10.0.0.7")


def test_allow_list_opens_a_host_but_never_metadata() -> None:
    assert check_url("http://127.0.0.1:9/", ["127.0.0.1"], allow_private=True).addresses == ("127.0.0.1",)
    with pytest.raises(UrlRefused, match="cloud metadata"):
        check_url("http://169.254.169.254/", ["169.254.169.254"], allow_private=True)
    with pytest.raises(UrlRefused, match="loopback"):
        check_url("http://127.0.0.1:9/", ["localhost"], allow_private=True)  # exact host names only


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://example.com/", "ftp://example.com/", "/relative"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(UrlRefused, match="only http and https"):
        check_url(url, ["example.com"])


def test_artifact_names_stay_under_the_step_folder() -> None:
    assert blob_name(ctx(), "reports/out.json") == f"{TENANT}/executions/exec-1/step-a/reports/out.json"
    for name in ("a/../../../other-tenant/x", "a//b", "./x"):
        with pytest.raises(StepFailed, match="segment"):
            blob_name(ctx(), name)


def test_artifact_bytes() -> None:
    assert artifact_bytes(ArtifactWriteParams(name="a", content={"k": "é"})) == '{"k":"é"}'.encode()
    assert artifact_bytes(ArtifactWriteParams(name="a", content="hi", content_type="text/plain")) == b"hi"
    with pytest.raises(StepFailed, match="must be a string"):
        artifact_bytes(ArtifactWriteParams(name="a", content={"k": 1}, content_type="text/plain"))


def test_event_id_is_stable_per_step() -> None:
    assert event_id(ctx()) == event_id(ctx())
    # Every attempt of a step sends under one id: a timed-out attempt's send may get through all the same (ADR 0026).
    assert event_id(ctx()) == event_id(ModuleContext(TENANT, "exec-1", "step-a", 3))
    assert event_id(ctx()) != event_id(ModuleContext(TENANT, "exec-1", "step-b", 2))


class _Unreached:
    """A publisher the event must not reach."""

    def publish(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("the event was sent")

    def close(self) -> None:
        pass


def test_an_event_of_an_abandoned_attempt_is_not_sent_and_its_failure_is_the_abandonments() -> None:
    module = EventEmitModule(lambda: _Unreached())
    context = ModuleContext(TENANT, "exec-1", "step-a", 2, deadline=time.monotonic() + 600)
    context.abandoned.set()
    with pytest.raises(Abandoned, match="not sent: its attempt was abandoned") as failed:
        run_module(module.action, context, {"type": "deploy.done"}, {module.action: module})
    assert failed.value.retryable


def test_an_event_past_its_attempts_deadline_is_not_sent_and_its_failure_is_not_the_abandonments() -> None:
    module = EventEmitModule(lambda: _Unreached())
    context = ModuleContext(TENANT, "exec-1", "step-a", 2, deadline=time.monotonic() - 1)
    with pytest.raises(StepFailed, match="not sent: its attempt was past its deadline") as failed:
        run_module(module.action, context, {"type": "deploy.done"}, {module.action: module})
    assert not isinstance(failed.value, Abandoned)
