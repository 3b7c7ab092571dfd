# intent_ref: platform.telemetry
"""OpenTelemetry for the platform: set-up, the execution trace's context, and the platform's meters."""
