//! The event store against the real Postgres of this machine, one fresh database per test.

use std::collections::{BTreeSet, HashSet};

use chrono::{SubsecRound, Utc};
use event_store::{
    Append, AppendListener, EventStore, NewEvent, StoreError, StoredResponse, StreamAppend,
    WriterConnection,
};
use serde_json::json;
use uuid::Uuid;

async fn fresh_store() -> EventStore {
    let server = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let url = format!("{server}/es_test_{}", Uuid::new_v4().simple());
    EventStore::connect(&url, 20).await.unwrap_or_else(|error| {
        panic!(
            "cannot reach Postgres at {server} ({error:?}). Start it with \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
             or point TEST_POSTGRES_URL at a server."
        )
    })
}

fn event(kind: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: kind.to_owned(),
        schema_version: 1,
        data: json!({"n": kind}),
        metadata: json!({"correlation_id": "test"}),
        occurred_at: Utc::now().trunc_subsecs(6),
    }
}

fn append<'a>(stream_id: Uuid, expected_version: i64, events: &'a [NewEvent]) -> Append<'a> {
    Append {
        stream_id,
        expected_version,
        events,
        snapshot: None,
        response: None,
    }
}

#[tokio::test]
async fn appended_events_are_loaded_back_in_version_order() {
    let store = fresh_store().await;
    let stream = Uuid::now_v7();
    let first = [event("A"), event("B")];
    let positions = store.append(append(stream, 0, &first)).await.unwrap();
    assert_eq!(positions.len(), 2);
    assert!(positions[0] < positions[1]);
    store
        .append(append(stream, 2, &[event("C")]))
        .await
        .unwrap();

    let loaded = store.load(stream).await.unwrap().unwrap();
    assert_eq!(loaded.version, 3);
    let kinds: Vec<_> = loaded
        .events
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(kinds, ["A", "B", "C"]);
    assert_eq!(loaded.events[0].occurred_at, first[0].occurred_at);
    assert_eq!(loaded.events[2].version, 3);

    let tail = store.read_stream(stream, 2).await.unwrap().unwrap();
    assert_eq!(tail.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
    assert!(
        store
            .read_stream(Uuid::now_v7(), 1)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.load(Uuid::now_v7()).await.unwrap().is_none());
}

#[tokio::test]
async fn an_append_at_a_stale_version_is_a_typed_conflict_and_writes_nothing() {
    let store = fresh_store().await;
    let stream = Uuid::now_v7();
    store
        .append(append(stream, 0, &[event("A")]))
        .await
        .unwrap();

    for expected in [0, 2] {
        let error = store
            .append(append(stream, expected, &[event("X")]))
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Conflict { .. }), "{error:?}");
    }
    let loaded = store.load(stream).await.unwrap().unwrap();
    assert_eq!(loaded.version, 1);
    assert_eq!(store.read_all(0, 100).await.unwrap().len(), 1);
    assert_eq!(store.relay_backlog().await.unwrap(), 1);
}

#[tokio::test]
async fn racing_appends_at_the_same_version_let_exactly_one_win() {
    let store = fresh_store().await;
    let stream = Uuid::now_v7();
    store
        .append(append(stream, 0, &[event("A")]))
        .await
        .unwrap();

    let attempts = (0..20).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let events = [event("B")];
            store.append(append(stream, 1, &events)).await
        })
    });
    let results = futures::future::join_all(attempts).await;
    let wins = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(StoreError::Conflict { .. }))))
        .count();
    assert_eq!((wins, conflicts), (1, 19));
    assert_eq!(store.load(stream).await.unwrap().unwrap().version, 2);
}

#[tokio::test]
async fn the_snapshot_replaces_the_events_before_it_when_loading() {
    let store = fresh_store().await;
    let stream = Uuid::now_v7();
    let state = json!({"balance": "10.00"});
    store
        .append(Append {
            snapshot: Some((&state, 1)),
            ..append(stream, 0, &[event("A"), event("B")])
        })
        .await
        .unwrap();
    store
        .append(append(stream, 2, &[event("C")]))
        .await
        .unwrap();

    let loaded = store.load(stream).await.unwrap().unwrap();
    let snapshot = loaded.snapshot.unwrap();
    assert_eq!((snapshot.version, snapshot.schema_version), (2, 1));
    assert_eq!(snapshot.state, state);
    assert_eq!(
        loaded.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3]
    );
}

