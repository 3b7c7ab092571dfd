# intent_ref: platform.ingress
"""The intent-requests ingress: producers start executions by sending events that carry their API token."""
