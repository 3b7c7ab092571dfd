-- intent_ref: platform.audit
-- An audit record's detail is bounded (ADR 0012, amended 2026-12-07: review of the audit trail's sizes).
--
-- The detail was only checked to be an object, and a request's body went into it: a name of a million characters
-- made a record of a megabyte in app.audit_events, and in the outbox a document Cosmos DB refused for good (413, over
-- its 2 MB item limit, the SDK escaping non-ASCII), so the request's own records never reached the trail. The record
-- (shared/audit/model.py) now replaces a new record's detail over 8 KiB (as sent, JSON with non-ASCII escaped, and at
-- least as Postgres prints it, numbers in fixed point) by a marker saying it was cut, how big it was and its digest;
-- these CHECKs hold the tables to a bound well above that, so that a writer that bypasses the record cannot store a
-- megabyte either.
--
-- Measured as the text of the value: octet_length(detail::text), what a page of the trail reads back.

-- Both CHECKs are added NOT VALID here: adding one so takes its table's ACCESS EXCLUSIVE lock for no scan, where
-- validating it in the same transaction held that lock (every audited request's INSERT waiting) through a scan of the
-- whole trail. Migration 0075 validates them in a transaction of its own, under SHARE UPDATE EXCLUSIVE, which writes
-- pass. NOT VALID, a CHECK binds every row written from now on.
--
-- The outbox's work comes first and the trail's CHECK last: each ACCESS EXCLUSIVE lock is held to the commit, and the
-- trail's, taken first, was held through the outbox's set-aside scan (every request that audits into Postgres
-- waiting on it). The trail's is now taken an instant before the commit.

-- A waiting document over the outbox's bound was written before the record's bound: it is set aside intact, as the
-- relay sets aside what the store refuses (migration 0028), kept as it was and never copied, rather than have its
-- detail (the record's only copy) overwritten. The owner may update no outbox row (FORCE ROW LEVEL SECURITY), so it
-- gets a policy for this statement alone.
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY bound_waiting_documents ON app.audit_outbox FOR UPDATE TO %I USING (true)', current_user);
END
$$;
UPDATE app.audit_outbox
   SET refused_at = clock_timestamp(),
       refusal = 'migration 0072: the document is over 80 KiB (written before the record''s bound); kept as written,'
                 ' never copied'
 WHERE refused_at IS NULL
   AND pg_catalog.octet_length(document::text) > 81920;
DROP POLICY bound_waiting_documents ON app.audit_outbox;

-- Only a record that may still be copied is held to it; one set aside is never copied, and is kept as it was.
ALTER TABLE app.audit_outbox ADD CONSTRAINT audit_outbox_document_bounded CHECK (
    refused_at IS NOT NULL OR pg_catalog.octet_length(document::text) <= 81920
) NOT VALID;

-- The trail is append-only (the runtime role may not update it): a record written before is kept as written, however
-- large (the trail is never rewritten); 0075 validates the CHECK only if every such record passes.
ALTER TABLE app.audit_events ADD CONSTRAINT audit_events_detail_bounded
    CHECK (pg_catalog.octet_length(detail::text) <= 65536) NOT VALID;