#[tokio::test]
async fn the_global_feed_never_skips_an_event_under_concurrent_writers() {
    let store = fresh_store().await;
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = Uuid::now_v7();
                for version in 0..40 {
                    let events = [event("E"), event("E")];
                    store
                        .append(append(stream, version * 2, &events))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();

    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0;
            loop {
                let batch = store.read_all(after, 7).await.unwrap();
                for event in &batch {
                    assert!(event.position > after, "feed went backwards");
                    after = event.position;
                    seen.push(event.event_id);
                }
                if batch.is_empty() && seen.len() == 8 * 40 * 2 {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = tokio::time::timeout(std::time::Duration::from_secs(60), reader)
        .await
        .expect("the reader missed events")
        .unwrap();
    let all: BTreeSet<_> = store
        .read_all(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), all);
}

#[tokio::test]
async fn the_leader_reads_every_event_once_in_order_while_both_replicas_append() {
    // Given a relay leading in one replica, woken as the relay is, and another replica
    let store = fresh_store().await;
    let mut listener = store.listen_appends().await.unwrap();
    let mut leader = store.try_lead_outbox().await.unwrap().unwrap();
    let other_replica = EventStore::connect(&store_url(&store), 4).await.unwrap();
    let checkpoint = leader.checkpoint().await.unwrap();

    // When six writers of its replica (batches) and two of the other (single appends)
    // append concurrently while it reads
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let (store, other_replica) = (store.clone(), other_replica.clone());
            tokio::spawn(async move {
                let stream = Uuid::now_v7();
                for version in 0..30 {
                    if writer < 6 {
                        let batch = [stream_append(stream, version * 2, &["E", "E"])];
                        store.append_batch(&batch, 1).await.unwrap();
                    } else {
                        let events = [event("E"), event("E")];
                        other_replica
                            .append(append(stream, version * 2, &events))
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    let reading = async {
        let mut seen = Vec::new();
        let mut after = checkpoint;
        while seen.len() < 8 * 30 * 2 {
            listener.drain();
            for event in leader.read_after(after, 7).await.unwrap() {
                assert!(event.position > after, "the relay's feed went backwards");
                after = event.position;
                seen.push(event.event_id);
            }
            tokio::task::yield_now().await;
        }
        seen
    };
    let seen = tokio::time::timeout(std::time::Duration::from_secs(60), reading)
        .await
        .expect("the leader missed events");
    for writer in writers {
        writer.await.unwrap();
    }

    // Then it read each event once, in the log's order
    let logged: Vec<Uuid> = store
        .read_all(checkpoint, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(seen, logged);
}

/// Begins an append by hand, as `append_batch` does it, and leaves it uncommitted: its
/// backend's append lock, then one event. Returns the transaction and the event's position.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure fails the test"
)]
async fn uncommitted_append(
    store: &EventStore,
) -> (sqlx::Transaction<'static, sqlx::Postgres>, i64) {
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(730595463, pg_backend_pid())")
        .execute(&mut *tx)
        .await
        .unwrap();
    let position = sqlx::query_scalar(
        "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata, occurred_at)
         VALUES ($1, $2, 1, 'Late', 1, '{}', '{}', now()) RETURNING position",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::now_v7())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    (tx, position)
}

#[tokio::test]
async fn a_reader_waits_for_an_append_that_took_a_lower_position_until_it_ends() {
    // Given an append under way with the lower position, and a later one committed
    let store = fresh_store().await;
    let (late, late_position) = uncommitted_append(&store).await;
    store
        .append(append(Uuid::now_v7(), 0, &[event("Early")]))
        .await
        .unwrap();

    // When a reader reads the feed
    let reader = tokio::spawn({
        let store = store.clone();
        async move { store.read_all(0, 10).await.unwrap() }
    });

    // Then it waits for the append under way, and reads both in position order once it committed
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!reader.is_finished(), "read past an append still under way");
    late.commit().await.unwrap();
    let read = reader.await.unwrap();
    assert_eq!(
        read.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["Late", "Early"]
    );
    assert_eq!(read[0].position, late_position);

    // And an append that never commits leaves a hole the feed steps over
    let (abandoned, hole) = uncommitted_append(&store).await;
    store
        .append(append(Uuid::now_v7(), 0, &[event("After")]))
        .await
        .unwrap();
    abandoned.rollback().await.unwrap();
    let rest = store.read_all(read[1].position, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(rest[0].position > hole && rest[0].event_type == "After");
}

/// Advisory locks a reader of the log still holds (it must hold none once its read ended).
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure fails the test"
)]
async fn locks_left_by_readers(store: &EventStore) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 730595463::oid AND mode = 'ShareLock' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_reader_that_waited_for_an_append_holds_no_lock_afterwards_even_when_cancelled() {
    // Given an append under way, and a reader waiting for it
    let store = fresh_store().await;
    let (under_way, _) = uncommitted_append(&store).await;
    let reader = tokio::spawn({
        let store = store.clone();
        async move { store.read_all(0, 10).await }
    });
    let mut waiting_reader = None;
    for _ in 0..200 {
        waiting_reader = sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%FROM settled_events(%' AND wait_event_type = 'Lock'",
        )
        .fetch_optional(store.pool())
        .await
        .unwrap();
        if waiting_reader.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let waiting_reader = waiting_reader.expect("the reader never waited for the append");

    // When its statement is cancelled while it waits
    sqlx::query("SELECT pg_cancel_backend($1)")
        .bind(waiting_reader)
        .execute(store.pool())
        .await
        .unwrap();

    // Then its read fails, it holds no lock, and the append commits and is read
    assert!(reader.await.unwrap().is_err(), "a cancelled read succeeded");
    assert_eq!(locks_left_by_readers(&store).await, 0);
    under_way.commit().await.unwrap();
    assert_eq!(store.read_all(0, 10).await.unwrap().len(), 1);
    assert_eq!(locks_left_by_readers(&store).await, 0);
}

#[tokio::test]
async fn the_relay_is_woken_once_an_append_has_committed_whichever_replica_made_it() {
    // Given a relay leading in one replica, and another replica of the same store
    let store = fresh_store().await;
    let mut listener = store.listen_appends().await.unwrap();
    let mut leader = store.try_lead_outbox().await.unwrap().unwrap();
    let other_replica = EventStore::connect(&store_url(&store), 2).await.unwrap();

    // When an append commits in the leader's replica, then one in the other
    store
        .append(append(Uuid::now_v7(), 0, &[event("AccountCredited")]))
        .await
        .unwrap();
    woken(&mut listener).await;
    listener.drain();
    other_replica
        .append(append(Uuid::now_v7(), 0, &[event("AccountDebited")]))
        .await
        .unwrap();

    // Then the relay is woken each time, and finds both events
    woken(&mut listener).await;
    let checkpoint = leader.checkpoint().await.unwrap();
    assert_eq!(leader.read_after(checkpoint, 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_leader_takes_its_replicas_appends_as_committed_and_reads_the_others_from_the_log() {
    // Given a relay leading in one replica, and another replica of the same store
    let store = fresh_store().await;
    let mut leader = store.try_lead_outbox().await.unwrap().unwrap();
    let other_replica = EventStore::connect(&store_url(&store), 2).await.unwrap();
    let checkpoint = leader.checkpoint().await.unwrap();
    let (mine, theirs) = (Uuid::now_v7(), Uuid::now_v7());

    // When the leader's replica appends a batch of two streams, then the other replica
    // appends, then the leader's replica once more
    let batch = [
        stream_append(mine, 0, &["AccountOpened", "AccountActivated"]),
        stream_append(Uuid::now_v7(), 0, &["AccountOpened"]),
    ];
    store.append_batch(&batch, 1).await.unwrap();
    other_replica
        .append(append(theirs, 0, &[event("AccountOpened")]))
        .await
        .unwrap();
    store
        .append(append(mine, 2, &[event("AccountCredited")]))
        .await
        .unwrap();

    // Then the leader reads every event once, in position order, exactly as the log
    // holds it, whether handed over or read back
    let logged = store.read_all(checkpoint, 100).await.unwrap();
    assert_eq!(logged.len(), 5);
    let mut relayed = Vec::new();
    let mut after = checkpoint;
    loop {
        let read = leader.read_after(after, 2).await.unwrap();
        let Some(last) = read.last() else { break };
        after = last.position;
        relayed.extend(read);
    }
    assert_eq!(relayed, logged);
}

#[expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test helper: a failure fails the test"
)]
async fn woken(listener: &mut AppendListener) {
    tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
        .await
        .expect("the store announces committed appends")
        .unwrap();
}

#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure fails the test"
)]
fn store_url(store: &EventStore) -> String {
    let options = store.pool().connect_options();
    let database = options.get_database().unwrap();
    let server = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    format!("{server}/{database}")
}

#[tokio::test]
async fn only_one_relay_leads_and_a_new_leader_resumes_after_the_confirmed_checkpoint() {
    let store = fresh_store().await;
    let stream = Uuid::now_v7();
    store
        .append(append(stream, 0, &[event("A"), event("B"), event("C")]))
        .await
        .unwrap();

    let mut leader = store
        .try_lead_outbox()
        .await
        .unwrap()
        .expect("first relay leads");
    assert!(store.try_lead_outbox().await.unwrap().is_none());
    let start = leader.checkpoint().await.unwrap();
    let pending = leader.read_after(start, 10).await.unwrap();
    assert_eq!(
        pending.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(leader.head().await.unwrap(), pending[2].position);

    // The broker confirmed the first event only, then the leader went away
    leader.confirm(pending[0].position).await.unwrap();
    leader.confirm(start).await.unwrap();
    assert_eq!(store.relay_backlog().await.unwrap(), 2);
    leader.resign().await.unwrap();

    let mut next = store
        .try_lead_outbox()
        .await
        .unwrap()
        .expect("a new leader");
    let resumed = next.checkpoint().await.unwrap();
    assert_eq!(
        resumed, pending[0].position,
        "the checkpoint never moves back"
    );
    let rest = next.read_after(resumed, 10).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
}

/// A database at the last migration of the previous release holding one stream of
/// five events, of which the outbox still holds those after version `confirmed`.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure fails the test"
)]
async fn previous_release_store(confirmed: i64) -> String {
    let server = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let url = format!("{server}/es_test_{}", Uuid::new_v4().simple());
    <sqlx::Postgres as sqlx::migrate::MigrateDatabase>::create_database(&url)
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::migrate!("./migrations")
        .run_to(20_261_130_000_001, &pool)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata, occurred_at)
         SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001', v, 'A', 1, '{}', '{}', now()
           FROM generate_series(1, 5) AS v ORDER BY v",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO outbox (position) SELECT position FROM events WHERE version > $1")
        .bind(confirmed)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    url
}

#[tokio::test]
async fn an_upgrade_relays_from_the_oldest_event_left_in_the_outbox() {
    // Given a store of the previous release whose relay confirmed two of five events
    let url = previous_release_store(2).await;

    // When this release migrates it
    let store = EventStore::connect(&url, 2).await.unwrap();

    // Then its relay publishes the three others, and no event is left unrelayed
    let mut leader = store.try_lead_outbox().await.unwrap().unwrap();
    let checkpoint = leader.checkpoint().await.unwrap();
    let pending = leader.read_after(checkpoint, 10).await.unwrap();
    assert_eq!(
        pending.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert_eq!(store.relay_backlog().await.unwrap(), 3);
}

#[tokio::test]
async fn an_upgrade_with_an_empty_outbox_relays_only_new_events() {
    let url = previous_release_store(5).await;
    let store = EventStore::connect(&url, 2).await.unwrap();
    assert_eq!(store.relay_backlog().await.unwrap(), 0);

    let stream = Uuid::now_v7();
    store
        .append(append(stream, 0, &[event("N")]))
        .await
        .unwrap();
    let mut leader = store.try_lead_outbox().await.unwrap().unwrap();
    let checkpoint = leader.checkpoint().await.unwrap();
    let pending = leader.read_after(checkpoint, 10).await.unwrap();
    assert_eq!(
        pending.iter().map(|e| e.stream_id).collect::<Vec<_>>(),
        [stream]
    );
}

#[tokio::test]
async fn an_idempotency_key_is_taken_once_and_its_response_kept() {
    let store = fresh_store().await;
    let response = StoredResponse {
        key: "key-1".into(),
        fingerprint: vec![1, 2, 3],
        status: 201,
        body: json!({"id": "x"}),
    };
    store
        .append(Append {
            response: Some(&response),
            ..append(Uuid::now_v7(), 0, &[event("A")])
        })
        .await
        .unwrap();
    let again = store
        .append(Append {
            response: Some(&response),
            ..append(Uuid::now_v7(), 0, &[event("A")])
        })
        .await
        .unwrap_err();
    assert!(
        matches!(again, StoreError::IdempotencyKeyTaken(_)),
        "{again:?}"
    );
    assert_eq!(
        store.stored_response("key-1").await.unwrap(),
        Some(response.clone())
    );
    assert!(!store.store_response(&response).await.unwrap());
    assert_eq!(
        store.read_all(0, 10).await.unwrap().len(),
        1,
        "the losing append wrote nothing"
    );
}

fn stream_append(stream_id: Uuid, expected_version: i64, kinds: &[&str]) -> StreamAppend {
    StreamAppend {
        stream_id,
        expected_version,
        events: kinds.iter().map(|kind| event(kind)).collect(),
        snapshot: Some(json!({"at": expected_version + kinds.len() as i64})),
        responses: Vec::new(),
        requires: None,
    }
}

#[tokio::test]
async fn a_stream_that_requires_another_is_appended_only_with_it_and_after_it() {
    // Given an account-like stream that moved, one that did not, and a stream each
    // requiring one of them
    let store = fresh_store().await;
    let (moved, held) = (Uuid::now_v7(), Uuid::now_v7());
    let (after_moved, after_held) = (Uuid::nil(), Uuid::max());
    store.append(append(moved, 0, &[event("A")])).await.unwrap();
    store.append(append(held, 0, &[event("A")])).await.unwrap();
    let requiring = |stream_id, required| StreamAppend {
        snapshot: None,
        requires: Some(required),
        ..stream_append(stream_id, 0, &["Recorded"])
    };

    // When they are appended in one batch, the requiring streams listed first
    let accepted = store
        .append_batch(
            &[
                requiring(after_moved, moved),
                requiring(after_held, held),
                stream_append(moved, 0, &["B"]),
                stream_append(held, 1, &["B"]),
            ],
            1,
        )
        .await
        .unwrap();

    // Then only the stream whose required append held is appended, after it, unsnapshotted
    assert_eq!(accepted, HashSet::from([held, after_held]));
    let feed: Vec<(Uuid, String)> = store
        .read_all(2, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.stream_id, e.event_type))
        .collect();
    assert_eq!(
        feed,
        [(held, "B".to_owned()), (after_held, "Recorded".to_owned())]
    );
    let loaded = store.load_many(&[after_moved, after_held]).await.unwrap();
    assert!(!loaded.contains_key(&after_moved));
    assert!(loaded[&after_held].snapshot.is_none());
}

#[tokio::test]
async fn a_batch_commits_every_stream_whose_version_held_and_skips_the_others() {
    let store = fresh_store().await;
    let (moved, fresh, existing) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    store.append(append(moved, 0, &[event("A")])).await.unwrap();
    store
        .append(append(existing, 0, &[event("A")]))
        .await
        .unwrap();

    let accepted = store
        .append_batch(
            &[
                stream_append(moved, 0, &["B"]),
                stream_append(fresh, 0, &["A", "B"]),
                stream_append(existing, 1, &["B", "C"]),
            ],
            1,
        )
        .await
        .unwrap();
    assert_eq!(accepted, HashSet::from([fresh, existing]));

    let loaded = store
        .load_many(&[moved, fresh, existing, Uuid::now_v7()])
        .await
        .unwrap();
    assert_eq!(loaded.len(), 3);
    assert_eq!(loaded[&moved].version, 1);
    assert_eq!(loaded[&fresh].version, 2);
    assert_eq!(loaded[&existing].version, 3);
    assert_eq!(
        loaded[&existing].snapshot.as_ref().unwrap().state,
        json!({"at": 3})
    );
    assert!(
        loaded[&existing].events.is_empty(),
        "the snapshot is current"
    );
    assert!(
        !loaded[&moved].events.is_empty(),
        "no snapshot: every event is loaded"
    );
    let versions: Vec<i64> = store
        .read_all(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, [1, 1, 1, 2, 2, 3]);
    assert_eq!(store.relay_backlog().await.unwrap(), 6);
}

#[tokio::test]
async fn a_lone_event_is_appended_or_skipped_by_the_same_rules_as_a_batch() {
    // Given a stream at version 1 with a snapshot, and a stream requiring an absent one
    let store = fresh_store().await;
    let (stream, fresh, requiring) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let one = |stream_id, expected_version| stream_append(stream_id, expected_version, &["B"]);
    assert_eq!(
        store.append_batch(&[one(stream, 0)], 1).await.unwrap(),
        HashSet::from([stream])
    );

    // When single events are appended: at a stale version, at the current one without
    // a snapshot, to a new stream, and to a stream whose required stream is not there
    let stale = store.append_batch(&[one(stream, 0)], 1).await.unwrap();
    let current = StreamAppend {
        snapshot: None,
        ..one(stream, 1)
    };
    let appended = store.append_batch(&[current], 1).await.unwrap();
    let opened = store.append_batch(&[one(fresh, 0)], 1).await.unwrap();
    let orphan = StreamAppend {
        requires: Some(Uuid::now_v7()),
        ..one(requiring, 0)
    };
    let orphaned = store.append_batch(&[orphan], 1).await.unwrap();

    // Then the stale and the orphaned ones are skipped, the others committed in order,
    // and a missing snapshot keeps the previous one
    assert!(stale.is_empty() && orphaned.is_empty());
    assert_eq!(appended, HashSet::from([stream]));
    assert_eq!(opened, HashSet::from([fresh]));
    let feed: Vec<(Uuid, i64)> = store
        .read_all(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.stream_id, e.version))
        .collect();
    assert_eq!(feed, [(stream, 1), (stream, 2), (fresh, 1)]);
    let loaded = store.load_many(&[stream, fresh]).await.unwrap();
    assert_eq!(loaded[&stream].version, 2);
    let snapshot = loaded[&stream].snapshot.as_ref().unwrap();
    assert_eq!((snapshot.version, &snapshot.state), (1, &json!({"at": 1})));
    assert_eq!(
        loaded[&fresh].snapshot.as_ref().unwrap().state,
        json!({"at": 1})
    );
}

