-- The relay and the feed read the settled events in one round trip instead of two:
-- `settled_events(after, limit)` waits as `settled_position()` does, then returns the
-- events after `after` up to the position it settled, in position order. It looks no
-- further when no position was handed out past `after` (an idle poll costs one index
-- probe). Each wait takes the append's lock at session level and drops it at once, so
-- that the read that follows in the same statement does not hold up the next append of
-- that backend (a transaction-level lock would be held until the read ends).
--
-- Rolling upgrade: the previous release calls `settled_position()`, which is unchanged.
CREATE FUNCTION settled_events(p_after bigint, p_limit bigint) RETURNS SETOF events
LANGUAGE plpgsql AS $$
DECLARE
    head bigint;
    appender integer;
BEGIN
    SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO head FROM events_position_seq;
    IF head <= p_after THEN
        RETURN;
    END IF;
    FOR appender IN
        SELECT objid::bigint::integer
          FROM pg_locks
         WHERE locktype = 'advisory'
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid = 730595463::oid AND objsubid = 2
           AND mode = 'ExclusiveLock' AND granted AND pid <> pg_backend_pid()
    LOOP
        BEGIN
            PERFORM pg_advisory_lock_shared(730595463, appender);
            PERFORM pg_advisory_unlock_shared(730595463, appender);
        EXCEPTION WHEN query_canceled OR others THEN
            -- A session lock outlives the statement: never leave one behind.
            PERFORM pg_advisory_unlock_shared(730595463, appender);
            RAISE;
        END;
    END LOOP;
    RETURN QUERY
        SELECT * FROM events
         WHERE position > p_after AND position <= head
         ORDER BY position
         LIMIT p_limit;
END;
$$;
