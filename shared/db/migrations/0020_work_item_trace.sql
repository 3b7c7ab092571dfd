-- intent_ref: platform.telemetry
-- A queued remote item keeps the trace context of the dispatch that queued it (W3C traceparent), so the worker that
-- leases it continues the execution's trace: it is handed out with the lease and sent back with the completion.
ALTER TABLE app.work_items
    ADD COLUMN traceparent text CHECK (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
