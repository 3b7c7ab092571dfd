# intent_ref: platform.estate
"""The API Management policy and API import: Entra JWT validation, per-tid limits, no Durable management API."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

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


def test_rate_limit_and_quota_are_keyed_on_the_validated_tid(policy: ET.Element):
    for element in ("rate-limit-by-key", "quota-by-key"):
        (limit,) = policy.iter(element)
        assert TID_KEY.search(limit.get("counter-key", "")), element
        assert "Headers" not in limit.get("counter-key", ""), f"{element} must not key on a raw header"
        assert limit.get("calls", "").startswith("{{")


def test_limits_come_after_validation(policy: ET.Element):
    order = [
        element.tag for element in policy.iter() if element.tag in ("validate-jwt", "rate-limit-by-key", "quota-by-key")
    ]
    assert order == ["validate-jwt", "rate-limit-by-key", "quota-by-key"]


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
