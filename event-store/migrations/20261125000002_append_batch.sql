-- Appends to many streams in one transaction (group commit). Each stream is checked
-- and bumped like in append_events, but a stream whose version moved is skipped
-- instead of failing the batch. Streams are processed in the order given (callers
-- sort them, so concurrent batches lock rows in the same order). Events carry their
-- stream and version; idempotency records carry their stream. Returns the streams
-- whose events were committed. A taken idempotency key fails the whole batch
-- (unique_violation on idempotency_keys_pkey): callers fall back to single appends.
CREATE FUNCTION append_batch(
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
            VALUES (p_stream_ids[i], p_new_versions[i], p_new_versions[i], p_snapshot_schema, p_snapshots[i])
            ON CONFLICT (stream_id) DO NOTHING;
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

    WITH inserted AS (
        INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata, occurred_at)
        SELECT e.event_id, e.stream_id, e.version, e.event_type, e.schema_version, e.data, e.metadata, e.occurred_at
          FROM unnest(p_event_streams, p_event_versions, p_event_ids, p_event_types, p_schema_versions,
                      p_data, p_metadata, p_occurred_at) WITH ORDINALITY
               AS e (stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at, ordinal)
         WHERE e.stream_id = ANY (accepted)
         ORDER BY e.ordinal
        RETURNING events.position
    )
    INSERT INTO outbox (position) SELECT inserted.position FROM inserted;

    RETURN QUERY SELECT unnest(accepted);
END;
$$;
