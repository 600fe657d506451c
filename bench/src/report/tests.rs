//! The report's layout, held against golden files: a run with a figure in every table
//! (some targets missed, some not measured) and an empty run.
use std::time::Duration;

use super::Results;
use crate::machine::Machine;
use crate::phases::b1::Pair;
use crate::phases::cqrs::Run;
use crate::phases::lag::Lag;
use crate::phases::peer::PeerPair;
use crate::phases::{
    b1, b2, b3, cqrs, growth, lag, live, peer, replicas, rss, token_check, transfers,
};
use crate::prom::Quantiles;
use crate::stats::{Drain, Sample};

fn sample(throughput: f64, p50_ms: f64, p99_ms: f64) -> Sample {
    Sample {
        throughput,
        p50_ms,
        p99_ms,
        count: 100,
        errors: 0,
        note: None,
    }
}

/// A run with a figure in every table, some targets missed and some not measured.
fn fixture() -> Results {
    let noted = Sample {
        note: Some("2 clients aborted".to_owned()),
        errors: 1,
        ..sample(900.0, 1.5, 4.0)
    };
    Results {
        quick: true,
        command_line: "bench/run.sh --quick".to_owned(),
        started_at: "2026-11-30 10:00 UTC".to_owned(),
        took: Duration::from_secs(125),
        machine: Machine {
            cpu: "Test CPU".to_owned(),
            cores: 2,
            memory: "8.0 GiB".to_owned(),
            kernel: "Linux 6.0".to_owned(),
            postgres: "PostgreSQL 15".to_owned(),
            postgres_settings: "max_connections 100".to_owned(),
            mariadb: "10.11".to_owned(),
            mariadb_log_flush: Some(1),
            rabbitmq: "3.10".to_owned(),
            load_start: "0.10".to_owned(),
            load_end: "2.00".to_owned(),
            commit: "`abc1234`".to_owned(),
        },
        accounts: 2_000,
        repeats: 2,
        warmup: Duration::from_secs(1),
        measure: Duration::from_millis(1500),
        b1: b1::Figures {
            pairs: vec![
                Pair {
                    clients: 1,
                    b1: vec![sample(1000.0, 0.9, 1.8), sample(1100.0, 0.8, 1.7)],
                    b1s: vec![sample(800.0, 1.1, 2.2), sample(850.0, 1.0, 2.0)],
                    service: vec![sample(600.0, 1.1, 6.0), noted],
                    service_cpu_us: vec![400.0, 420.0],
                    service_server: vec![
                        Quantiles {
                            count: 900,
                            p50_ms: 0.9,
                            p99_ms: 3.0,
                        },
                        Quantiles {
                            count: 1300,
                            p50_ms: 0.8,
                            p99_ms: 4.0,
                        },
                    ],
                },
                Pair {
                    clients: 16,
                    b1: vec![sample(1500.0, 10.0, 19.0)],
                    b1s: Vec::new(),
                    service: vec![sample(2100.0, 6.9, 17.7)],
                    service_cpu_us: vec![300.0],
                    service_server: Vec::new(),
                },
                Pair {
                    clients: 64,
                    b1: vec![sample(1300.0, 46.0, 88.0)],
                    b1s: vec![sample(1200.0, 50.0, 90.0)],
                    service: Vec::new(),
                    service_cpu_us: Vec::new(),
                    service_server: Vec::new(),
                },
            ],
        },
        cqrs: cqrs::Figures {
            versions: Some("cqrs-es 0.5.0 + postgres-es 0.5.0".to_owned()),
            accounts: 2_000,
            runs: vec![
                Run {
                    clients: 1,
                    cqrs: vec![sample(1400.0, 0.69, 1.5), sample(1380.0, 0.7, 1.6)],
                    service: vec![sample(630.0, 1.31, 4.3), sample(650.0, 1.3, 4.0)],
                    cqrs_cpu_us: vec![350.0, 360.0],
                    service_cpu_us: vec![420.0, 410.0],
                },
                Run {
                    clients: 16,
                    cqrs: vec![sample(3700.0, 4.2, 9.0)],
                    service: vec![sample(5000.0, 3.1, 8.0)],
                    cqrs_cpu_us: Vec::new(),
                    service_cpu_us: vec![300.0],
                },
                Run {
                    clients: 64,
                    cqrs: Vec::new(),
                    service: vec![sample(4900.0, 13.0, 30.0)],
                    cqrs_cpu_us: Vec::new(),
                    service_cpu_us: Vec::new(),
                },
            ],
            peer_rss_kib: Some(20_480),
        },
        tokens: token_check::Figures {
            verify_us: vec![4.0, 5.0, 4.5],
        },
        b2: b2::Figures {
            side_run: Duration::from_secs(1),
            batch_accounts: 2_000,
            events_per_account: 5,
            raw: vec![13_000.0, 14_000.0],
            relay: vec![
                Drain {
                    events: 10_000,
                    took: Duration::from_millis(800),
                },
                Drain {
                    events: 10_000,
                    took: Duration::from_secs(1),
                },
            ],
        },
        b3: b3::Figures {
            live_raw: vec![40_000.0, 42_000.0],
            live_feed: 20_000,
            live: Some(Drain {
                events: 20_000,
                took: Duration::from_secs(2),
            }),
            raw: vec![50_000.0, 52_000.0, 51_000.0],
            feed: 30_000,
            rebuild: vec![
                Drain {
                    events: 30_000,
                    took: Duration::from_millis(900),
                },
                Drain {
                    events: 30_000,
                    took: Duration::from_secs(1),
                },
            ],
            rebuild_check: Some("event store 2000 accounts (equal)".to_owned()),
        },
        lag: lag::Figures {
            run: Duration::from_secs(2),
            runs: vec![
                Lag {
                    fraction: 0.1,
                    flush_each_commit: false,
                    offered: 210.0,
                    achieved: 210.0,
                    ack: sample(210.0, 1.0, 2.0),
                    lags_us: vec![4_000, 6_000, 12_000],
                    timed_out: 0,
                    stages: lag::STAGES
                        .iter()
                        .enumerate()
                        .map(|(n, (stage, _))| {
                            let quantiles = (n < 4).then_some(Quantiles {
                                count: 2100,
                                p50_ms: 0.6 * (n as f64 + 1.0),
                                p99_ms: 2.5 * (n as f64 + 1.0),
                            });
                            (*stage, quantiles)
                        })
                        .collect(),
                    server: Some(Quantiles {
                        count: 2100,
                        p50_ms: 0.7,
                        p99_ms: 1.6,
                    }),
                    cores: vec![0.21, 0.26, 0.22, 0.41, 0.40, 0.08],
                },
                Lag {
                    fraction: 0.5,
                    flush_each_commit: false,
                    offered: 1050.0,
                    achieved: 1049.5,
                    ack: sample(1049.5, 1.2, 3.4),
                    lags_us: vec![5_000, 9_000, 60_000],
                    timed_out: 1,
                    stages: Vec::new(),
                    server: None,
                    cores: Vec::new(),
                },
                Lag {
                    fraction: 0.1,
                    flush_each_commit: true,
                    offered: 210.0,
                    achieved: 210.0,
                    ack: sample(210.0, 1.0, 2.0),
                    lags_us: vec![9_000, 14_000, 30_000],
                    timed_out: 0,
                    stages: Vec::new(),
                    server: None,
                    cores: Vec::new(),
                },
                Lag {
                    fraction: 0.9,
                    flush_each_commit: false,
                    offered: 1890.0,
                    achieved: 1800.0,
                    ack: sample(1800.0, 2.0, 8.0),
                    lags_us: Vec::new(),
                    timed_out: 0,
                    stages: vec![("committed", None)],
                    server: None,
                    cores: Vec::new(),
                },
            ],
        },
        growth: growth::Figures {
            long_streams: vec![
                (10, vec![sample(700.0, 1.4, 2.0)]),
                (
                    10_000,
                    vec![sample(690.0, 1.45, 2.1), sample(680.0, 1.5, 2.2)],
                ),
            ],
            small_store: vec![sample(2000.0, 7.0, 15.0)],
            big_store: vec![sample(1900.0, 7.5, 16.0)],
            small_store_events: 4_000,
            big_store_events: 210_000,
            append_clients: 16,
        },
        live: live::Figures {
            as_of: vec![
                (10, vec![sample(2000.0, 0.45, 0.9)]),
                (10_000, vec![sample(1950.0, 0.47, 1.0)]),
            ],
            streams: 1_000,
            rss_before_kib: Some(20_000),
            rss_open_kib: Some(32_800),
            open_took: Some(Duration::from_millis(1_500)),
            survived: Some(true),
            fill_peak_kib: Some(80_000),
        },
        peer: peer::Figures {
            version: Some("9.5.6 with psycopg 3.3.9".to_owned()),
            runs: vec![
                PeerPair {
                    clients: 4,
                    peer: vec![sample(500.0, 8.0, 20.0)],
                    service: vec![sample(1600.0, 2.4, 7.0)],
                },
                PeerPair {
                    clients: 16,
                    peer: Vec::new(),
                    service: vec![sample(2000.0, 8.0, 18.0)],
                },
            ],
        },
        transfers: transfers::Figures {
            completion_us: vec![8_000, 9_000, 12_000, 61_000],
            not_completed: 0,
            stages: lag::STAGES
                .iter()
                .enumerate()
                .map(|(n, (stage, _))| {
                    let quantiles = Quantiles {
                        count: 20,
                        p50_ms: 2.0 * (n as f64 + 1.0),
                        p99_ms: 4.0 * (n as f64 + 1.0),
                    };
                    (*stage, Some(quantiles))
                })
                .collect(),
            turns: vec![transfers::Turn {
                credits: sample(3000.0, 5.0, 12.0),
                requested: sample(900.0, 15.0, 40.0),
                ended_per_s: 850.0,
                drained_after: Duration::from_millis(300),
            }],
        },
        replicas: replicas::Figures {
            live: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            runs: vec![
                replicas::Run {
                    design: "one shared classic queue",
                    replicas: 2,
                    live: Sample {
                        count: 15_000,
                        ..sample(1500.0, 9.0, 30.0)
                    },
                    lags_us: vec![9_000, 12_000, 40_000],
                    probes_timed_out: 0,
                    caught_up_after: Duration::from_millis(250),
                    live_counters: replicas::Counters {
                        gap_fills: 700.0,
                        backfilled: 1500.0,
                        applied: vec![7600.0, 7400.0],
                    },
                    backlog: 7000,
                    worked_off_in: Duration::from_millis(900),
                    backlog_counters: replicas::Counters {
                        gap_fills: 3000.0,
                        backfilled: 6300.0,
                        applied: vec![3500.0, 3500.0],
                    },
                },
                replicas::Run {
                    design: "8 quorum partitions (default)",
                    replicas: 1,
                    live: Sample {
                        count: 14_000,
                        ..sample(1400.0, 10.0, 32.0)
                    },
                    lags_us: vec![8_000, 10_000, 30_000],
                    probes_timed_out: 0,
                    caught_up_after: Duration::from_millis(40),
                    live_counters: replicas::Counters {
                        gap_fills: 0.0,
                        backfilled: 0.0,
                        applied: vec![14_000.0],
                    },
                    backlog: 6500,
                    worked_off_in: Duration::from_millis(800),
                    backlog_counters: replicas::Counters {
                        gap_fills: 0.0,
                        backfilled: 0.0,
                        applied: vec![6500.0],
                    },
                },
            ],
        },
        rss: rss::Figures {
            peaks: vec![
                ("command-service".to_owned(), 36_000),
                ("query-service rebuild".to_owned(), 60_000),
            ],
        },
        failures: vec!["peer: the peer failed".to_owned()],
        notes: vec!["a note".to_owned()],
    }
}

/// Compares a rendering with its golden file under `src/testdata/`.
fn assert_renders_as(results: &Results, golden: &str, expected: &str) {
    let rendered = results.render();
    if rendered != expected {
        let path = std::env::temp_dir().join(golden);
        let _ = std::fs::write(&path, &rendered);
        panic!(
            "the report differs from src/testdata/{golden}; rendered into {}",
            path.display()
        );
    }
}

#[test]
fn renders_the_known_layout() {
    assert_renders_as(
        &fixture(),
        "report.md",
        include_str!("../testdata/report.md"),
    );
}

#[test]
fn renders_an_empty_run_in_the_known_layout() {
    assert_renders_as(
        &Results::default(),
        "report-empty.md",
        include_str!("../testdata/report-empty.md"),
    );
}
