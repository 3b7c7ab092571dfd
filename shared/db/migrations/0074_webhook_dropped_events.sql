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

-- The API shows it, so a change moves the version (and the ETag), as a failed delivery's count does (migration 0052).
DROP TRIGGER webhook_subscriptions_version ON app.webhook_subscriptions;
CREATE TRIGGER webhook_subscriptions_version BEFORE UPDATE ON app.webhook_subscriptions
    FOR EACH ROW WHEN (
        (OLD.url, OLD.event_types, OLD.description, OLD.enabled, OLD.disabled_reason, OLD.consecutive_failures,
         OLD.dropped_events, OLD.updated_at)
        IS DISTINCT FROM
        (NEW.url, NEW.event_types, NEW.description, NEW.enabled, NEW.disabled_reason, NEW.consecutive_failures,
         NEW.dropped_events, NEW.updated_at)
    ) EXECUTE FUNCTION app.next_row_version();
