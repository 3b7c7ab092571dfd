# intent_ref: platform.estate
"""The Durable backend in Azure is the Durable Task Scheduler (ADR 0024), and host.json, Bicep and Terraform agree."""

from __future__ import annotations

import json
import re
from typing import Any

import hcl2

from devhost.hostjson import load_host_json
from tests.infra.conftest import ROOT, TERRAFORM, BicepFile, TerraformModule, unquote
from tests.infra.test_estate_parity import _tf_types

CONNECTION = "DURABLE_TASK_SCHEDULER_CONNECTION"
DATA_CONTRIBUTOR = "0ad04412-c4d5-4796-b79c-f76d14c8d402"  # Durable Task Data Contributor
# The parts of the connection string; the endpoint and the runtime identity are references to each stack's inputs.
BICEP_CONNECTION = (
    "Endpoint=${durableTaskSchedulerEndpoint};Authentication=ManagedIdentity;ClientID=${identityClientId}"
)
TF_CONNECTION = (
    "Endpoint=${var.durable_task_scheduler_endpoint};Authentication=ManagedIdentity;ClientID=${var.identity_client_id}"
)


def _host() -> dict[str, Any]:
    return json.loads((ROOT / "host.json").read_text(encoding="utf-8"))


def _bicep_settings(bicep_modules: dict[str, BicepFile]) -> dict[str, Any]:
    return {item["name"]: item["value"] for item in bicep_modules["functionapp"].variables["appSettings"]}


def _tf_root_modules() -> dict[str, dict[str, Any]]:
    with (TERRAFORM / "main.tf").open(encoding="utf-8") as handle:
        document = unquote(hcl2.load(handle))
    return {name: body for block in document.get("module", []) for name, body in block.items()}


def test_host_json_selects_the_scheduler_through_an_identity_connection():
    durable = _host()["extensions"]["durableTask"]
    assert durable["storageProvider"] == {"type": "azureManaged", "connectionStringName": CONNECTION}
    assert durable["hubName"] == "%QP_TASK_HUB%"


def test_the_extension_bundle_carries_the_azure_managed_provider():
    """4.38.1 is the first bundle this ADR verified to ship the azureManaged provider; a lower floor could resolve
    to a bundle without it."""
    bundle = _host()["extensionBundle"]
    assert bundle["id"] == "Microsoft.Azure.Functions.ExtensionBundle"
    floor = re.fullmatch(r"\[(\d+)\.(\d+)\.(\d+), 5\.0\.0\)", bundle["version"])
    assert floor, bundle["version"]
    assert tuple(int(part) for part in floor.groups()) >= (4, 38, 1)


