-- intent_ref: platform.execution
-- A verdict that a lease expiry, a heartbeat's cancel or a lease's stale item ends is raised until the task hub takes
-- it (ADR 0027, amended 2026-12-07).
--
-- Those recorders commit the attempt ended and raise its verdict afterwards, once: a raise that failed, or a host
-- that died between the commit and the raise, left the orchestration waiting for the step's own timeout (up to an
-- hour, a retry kept from starting), and nothing raised it again. The ending transaction now marks the attempt
--   'raising'  its verdict is to be raised by whoever ended it; set to 'handed_over' (migration 0061) once the task
--              hub accepts the raise (or answers that the orchestration is gone)
-- and the sweeper raises again what is still 'raising' a grace after the attempt ended. NOT VALID as in 0061: every
-- stored row meets the narrower check it replaces.

-- Only the verdicts not yet handed over: a handful at any time (each leaves on its hand-over, which follows within
-- seconds), however long the history. No stored row is 'raising', so the index starts empty. Built first, in the
-- migration's transaction: writes to step_attempts wait for one read of the table, reads do not. The constraint swap
-- after it takes the table's strongest lock, held to the commit, which follows at once: taken before the build, it
-- held every read of the table for the whole build.
CREATE INDEX step_attempts_raising ON app.step_attempts (tenant_id, finished_at) WHERE delivery = 'raising';

ALTER TABLE app.step_attempts DROP CONSTRAINT step_attempts_delivery_check;
ALTER TABLE app.step_attempts ADD CONSTRAINT step_attempts_delivery_check
    CHECK (delivery IN ('awaited', 'answered', 'released', 'handed_over', 'raising')) NOT VALID;

-- Which tenants have a verdict still to hand over (their ids and nothing else), as the sweeper's other finders
-- (migrations 0014, 0018): FORCE ROW LEVEL SECURITY binds the function's owner (the migrating role) too, so it gets a
-- policy of its own, SELECT of those rows only. The app can never become that role (ADR 0002).
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY sweeper_raising_verdicts ON app.step_attempts FOR SELECT TO %I USING (delivery = ''raising'')',
        current_user);
END
$$;

CREATE FUNCTION app.work_raising_verdict_tenants(grace_s double precision, max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT DISTINCT a.tenant_id FROM app.step_attempts a
     WHERE a.delivery = 'raising'
       AND a.finished_at < pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => grace_s)
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.work_raising_verdict_tenants(double precision, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.work_raising_verdict_tenants(double precision, integer) TO qp_platform;
