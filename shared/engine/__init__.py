# intent_ref: platform.execution
"""The execution engine's pure parts: the step scheduler the intent orchestrator replays deterministically."""
