-- intent_ref: platform.devhost-eventhubs
-- The local Event Hubs log: hubs split into partitions, events numbered per partition, consumer checkpoints.

REVOKE ALL ON SCHEMA devhost_eventhubs FROM PUBLIC;

-- Event Hubs names: letters, digits, '.', '-', '_', starting and ending with a letter or digit.
CREATE DOMAIN devhost_eventhubs.hub_name AS text
    CHECK (VALUE ~ '^[A-Za-z0-9]([A-Za-z0-9._-]{0,254}[A-Za-z0-9])?$');

CREATE TABLE devhost_eventhubs.hubs (
    name             devhost_eventhubs.hub_name PRIMARY KEY,
    -- Fixed when the hub is created, as in the service.
    partition_count  integer NOT NULL CHECK (partition_count BETWEEN 1 AND 32),
    -- Events without a partition key go round robin; this is the partition the next one takes.
    next_partition   integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devhost_eventhubs.partitions (
    hub                   text NOT NULL REFERENCES devhost_eventhubs.hubs (name) ON DELETE CASCADE,
    partition_id          integer NOT NULL CHECK (partition_id >= 0),
    -- The row lock taken to bump these serialises appends per partition, so sequence numbers
    -- become visible in order and a reader never skips one that commits later.
    last_sequence_number  bigint NOT NULL DEFAULT -1,
    next_offset           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (hub, partition_id)
);

CREATE TABLE devhost_eventhubs.events (
    hub              text NOT NULL,
    partition_id     integer NOT NULL,
    sequence_number  bigint NOT NULL,
    byte_offset      bigint NOT NULL,
    partition_key    text,
    -- 1 MiB: the service's limit for one event on the standard tier.
    body             bytea NOT NULL CHECK (octet_length(body) <= 1048576),
    properties       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(properties) = 'object'),
    enqueued_at      timestamptz NOT NULL,
    PRIMARY KEY (hub, partition_id, sequence_number),
    FOREIGN KEY (hub, partition_id) REFERENCES devhost_eventhubs.partitions (hub, partition_id) ON DELETE CASCADE
);

CREATE TABLE devhost_eventhubs.checkpoints (
    hub              text NOT NULL,
    consumer_group   text NOT NULL CHECK (consumer_group ~ '^[A-Za-z0-9$][A-Za-z0-9._$-]{0,255}$'),
    partition_id     integer NOT NULL,
    -- The last event the consumer group has processed in this partition.
    sequence_number  bigint NOT NULL,
    byte_offset      bigint NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hub, consumer_group, partition_id),
    FOREIGN KEY (hub, partition_id) REFERENCES devhost_eventhubs.partitions (hub, partition_id) ON DELETE CASCADE
);

-- Create a hub with its partitions unless it exists; return its partition count.
CREATE FUNCTION devhost_eventhubs.ensure_hub(p_hub text, p_partition_count integer DEFAULT 4) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    v_count integer;
BEGIN
    INSERT INTO devhost_eventhubs.hubs (name, partition_count) VALUES (p_hub, p_partition_count)
        ON CONFLICT (name) DO NOTHING;
    SELECT h.partition_count INTO STRICT v_count FROM devhost_eventhubs.hubs AS h WHERE h.name = p_hub;
    INSERT INTO devhost_eventhubs.partitions (hub, partition_id)
        SELECT p_hub, g FROM pg_catalog.generate_series(0, v_count - 1) AS g
        ON CONFLICT DO NOTHING;
    RETURN v_count;
END
$$;

-- A stable hash (first 32 bits of MD5, unsigned) so a key maps to the same partition in every
-- process and release; clients can compute it too.
CREATE FUNCTION devhost_eventhubs.partition_for_key(p_partition_key text, p_partition_count integer)
    RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = ''
AS $$
    SELECT (('x' || pg_catalog.substr(pg_catalog.md5(p_partition_key), 1, 8))::bit(32)::bigint
            % p_partition_count)::integer
$$;

-- Append one event. SECURITY DEFINER: the runtime role may publish without any privilege on the tables.
CREATE FUNCTION devhost_eventhubs.publish(
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
    v_count := devhost_eventhubs.ensure_hub(p_hub);
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
    -- Delivered at commit, so a consumer woken by it sees the event; the payload names the hub.
    PERFORM pg_catalog.pg_notify('devhost_eventhubs', p_hub);
    partition_id := v_partition;
    sequence_number := v_sequence;
    RETURN NEXT;
END
$$;

-- Functions are executable by PUBLIC by default; only the runtime role may publish.
REVOKE ALL ON FUNCTION devhost_eventhubs.ensure_hub(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION devhost_eventhubs.partition_for_key(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION devhost_eventhubs.publish(text, text, bytea, jsonb) FROM PUBLIC;
GRANT USAGE ON SCHEMA devhost_eventhubs TO qp_runtime;
GRANT EXECUTE ON FUNCTION devhost_eventhubs.publish(text, text, bytea, jsonb) TO qp_runtime;
