//! Time travel and live updates (issue #12), on a query service of its own that projects
//! long accounts seeded in the big store: `GET /accounts/{id}?as_of=` latency on histories of
//! every length the cost-growth phase seeded, then the memory of many idle open
//! `GET /accounts/{id}/updates` streams.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::StreamExt as _;
use hyper::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::context::{BIG, Ctx, GROWTH_QUERY};
use crate::load::{self, Conn, Target};
use crate::phases::growth;
use crate::procs::Service;
use crate::report::format::{MISSING, compared, mib, ms};
use crate::report::{Markdown, Part, Results, Target as Goal};
use crate::stats::{Sample, median_sample};
use crate::{mariadb, pg};

/// What the phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    /// (events in the account's stream, samples of `as_of` reads).
    pub(crate) as_of: Vec<(u64, Vec<Sample>)>,
    /// Streams opened (each received its first message).
    pub(crate) streams: usize,
    /// Resident memory of the query service before and with the streams open (KiB).
    pub(crate) rss_before_kib: Option<u64>,
    pub(crate) rss_open_kib: Option<u64>,
    /// How long opening them took.
    pub(crate) open_took: Option<Duration>,
    /// Whether the service answered `/health/ready` once they were closed.
    pub(crate) survived: Option<bool>,
    /// Peak RSS of the big store's command service once it served the long histories.
    pub(crate) fill_peak_kib: Option<u64>,
}

impl Figures {
    fn p50_at(&self, events: u64) -> Option<f64> {
        self.as_of
            .iter()
            .find(|(n, _)| *n == events)
            .and_then(|(_, samples)| median_sample(samples))
            .map(|s| s.p50_ms)
    }

    /// Extra RSS of the open streams, in MiB.
    fn stream_cost_mib(&self) -> Option<f64> {
        let (before, open) = (self.rss_before_kib?, self.rss_open_kib?);
        Some(mib(open.saturating_sub(before)))
    }
}

/// The number of the first account of the phase (one per history length), seeded in
/// the big store apart from the cost-growth phase's long accounts, which its credits
/// have made longer.
const HISTORY_FIRST: u64 = 20_000_000;

/// Concurrent connection attempts while opening the streams.
const OPENING: usize = 64;
/// Limit of the targets table for the open streams.
const STREAMS_LIMIT_MIB: f64 = 100.0;

/// Starts a query service on the big store, has it project the long accounts, measures
/// `as_of` reads on each, then opens and closes the idle streams. Stops the big store's
/// command service and that query service at the end, whatever happened.
pub(crate) async fn time_travel_and_streams(
    ctx: &mut Ctx,
    results: &mut Results,
) -> anyhow::Result<()> {
    // The peaks of the cost-growth phase stay the big store's figure; serving the long
    // histories whole (gap fills) is reported in this phase's section.
    let growth_peak = ctx.services.get_mut(BIG).map(Service::peak_kib);
    let outcome = Box::pin(measure(ctx, results)).await;
    for role in [GROWTH_QUERY, BIG] {
        if let Some(service) = ctx.services.remove(role) {
            let peak = service.stop().await;
            if role == BIG {
                results.live.fill_peak_kib = Some(peak).filter(|kib| *kib > 0);
            }
        }
    }
    if let Some(kib) = growth_peak {
        ctx.record_peak(BIG, kib);
    }
    outcome
}

async fn measure(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let lengths = ctx.plan.long_streams.clone();
    let big_pool = Ctx::pool(ctx.big_pool.as_ref())?;
    for (offset, &length) in (0u64..).zip(&lengths) {
        pg::seed_history(big_pool, HISTORY_FIRST + offset, length).await?;
    }
    start_query(ctx).await?;
    project_long_accounts(ctx, &lengths).await?;
    as_of_latency(ctx, results, &lengths).await?;
    // A fresh process: filling the long histories left the allocator's heap larger
    // than what the streams would then be measured against.
    if let Some(service) = ctx.services.remove(GROWTH_QUERY) {
        service.stop().await;
    }
    start_query(ctx).await?;
    open_streams(ctx, results, &lengths).await
}

