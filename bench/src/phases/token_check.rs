//! The cost of checking a bearer token: `Authenticator::verify` (HS256 signature and
//! claims, exactly what every request to the services runs) in a loop on one core,
//! related to the command service's CPU per credit measured by B1 in the same run.
//!
//! No build of the services without token checking exists to compare with, so the cost
//! is measured where it is spent and set against the whole command's.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use service_kit::auth::Authenticator;

use crate::context::Ctx;
use crate::report::format::{MISSING, rate};
use crate::report::{Markdown, Part, Results, Target};
use crate::stats::median;

/// The client count at which the share is computed (the service's usual peak).
const CLIENTS: usize = 16;
/// Highest share of a credit's CPU that token checking may take.
const LIMIT_PERCENT: f64 = 3.0;
/// Verifications between two looks at the clock.
const BATCH: u32 = 256;

/// What the phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    /// µs per verification, one per repeat.
    pub(crate) verify_us: Vec<f64>,
}

impl Figures {
    fn verify_us(&self) -> Option<f64> {
        let us = median(self.verify_us.iter().copied());
        (us.is_finite() && us > 0.0).then_some(us)
    }
}

/// Verifies the load's own token for the measuring time, once per repeat.
pub(crate) async fn token_check(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let authenticator =
        Authenticator::new(&ctx.tokens.settings()).context("the run's auth settings")?;
    let token = ctx.tokens.admin.clone();
    if let Err(error) = authenticator.verify(&token) {
        bail!("the load's token does not verify: {error}");
    }
    for _ in 0..ctx.plan.repeats {
        let authenticator = authenticator.clone();
        let token = token.clone();
        let measure = ctx.plan.timing.measure;
        let us = tokio::task::spawn_blocking(move || verify_for(&authenticator, &token, measure))
            .await
            .context("the verification loop panicked")??;
        progress!(
            "token check: {us:.2} µs per verification ({:.0}/s on one core)",
            1e6 / us
        );
        results.tokens.verify_us.push(us);
    }
    Ok(())
}

/// µs per verification over `measure`.
fn verify_for(
    authenticator: &Authenticator,
    token: &str,
    measure: Duration,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut verified = 0_u64;
    while started.elapsed() < measure {
        for _ in 0..BATCH {
            if std::hint::black_box(authenticator.verify(std::hint::black_box(token))).is_err() {
                bail!("a verification failed");
            }
        }
        verified += u64::from(BATCH);
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / verified as f64)
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

/// Token checking's share of the command service's CPU per credit at [`CLIENTS`].
fn share_percent(results: &Results) -> Option<(f64, f64)> {
    let verify_us = results.tokens.verify_us()?;
    let cpu_us = results.b1.cpu_per_command(CLIENTS)?;
    Some((verify_us, 100.0 * verify_us / cpu_us))
}

fn targets(results: &Results) -> Vec<Target> {
    vec![Target::new(
        format!("token checking ≤ {LIMIT_PERCENT:.0}% of a credit's CPU at {CLIENTS} clients"),
        share_percent(results).map(|(verify_us, share)| {
            (
                format!("{share:.2}% ({verify_us:.1} µs per token)"),
                share <= LIMIT_PERCENT,
            )
        }),
    )]
}

fn section(results: &Results, out: &mut Markdown) {
    out.heading("Token checking");
    let verify_us = results.tokens.verify_us();
    let cpu_us = results.b1.cpu_per_command(CLIENTS);
    let throughput = results.b1.throughput(CLIENTS);
    let figure = |value: Option<f64>, show: fn(f64) -> String| {
        value.map_or_else(|| MISSING.to_owned(), show)
    };
    let rows = [
        (
            "µs per verification (HS256, one core)".to_owned(),
            figure(verify_us, |us| format!("{us:.2}")),
        ),
        (
            "verifications per second (one core)".to_owned(),
            figure(verify_us, |us| rate(1e6 / us)),
        ),
        (
            format!("command service CPU per credit at {CLIENTS} clients (B1), µs"),
            figure(cpu_us, |us| format!("{us:.0}")),
        ),
        (
            "token checking's share of a credit's CPU".to_owned(),
            figure(share_percent(results).map(|(_, share)| share), |share| {
                format!("{share:.2}%")
            }),
        ),
        (
            format!("one core's time spent checking tokens at the {CLIENTS}-client rate"),
            figure(
                verify_us
                    .zip(throughput)
                    .map(|(us, per_second)| us * per_second / 1e4),
                |percent| format!("{percent:.2}%"),
            ),
        ),
    ];
    out.table(&["", ""], "lr", rows.map(|(what, value)| [what, value]));
}

fn method(_: &Results) -> Vec<String> {
    vec![format!(
        "**Token checking** is `service_kit::auth::Authenticator::verify` (what the services run on every request: size check, header, HS256 signature, `exp`/`nbf` with leeway, claims) on the load's own token, in a loop on one blocking thread for the measuring time, once per repeat. Every request of every phase carries a bearer token, so the services' figures above include its cost; since no build without checking exists, the cost is set against the command service's CPU per credit at {CLIENTS} clients (B1, same run): that share bounds what checking can take from throughput."
    )]
}
