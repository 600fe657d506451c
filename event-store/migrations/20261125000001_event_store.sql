-- One row per stream: its current version (the optimistic-concurrency check) and the
-- latest snapshot of the aggregate, so that loading a stream stays cheap as it grows.
CREATE TABLE streams (
    stream_id        uuid PRIMARY KEY,
    version          bigint NOT NULL CHECK (version > 0),
    snapshot_version bigint,
    snapshot_schema  integer,
    snapshot         jsonb,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The log. `position` is assigned while the append lock is held, so positions become
-- visible in the order they were assigned: a reader never meets a lower position later.
CREATE TABLE events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       uuid NOT NULL UNIQUE,
    stream_id      uuid NOT NULL,
    version        bigint NOT NULL CHECK (version > 0),
    event_type     text NOT NULL,
    schema_version integer NOT NULL,
    data           jsonb NOT NULL,
    metadata       jsonb NOT NULL,
    occurred_at    timestamptz NOT NULL,
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);

-- Transactional outbox: events committed but not yet confirmed by the broker.
CREATE TABLE outbox (
    position bigint PRIMARY KEY REFERENCES events (position)
);

-- Responses to requests that carried an Idempotency-Key.
CREATE TABLE idempotency_keys (
    key         text PRIMARY KEY,
    fingerprint bytea NOT NULL,
    status      smallint NOT NULL,
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- Appends events to a stream in one round trip and one transaction: checks and bumps
-- the stream version (SQLSTATE BK409 on a clash), stores the snapshot and the
-- idempotency record, inserts the events and their outbox entries under the global
-- append lock, and wakes the relay. Returns the positions of the new events in order.
CREATE FUNCTION append_events(
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
    ), queued AS (
        INSERT INTO outbox (position) SELECT inserted.position FROM inserted
    )
    SELECT inserted.position FROM inserted ORDER BY inserted.position;
END;
$$;
