# intent_ref: platform.execution
"""Examples that run beside the platform (not part of it)."""
