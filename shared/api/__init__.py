# intent_ref: platform.gateway
"""The HTTP API: one FastAPI app served by a single HTTP-triggered function."""
