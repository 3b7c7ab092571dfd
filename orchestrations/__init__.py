# intent_ref: platform.skeleton
"""Durable orchestrators and activities; orchestrator code is deterministic and does no I/O."""

from orchestrations.execution_activities import bp as execution_activities_bp
from orchestrations.intent_execution import bp as intent_execution_bp
from orchestrations.intent_execution_v1 import bp as intent_execution_v1_bp

blueprints = (intent_execution_bp, intent_execution_v1_bp, execution_activities_bp)
