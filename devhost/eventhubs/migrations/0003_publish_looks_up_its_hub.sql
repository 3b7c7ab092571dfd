-- intent_ref: platform.devhost-eventhubs
-- A publish looks its hub up and creates it only when it is missing: ensure_hub's upserts (the hub and each of its
-- partitions, ON CONFLICT DO NOTHING) ran for every event and were most of a publish's cost.
-- CREATE OR REPLACE keeps the function's owner and grants.

CREATE OR REPLACE FUNCTION devhost_eventhubs.publish(
    p_hub text, p_partition_key text, p_body bytea, p_properties jsonb DEFAULT '{}'::jsonb
) RETURNS TABLE (partition_id integer, sequence_number bigint)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
#variable_conflict use_column
DECLARE
    v_count      integer;
    v_partition  integer;
    v_sequence   bigint;
    v_offset     bigint;
BEGIN
    IF p_body IS NULL THEN
        RAISE EXCEPTION 'event body must not be null' USING ERRCODE = 'not_null_violation';
    END IF;
    -- The hub exists after its first publish: look it up, and only create it (with its partitions) when missing.
    SELECT h.partition_count INTO v_count FROM devhost_eventhubs.hubs AS h WHERE h.name = p_hub;
    IF v_count IS NULL THEN
        v_count := devhost_eventhubs.ensure_hub(p_hub);
    END IF;
    IF p_partition_key IS NULL THEN
        UPDATE devhost_eventhubs.hubs AS h
           SET next_partition = (h.next_partition + 1) % h.partition_count
         WHERE h.name = p_hub
        RETURNING (h.next_partition + h.partition_count - 1) % h.partition_count INTO STRICT v_partition;
    ELSE
        v_partition := devhost_eventhubs.partition_for_key(p_partition_key, v_count);
    END IF;
    UPDATE devhost_eventhubs.partitions AS p
       SET last_sequence_number = p.last_sequence_number + 1,
           next_offset = p.next_offset + pg_catalog.octet_length(p_body)
     WHERE p.hub = p_hub AND p.partition_id = v_partition
    RETURNING p.last_sequence_number, p.next_offset - pg_catalog.octet_length(p_body)
         INTO STRICT v_sequence, v_offset;
    INSERT INTO devhost_eventhubs.events
        (hub, partition_id, sequence_number, byte_offset, partition_key, body, properties, enqueued_at)
    VALUES (p_hub, v_partition, v_sequence, v_offset, p_partition_key, p_body,
            COALESCE(p_properties, '{}'::jsonb), pg_catalog.clock_timestamp());
    -- Delivered at commit, so a consumer woken by it sees the event. The payload names the hub and the
    -- partition: only that partition's consumer has to look (the listener still reads a bare hub name as "every
    -- partition", which is what a notification sent before this change means).
    PERFORM pg_catalog.pg_notify('devhost_eventhubs', p_hub || ':' || v_partition::text);
    partition_id := v_partition;
    sequence_number := v_sequence;
    RETURN NEXT;
END
$$;
