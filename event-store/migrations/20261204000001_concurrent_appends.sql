-- Appends commit side by side. Until now every append held one advisory lock from the
-- insert of its events through its commit (WAL flush included), so that positions
-- became visible in order: appends committed one at a time, and Postgres could never
-- flush several together. Now each append holds a lock of its own, keyed by its
-- backend (730595463, pid), from before its events take their positions until it ends,
-- and appends commit concurrently. Positions still come from the identity, in the
-- order they are taken, but an append may now commit before another that took lower
-- positions: readers of the log ask `settled_position()` first and read only up to it
-- (no event can still appear at or below it), so a reader that has seen position P
-- never later meets an unseen one below P, as before.
--
-- Appends no longer NOTIFY either: a NOTIFY holds Postgres' notification lock until its
-- transaction ends, which would put the appends back in single file. The store
-- announces appends on `bank_outbox` after they commit, from a statement of its own.
--
-- Rolling upgrade: the previous release's replicas call these same functions, so their
-- appends follow the new rule too; its relay, if it still leads during the rollout,
-- reads without asking `settled_position()` and may step over an event that commits
-- late. Such an event misses the broker but not the read model, which fills the gap
-- from the account's stream when its next event arrives and from the feed it follows.

-- As in 20261201000001, with the append's own lock and no NOTIFY.
CREATE OR REPLACE FUNCTION append_events(
    p_stream_id uuid,
    p_expected_version bigint,
    p_event_ids uuid[],
    p_event_types text[],
    p_schema_versions integer[],
    p_data jsonb[],
    p_metadata jsonb[],
    p_occurred_at timestamptz[],
    p_snapshot jsonb,
    p_snapshot_schema integer,
    p_idempotency_key text,
    p_idempotency_fingerprint bytea,
    p_idempotency_status smallint,
    p_idempotency_body jsonb
) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_version bigint := p_expected_version + cardinality(p_event_ids);
BEGIN
    IF p_expected_version = 0 THEN
        INSERT INTO streams (stream_id, version, snapshot_version, snapshot_schema, snapshot)
        VALUES (p_stream_id, new_version,
                CASE WHEN p_snapshot IS NULL THEN NULL ELSE new_version END,
                p_snapshot_schema, p_snapshot)
        ON CONFLICT (stream_id) DO NOTHING;
    ELSE
        UPDATE streams
           SET version = new_version,
               snapshot_version = CASE WHEN p_snapshot IS NULL THEN snapshot_version ELSE new_version END,
               snapshot_schema = COALESCE(p_snapshot_schema, snapshot_schema),
               snapshot = COALESCE(p_snapshot, snapshot),
               updated_at = now()
         WHERE stream_id = p_stream_id AND version = p_expected_version;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream % is not at version %', p_stream_id, p_expected_version
            USING ERRCODE = 'BK409';
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (key, fingerprint, status, body)
        VALUES (p_idempotency_key, p_idempotency_fingerprint, p_idempotency_status, p_idempotency_body);
    END IF;

    PERFORM pg_advisory_xact_lock(730595463, pg_backend_pid());

    RETURN QUERY
    WITH inserted AS (
        INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata, occurred_at)
        SELECT e.event_id, p_stream_id, p_expected_version + e.ordinal, e.event_type,
               e.schema_version, e.data, e.metadata, e.occurred_at
          FROM unnest(p_event_ids, p_event_types, p_schema_versions, p_data, p_metadata, p_occurred_at)
               WITH ORDINALITY AS e (event_id, event_type, schema_version, data, metadata, occurred_at, ordinal)
         ORDER BY e.ordinal
        RETURNING events.position
    )
    SELECT inserted.position FROM inserted ORDER BY inserted.position;
END;
$$;

