//! The figures of one run, and `docs/benchmarks.md` made from them.

use std::fmt::Write as _;
use std::time::Duration;

use crate::stats::{Sample, median, median_sample, percentile};

/// The machine and servers the run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub postgres: String,
    pub postgres_settings: String,
    pub mariadb: String,
    pub rabbitmq: String,
    pub load_start: String,
    pub load_end: String,
    pub commit: String,
}

/// B1 and the service at one client count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pair {
    pub clients: usize,
    pub b1: Vec<Sample>,
    pub service: Vec<Sample>,
    /// Command-service CPU time per command, µs (one per service repeat).
    pub service_cpu_us: Vec<f64>,
}

/// A rate measured by draining a known amount of work.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Drain {
    pub events: u64,
    pub took: Duration,
}

impl Drain {
    pub(crate) fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

/// One open-loop lag measurement.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lag {
    pub fraction: f64,
    pub offered: f64,
    pub achieved: f64,
    pub ack: Sample,
    pub lags_us: Vec<u64>,
    pub timed_out: usize,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Results {
    pub quick: bool,
    pub command_line: String,
    pub started_at: String,
    pub took: Duration,
    pub machine: Machine,
    pub accounts: u64,
    pub repeats: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub pairs: Vec<Pair>,
    pub b2: Vec<f64>,
    pub relay: Vec<Drain>,
    pub b3: Vec<f64>,
    pub live: Option<Drain>,
    pub rebuild: Option<Drain>,
    pub rebuild_check: Option<String>,
    pub lag: Vec<Lag>,
    /// (events in the account's stream, samples).
    pub long_streams: Vec<(u64, Vec<Sample>)>,
    pub small_store: Vec<Sample>,
    pub big_store: Vec<Sample>,
    pub small_store_events: u64,
    pub big_store_events: u64,
    pub append_clients: usize,
    pub peer_version: Option<String>,
    /// (clients, peer samples, service samples).
    pub peer: Vec<(usize, Vec<Sample>, Vec<Sample>)>,
    /// (process, peak RSS KiB).
    pub rss: Vec<(String, u64)>,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

enum Verdict {
    Met,
    Missed,
    Unknown,
}

impl Verdict {
    fn of(ok: Option<bool>) -> Self {
        match ok {
            Some(true) => Self::Met,
            Some(false) => Self::Missed,
            None => Self::Unknown,
        }
    }

    fn text(&self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "**missed**",
            Self::Unknown => "not measured",
        }
    }
}

fn ms(value: f64) -> String {
    if !value.is_finite() {
        return "–".to_owned();
    }
    if value < 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.1}")
    }
}

