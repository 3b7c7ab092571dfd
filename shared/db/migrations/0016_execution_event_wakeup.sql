-- intent_ref: platform.execution
-- Long polls of an execution's events are woken by one process-wide listener (shared/engine/event_wakeup.py):
-- the notification names the execution and the event's number, nothing else. Execution ids are unique across
-- tenants, so the listener needs no tenant id to find its waiters, and the payload carries no tenant data.
-- Same channel and trigger as migration 0011; only the payload changes. Sent when the inserting transaction
-- commits, never for a rolled-back event.

CREATE OR REPLACE FUNCTION app.notify_execution_event() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('execution_events', NEW.execution_id::text || ':' || NEW.seq::text);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION app.notify_execution_event() FROM PUBLIC;