-- As in 20261203000001, with the append's own lock and no NOTIFY.
CREATE OR REPLACE FUNCTION append_batch(
    p_stream_ids uuid[],
    p_expected_versions bigint[],
    p_new_versions bigint[],
    p_snapshots jsonb[],
    p_snapshot_schema integer,
    p_event_streams uuid[],
    p_event_versions bigint[],
    p_event_ids uuid[],
    p_event_types text[],
    p_schema_versions integer[],
    p_data jsonb[],
    p_metadata jsonb[],
    p_occurred_at timestamptz[],
    p_key_streams uuid[],
    p_keys text[],
    p_fingerprints bytea[],
    p_statuses smallint[],
    p_bodies jsonb[],
    p_requires uuid[]
) RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    accepted uuid[] := '{}';
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_stream_ids), 0) LOOP
        IF p_requires[i] IS NOT NULL AND NOT (p_requires[i] = ANY (accepted)) THEN
            CONTINUE;
        END IF;
        IF p_expected_versions[i] = 0 THEN
            INSERT INTO streams (stream_id, version, snapshot_version, snapshot_schema, snapshot)
            VALUES (p_stream_ids[i], p_new_versions[i],
                    CASE WHEN p_snapshots[i] IS NULL THEN NULL ELSE p_new_versions[i] END,
                    CASE WHEN p_snapshots[i] IS NULL THEN NULL ELSE p_snapshot_schema END,
                    p_snapshots[i])
            ON CONFLICT (stream_id) DO NOTHING;
        ELSIF p_snapshots[i] IS NULL THEN
            UPDATE streams
               SET version = p_new_versions[i],
                   updated_at = now()
             WHERE stream_id = p_stream_ids[i] AND version = p_expected_versions[i];
        ELSE
            UPDATE streams
               SET version = p_new_versions[i],
                   snapshot_version = p_new_versions[i],
                   snapshot_schema = p_snapshot_schema,
                   snapshot = p_snapshots[i],
                   updated_at = now()
             WHERE stream_id = p_stream_ids[i] AND version = p_expected_versions[i];
        END IF;
        IF FOUND THEN
            accepted := accepted || p_stream_ids[i];
        END IF;
    END LOOP;

    IF cardinality(accepted) = 0 THEN
        RETURN;
    END IF;

    INSERT INTO idempotency_keys (key, fingerprint, status, body)
    SELECT k.key, k.fingerprint, k.status, k.body
      FROM unnest(p_key_streams, p_keys, p_fingerprints, p_statuses, p_bodies)
           AS k (stream_id, key, fingerprint, status, body)
     WHERE k.stream_id = ANY (accepted);

    PERFORM pg_advisory_xact_lock(730595463, pg_backend_pid());

    INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata, occurred_at)
    SELECT e.event_id, e.stream_id, e.version, e.event_type, e.schema_version, e.data, e.metadata, e.occurred_at
      FROM unnest(p_event_streams, p_event_versions, p_event_ids, p_event_types, p_schema_versions,
                  p_data, p_metadata, p_occurred_at) WITH ORDINALITY
           AS e (stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at, ordinal)
     WHERE e.stream_id = ANY (accepted)
     ORDER BY e.ordinal;

    RETURN QUERY SELECT unnest(accepted);
END;
$$;

-- The 18-argument form of the previous releases: no stream requires another.
CREATE OR REPLACE FUNCTION append_batch(
    p_stream_ids uuid[],
    p_expected_versions bigint[],
    p_new_versions bigint[],
    p_snapshots jsonb[],
    p_snapshot_schema integer,
    p_event_streams uuid[],
    p_event_versions bigint[],
    p_event_ids uuid[],
    p_event_types text[],
    p_schema_versions integer[],
    p_data jsonb[],
    p_metadata jsonb[],
    p_occurred_at timestamptz[],
    p_key_streams uuid[],
    p_keys text[],
    p_fingerprints bytea[],
    p_statuses smallint[],
    p_bodies jsonb[]
) RETURNS SETOF uuid
LANGUAGE sql AS $$
    SELECT append_batch(p_stream_ids, p_expected_versions, p_new_versions, p_snapshots,
                        p_snapshot_schema, p_event_streams, p_event_versions, p_event_ids,
                        p_event_types, p_schema_versions, p_data, p_metadata, p_occurred_at,
                        p_key_streams, p_keys, p_fingerprints, p_statuses, p_bodies,
                        array_fill(NULL::uuid, ARRAY[coalesce(cardinality(p_stream_ids), 0)]));
$$;

-- The position up to which the log is settled: every event at or below it that will
-- ever commit has committed. Takes the last position handed out, then waits for the
-- appends that hold their lock, since any of them may own a position below it (an
-- append takes its lock before its positions). Waiting on each append's own lock
-- blocks only that backend's next append, and only until this statement ends: read
-- the events in a later statement.
CREATE FUNCTION settled_position() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    head bigint;
    appender integer;
BEGIN
    SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO head FROM events_position_seq;
    FOR appender IN
        SELECT objid::bigint::integer
          FROM pg_locks
         WHERE locktype = 'advisory'
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid = 730595463::oid AND objsubid = 2
           AND mode = 'ExclusiveLock' AND granted AND pid <> pg_backend_pid()
    LOOP
        PERFORM pg_advisory_xact_lock_shared(730595463, appender);
    END LOOP;
    RETURN head;
END;
$$;
