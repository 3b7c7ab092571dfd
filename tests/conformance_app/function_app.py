# intent_ref: platform.devhost
"""The conformance app: one DFApp whose blueprints use every feature the devhost serves."""

import azure.durable_functions as df
import azure.functions as func
from conformance_http import bp as http_bp
from durable_functions import bp as durable_bp
from event_functions import bp as event_bp

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
for blueprint in (http_bp, durable_bp, event_bp):
    app.register_functions(blueprint)
