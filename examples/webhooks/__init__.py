# intent_ref: platform.events
"""An example webhook receiver (not part of the platform)."""
