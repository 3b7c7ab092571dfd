# intent_ref: platform.estate
"""The API Management policy and API import: Entra JWT validation, per-tid limits, no Durable management API."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from shared.api.problems import PROBLEM_BASE
from tests.infra.conftest import BICEP, TERRAFORM, BicepFile, TerraformModule

POLICY = BICEP / "policies" / "api-policy.xml"
OPENAPI = BICEP.parent / "docs" / "openapi.json"
TID_KEY = re.compile(r"""\(\(Jwt\)context\.Variables\["jwt"\]\)\.Claims\.GetValueOrDefault\("tid\"""")


@pytest.fixture(scope="module")
def policy() -> ET.Element:
    return ET.parse(POLICY).getroot()


def test_validate_jwt_against_entra_with_the_api_audience(policy: ET.Element):
    (jwt,) = policy.iter("validate-jwt")
    assert jwt.get("header-name") == "Authorization"
    assert jwt.get("output-token-variable-name") == "jwt"
    assert jwt.find("openid-config").get("url") == "{{openid-config-url}}"
    assert [a.text for a in jwt.find("audiences")] == ["{{api-audience}}"]
    assert "tid" in [claim.get("name") for claim in jwt.find("required-claims")]


def _authenticated(policy: ET.Element) -> ET.Element:
    """The branch every request but the health probes takes: validation, then the per-tenant limits."""
    (branch,) = (when for when in policy.iter("when") if when.find("validate-jwt") is not None)
    return branch


def test_the_rate_limit_is_keyed_on_the_validated_tid(policy: ET.Element):
    (limit,) = _authenticated(policy).iter("rate-limit-by-key")
    assert TID_KEY.search(limit.get("counter-key", ""))
    assert "Headers" not in limit.get("counter-key", ""), "the limit must not key on a raw header"
    assert limit.get("calls", "").startswith("{{")


def test_limits_come_after_validation(policy: ET.Element):
    order = [
        element.tag for element in _authenticated(policy).iter() if element.tag in ("validate-jwt", "rate-limit-by-key")
    ]
    assert order == ["validate-jwt", "rate-limit-by-key"]


# Policies the v2 tiers do not run (policy reference: quota-by-key applies to Developer, Basic, Standard and
# Premium, classic and self-hosted gateways only). A policy holding one is refused on StandardV2, so nothing deploys.
NOT_ON_V2_TIERS = {"quota-by-key"}


