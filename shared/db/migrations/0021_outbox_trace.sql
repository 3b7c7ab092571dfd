-- intent_ref: platform.telemetry
-- A domain event keeps the trace context of the transaction that recorded it (W3C traceparent): the relay puts it on
-- the event's properties on `platform-events`, as the Azure SDKs carry it, so a consumer continues the trace of the
-- execution (or request) the event is about.
ALTER TABLE app.outbox
    ADD COLUMN traceparent text CHECK (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
