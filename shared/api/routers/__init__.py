# intent_ref: platform.gateway
"""The API's routers, one per resource."""
