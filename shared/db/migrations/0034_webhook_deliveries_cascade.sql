-- intent_ref: platform.events
-- A subscription's deliveries go with it (ADR 0030, amended 2026-12-05). Deleting a subscription removed its
-- deliveries, then the subscription; a delivery the relay wrote for it meanwhile (in the relay's transaction, not yet
-- committed when the deliveries were removed) still referred to it once committed, and the delete failed on this
-- foreign key: the API answered 500. With ON DELETE CASCADE the subscription's delete also removes the deliveries
-- that refer to it when it runs. The constraint is the one of migration 0019, under the name Postgres gave it.

ALTER TABLE app.webhook_deliveries
    DROP CONSTRAINT webhook_deliveries_tenant_id_subscription_id_fkey,
    ADD CONSTRAINT webhook_deliveries_tenant_id_subscription_id_fkey
        FOREIGN KEY (tenant_id, subscription_id) REFERENCES app.webhook_subscriptions (tenant_id, id) ON DELETE CASCADE;
