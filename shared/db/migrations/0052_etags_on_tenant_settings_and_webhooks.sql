-- intent_ref: platform.tenants
-- The tenant's settings and its webhook subscriptions carry ETags and honour If-Match (ADR 0045).
--
-- Each row keeps a version, which its ETag names. A trigger moves it, in the UPDATE that changes the row: every
-- writer moves it (the tenant's admin, the control plane, the webhook sender's failure count, a seed), none can
-- forget to, and the runtime gets no UPDATE on the column, so SQL running in a tenant's transaction cannot wind a
-- version back to one an old ETag names. An If-Match is compared in the statement that writes (`AND version = ...`):
-- of two changes sent with one ETag, the second waits for the first's row lock, reads the row again, and changes
-- nothing. Not xmin: it moves with writes the API never shows (a subscription stamped as sent to, a secret sealed
-- again under another key) and wraps around.

ALTER TABLE app.tenants ADD COLUMN version bigint NOT NULL DEFAULT 1 CHECK (version >= 1);
ALTER TABLE app.webhook_subscriptions ADD COLUMN version bigint NOT NULL DEFAULT 1 CHECK (version >= 1);

CREATE FUNCTION app.next_row_version() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION app.next_row_version() FROM PUBLIC;

-- A tenant's settings show every column of its row but its ids and timestamps; the control plane's tenant shows the
-- rest: any change moves the version.
CREATE TRIGGER tenants_version BEFORE UPDATE ON app.tenants
    FOR EACH ROW WHEN (OLD IS DISTINCT FROM NEW) EXECUTE FUNCTION app.next_row_version();

-- Only what the API shows of a subscription: the sender stamps `last_sent_at` on every attempt and the sealing timer
-- rewrites `secret` with the same value, neither of which a client sees. A rotation moves `updated_at`.
CREATE TRIGGER webhook_subscriptions_version BEFORE UPDATE ON app.webhook_subscriptions
    FOR EACH ROW WHEN (
        (OLD.url, OLD.event_types, OLD.description, OLD.enabled, OLD.disabled_reason, OLD.consecutive_failures,
         OLD.updated_at)
        IS DISTINCT FROM
        (NEW.url, NEW.event_types, NEW.description, NEW.enabled, NEW.disabled_reason, NEW.consecutive_failures,
         NEW.updated_at)
    ) EXECUTE FUNCTION app.next_row_version();

-- The delete of migration 0046, with the versions an If-Match names (NULL: any). The deliveries still go first (a
-- sender locks a delivery, then its subscription); when the subscription is then found at another version (changed
-- meanwhile: this DELETE waited for its lock and read it again), the block's deliveries come back and the answer
-- is -1. 1: deleted; 0: no such subscription of the pinned tenant.
DROP FUNCTION app.delete_webhook_subscription(uuid);
CREATE FUNCTION app.delete_webhook_subscription(target uuid, versions bigint[] DEFAULT NULL) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    tenant uuid := app.current_tenant_id();
    removed bigint;
BEGIN
    IF tenant IS NULL THEN
        RETURN 0;  -- no tenant pinned: nothing is anyone's to delete
    END IF;
    BEGIN
        DELETE FROM app.webhook_deliveries d WHERE d.tenant_id = tenant AND d.subscription_id = target;
        DELETE FROM app.webhook_subscriptions s
         WHERE s.tenant_id = tenant AND s.id = target AND (versions IS NULL OR s.version = ANY (versions));
        GET DIAGNOSTICS removed = ROW_COUNT;
        IF removed = 0 AND versions IS NOT NULL
           AND EXISTS (SELECT 1 FROM app.webhook_subscriptions s WHERE s.tenant_id = tenant AND s.id = target) THEN
            RAISE SQLSTATE 'QP412';  -- undoes the block: the deliveries stay
        END IF;
    EXCEPTION WHEN SQLSTATE 'QP412' THEN
        RETURN -1;
    END;
    RETURN removed;
END
$$;
REVOKE ALL ON FUNCTION app.delete_webhook_subscription(uuid, bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.delete_webhook_subscription(uuid, bigint[]) TO qp_runtime;
