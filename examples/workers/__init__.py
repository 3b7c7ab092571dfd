# intent_ref: platform.execution
"""Example remote workers for `module-work` (not part of the platform)."""
