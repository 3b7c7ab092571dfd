-- intent_ref: platform.events
-- A tenant's webhook subscriptions are served in turn (ADR 0030, amended 2026-12-06).
--
-- A run claimed the tenant's due heads in subscription id order and sent them one after another; when the tenant's
-- budget ran out, the heads not sent went back due, and the next run claimed them in the same order again. Two
-- subscriptions with slow receivers and a backlog, first in that order, were sent to on every run and the others never.
-- A sender now stamps the subscription it has sent to (its attempt recorded, whatever the outcome), and a claim takes
-- the heads least recently sent to first, never sent to before all (shared/events/webhook_store.py): every
-- subscription with a head due is sent to within as many of the tenant's runs as it has such subscriptions.

ALTER TABLE app.webhook_subscriptions ADD COLUMN last_sent_at timestamptz;

-- The runtime's UPDATE is by column (migration 0044): the sender sets this one with consecutive_failures.
GRANT UPDATE (last_sent_at) ON app.webhook_subscriptions TO qp_runtime;
