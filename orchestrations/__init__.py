# intent_ref: platform.skeleton
"""Durable orchestrators and activities; orchestrator code is deterministic and does no I/O."""

blueprints: tuple[object, ...] = ()
