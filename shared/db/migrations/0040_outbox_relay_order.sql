-- intent_ref: platform.events
-- The relay sent a tenant's events in `position` order among those committed when it looked, so an event whose
-- transaction took its position first but committed later went out after events recorded after it (two steps
-- finishing at once; a result beside a cancel). Each event now carries the id of the transaction that wrote it, and
-- the relay sends only events of transactions older than every transaction still running (the snapshot's xmin), in
-- transaction order: no event can commit later and sort before one already sent. An old write transaction anywhere
-- in the database holds the relay back until it ends (ADR 0015 amended 2026-12-05).

ALTER TABLE app.outbox ADD COLUMN txid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id();
CREATE INDEX outbox_unpublished_in_order ON app.outbox (tenant_id, txid, position) WHERE published_at IS NULL;
