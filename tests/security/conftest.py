# intent_ref: platform.hardening
"""Fixtures of the hostile-input suite: the integration suite's pools, tenants and in-process API harness."""

from tests.integration.api_harness import api  # noqa: F401  # the fixture
from tests.integration.conftest import app_pool, control_pool, new_tenant, process_pools  # noqa: F401
