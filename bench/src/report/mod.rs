//! The figures of one run, and `docs/benchmarks.md` made from them.
//!
//! Each phase keeps its figures, its rows of the targets table, its section and its
//! paragraph of the method together (a [`Part`], in `phases/`); this module writes the
//! header, the machine and the targets table, then the parts in the order of [`SECTIONS`].

pub(crate) mod format;
pub(crate) mod markdown;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::machine::Machine;
use crate::phases::{
    b1, b2, b3, cqrs, growth, lag, live, peer, replicas, rss, token_check, transfers,
};
pub(crate) use format::MISSING;
pub(crate) use markdown::Markdown;

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Results {
    pub(crate) quick: bool,
    pub(crate) command_line: String,
    pub(crate) started_at: String,
    pub(crate) took: Duration,
    pub(crate) machine: Machine,
    pub(crate) accounts: u64,
    pub(crate) repeats: usize,
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
    pub(crate) b1: b1::Figures,
    pub(crate) cqrs: cqrs::Figures,
    pub(crate) tokens: token_check::Figures,
    pub(crate) b2: b2::Figures,
    pub(crate) b3: b3::Figures,
    pub(crate) lag: lag::Figures,
    pub(crate) growth: growth::Figures,
    pub(crate) live: live::Figures,
    pub(crate) transfers: transfers::Figures,
    pub(crate) replicas: replicas::Figures,
    pub(crate) rss: rss::Figures,
    pub(crate) peer: peer::Figures,
    pub(crate) failures: Vec<String>,
    pub(crate) notes: Vec<String>,
}

/// What one phase adds to the report.
#[derive(Debug)]
pub(crate) struct Part {
    /// Its rows of the targets table.
    targets: fn(&Results) -> Vec<Target>,
    /// Its section, after the targets table.
    section: fn(&Results, &mut Markdown),
    /// Its bullets of the method section.
    method: fn(&Results) -> Vec<String>,
}

impl Part {
    /// A phase's targets, section and method.
    pub(crate) const fn new(
        targets: fn(&Results) -> Vec<Target>,
        section: fn(&Results, &mut Markdown),
        method: fn(&Results) -> Vec<String>,
    ) -> Self {
        Self {
            targets,
            section,
            method,
        }
    }
}

/// The phases' sections and method bullets, in the report's order.
const SECTIONS: [&Part; 12] = [
    &b1::REPORT,
    &cqrs::REPORT,
    &token_check::REPORT,
    &b2::REPORT,
    &b3::REPORT,
    &lag::REPORT,
    &growth::REPORT,
    &live::REPORT,
    &transfers::REPORT,
    &replicas::REPORT,
    &rss::REPORT,
    &peer::REPORT,
];

/// The phases' rows of the targets table, in order (the memory limits last).
const TARGETS: [&Part; 11] = [
    &b1::REPORT,
    &cqrs::REPORT,
    &token_check::REPORT,
    &b2::REPORT,
    &b3::REPORT,
    &lag::REPORT,
    &growth::REPORT,
    &live::REPORT,
    &transfers::REPORT,
    &peer::REPORT,
    &rss::REPORT,
];

/// How the services are set up, before each phase's method.
const GENERAL_METHOD: &str = "Every process gets fresh databases, exchanges and queues named `bench_<run>_*` / `bench.<run>.*`, dropped at the end. The services run from their release binaries with their default settings (`RUST_LOG=info`, JSON logs to `target/bench/<run>/`) and an HS256 secret of the run's own (`AUTH_JWT_SECRET`); every request carries a bearer token signed with it (an operator's: the seeded accounts have no owner), and the query service reads the feed with an `events:read` token. Accounts are seeded with SQL (valid streams: created with 1000.00 MAD, activated, credits of 1.00; each stream row carries the `Account` snapshot the command service would have stored).";

/// Whether a target was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Met,
    Missed,
    NotMeasured,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "**missed**",
            Self::NotMeasured => "not measured",
        }
    }
}

/// One row of the targets table.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    label: String,
    measured: String,
    verdict: Verdict,
}

