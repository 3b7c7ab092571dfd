# intent_ref: platform.events
"""The types of domain event the platform records in its outbox: what a webhook subscription can name."""

from __future__ import annotations

ALL_EVENT_TYPES = "*"
"""What a subscription names to receive every type, now and to come; alone, never beside a named type."""

DOMAIN_EVENT_TYPES: frozenset[str] = frozenset(
    {
        # shared/engine/executions.py: TRANSITIONS, named by domain_event_type
        "execution.started",
        "execution.waiting",
        "execution.resumed",
        "execution.compensating",
        "execution.completed",
        "execution.failed",
        "execution.cancelled",
        # shared/engine/steps.py: an attempt's outcome, or a step moved without one
        "step.completed",
        "step.failed",
        "step.skipped",
        "step.cancelled",
        "step.compensated",
        "step.compensation_failed",
        # shared/registry/service.py: f"{kind}.<change>" for both kinds
        *(
            f"{kind}.{change}"
            for kind in ("intent", "blueprint")
            for change in ("created", "version_created", "rolled_back", "archived")
        ),
        # shared/events/webhooks.py: a subscription disabled after its failed deliveries
        "webhook.disabled",
    }
)
"""Every type of domain event the platform records in its outbox, and so every type a subscription can receive
(with `*`, all of them). A subscription naming another type never received anything, so one is refused; the test
tests/integration/test_webhook_event_types.py fails when an emitter publishes a type missing here."""