/// Starts the query service on the big store (its read model is made on first start).
async fn start_query(ctx: &mut Ctx) -> anyhow::Result<()> {
    let database = ctx.name("growth_read");
    if !ctx.mysql_databases.contains(&database) {
        ctx.mysql_databases.push(database.clone());
    }
    let queue = ctx.growth_queue();
    let env = vec![
        (
            "DATABASE_URL",
            mariadb::database_url(&ctx.opts.mysql, &database),
        ),
        ("AMQP_URL", ctx.opts.amqp.clone()),
        ("AMQP_EXCHANGE", ctx.growth_exchange()),
        ("AMQP_QUEUE", queue.clone()),
        ("COMMAND_SERVICE_URL", ctx.service(BIG)?.base_url()),
        ("COMMAND_SERVICE_TOKEN", ctx.tokens.query_service.clone()),
        ("AUTH_JWT_SECRET", ctx.tokens.secret().to_owned()),
        // Only the long accounts: the big store's other accounts stay out of its read model.
        ("FEED_FOLLOW_ENABLED", "false".to_owned()),
        (
            "HTTP_MAX_CONNECTIONS",
            (ctx.plan.open_streams + 100).to_string(),
        ),
    ];
    let log = ctx.dir.join("query-service-big-store.log");
    let mut service =
        crate::procs::Service::start(GROWTH_QUERY, &ctx.binary("query-service"), &[], &env, &log)?;
    let ready = service.wait_ready(&ctx.http, Duration::from_secs(60)).await;
    ctx.services.insert(GROWTH_QUERY, service);
    ready?;
    ctx.broker()?
        .wait_for_consumers(&Ctx::partitions(&queue), Duration::from_secs(30))
        .await
}

