# intent_ref: platform.execution
"""The execution test app: the intent orchestrator beside test activities that run steps as their parameters say."""

import azure.durable_functions as df
import azure.functions as func
from execution_test_steps import bp as steps_bp

from orchestrations.intent_execution import bp as execution_bp

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
for blueprint in (execution_bp, steps_bp):
    app.register_functions(blueprint)