def test_the_policy_uses_only_what_the_v2_gateway_runs(
    policy: ET.Element, bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    sku = bicep_modules["apim"].resources["service"]["config"]["sku"]["name"]
    tf_sku = tf_modules["apim"].of_type("azurerm_api_management")["main"]["sku_name"]
    assert sku.endswith("V2") and tf_sku.split("_")[0].endswith("V2")  # both stacks deploy a v2 tier
    assert not {element.tag for element in policy.iter()} & NOT_ON_V2_TIERS
    # The daily quota is gone with it: no named value and no stack input that would suggest one is enforced (the app
    # holds each tenant to its own quotas and answers 429, ADR 0013).
    assert "quota-calls" not in tf_modules["apim"].locals["named_values"]
    assert "'quota-calls'" not in bicep_modules["apim"].variables["namedValues"]
    stacks = "\n".join(
        path.read_text(encoding="utf-8")
        for path in [*BICEP.rglob("*.bicep"), *BICEP.glob("*.bicepparam"), *TERRAFORM.rglob("*.tf")]
    )
    assert not re.search(r"quota_?per_?day", stacks, re.I)


def test_the_anonymous_probes_are_limited_per_caller_address(policy: ET.Element):
    # /api/ready borrows from both database pools and reads blob storage; it skipped every limit of the gateway.
    choose = next(c for c in policy.iter("choose") if _authenticated(policy) in list(c))
    (limit,) = choose.find("otherwise").iter("rate-limit-by-key")  # type: ignore[union-attr]
    assert limit.get("counter-key") == "@(context.Request.IpAddress)" and int(limit.get("calls", "0")) > 0
    assert limit.get("retry-after-variable-name") == "gatewayRetryAfter"  # the 429 problem carries Retry-After


def test_durable_management_endpoints_are_not_exposed(policy: ET.Element):
    openapi = json.loads(OPENAPI.read_text(encoding="utf-8"))
    assert not [path for path in openapi["paths"] if "runtime" in path or "durabletask" in path.lower()]
    blocking = [when for when in policy.iter("when") if "durabletask" in when.get("condition", "")]
    assert len(blocking) == 1
    (status,) = blocking[0].iter("set-status")
    assert status.get("code") == "404"
    assert blocking[0].find("return-response") is not None
    text = POLICY.read_text(encoding="utf-8")
    assert text.count("durabletask") == 1  # only in the blocking condition


def test_backend_is_reached_with_the_gateway_identity(policy: ET.Element):
    (identity,) = policy.iter("authentication-managed-identity")
    assert identity.get("resource") == "{{backend-audience}}"
    (backend,) = policy.iter("set-backend-service")
    assert backend.get("backend-id") == "function-app"


def test_both_stacks_import_docs_openapi_and_the_shared_policy(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    text = (BICEP / "modules" / "apim.bicep").read_text(encoding="utf-8")
    assert "loadJsonContent('../../docs/openapi.json')" in text
    assert "loadTextContent('../policies/api-policy.xml')" in text
    api = tf_modules["apim"].of_type("azurerm_api_management_api")["main"]
    assert "docs/openapi.json" in api["import"][0]["content_value"]
    assert api["import"][0]["content_format"] == "openapi+json"
    policy = tf_modules["apim"].of_type("azurerm_api_management_api_policy")["main"]
    assert "bicep/policies/api-policy.xml" in policy["xml_content"]
    assert api["subscription_required"] is False
    named = set(tf_modules["apim"].locals["named_values"])
    bicep_named = {key.strip("'") for key in bicep_modules["apim"].variables["namedValues"]}
    used = set(re.findall(r"\{\{([\w-]+)\}\}", POLICY.read_text(encoding="utf-8")))
    assert used <= named and named == bicep_named
    assert (TERRAFORM / "modules" / "apim" / "main.tf").exists()


def test_the_gateway_relays_answers_unbuffered_so_event_streams_flow(policy: ET.Element):
    (backend,) = policy.iter("backend")
    (forward,) = backend.iter("forward-request")
    assert forward.get("buffer-response") == "false"
    assert int(forward.get("timeout", "0")) >= 60
    # No policy reads a response body (which would buffer the stream again), and nothing caches answers.
    tags = {element.tag for element in policy.iter()}
    assert not tags & {"validate-content", "cache-store", "cache-lookup", "find-and-replace", "json-to-xml"}


def _statuses(policy: ET.Element) -> dict[str, ET.Element]:
    """The on-error section's answers by the status each sets ("expression" for the computed one)."""
    (on_error,) = policy.iter("on-error")
    answers: dict[str, ET.Element] = {}
    for answer in on_error.iter("return-response"):
        (status,) = answer.iter("set-status")
        code = status.get("code", "")
        answers["expression" if code.startswith("@") else code] = answer
    return answers


def test_every_answer_of_the_gateway_itself_is_a_problem_document(policy: ET.Element):
    answers = list(policy.iter("return-response"))
    assert len(answers) == 4  # the Durable API's 404, and on-error's 429, 401 and the rest
    for answer in answers:
        (status,) = answer.iter("set-status")
        assert status.get("code") and status.get("reason"), "set-status requires both"
        types = [h for h in answer.iter("set-header") if h.get("name") == "Content-Type"]
        assert [h.find("value").text for h in types] == ["application/problem+json"]
        assert answer.find("set-body") is not None and answer.find("set-body").text
    (blocked,) = [a for a in answers if a.find("set-status").get("code") == "404"]
    document = json.loads(blocked.find("set-body").text)
    assert document == {"type": PROBLEM_BASE + "not-found", "title": "Not found", "status": 404}
    assert set(_statuses(policy)) == {"429", "401", "expression"}


def test_gateway_problems_use_the_apps_types_for_the_same_refusals(policy: ET.Element):
    # The same refusal reads the same whether the gateway or the app made it: a client matches on the type.
    text = POLICY.read_text(encoding="utf-8")
    (body,) = [v for v in policy.iter("set-variable") if v.get("name") == "problemBody"]
    expression = body.get("value", "")
    cases = dict(re.findall(r'case (\d{3}): slug = "([a-z-]+)"', expression))
    assert cases == {
        "401": "invalid-token",
        "403": "forbidden",
        "404": "not-found",
        "429": "rate-limited",
        "502": "backend-unavailable",
        "504": "backend-timeout",
    }
    app_source = "\n".join(path.read_text(encoding="utf-8") for path in (BICEP.parent / "shared").rglob("*.py"))
    for status in ("401", "403", "404", "429"):
        assert f'"{cases[status]}"' in app_source, f"the app has no problem type {cases[status]!r}"
    assert f'"{PROBLEM_BASE}" + slug' in expression
    assert text.count(PROBLEM_BASE) == 2  # the 404 above and on-error's body: one base for every type
    for member in ("type", "title", "status", "detail", "instance", "request_id"):
        assert f'new JProperty("{member}"' in expression
    # A backend failure's message can name internal addresses: the 5xx answers carry fixed texts.
    for status in ("502", "504"):
        case = re.search(rf"case {status}:(.*?)break;", expression)
        assert case is not None
        assert "LastError.Message" not in case.group(1) and 'detail = "' in case.group(1)


def test_gateway_rate_limit_answer_keeps_retry_after_and_refused_tokens_get_a_challenge(policy: ET.Element):
    variables = {limit.get("retry-after-variable-name") for limit in policy.iter("rate-limit-by-key")}
    (variable,) = variables  # every limit hands its wait to the one 429 answer
    assert variable
    answers = _statuses(policy)
    headers = {h.get("name"): h.find("value").text for h in answers["429"].iter("set-header")}
    assert f'GetValueOrDefault<int>("{variable}"' in headers["Retry-After"]
    headers = {h.get("name"): h.find("value").text for h in answers["401"].iter("set-header")}
    assert 'Bearer error=\\"invalid_token\\"' in headers["WWW-Authenticate"]
    # Timeouts and unreachable backends are told apart from the gateway's own failures.
    (status,) = [v for v in policy.iter("set-variable") if v.get("name") == "problemStatus"]
    assert '"Timeout" ? 504' in status.get("value", "")
    assert '"BackendConnectionFailure" ? 502' in status.get("value", "")