fn rate(value: f64) -> String {
    if !value.is_finite() {
        return "–".to_owned();
    }
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn ratio(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}×")
    } else {
        "–".to_owned()
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn duration(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds >= 60 {
        format!("{} min {:02} s", seconds / 60, seconds % 60)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

impl Results {
    fn pair(&self, clients: usize) -> Option<(Sample, Sample)> {
        let pair = self.pairs.iter().find(|p| p.clients == clients)?;
        Some((median_sample(&pair.b1)?, median_sample(&pair.service)?))
    }

    /// Highest median service throughput over the client counts.
    pub(crate) fn peak(&self) -> Option<f64> {
        self.pairs
            .iter()
            .filter_map(|p| median_sample(&p.service))
            .map(|s| s.throughput)
            .filter(|t| t.is_finite() && *t > 0.0)
            .max_by(f64::total_cmp)
    }

    fn targets(&self) -> Vec<(String, String, Verdict)> {
        let mut lines = Vec::new();
        for clients in [16, 64] {
            let (measured, ok) = match self.pair(clients) {
                Some((b1, service)) => {
                    let r = service.throughput / b1.throughput;
                    (
                        format!(
                            "{} ({} vs {} /s)",
                            ratio(r),
                            rate(service.throughput),
                            rate(b1.throughput)
                        ),
                        Some(r >= 1.0),
                    )
                }
                None => ("–".to_owned(), None),
            };
            lines.push((
                format!("command throughput ≥ 1.0× B1 at {clients} clients"),
                measured,
                Verdict::of(ok),
            ));
        }
        let (measured, ok) = match self.pair(1) {
            Some((b1, service)) => {
                let gap = service.p50_ms - b1.p50_ms;
                (
                    format!(
                        "{gap:+.2} ms ({} vs {} ms)",
                        ms(service.p50_ms),
                        ms(b1.p50_ms)
                    ),
                    Some(gap <= 1.0),
                )
            }
            None => ("–".to_owned(), None),
        };
        lines.push((
            "1-client p50 within 1 ms of B1's".to_owned(),
            measured,
            Verdict::of(ok),
        ));
        let spreads: Vec<(usize, f64)> = self
            .pairs
            .iter()
            .filter_map(|p| median_sample(&p.service).map(|s| (p.clients, s.p99_ms / s.p50_ms)))
            .collect();
        let (measured, ok) = if spreads.is_empty() {
            ("–".to_owned(), None)
        } else {
            (
                spreads
                    .iter()
                    .map(|(c, r)| format!("{c}: {}", ratio(*r)))
                    .collect::<Vec<_>>()
                    .join(", "),
                Some(spreads.iter().all(|(_, r)| *r <= 3.0)),
            )
        };
        lines.push((
            "service p99 ≤ 3× p50 (at each client count)".to_owned(),
            measured,
            Verdict::of(ok),
        ));
        let b2 = median(self.b2.iter().copied());
        let relay = median(self.relay.iter().map(Drain::rate));
        let (measured, ok) = if b2.is_finite() && relay.is_finite() {
            (
                format!("{} ({} vs {} /s)", ratio(relay / b2), rate(relay), rate(b2)),
                Some(relay / b2 >= 0.5),
            )
        } else {
            ("–".to_owned(), None)
        };
        lines.push(("relay ≥ 0.5× B2".to_owned(), measured, Verdict::of(ok)));
        let b3 = median(self.b3.iter().copied());
        let (measured, ok) = match self.rebuild {
            Some(rebuild) if b3.is_finite() => (
                format!(
                    "{} ({} vs {} /s)",
                    ratio(rebuild.rate() / b3),
                    rate(rebuild.rate()),
                    rate(b3)
                ),
                Some(rebuild.rate() / b3 >= 0.5),
            ),
            _ => ("–".to_owned(), None),
        };
        lines.push(("rebuild ≥ 0.5× B3".to_owned(), measured, Verdict::of(ok)));
        let (measured, ok) = match self.lag.iter().find(|l| (l.fraction - 0.5).abs() < 1e-6) {
            Some(lag) if !lag.lags_us.is_empty() => {
                let p99 = percentile(&lag.lags_us, 0.99) / 1000.0;
                (
                    format!(
                        "{} ms at {} cmd/s{}",
                        ms(p99),
                        rate(lag.offered),
                        if lag.timed_out > 0 {
                            format!(", {} probes timed out", lag.timed_out)
                        } else {
                            String::new()
                        }
                    ),
                    Some(p99 < 50.0 && lag.timed_out == 0),
                )
            }
            _ => ("–".to_owned(), None),
        };
        lines.push((
            "projection lag p99 < 50 ms at 50% of peak".to_owned(),
            measured,
            Verdict::of(ok),
        ));
        let p50_at = |events: u64| {
            self.long_streams
                .iter()
                .find(|(n, _)| *n == events)
                .and_then(|(_, samples)| median_sample(samples))
                .map(|s| s.p50_ms)
        };
        let shortest = self.long_streams.iter().map(|(n, _)| *n).min();
        let longest = self.long_streams.iter().map(|(n, _)| *n).max();
        let (label, measured, ok) = match (shortest, longest) {
            (Some(short), Some(long)) if short < long => match (p50_at(short), p50_at(long)) {
                (Some(a), Some(b)) => (
                    format!("credit latency at {long} events ≤ 1.1× at {short} events"),
                    format!("{} ({} vs {} ms p50)", ratio(b / a), ms(b), ms(a)),
                    Some(b / a <= 1.1),
                ),
                _ => (String::new(), "–".to_owned(), None),
            },
            _ => (String::new(), "–".to_owned(), None),
        };
        lines.push((
            if label.is_empty() {
                "credit latency at 100k events ≤ 1.1× at 10 events".to_owned()
            } else {
                label
            },
            measured,
            Verdict::of(ok),
        ));
        let peer: Vec<(usize, f64)> = self
            .peer
            .iter()
            .filter_map(|(clients, peer, service)| {
                Some((
                    *clients,
                    median_sample(service)?.throughput / median_sample(peer)?.throughput,
                ))
            })
            .collect();
        let (measured, ok) = if peer.is_empty() {
            ("–".to_owned(), None)
        } else {
            (
                peer.iter()
                    .map(|(c, r)| format!("{c} clients: {}", ratio(*r)))
                    .collect::<Vec<_>>()
                    .join(", "),
                Some(peer.iter().all(|(_, r)| *r >= 3.0)),
            )
        };
        lines.push((
            "≥ 3× the peer (throughput, at each client count)".to_owned(),
            measured,
            Verdict::of(ok),
        ));
        for (name, kib) in &self.rss {
            lines.push((
                format!("{name} under 50 MiB RSS at peak"),
                format!("{:.1} MiB", mib(*kib)),
                Verdict::of(Some(mib(*kib) < 50.0)),
            ));
        }
        lines
    }

    /// The Markdown report.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        let m = &self.machine;
        let _ = writeln!(out, "# Benchmarks\n");
        let _ = writeln!(
            out,
            "Written by the benchmark command (`bench/`), {} mode, started {}.\n",
            if self.quick {
                "`--quick` smoke"
            } else {
                "default"
            },
            self.started_at
        );
        let _ = writeln!(out, "- Command: `{}`", self.command_line);
        let _ = writeln!(
            out,
            "- Run time: {} (after the release build)",
            duration(self.took)
        );
        let _ = writeln!(out, "- Code: {}", m.commit);
        let _ = writeln!(
            out,
            "- Each measurement: {} warm-up, then {}; {} repeat(s) of every pair, alternating which side goes first; figures are medians over the repeats.",
            duration(self.warmup),
            duration(self.measure),
            self.repeats
        );
        if self.quick {
            let _ = writeln!(
                out,
                "- **Quick mode**: smaller data and one short repeat; a smoke test of the harness, not figures to quote."
            );
        }
        let _ = writeln!(out, "\n## Machine\n");
        let _ = writeln!(out, "| | |\n|---|---|");
        let _ = writeln!(out, "| CPU | {} |", m.cpu);
        let _ = writeln!(out, "| cores (nproc) | {} |", m.cores);
        let _ = writeln!(out, "| memory | {} |", m.memory);
        let _ = writeln!(out, "| kernel | {} |", m.kernel);
        let _ = writeln!(
            out,
            "| PostgreSQL | {} ({}) |",
            m.postgres, m.postgres_settings
        );
        let _ = writeln!(out, "| MariaDB | {} |", m.mariadb);
        let _ = writeln!(out, "| RabbitMQ | {} |", m.rabbitmq);
        let _ = writeln!(
            out,
            "| load average (1 min) at start / end | {} / {} |",
            m.load_start, m.load_end
        );
        let _ = writeln!(
            out,
            "\nAll servers and both services share the machine's cores with the load generators (and, on a shared development machine, with whatever else runs). Compare the ratios of pairs measured back to back, not absolute figures across runs."
        );

        let _ = writeln!(out, "\n## Targets\n");
        let _ = writeln!(out, "| target | measured | verdict |\n|---|---|---|");
        for (target, measured, verdict) in self.targets() {
            let _ = writeln!(out, "| {target} | {measured} | {} |", verdict.text());
        }

        self.render_pairs(out);
        self.render_broker(out);
        self.render_read_side(out);
        self.render_lag(out);
        self.render_growth(out);
        self.render_rss(out);
        self.render_peer(out);
        render_method(out, self);
        if !self.failures.is_empty() || !self.notes.is_empty() {
            let _ = writeln!(out, "\n## Failures and notes\n");
            for failure in &self.failures {
                let _ = writeln!(out, "- **failed:** {failure}");
            }
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
    }

    fn render_pairs(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n## B1 (raw Postgres) vs the command service: credits, random over {} accounts\n",
            self.accounts
        );
        let _ = writeln!(
            out,
            "| clients | B1 tx/s | B1 p50 ms | B1 p99 ms | service cmd/s | service p50 ms | service p99 ms | service p99/p50 | service / B1 | service CPU per command | errors |"
        );
        let _ = writeln!(
            out,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for pair in &self.pairs {
            let (Some(b1), Some(service)) = (median_sample(&pair.b1), median_sample(&pair.service))
            else {
                continue;
            };
            let cpu = median(pair.service_cpu_us.iter().copied());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                pair.clients,
                rate(b1.throughput),
                ms(b1.p50_ms),
                ms(b1.p99_ms),
                rate(service.throughput),
                ms(service.p50_ms),
                ms(service.p99_ms),
                ratio(service.p99_ms / service.p50_ms),
                ratio(service.throughput / b1.throughput),
                if cpu.is_finite() {
                    format!("{cpu:.0} µs")
                } else {
                    "–".to_owned()
                },
                b1.errors + service.errors,
            );
        }
        let notes: Vec<String> = self
            .pairs
            .iter()
            .flat_map(|p| {
                p.b1.iter()
                    .chain(p.service.iter())
                    .filter_map(|s| s.note.clone())
                    .map(move |n| format!("{} clients: {n}", p.clients))
            })
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(out);
            for note in notes.iter().take(8) {
                let _ = writeln!(out, "- {note}");
            }
        }
        let _ = writeln!(out, "\nEvery repeat:\n");
        let _ = writeln!(
            out,
            "| clients | side | cmd/s | p50 ms | p99 ms |\n|---:|---|---:|---:|---:|"
        );
        for pair in &self.pairs {
            for (side, samples) in [("B1", &pair.b1), ("service", &pair.service)] {
                for s in samples {
                    let _ = writeln!(
                        out,
                        "| {} | {side} | {} | {} | {} |",
                        pair.clients,
                        rate(s.throughput),
                        ms(s.p50_ms),
                        ms(s.p99_ms)
                    );
                }
            }
        }
    }

    fn render_broker(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n## B2 (raw RabbitMQ publishing) vs the outbox relay\n"
        );
        let _ = writeln!(
            out,
            "| measurement | events/s (each run) | median |\n|---|---|---:|"
        );
        let runs = |v: &[f64]| v.iter().map(|r| rate(*r)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            out,
            "| B2: persistent messages to a durable queue, confirms awaited per window of 500 | {} | {} |",
            runs(&self.b2),
            rate(median(self.b2.iter().copied()))
        );
        let relay: Vec<f64> = self.relay.iter().map(Drain::rate).collect();
        let _ = writeln!(
            out,
            "| relay: outbox → exchange → projection queue ({} events per run) | {} | {} |",
            self.relay
                .iter()
                .map(|d| d.events.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            runs(&relay),
            rate(median(relay.iter().copied()))
        );
    }

    fn render_read_side(&self, out: &mut String) {
        let _ = writeln!(out, "\n## B3 (raw MariaDB inserts) vs the projection\n");
        let _ = writeln!(out, "| measurement | events/s | vs B3 |\n|---|---:|---:|");
        let b3 = median(self.b3.iter().copied());
        let _ = writeln!(
            out,
            "| B3: 500 credits per transaction (multi-row insert of operations + upsert of accounts), runs: {} | {} | 1.00× |",
            self.b3
                .iter()
                .map(|r| rate(*r))
                .collect::<Vec<_>>()
                .join(", "),
            rate(b3)
        );
        if let Some(live) = self.live {
            let _ = writeln!(
                out,
                "| projection, live: a backlog of {} events in its queue, drained in {} | {} | {} |",
                live.events,
                duration(live.took),
                rate(live.rate()),
                ratio(live.rate() / b3)
            );
        }
        if let Some(rebuild) = self.rebuild {
            let _ = writeln!(
                out,
                "| `query-service rebuild` of {} events (whole process, {}) | {} | {} |",
                rebuild.events,
                duration(rebuild.took),
                rate(rebuild.rate()),
                ratio(rebuild.rate() / b3)
            );
        }
        if let Some(check) = &self.rebuild_check {
            let _ = writeln!(out, "\nRebuild check: {check}");
        }
    }

    fn render_lag(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n## Projection lag (command acknowledged → visible in the query service)\n"
        );
        let _ = writeln!(
            out,
            "| load | offered cmd/s | achieved cmd/s | ack p50 ms | ack p99 ms | lag p50 ms | lag p99 ms | probes | timed out |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for lag in &self.lag {
            let _ = writeln!(
                out,
                "| {:.0}% of peak | {} | {} | {} | {} | {} | {} | {} | {} |",
                lag.fraction * 100.0,
                rate(lag.offered),
                rate(lag.achieved),
                ms(lag.ack.p50_ms),
                ms(lag.ack.p99_ms),
                ms(percentile(&lag.lags_us, 0.5) / 1000.0),
                ms(percentile(&lag.lags_us, 0.99) / 1000.0),
                lag.lags_us.len(),
                lag.timed_out
            );
        }
    }

    fn render_growth(&self, out: &mut String) {
        let _ = writeln!(out, "\n## Cost growth\n");
        let _ = writeln!(
            out,
            "Credit latency, one client, always the same account:\n\n| events in the account's stream | p50 ms | p99 ms | cmd/s | p50 vs shortest |\n|---:|---:|---:|---:|---:|"
        );
        let base = self
            .long_streams
            .first()
            .and_then(|(_, s)| median_sample(s))
            .map(|s| s.p50_ms);
        for (events, samples) in &self.long_streams {
            if let Some(s) = median_sample(samples) {
                let _ = writeln!(
                    out,
                    "| {events} | {} | {} | {} | {} |",
                    ms(s.p50_ms),
                    ms(s.p99_ms),
                    rate(s.throughput),
                    base.map_or("–".to_owned(), |b| ratio(s.p50_ms / b))
                );
            }
        }
        let _ = writeln!(
            out,
            "\nAppend rate, {} clients, credits random over the same number of accounts:\n\n| events in the store | cmd/s | p50 ms | p99 ms | vs small store |\n|---:|---:|---:|---:|---:|",
            self.append_clients
        );
        let small = median_sample(&self.small_store);
        for (events, samples) in [
            (self.small_store_events, &self.small_store),
            (self.big_store_events, &self.big_store),
        ] {
            if let Some(s) = median_sample(samples) {
                let _ = writeln!(
                    out,
                    "| {events} | {} | {} | {} | {} |",
                    rate(s.throughput),
                    ms(s.p50_ms),
                    ms(s.p99_ms),
                    small
                        .as_ref()
                        .map_or("–".to_owned(), |b| ratio(s.throughput / b.throughput))
                );
            }
        }
    }

    fn render_rss(&self, out: &mut String) {
        let _ = writeln!(out, "\n## Peak RSS (VmHWM)\n");
        let _ = writeln!(out, "| process | peak RSS |\n|---|---:|");
        for (name, kib) in &self.rss {
            let _ = writeln!(out, "| {name} | {:.1} MiB |", mib(*kib));
        }
    }

    fn render_peer(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n## Peer: Python `eventsourcing` {}\n",
            self.peer_version.as_deref().unwrap_or("")
        );
        let _ = writeln!(
            out,
            "| clients | peer ops/s | peer p50 ms | peer p99 ms | service cmd/s | service p50 ms | service p99 ms | service / peer |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (clients, peer, service) in &self.peer {
            let (Some(p), Some(s)) = (median_sample(peer), median_sample(service)) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {clients} | {} | {} | {} | {} | {} | {} | {} |",
                rate(p.throughput),
                ms(p.p50_ms),
                ms(p.p99_ms),
                rate(s.throughput),
                ms(s.p50_ms),
                ms(s.p99_ms),
                ratio(s.throughput / p.throughput)
            );
        }
    }
}

