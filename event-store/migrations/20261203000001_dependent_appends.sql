-- A transfer's leg and the transfer's record of it commit together: a batch append may
-- carry, after the streams it appends to, streams appended only if a given one of them
-- was accepted (`p_requires`, NULL for none). Dependent streams come after the others
-- in the arrays, so they are locked last and their events get the later positions.
-- As in 20261201000001 otherwise; the 18-argument form stays for replicas of the
-- previous release.
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

-- The transfer process is woken by the commit that requests a transfer, not by a
-- statement the requester sends after it (one round trip less, and no request left
-- unannounced by a crash in between). Replicas of the previous release still send
-- theirs: a second wake-up only makes the process look once more.
CREATE FUNCTION notify_transfer_requested() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bank_transfer_requests', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_transfer_requested
    AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.event_type = 'TransferRequested')
    EXECUTE FUNCTION notify_transfer_requested();
