-- intent_ref: platform.audit
-- An audit record's detail is bounded (ADR 0012, amended 2026-12-07: review of the audit trail's sizes).
--
-- The detail was only checked to be an object, and a request's body went into it: a name of a million characters
-- made a record of a megabyte in app.audit_events, and in the outbox a document Cosmos DB refused for good (413, over
-- its 2 MB item limit, the SDK escaping non-ASCII), so the request's own records never reached the trail. The record
-- (shared/audit/model.py) now replaces a detail over 8 KiB, as sent (JSON, non-ASCII escaped), by a marker saying
-- it was cut and how big it was; these CHECKs hold the tables to a bound well above that (the text Postgres keeps of
-- a detail is no longer than what was sent, but for numbers written in exponent form), so that a writer that
-- bypasses the record cannot store a megabyte either.
--
-- Measured as the text of the value: octet_length(detail::text), what a page of the trail reads back.

-- The trail is append-only (the runtime role may not update it), so a NOT VALID CHECK binds every record written
-- from now on, and none is ever checked again on an update. Records written before it are validated when all pass;
-- a record that does not is kept as written (the trail is never rewritten), and the CHECK stays NOT VALID.
ALTER TABLE app.audit_events ADD CONSTRAINT audit_events_detail_bounded
    CHECK (pg_catalog.octet_length(detail::text) <= 65536) NOT VALID;
DO $$
BEGIN
    ALTER TABLE app.audit_events VALIDATE CONSTRAINT audit_events_detail_bounded;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'app.audit_events holds records with a detail over 64 KiB, written before migration 0072: kept;'
        ' audit_events_detail_bounded binds the records written from now on and stays NOT VALID';
END
$$;

-- A waiting document over the bound would be refused by the store or fill a page: its detail is replaced by the
-- record's marker (its size as Postgres keeps it), so the record still reaches the trail; one still over the bound
-- (another field too large) is set aside as the relay sets aside what the store refuses (migration 0028). The owner
-- may update no outbox row (FORCE ROW LEVEL SECURITY), so it gets a policy for these statements alone.
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY bound_waiting_documents ON app.audit_outbox FOR UPDATE TO %I USING (true)', current_user);
END
$$;
UPDATE app.audit_outbox
   SET document = pg_catalog.jsonb_set(
           document, '{detail}',
           pg_catalog.jsonb_build_object(
               'detail_cut', true, 'detail_bytes', pg_catalog.octet_length((document -> 'detail')::text)))
 WHERE refused_at IS NULL
   AND pg_catalog.octet_length(document::text) > 81920
   AND pg_catalog.octet_length((document -> 'detail')::text) > 8192;
UPDATE app.audit_outbox
   SET refused_at = clock_timestamp(),
       refusal = 'migration 0072: the document is over 80 KiB; never copied'
 WHERE refused_at IS NULL
   AND pg_catalog.octet_length(document::text) > 81920;
DROP POLICY bound_waiting_documents ON app.audit_outbox;

-- Only a record that may still be copied is held to it; one set aside is never copied, and is kept as it was.
ALTER TABLE app.audit_outbox ADD CONSTRAINT audit_outbox_document_bounded CHECK (
    refused_at IS NOT NULL OR pg_catalog.octet_length(document::text) <= 81920
) NOT VALID;
ALTER TABLE app.audit_outbox VALIDATE CONSTRAINT audit_outbox_document_bounded;
