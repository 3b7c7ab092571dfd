# intent_ref: platform.skeleton
"""The Functions app: one DFApp that registers the blueprints of functions/ and orchestrations/."""

import azure.durable_functions as df
import azure.functions as func

from functions import blueprints as function_blueprints
from orchestrations import blueprints as orchestration_blueprints

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
for blueprint in (*function_blueprints, *orchestration_blueprints):
    app.register_functions(blueprint)