#[tokio::test]
async fn a_batch_with_a_taken_idempotency_key_writes_nothing() {
    let store = fresh_store().await;
    let response = |key: &str| StoredResponse {
        key: key.into(),
        fingerprint: vec![7],
        status: 200,
        body: json!({}),
    };
    store.store_response(&response("taken")).await.unwrap();
    let mut first = stream_append(Uuid::now_v7(), 0, &["A"]);
    first.responses.push(response("free"));
    let mut second = stream_append(Uuid::now_v7(), 0, &["A"]);
    second.responses.push(response("taken"));

    let error = store.append_batch(&[first, second], 1).await.unwrap_err();
    assert!(
        matches!(error, StoreError::IdempotencyKeyTaken(_)),
        "{error:?}"
    );
    assert!(store.read_all(0, 10).await.unwrap().is_empty());
    assert!(store.stored_response("free").await.unwrap().is_none());
}

#[tokio::test]
async fn the_log_refuses_to_be_rewritten_even_by_a_superuser() {
    // Given a stored event, and a direct connection as a superuser
    let server = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let url = format!("{server}/es_test_{}", Uuid::new_v4().simple());
    let store = EventStore::connect(&url, 2).await.unwrap();
    let stream = Uuid::now_v7();
    store
        .append(append(stream, 0, &[event("A")]))
        .await
        .unwrap();
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();

    // When it tries to change, remove or truncate events, also with triggers "disabled"
    // for replication
    let attempts = [
        "UPDATE events SET data = '{\"n\": \"forged\"}'",
        "DELETE FROM events",
        "TRUNCATE events CASCADE",
        "SET session_replication_role = replica; UPDATE events SET data = '{}'",
    ];
    for statement in attempts {
        let refused = sqlx::raw_sql(statement).execute(&mut connection).await;
        // Then every attempt is refused by the database itself
        let error = refused.expect_err(statement);
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
        sqlx::raw_sql("RESET session_replication_role")
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let stored = store.read_stream(stream, 1).await.unwrap().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].data, json!({"n": "A"}));
}

