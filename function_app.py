# intent_ref: platform.skeleton
"""The Functions app: one DFApp that registers the blueprints of functions/ and orchestrations/."""

import azure.durable_functions as df
import azure.functions as func

from shared.observability.setup import start_telemetry

# Before the blueprints are imported: the gateway's app is built at import and is instrumented when it is.
start_telemetry()

from functions import blueprints as function_blueprints  # noqa: E402
from orchestrations import blueprints as orchestration_blueprints  # noqa: E402

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
for blueprint in (*function_blueprints, *orchestration_blueprints):
    app.register_functions(blueprint)
