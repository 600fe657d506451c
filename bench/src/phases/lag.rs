//! Projection lag: an open loop of credits at fractions of the peak service throughput,
//! with the query service live; probes measure acknowledged → visible.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::context::{COMMAND, Ctx, QUERY};
use crate::load::{self, Accounts, Probe};
use crate::pg;
use crate::report::format::{ms, rate};
use crate::report::{Markdown, Part, Results, Target};
use crate::stats::{Sample, percentile, to_usize};

/// One open-loop lag measurement.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lag {
    /// Of the peak service throughput.
    pub(crate) fraction: f64,
    /// Commands per second.
    pub(crate) offered: f64,
    /// Commands answered per second, first arrival to last answer.
    pub(crate) achieved: f64,
    pub(crate) ack: Sample,
    /// Acknowledged → visible, µs, sorted.
    pub(crate) lags_us: Vec<u64>,
    pub(crate) timed_out: usize,
}

impl Lag {
    /// A lag quantile in milliseconds.
    fn lag_ms(&self, q: f64) -> f64 {
        percentile(&self.lags_us, q) / 1000.0
    }
}

/// What the phase measured: one run per fraction of the peak.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub(crate) runs: Vec<Lag>,
}

/// Open-loop credits at fractions of the peak with the query service live; probes
/// measure acknowledged → visible.
pub(crate) async fn projection_lag(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let peak = results
        .b1
        .peak()
        .context("no service throughput measured, so no peak to take fractions of")?;
    ctx.spawn_query()?;
    ctx.wait_query().await?;
    let accounts = Accounts::seeded(1, ctx.plan.accounts())?;
    let query_base = ctx.service(QUERY)?.base_url();
    for &fraction in &ctx.plan.lag_fractions.clone() {
        let rate = (peak * fraction).max(1.0);
        let probe = Probe {
            query_base: query_base.clone(),
            client: ctx.http.clone(),
            every: to_usize(rate / 40.0).max(1),
            timeout: Duration::from_secs(15),
        };
        let target = ctx.target(COMMAND)?;
        let outcome =
            load::open_loop(&target, &accounts, rate, ctx.plan.lag_run, 64, Some(probe)).await?;
        let lag = Lag {
            fraction,
            offered: rate,
            achieved: outcome.achieved_rate,
            ack: outcome.ack,
            lags_us: outcome.lags_us,
            timed_out: outcome.probes_timed_out,
        };
        progress!(
            "lag at {:.0}% of peak ({rate:.0} cmd/s): p50 {:.1} ms p99 {:.1} ms over {} probes, {} timed out",
            fraction * 100.0,
            lag.lag_ms(0.5),
            lag.lag_ms(0.99),
            lag.lags_us.len(),
            lag.timed_out
        );
        results.lag.runs.push(lag);
        let pool = Ctx::pool(ctx.main_pool.as_ref())?;
        pg::wait_outbox_empty(pool, Instant::now(), Duration::from_secs(180)).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ctx.stop(QUERY).await;
    Ok(())
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Target> {
    let at_half = results
        .lag
        .runs
        .iter()
        .find(|l| (l.fraction - 0.5).abs() < 1e-6)
        .filter(|lag| !lag.lags_us.is_empty());
    let measured = at_half.map(|lag| {
        let p99 = lag.lag_ms(0.99);
        let timed_out = if lag.timed_out > 0 {
            format!(", {} probes timed out", lag.timed_out)
        } else {
            String::new()
        };
        (
            format!("{} ms at {} cmd/s{timed_out}", ms(p99), rate(lag.offered)),
            p99 < 50.0 && lag.timed_out == 0,
        )
    });
    vec![Target::new(
        "projection lag p99 < 50 ms at 50% of peak",
        measured,
    )]
}

fn section(results: &Results, out: &mut Markdown) {
    out.heading("Projection lag (command acknowledged → visible in the query service)");
    let rows = results.lag.runs.iter().map(|lag| {
        [
            format!("{:.0}% of peak", lag.fraction * 100.0),
            rate(lag.offered),
            rate(lag.achieved),
            ms(lag.ack.p50_ms),
            ms(lag.ack.p99_ms),
            ms(lag.lag_ms(0.5)),
            ms(lag.lag_ms(0.99)),
            lag.lags_us.len().to_string(),
            lag.timed_out.to_string(),
        ]
    });
    out.table(
        &[
            "load",
            "offered cmd/s",
            "achieved cmd/s",
            "ack p50 ms",
            "ack p99 ms",
            "lag p50 ms",
            "lag p99 ms",
            "probes",
            "timed out",
        ],
        "lrrrrrrrr",
        rows,
    );
}

fn method(_: &Results) -> Vec<String> {
    vec!["**Lag** runs an open loop (arrivals at a fixed rate, 64 connections, latency counted from when a request was due) at 50% and 90% (and, in the default run, 10%) of the highest service throughput found above, with the query service live; \"achieved\" is the commands answered per second from the first arrival to the last answer; about 40 acknowledged commands a second are probed with `GET /accounts/{id}?min_version=<acknowledged version>` on the query service, and the lag is the time from the acknowledgement to that answer.".to_owned()]
}
