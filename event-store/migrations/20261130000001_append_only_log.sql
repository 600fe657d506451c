-- The event log is append-only. Once committed, an event is never changed or removed:
-- balances, audits and the read models are all derived from it, so a rewritten event
-- would be a rewritten history. Triggers refuse UPDATE, DELETE and TRUNCATE for every
-- role, table owner and superusers included; privileges are withdrawn as well, so the
-- refusal does not depend on the trigger alone.
--
-- Lawful erasure (e.g. a court order to erase a person's data) is not built. Events hold
-- amounts, currencies and the owner's token subject, never names or contact details, so
-- erasure is planned as crypto-shredding outside the log: personal data lives in another
-- store, keyed by the subject, and is deleted there. Should an event itself ever have to
-- go, an operator would, in one audited transaction as the table owner, record the
-- request in an erasure register, `ALTER TABLE events DISABLE TRIGGER events_append_only`,
-- replace the event's `data` with a tombstone of the same type, re-enable the trigger,
-- and rebuild the read models. That procedure needs its own migration and review.

CREATE FUNCTION refuse_event_rewrite() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on events is refused', TG_OP
        USING ERRCODE = 'BK403',
              HINT = 'events are never changed or removed; see migration 20261130000001';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_event_rewrite();

CREATE TRIGGER events_never_truncated
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_event_rewrite();

-- Triggers also fire for superusers, except under session_replication_role = replica
-- (which only a superuser can set): ENABLE ALWAYS makes them fire then too.
ALTER TABLE events ENABLE ALWAYS TRIGGER events_append_only;
ALTER TABLE events ENABLE ALWAYS TRIGGER events_never_truncated;

REVOKE UPDATE, DELETE, TRUNCATE ON events FROM PUBLIC;