fn render_method(out: &mut String, results: &Results) {
    let _ = writeln!(out, "\n## Method\n");
    let lines = [
        "Every process gets fresh databases, exchanges and queues named `bench_<run>_*` / `bench.<run>.*`, dropped at the end. The services run from their release binaries with their default settings (`RUST_LOG=info`, JSON logs to `target/bench/<run>/`). Accounts are seeded with SQL (valid streams: created with 1000.00 MAD, activated, credits of 1.00; each stream row carries the `Account` snapshot the command service would have stored).".to_owned(),
        "**B1** is pgbench (`-M prepared`, per-transaction log) running the store's own statements for one credit: read the stream row (with its snapshot), then in one transaction bump the stream version and snapshot, take the global append lock and notify the relay (`pg_advisory_xact_lock`, `pg_notify`), insert the event and its outbox row, commit. It runs against its own copy of the schema (the event store's migrations) with the same accounts. Its version check takes the row lock instead of comparing with the version read first, since pgbench cannot retry a conflict.".to_owned(),
        "**Service** figures are closed-loop clients, one keep-alive HTTP/1.1 connection each, posting `{\"amount\": \"1.00\"}` credits to random accounts; only 200 answers count. The outbox relay runs (it is part of the command service) and publishes every event into the projection's durable queue; the query service is stopped during these pairs so that its CPU use does not count against the command service on this 2-core machine, and the relay's backlog is drained before the next measurement.".to_owned(),
        "**B2** publishes persistent event-sized messages (the JSON of an `AccountCredited` event) to a durable topic exchange with a durable queue bound, awaiting the confirms of each window of 500 before the next. The **relay** figure is how fast the command service empties an outbox of freshly seeded events (committed in one transaction that notifies the relay) into its exchange, to which the projection's durable queue is bound (the query service is stopped meanwhile, so the queue only fills).".to_owned(),
        "**B3** writes the read model's rows (the query service's `accounts` and `operations` tables) for 500 credits per transaction. The **live** projection figure is how fast the query service, once started, works off the backlog the relay runs left in its queue (progress read from its `accounts` table: the sum of the projected versions); **rebuild** is the wall time of `query-service rebuild` over the whole event store (feed pages of 1000 from the command service), process start-up included.".to_owned(),
        "**Lag** runs an open loop (arrivals at a fixed rate, 64 connections, latency counted from when a request was due) at 50% and 90% (and, in the default run, 10%) of the highest service throughput found above, with the query service live; \"achieved\" is the commands answered per second from the first arrival to the last answer; about 40 acknowledged commands a second are probed with `GET /accounts/{id}?min_version=<acknowledged version>` on the query service, and the lag is the time from the acknowledgement to that answer.".to_owned(),
        format!(
            "**Cost growth**: two more command-service processes, one on a store with only its {} accounts, one on a store with {} events (the same accounts with longer streams, plus one account per stream length measured, all seeded with SQL, then `VACUUM ANALYZE`). The single-account latency runs one client against each long account in turn.",
            results.accounts, results.big_store_events
        ),
        "**Peak RSS** is VmHWM from `/proc/<pid>/status`, read just before each process is stopped (a one-shot command is sampled every 20 ms); a service started more than once reports its highest.".to_owned(),
        "**Peer**: the Python `eventsourcing` library with its Postgres persistence (installed by the benchmark into `target/bench/venv` with `pip install \"eventsourcing[postgres]\"`), an `Account` aggregate; each operation loads the aggregate (replaying its events) and saves one `Credited` event, on as many threads as clients, against its own database on the same server. It is paired with the small-store command service at the same client count.".to_owned(),
    ];
    for line in lines {
        let _ = writeln!(out, "- {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                rabbitmq: "3.10".to_owned(),
                load_start: "0.10".to_owned(),
                load_end: "2.00".to_owned(),
                commit: "`abc1234`".to_owned(),
            },
            accounts: 2_000,
            repeats: 2,
            warmup: Duration::from_secs(1),
            measure: Duration::from_millis(1500),
            pairs: vec![
                Pair {
                    clients: 1,
                    b1: vec![sample(1000.0, 0.9, 1.8), sample(1100.0, 0.8, 1.7)],
                    service: vec![sample(600.0, 1.1, 6.0), noted],
                    service_cpu_us: vec![400.0, 420.0],
                },
                Pair {
                    clients: 16,
                    b1: vec![sample(1500.0, 10.0, 19.0)],
                    service: vec![sample(2100.0, 6.9, 17.7)],
                    service_cpu_us: Vec::new(),
                },
                Pair {
                    clients: 64,
                    b1: vec![sample(1300.0, 46.0, 88.0)],
                    service: Vec::new(),
                    service_cpu_us: Vec::new(),
                },
            ],
            b2: vec![13_000.0, 14_000.0],
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
            b3: vec![50_000.0, 52_000.0, 51_000.0],
            live: Some(Drain {
                events: 20_000,
                took: Duration::from_secs(2),
            }),
            rebuild: Some(Drain {
                events: 30_000,
                took: Duration::from_millis(900),
            }),
            rebuild_check: Some("event store 2000 accounts (equal)".to_owned()),
            lag: vec![
                Lag {
                    fraction: 0.5,
                    offered: 1050.0,
                    achieved: 1049.5,
                    ack: sample(1049.5, 1.2, 3.4),
                    lags_us: vec![5_000, 9_000, 60_000],
                    timed_out: 1,
                },
                Lag {
                    fraction: 0.9,
                    offered: 1890.0,
                    achieved: 1800.0,
                    ack: sample(1800.0, 2.0, 8.0),
                    lags_us: Vec::new(),
                    timed_out: 0,
                },
            ],
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
            peer_version: Some("9.5.6 with psycopg 3.3.9".to_owned()),
            peer: vec![
                (
                    4,
                    vec![sample(500.0, 8.0, 20.0)],
                    vec![sample(1600.0, 2.4, 7.0)],
                ),
                (16, Vec::new(), vec![sample(2000.0, 8.0, 18.0)]),
            ],
            rss: vec![
                ("command-service".to_owned(), 36_000),
                ("query-service rebuild".to_owned(), 60_000),
            ],
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
        assert_renders_as(&fixture(), "report.md", include_str!("testdata/report.md"));
    }

    #[test]
    fn renders_an_empty_run_in_the_known_layout() {
        assert_renders_as(
            &Results::default(),
            "report-empty.md",
            include_str!("testdata/report-empty.md"),
        );
    }
}