#[tokio::test]
async fn the_commit_that_requests_a_transfer_wakes_the_transfer_process() {
    // Given a transfer process listening
    let store = fresh_store().await;
    let mut listener = store.listen_transfer_requests().await.unwrap();

    // When other events commit, then a transfer request
    store
        .append(append(Uuid::now_v7(), 0, &[event("AccountCredited")]))
        .await
        .unwrap();
    let request = Uuid::now_v7();
    store
        .append(append(request, 0, &[event("TransferRequested")]))
        .await
        .unwrap();

    // Then the one wake-up it gets comes from the request, and leads to it
    tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
        .await
        .expect("the request's commit notifies")
        .unwrap();
    assert!(listener.next_buffered().is_none(), "one wake-up, not two");
    let mut leader = store.try_lead_transfers().await.unwrap().unwrap();
    let requests = leader.requests_after(0, 10).await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].transfer_id, request);
}

/// Ends the server sessions of `store`'s database other than the caller's own; says
/// how many it ended.
async fn terminate_other_sessions(store: &EventStore) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()) AS ended",
    )
    .fetch_one(store.pool())
    .await
    .unwrap_or_else(|error| panic!("cannot end the store's sessions: {error}"))
}

/// A fresh store, and a writer's connection that appended a stream's first event.
async fn appended_once() -> (EventStore, WriterConnection, Uuid) {
    let store = fresh_store().await;
    let mut appends = store.writer_connection();
    let stream = Uuid::now_v7();
    appends
        .append_batch(&[stream_append(stream, 0, &["A"])], 1)
        .await
        .unwrap_or_else(|error| panic!("cannot append: {error}"));
    (store, appends, stream)
}

