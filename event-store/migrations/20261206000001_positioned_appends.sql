-- A batch append tells which positions its events took: `append_batch_positioned`
-- returns one row per event written (its stream, version and position, in position
-- order) where `append_batch` returned the accepted streams. The store hands the
-- events it just committed to a relay leading in the same process, which publishes
-- them without reading them back when they directly follow what it has read.
--
-- Rolling upgrade: `append_batch` keeps its signature and meaning for the previous
-- release, now by way of the new function.

CREATE FUNCTION append_batch_positioned(
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
) RETURNS TABLE (appended_stream uuid, appended_version bigint, appended_position bigint)
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

    RETURN QUERY
    WITH inserted AS (
        INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata, occurred_at)
        SELECT e.event_id, e.stream_id, e.version, e.event_type, e.schema_version, e.data, e.metadata, e.occurred_at
          FROM unnest(p_event_streams, p_event_versions, p_event_ids, p_event_types, p_schema_versions,
                      p_data, p_metadata, p_occurred_at) WITH ORDINALITY
               AS e (stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at, ordinal)
         WHERE e.stream_id = ANY (accepted)
         ORDER BY e.ordinal
        RETURNING events.stream_id, events.version, events.position
    )
    SELECT inserted.stream_id, inserted.version, inserted.position
      FROM inserted
     ORDER BY inserted.position;
END;
$$;

-- The 19-argument form of the previous release: the accepted streams.
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
LANGUAGE sql AS $$
    SELECT DISTINCT appended_stream
      FROM append_batch_positioned(p_stream_ids, p_expected_versions, p_new_versions, p_snapshots,
                                   p_snapshot_schema, p_event_streams, p_event_versions, p_event_ids,
                                   p_event_types, p_schema_versions, p_data, p_metadata, p_occurred_at,
                                   p_key_streams, p_keys, p_fingerprints, p_statuses, p_bodies,
                                   p_requires);
$$;