/// One credit on each long account: the query service sees a version far ahead of what
/// it holds and fills the gap from the command service's stream of the account.
async fn project_long_accounts(ctx: &Ctx, lengths: &[u64]) -> anyhow::Result<()> {
    let mut command = Conn::open(&ctx.target(BIG)?).await?;
    let query = ctx.service(GROWTH_QUERY)?.base_url();
    for (offset, &length) in (0u64..).zip(lengths) {
        let id = pg::account_id(HISTORY_FIRST + offset);
        let (status, body) = command
            .request(
                Method::POST,
                &format!("/accounts/{id}/credit"),
                Some(Bytes::from_static(br#"{"amount": "1.00"}"#)),
            )
            .await?;
        if status != 200 {
            bail!(
                "credit on {id} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let version = serde_json::from_slice::<Value>(&body)?["version"]
            .as_u64()
            .context("the credit's answer has no version")?;
        let started = Instant::now();
        let url = format!("{query}/accounts/{id}?min_version={version}&wait_ms=10000");
        loop {
            let response = ctx.http.get(&url).send().await?;
            if response.status().is_success() {
                break;
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("the query service has not projected {version} versions of {id} after 300 s");
            }
        }
        progress!(
            "query service projected a stream of {length} events ({version} versions) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// One client reading each long account as of the middle of its history, in turn.
async fn as_of_latency(ctx: &Ctx, results: &mut Results, lengths: &[u64]) -> anyhow::Result<()> {
    let big_pool = Ctx::pool(ctx.big_pool.as_ref())?;
    let target = Target::new(ctx.service(GROWTH_QUERY)?.addr(), &ctx.tokens.admin)?;
    let mut paths = Vec::with_capacity(lengths.len());
    for (offset, &length) in (0u64..).zip(lengths) {
        let n = HISTORY_FIRST + offset;
        let middle = (length / 2).max(1);
        let instant = pg::occurred_at(big_pool, n, middle).await?;
        let path = format!("/accounts/{}?as_of={instant}", pg::account_id(n));
        let (status, body) = Conn::open(&target)
            .await?
            .request(Method::GET, &path, None)
            .await?;
        let version = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|answer| answer["version"].as_u64());
        if status != 200 || version != Some(middle) {
            bail!(
                "{path} answered {status} {}, expected version {middle}",
                String::from_utf8_lossy(&body)
            );
        }
        paths.push(path);
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); lengths.len()];
    let timing = ctx.plan.growth_timing;
    for repeat in 0..ctx.plan.repeats {
        for step in 0..lengths.len() {
            let which = (step + repeat) % lengths.len();
            let sample =
                load::one_client_get(&target, &paths[which], timing.warmup, timing.measure).await?;
            progress!(
                "as_of on a stream of {} events: {:.0} req/s p50 {:.2} ms p99 {:.2} ms, {} errors",
                lengths[which],
                sample.throughput,
                sample.p50_ms,
                sample.p99_ms,
                sample.errors
            );
            samples[which].push(sample);
        }
    }
    results.live.as_of = lengths.iter().copied().zip(samples).collect();
    Ok(())
}

/// Opens the streams (spread over the long accounts), each until its first message,
/// reads the service's RSS, closes them and checks the service is still ready.
async fn open_streams(ctx: &mut Ctx, results: &mut Results, lengths: &[u64]) -> anyhow::Result<()> {
    let count = ctx.plan.open_streams;
    let service = ctx.service(GROWTH_QUERY)?;
    let addr = service.addr();
    tokio::time::sleep(Duration::from_secs(1)).await;
    results.live.rss_before_kib = service.rss_kib();
    let requests: Vec<Bytes> = (0u64..)
        .zip(lengths)
        .map(|(offset, _)| {
            Bytes::from(format!(
                "GET /accounts/{}/updates HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
                pg::account_id(HISTORY_FIRST + offset),
                ctx.tokens.admin
            ))
        })
        .collect();
    let started = Instant::now();
    let opened: Vec<anyhow::Result<TcpStream>> = futures::stream::iter(0..count)
        .map(|i| open_stream(addr, requests[i % requests.len()].clone()))
        .buffer_unordered(OPENING)
        .collect()
        .await;
    let took = started.elapsed();
    let mut streams = Vec::with_capacity(count);
    let mut first_error = None;
    for stream in opened {
        match stream {
            Ok(stream) => streams.push(stream),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    progress!(
        "opened {} of {count} update streams in {:.1} s",
        streams.len(),
        took.as_secs_f64()
    );
    if let Some(error) = first_error {
        drop(streams);
        return Err(error.context(format!("opening {count} update streams")));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let figures = &mut results.live;
    figures.streams = streams.len();
    figures.open_took = Some(took);
    figures.rss_open_kib = ctx.service(GROWTH_QUERY)?.rss_kib();
    progress!(
        "query service RSS {:.1} MiB before, {:.1} MiB with {count} streams open",
        mib(figures.rss_before_kib.unwrap_or(0)),
        mib(figures.rss_open_kib.unwrap_or(0))
    );
    drop(streams);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let http = ctx.http.clone();
    let service = ctx
        .services
        .get_mut(GROWTH_QUERY)
        .context("query service on the big store not running")?;
    let survived = service.is_running()
        && service
            .wait_ready(&http, Duration::from_secs(10))
            .await
            .is_ok();
    results.live.survived = Some(survived);
    if !survived {
        bail!("the query service is not ready after the streams closed");
    }
    Ok(())
}

/// One update stream, read until the end of its first message.
async fn open_stream(addr: std::net::SocketAddr, request: Bytes) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.write_all(&request).await?;
    let mut received = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    let deadline = Duration::from_secs(30);
    loop {
        let read = tokio::time::timeout(deadline, stream.read(&mut buffer))
            .await
            .context("no first message within 30 s")??;
        if read == 0 {
            bail!(
                "the stream closed before its first message: {}",
                String::from_utf8_lossy(&received)
            );
        }
        received.extend_from_slice(&buffer[..read]);
        if let Some(end) = find(&received, b"\r\n\r\n") {
            if !received.starts_with(b"HTTP/1.1 200") {
                bail!(
                    "the stream was refused: {}",
                    String::from_utf8_lossy(&received[..end])
                );
            }
            if find(&received[end + 4..], b"\n\n").is_some() {
                return Ok(stream);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Goal> {
    let figures = &results.live;
    let shortest = figures.as_of.iter().map(|(n, _)| *n).min();
    let longest = figures.as_of.iter().map(|(n, _)| *n).max();
    let as_of = match (shortest, longest) {
        (Some(short), Some(long)) if short < long => {
            match (figures.p50_at(short), figures.p50_at(long)) {
                (Some(a), Some(b)) => Goal::new(
                    format!("as_of latency at {long} events ≤ 1.1× at {short} events"),
                    Some((compared(b, a, ms, "ms p50"), b / a <= 1.1)),
                ),
                _ => Goal::new("as_of latency at 100k events ≤ 1.1× at 10 events", None),
            }
        }
        _ => Goal::new("as_of latency at 100k events ≤ 1.1× at 10 events", None),
    };
    let streams = match figures.stream_cost_mib() {
        Some(cost) if figures.streams > 0 => Goal::new(
            format!(
                "{} idle open update streams cost < 100 MiB more RSS",
                figures.streams
            ),
            Some((format!("{cost:.1} MiB"), cost < STREAMS_LIMIT_MIB)),
        ),
        _ => Goal::new(
            "10000 idle open update streams cost < 100 MiB more RSS",
            None,
        ),
    };
    vec![as_of, streams]
}

fn section(results: &Results, out: &mut Markdown) {
    let figures = &results.live;
    out.heading("Time travel and live updates");
    out.line("`GET /accounts/{id}?as_of=<the instant of the middle version>`, one client, always the same account:\n");
    growth::latency_by_length(out, &figures.as_of, "req/s");
    out.paragraph(&format!(
        "Peak RSS of the big store's command service once it served these histories to the gap fills: {}.",
        figures
            .fill_peak_kib
            .map_or(MISSING.to_owned(), |k| format!("{:.1} MiB", mib(k)))
    ));
    let kib =
        |value: Option<u64>| value.map_or(MISSING.to_owned(), |k| format!("{:.1} MiB", mib(k)));
    out.paragraph("Idle open `GET /accounts/{id}/updates` streams (query-service RSS, VmRSS):\n");
    out.table(
        &[
            "open streams",
            "RSS before",
            "RSS with them open",
            "more RSS",
            "opened in",
            "ready after closing",
        ],
        "rrrrrl",
        [[
            figures.streams.to_string(),
            kib(figures.rss_before_kib),
            kib(figures.rss_open_kib),
            figures
                .stream_cost_mib()
                .map_or(MISSING.to_owned(), |cost| format!("{cost:.1} MiB")),
            figures.open_took.map_or(MISSING.to_owned(), |took| {
                format!("{:.1} s", took.as_secs_f64())
            }),
            figures.survived.map_or(MISSING.to_owned(), |ok| {
                if ok { "yes" } else { "**no**" }.to_owned()
            }),
        ]],
    );
}

fn method(_: &Results) -> Vec<String> {
    vec![format!(
        "**Time travel and live updates**: after the cost-growth phase, one more query-service process on a read model of its own, fed by the big store's command service (its exchange, feed follower off): one account per stream length is seeded in the big store (events 1 ms apart) and credited once through the command service, which makes the query service fill the account's whole history from it (awaited with a `min_version` read). The `as_of` runs then read each of these accounts in turn as of the instant of its middle version (checked once to answer that version), one client, closed loop. Then the table's `GET /accounts/{{id}}/updates` streams (10000; 1000 with `--quick`), spread over these accounts, are opened ({OPENING} at a time, raw TCP: the request written, the answer read until the end of its first message, the socket kept); on a freshly restarted query service, the RSS (VmRSS) is read 1 s before and 1 s after, and `/health/ready` once they are closed."
    )]
}