#[tokio::test]
async fn a_held_writer_connection_whose_session_ended_is_replaced_after_at_most_one_failure() {
    // Given a writer's connection that appended once
    let (store, mut appends, stream) = appended_once().await;
    // When the server ends its session at once
    assert!(terminate_other_sessions(&store).await >= 1);
    // Then the next append may fail, writing nothing, and the one after succeeds
    let next = appends
        .append_batch(&[stream_append(stream, 1, &["B"])], 1)
        .await;
    let version = if next.is_ok() { 2 } else { 1 };
    let after = appends
        .append_batch(&[stream_append(stream, version, &["C"])], 1)
        .await
        .unwrap();
    assert_eq!(after, HashSet::from([stream]));
    assert_eq!(
        store.load(stream).await.unwrap().unwrap().version,
        version + 1
    );
}

#[tokio::test]
async fn a_held_writer_connection_idle_past_the_trusted_spell_is_checked_before_use() {
    // Given a writer's connection that appended once, then sat idle
    let (store, mut appends, stream) = appended_once().await;
    // When the server ended its session meanwhile
    assert!(terminate_other_sessions(&store).await >= 1);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    // Then the next append goes through on a fresh connection
    let accepted = appends
        .append_batch(&[stream_append(stream, 1, &["B"])], 1)
        .await
        .unwrap();
    assert_eq!(accepted, HashSet::from([stream]));
}

#[tokio::test]
async fn a_held_writer_connection_loads_what_it_appended_and_recovers_from_an_ended_session() {
    // Given a writer's connection that appended once
    let (store, mut connection, stream) = appended_once().await;
    // When it loads the stream and an unknown one
    let loaded = connection
        .load_many(&[stream, Uuid::now_v7()])
        .await
        .unwrap();
    // Then it finds what the pool finds
    assert_eq!(loaded, store.load_many(&[stream]).await.unwrap());
    // And when the server ends its session, the next load may fail and the one after succeeds
    assert!(terminate_other_sessions(&store).await >= 1);
    if connection.load_many(&[stream]).await.is_err() {
        let again = connection.load_many(&[stream]).await.unwrap();
        assert_eq!(again[&stream].version, 1);
    }
}
