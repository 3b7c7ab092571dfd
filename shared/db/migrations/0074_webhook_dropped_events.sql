-- intent_ref: platform.events
-- A subscription counts the events its bounded backlog left out (ADR 0030, amended 2026-12-07).
--
-- The relay gives a stalled subscription (disabled, or its head failing for long) at most STALLED_BACKLOG_MAX pending
-- deliveries, and events past it are not recorded for it: they are never sent. Only a server warning said so, and the
-- tenant could not tell its receiver had missed events. The relay now adds them here, in the transaction that marks
-- the events published, and the API shows the count with the subscription.

ALTER TABLE app.webhook_subscriptions
    ADD COLUMN dropped_events bigint NOT NULL DEFAULT 0 CHECK (dropped_events >= 0);

-- The runtime's UPDATE is by column (migration 0044): the relay adds to this one.
GRANT UPDATE (dropped_events) ON app.webhook_subscriptions TO qp_runtime;

-- The version (and the ETag) moves with what a client changes or the sender's attempts change, not with this count
-- (migration 0052's columns, unchanged): it grows with every batch that brings a stalled subscription events past its
-- bound, and the stalled ones are the disabled ones a tenant re-enables. Counted in the version, a re-enable sent with
-- the ETag just read was refused (412) whenever an event came between, and again on every retry while events came.
-- A server-side count, as `last_sent_at` (which the trigger leaves out too): no client writes it, so no change sent
-- with an older ETag can undo it, and every read shows it as it is.
