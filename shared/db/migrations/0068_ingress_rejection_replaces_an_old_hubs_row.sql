-- intent_ref: platform.ingress
-- A new event rejected at an old rejection's place on the hub gets a record of its own (ADR 0019, amended
-- 2026-12-07).
--
-- A hub deleted and recreated numbers its events from the start again: a new event can sit at the place (hub,
-- partition, sequence number) of a rejection recorded for an event of the hub's earlier life, with another enqueued
-- time. The lookup matches a recorded rejection by place and enqueued time, so such an event is evaluated; but the
-- app's insert keeps the first row at a place (unique on the place, ON CONFLICT DO NOTHING), so its rejection was
-- answered, never recorded, and every redelivery of it was evaluated again (and could start it once the cause went).
--
-- The app now records a rejection through this function, in its tenant's transaction: a row of the pinned tenant at
-- the same place with another enqueued time (the earlier hub's event, which can never be delivered again) is replaced
-- by the new one; a row with the same stamp is this event's own, and is kept (a redelivery records nothing). The
-- runtime still holds no UPDATE nor DELETE on the table: the replacement is the only delete this allows, of the
-- pinned tenant's row at the named place only, and only together with the record that takes its place.
--
-- The place stays the table's unique key: the release still running when this is applied inserts with the place as
-- its conflict target, which needs it (expand, then contract; a later migration can revoke the runtime's direct
-- INSERT once no release uses it). Nothing existing is rewritten, so the migration applies whatever rows there are.
--
-- FORCE ROW LEVEL SECURITY binds the function's owner (the migrating role): it reads and deletes under the policies
-- of migration 0026, and inserts under one of its own here, each bound to the pinned tenant as the app's are; the app
-- can never become that role (ADR 0002).

DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY record_pinned_tenant ON app.ingress_rejections FOR INSERT TO %I'
        ' WITH CHECK (tenant_id = (SELECT app.current_tenant_id()))',
        current_user);
END
$$;

CREATE FUNCTION app.record_ingress_rejection(
    rejection_id uuid,
    event_hub text,
    event_partition text,
    event_sequence bigint,
    event_enqueued timestamptz,
    rejection_reason text,
    rejection_detail jsonb,
    principal text,
    request_key text
) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    tenant uuid := app.current_tenant_id();
    recorded uuid;
BEGIN
    IF tenant IS NULL THEN
        -- As the app's own insert would be refused by the table's policy: no tenant pinned, nothing is recorded.
        RAISE EXCEPTION 'no tenant is pinned' USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM app.ingress_rejections r
     WHERE r.tenant_id = tenant AND r.hub = event_hub AND r.partition_id = event_partition
       AND r.sequence_number = event_sequence AND r.enqueued_time IS DISTINCT FROM event_enqueued;
    INSERT INTO app.ingress_rejections (tenant_id, id, hub, partition_id, sequence_number, enqueued_time, reason,
                                        detail, requested_by, idempotency_key)
    VALUES (tenant, rejection_id, event_hub, event_partition, event_sequence, event_enqueued, rejection_reason,
            rejection_detail, principal, request_key)
    ON CONFLICT (tenant_id, hub, partition_id, sequence_number) DO NOTHING
    RETURNING id INTO recorded;
    RETURN recorded IS NOT NULL;
END
$$;

REVOKE ALL ON FUNCTION app.record_ingress_rejection(uuid, text, text, bigint, timestamptz, text, jsonb, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.record_ingress_rejection(uuid, text, text, bigint, timestamptz, text, jsonb, text, text)
    TO qp_runtime;
