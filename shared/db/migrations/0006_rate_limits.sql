-- intent_ref: platform.rate-limits
-- Per-tenant request token buckets, taken by one atomic statement so concurrent requests never over-admit.

-- UNLOGGED: a bucket is disposable state (a crash refills every bucket); skipping WAL keeps the hot
-- update cheap.
CREATE UNLOGGED TABLE app.rate_buckets (
    -- Removing a tenant removes its bucket with it.
    tenant_id   uuid PRIMARY KEY REFERENCES app.tenants (id) ON DELETE CASCADE,
    tokens      double precision NOT NULL,
    updated_at  timestamptz NOT NULL,
    -- The decision of the last take: RETURNING sees only the new row (before PostgreSQL 18), and
    -- "tokens after" alone cannot tell a grant that left 0.5 from a refusal that found 0.5.
    allowed     boolean NOT NULL
);

SELECT app.enable_tenant_isolation('app.rate_buckets');

GRANT SELECT, INSERT, UPDATE ON app.rate_buckets TO qp_runtime;

-- Take one token from the current tenant's bucket. The refill is computed lazily from the time since the
-- last take. ON CONFLICT DO UPDATE locks the tenant's row and evaluates SET against its latest version,
-- and the clock is read inside SET, i.e. after the lock is held: concurrent takes serialise on the row
-- and each sees the previous one's result, so the bucket is exact under concurrency.
-- No tenant context: current_tenant_id() is NULL, so row-level security (and the NOT NULL key behind it)
-- refuses the insert: an error, never a shared bucket.
CREATE FUNCTION app.take_request_token(capacity double precision, refill_per_second double precision)
    RETURNS TABLE (allowed boolean, retry_after_s double precision)
    LANGUAGE sql
    VOLATILE
    SECURITY INVOKER
    SET search_path = ''
AS $$
    INSERT INTO app.rate_buckets AS b (tenant_id, tokens, updated_at, allowed)
    VALUES (app.current_tenant_id(), CASE WHEN capacity >= 1 THEN capacity - 1 ELSE capacity END,
            pg_catalog.clock_timestamp(), capacity >= 1)
    ON CONFLICT (tenant_id) DO UPDATE
    SET (tokens, updated_at, allowed) = (
        SELECT CASE WHEN f.refilled >= 1 THEN f.refilled - 1 ELSE f.refilled END, n.ts, f.refilled >= 1
        FROM (SELECT pg_catalog.clock_timestamp() AS ts) AS n,
             -- GREATEST(0, ...): a clock step backwards must not drain the bucket.
             LATERAL (SELECT LEAST(capacity, b.tokens + refill_per_second
                                   * GREATEST(0, EXTRACT(EPOCH FROM n.ts - b.updated_at)::double precision))
                      AS refilled) AS f
    )
    RETURNING b.allowed,
              CASE WHEN b.allowed THEN 0::double precision
                   WHEN refill_per_second > 0 THEN (1 - b.tokens) / refill_per_second
                   ELSE 'Infinity'::double precision END
$$;

REVOKE ALL ON FUNCTION app.take_request_token(double precision, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.take_request_token(double precision, double precision) TO qp_runtime;
