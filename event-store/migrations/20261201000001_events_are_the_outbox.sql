-- The events table is the outbox. Positions are assigned under the append lock, held
-- until commit, so events become visible in position order: the relay only needs the
-- position of the last event the broker confirmed, and reads the events after it.
-- An append no longer writes an outbox row, and the relay no longer deletes one.
--
-- `outbox` is kept for one release, unused by this one: during a rolling upgrade a
-- replica of the previous release may lead the relay and read and delete its rows, or
-- (an append it began before this migration) still add one. Its rows are never read
-- again; a later migration drops the table.

-- The one row: the position of the last event confirmed by the broker.
CREATE TABLE relay_checkpoint (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    position   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Under the append lock no append is under way, so every committed event is either
-- still in the outbox or confirmed. The checkpoint starts just before the oldest one
-- still in the outbox (events the previous relay published after it are published
-- again: at least once, never lost), or at the head when the outbox is empty.
SELECT pg_advisory_xact_lock(7305954634617839617);
INSERT INTO relay_checkpoint (position)
SELECT coalesce((SELECT min(position) - 1 FROM outbox),
                (SELECT max(position) FROM events),
                0);

-- As in 20261125000001, without the outbox row.
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

    PERFORM pg_advisory_xact_lock(7305954634617839617);
    PERFORM pg_notify('bank_outbox', '');

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

-- As in 20261125000002, without the outbox rows, and a stream given a NULL snapshot
-- keeps its previous one (the caller snapshots every few versions; loading reads the
-- events after the snapshot).
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
LANGUAGE plpgsql AS $$
DECLARE
    accepted uuid[] := '{}';
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_stream_ids), 0) LOOP
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

    PERFORM pg_advisory_xact_lock(7305954634617839617);
    PERFORM pg_notify('bank_outbox', '');

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