impl Target {
    /// A target with what was measured against it and whether that meets it; `None`
    /// when nothing was measured.
    pub(crate) fn new(label: impl Into<String>, measured: Option<(String, bool)>) -> Self {
        let (measured, verdict) = match measured {
            Some((figure, true)) => (figure, Verdict::Met),
            Some((figure, false)) => (figure, Verdict::Missed),
            None => (MISSING.to_owned(), Verdict::NotMeasured),
        };
        Self {
            label: label.into(),
            measured,
            verdict,
        }
    }

    /// A target every one of some named ratios must meet (`name: 1.40×, ...`).
    pub(crate) fn at_each(
        label: &str,
        ratios: &[(String, f64)],
        meets: impl Fn(f64) -> bool,
    ) -> Self {
        let measured = (!ratios.is_empty()).then(|| {
            (
                format::list(ratios, |(name, value)| {
                    format!("{name}: {}", format::ratio(*value))
                }),
                ratios.iter().all(|(_, value)| meets(*value)),
            )
        });
        Self::new(label, measured)
    }
}

impl Results {
    /// The Markdown report.
    pub(crate) fn render(&self) -> String {
        let mut out = Markdown::default();
        self.render_header(&mut out);
        self.render_machine(&mut out);
        out.heading("Targets");
        let targets = TARGETS.iter().flat_map(|part| (part.targets)(self));
        out.table(
            &["target", "measured", "verdict"],
            "lll",
            targets.map(|t| [t.label, t.measured, t.verdict.text().to_owned()]),
        );
        for part in SECTIONS {
            (part.section)(self, &mut out);
        }
        out.heading("Method");
        out.bullets(
            std::iter::once(GENERAL_METHOD.to_owned())
                .chain(SECTIONS.iter().flat_map(|part| (part.method)(self))),
        );
        if !self.failures.is_empty() || !self.notes.is_empty() {
            out.heading("Failures and notes");
            out.bullets(self.failures.iter().map(|f| format!("**failed:** {f}")));
            out.bullets(&self.notes);
        }
        out.into_text()
    }

    fn render_header(&self, out: &mut Markdown) {
        out.line("# Benchmarks\n");
        out.line(&format!(
            "Written by the benchmark command (`bench/`), {} mode, started {}.\n",
            if self.quick {
                "`--quick` smoke"
            } else {
                "default"
            },
            self.started_at
        ));
        out.bullets([
            format!("Command: `{}`", self.command_line),
            format!(
                "Run time: {} (after the release build)",
                format::duration(self.took)
            ),
            format!("Code: {}", self.machine.commit),
            format!(
                "Closed-loop measurements (B1, B1s, the service, the peers, cost growth): {} warm-up, then {} measured; {} turn(s) of every pair, the side going first alternating; figures are medians over the turns. B2, B3, the relay, rebuild and lag say below what each run measured.",
                format::duration(self.warmup),
                format::duration(self.measure),
                self.repeats
            ),
        ]);
        if self.quick {
            out.bullets(["**Quick mode**: smaller data and one short repeat; a smoke test of the harness, not figures to quote."]);
        }
    }

    fn render_machine(&self, out: &mut Markdown) {
        let m = &self.machine;
        out.heading("Machine");
        let rows = [
            ("CPU", m.cpu.clone()),
            ("cores (nproc)", m.cores.to_string()),
            ("memory", m.memory.clone()),
            ("kernel", m.kernel.clone()),
            (
                "PostgreSQL",
                format!("{} ({})", m.postgres, m.postgres_settings),
            ),
            (
                "MariaDB",
                match m.mariadb_log_flush {
                    Some(server) => format!(
                        "{} (innodb_flush_log_at_trx_commit {} during the run, as the deployments set it for the read model; the server's own: {server})",
                        m.mariadb,
                        crate::mariadb::DEPLOYED_LOG_FLUSH
                    ),
                    None => m.mariadb.clone(),
                },
            ),
            ("RabbitMQ", m.rabbitmq.clone()),
            (
                "load average (1 min) at start / end",
                format!("{} / {}", m.load_start, m.load_end),
            ),
        ];
        out.table(
            &["", ""],
            "ll",
            rows.map(|(what, value)| [what.to_owned(), value]),
        );
        out.paragraph("All servers and both services share the machine's cores with the load generators (and, on a shared development machine, with whatever else runs). Compare the ratios of pairs measured back to back, not absolute figures across runs.");
    }
}