def test_both_stacks_set_the_connection_host_json_names(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    bicep = _bicep_settings(bicep_modules)
    terraform = tf_modules["functionapp"].locals["app_settings"]
    assert bicep[CONNECTION] == BICEP_CONNECTION
    assert terraform[CONNECTION] == TF_CONNECTION
    for value in (bicep[CONNECTION], terraform[CONNECTION]):
        assert "AccessKey" not in value and "Authentication=None" not in value


def test_the_task_hub_is_the_one_the_app_names(bicep_main: BicepFile, bicep_modules: dict[str, BicepFile]):
    """The scheduler's task hub and QP_TASK_HUB come from one value in each stack."""
    modules = bicep_main.parsed["modules"]
    assert modules["durableTask"]["config"]["params"]["taskHubName"] == "taskHubName"
    hub_to_app = modules["functionApp"]["config"]["params"]["taskHubName"]["operator"]["operands"]
    assert hub_to_app["operand_1"] == "durableTask"
    assert bicep_modules["durabletask"].resources["taskHub"]["config"]["name"] == "taskHubName"
    assert _bicep_settings(bicep_modules)["QP_TASK_HUB"] == "taskHubName"

    tf = _tf_root_modules()
    assert tf["durabletask"]["task_hub_name"] == "${local.task_hub_name}"
    assert tf["functionapp"]["task_hub_name"] == "${module.durabletask.task_hub_name}"
    assert tf["functionapp"]["durable_task_scheduler_endpoint"] == "${module.durabletask.endpoint}"


def test_the_scheduler_is_private_and_sized_per_environment(bicep_main: BicepFile, bicep_modules: dict[str, BicepFile]):
    scheduler = bicep_modules["durabletask"].resources["scheduler"]["config"]
    assert scheduler["properties"]["publicNetworkAccess"] == "Disabled"
    assert scheduler["properties"]["ipAllowlist"] == []
    sku = scheduler["properties"]["sku"]["operator"]
    assert sku["type"] == "conditional" and sku["operands"]["condition"] == "dedicated"
    # Production: Dedicated with three capacity units, the only configuration with high availability.
    assert sku["operands"]["true_value"] == {"name": "Dedicated", "capacity": 3}
    assert sku["operands"]["false_value"] == {"name": "Consumption"}
    dedicated = bicep_main.parsed["modules"]["durableTask"]["config"]["params"]["dedicated"]["operator"]
    assert dedicated == {"type": "equals", "operands": {"operand_1": "environmentType", "operand_2": "prod"}}


def test_both_stacks_reach_the_scheduler_through_a_private_endpoint(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    endpoint = bicep_modules["durabletask"].resources["endpoint"]["config"]["properties"]
    connection = endpoint["privateLinkServiceConnections"][0]["properties"]
    assert connection["groupIds"] == ["scheduler"]
    assert connection["privateLinkServiceId"]["operator"]["operands"]["operand_1"] == "scheduler"
    zone_group = bicep_modules["durabletask"].resources["endpointZone"]["config"]["properties"]
    zone = zone_group["privateDnsZoneConfigs"][0]["properties"]["privateDnsZoneId"]["operator"]["operands"]
    assert zone["operand_2"] == "durabletask"
    assert "'privatelink.durabletask.io'" in (bicep_modules["network"].path.read_text(encoding="utf-8"))

    module = tf_modules["durabletask"]
    (tf_endpoint,) = module.of_type("azurerm_private_endpoint").values()
    tf_connection = tf_endpoint["private_service_connection"][0]
    assert tf_connection["subresource_names"] == ["scheduler"]
    assert tf_connection["private_connection_resource_id"] == "${azapi_resource.scheduler.id}"
    assert tf_endpoint["private_dns_zone_group"][0]["private_dns_zone_ids"] == [
        '${var.private_dns_zone_ids["durabletask"]}'
    ]
    assert tf_modules["network"].locals["dns_zones"]["durabletask"] == "privatelink.durabletask.io"


def test_terraform_declares_the_scheduler_bicep_declares(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    """azurerm has no type for the scheduler: Terraform declares the same ARM resources through azapi, with the same
    API version, SKU per environment, private-only access and task hub, and takes its endpoint from the response."""
    bicep = bicep_modules["durabletask"]
    module = tf_modules["durabletask"]
    azapi = module.of_type("azapi_resource")
    assert set(azapi) == {"scheduler", "task_hub"}
    assert _tf_types([module]) == {"azapi_resource", "azurerm_private_endpoint"}
    scheduler, task_hub = azapi["scheduler"], azapi["task_hub"]
    version = module.locals["api_version"]
    assert bicep.resources["scheduler"]["type"] == "Microsoft.DurableTask/schedulers"
    assert "@2026-02-01" in bicep.path.read_text(encoding="utf-8") and version == "2026-02-01"
    assert scheduler["type"] == "Microsoft.DurableTask/schedulers@${local.api_version}"
    assert task_hub["type"] == "Microsoft.DurableTask/schedulers/taskHubs@${local.api_version}"
    assert task_hub["parent_id"] == "${azapi_resource.scheduler.id}" and task_hub["name"] == "${var.task_hub_name}"
    properties = scheduler["body"]["properties"]
    assert properties["publicNetworkAccess"] == "Disabled" and properties["ipAllowlist"] == []
    # The same choice as the Bicep module's: Dedicated with three capacity units in prod, else Consumption.
    assert properties["sku"] == '${var.dedicated ? {name = "Dedicated", capacity = 3} : {name = "Consumption"}}'
    assert scheduler["response_export_values"] == ["properties.endpoint"]
    root = _tf_root_modules()["durabletask"]
    assert root["name"] == "${local.names.durableTaskScheduler}" and root["dedicated"] == "${local.is_prod}"
    outputs = module.outputs
    assert "azapi_resource.scheduler.output.properties.endpoint" in outputs["endpoint"]["value"]


def test_the_runtime_identity_holds_the_data_role_on_the_scheduler(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    rbac = bicep_modules["rbac"]
    assert rbac.variables["roles"]["durableTaskDataContributor"] == DATA_CONTRIBUTOR
    role = rbac.resources["durableTaskRole"]["config"]
    assert role["scope"] == "scheduler"
    assert role["properties"]["principalId"] == "functionPrincipalId"
    assignment = tf_modules["rbac"].locals["assignments"]["durable_task_data_contributor"]
    assert assignment == {"scope": "${var.durable_task_scheduler_id}", "role": "Durable Task Data Contributor"}
    assert _tf_root_modules()["rbac"]["durable_task_scheduler_id"] == "${module.durabletask.id}"


def test_runtime_scale_monitoring_is_on_for_every_site(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    """The scale controller cannot read the scheduler's backlog; without runtime scale monitoring an Elastic
    Premium app would not scale out on orchestration load."""
    for name in ("site", "staging"):
        config = bicep_modules["functionapp"].resources[name]["config"]["properties"]["siteConfig"]
        assert config["functionsRuntimeScaleMonitoringEnabled"] is True, name
    module = tf_modules["functionapp"]
    for kind in ("azurerm_linux_function_app", "azurerm_linux_function_app_slot"):
        for body in module.of_type(kind).values():
            assert body["site_config"][0]["runtime_scale_monitoring_enabled"] is True, kind


def test_the_local_host_tolerates_the_provider_setting():
    """The devhost keeps its own Postgres-backed store: it reads only the route prefix and Event Hubs batching from
    host.json, whatever durableTask.storageProvider says."""
    host = load_host_json(ROOT)
    assert host.route_prefix == ""
    assert host.eventhub_max_batch_size == _host()["extensions"]["eventHubs"]["maxEventBatchSize"]
    sample = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    assert sample[CONNECTION].startswith("Endpoint=http://localhost:")  # the scheduler emulator, for a real host


def test_both_stacks_give_the_scheduler_endpoint_without_its_trailing_slash(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    """The connection string is `Endpoint=<endpoint>;...` in both stacks: each drops a trailing `/` the resource's
    endpoint may carry, so the two deployments hand the host the same string."""
    assert tf_modules["durabletask"].outputs["endpoint"]["value"] == (
        '${trimsuffix(azapi_resource.scheduler.output.properties.endpoint, "/")}'
    )
    bicep = bicep_modules["durabletask"]
    assert bicep.variables["schedulerEndpoint"] == {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "scheduler",
                "operand_2": {
                    "operator": {
                        "type": "property_accessor",
                        "operands": {"operand_1": "properties", "operand_2": "endpoint"},
                    }
                },
            },
        }
    }
    trimmed = bicep.parsed["outputs"]["endpoint"]["value"]["operator"]
    assert trimmed["type"] == "conditional"
    operands = trimmed["operands"]
    assert operands["condition"] == {
        "function": {
            "type": "ends_with",
            "parameters": {"string_to_search": "schedulerEndpoint", "string_to_find": "/"},
        }
    }
    assert operands["false_value"] == "schedulerEndpoint"
    cut = operands["true_value"]["function"]
    assert cut["type"] == "substring" and cut["parameters"]["start_index"] == 0
    assert cut["parameters"]["length"]["operator"]["operands"]["operand_2"] == 1
