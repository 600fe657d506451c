//! Peak RSS: not a phase of its own but a figure of every service process, read (VmHWM)
//! just before each one is stopped; a role started more than once keeps its highest.

use std::collections::BTreeMap;

use crate::report::format::mib;
use crate::report::{Markdown, Part, Results, Target};

/// Peaks recorded so far, by process role (KiB).
#[derive(Debug, Clone, Default)]
pub(crate) struct Peaks(BTreeMap<&'static str, u64>);

impl Peaks {
    /// Records a peak of `kib` for `role` (0 means unknown, and is ignored).
    pub(crate) fn record(&mut self, role: &'static str, kib: u64) {
        if kib > 0 {
            let entry = self.0.entry(role).or_default();
            *entry = (*entry).max(kib);
        }
    }

    /// The figures, by role in alphabetical order.
    pub(crate) fn figures(&self) -> Figures {
        Figures {
            peaks: self
                .0
                .iter()
                .map(|(role, kib)| ((*role).to_owned(), *kib))
                .collect(),
        }
    }
}

/// What the run measured: (process, peak RSS KiB).
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub(crate) peaks: Vec<(String, u64)>,
}

/// The limit of the targets table.
const LIMIT_MIB: f64 = 50.0;

/// The figure's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Target> {
    results
        .rss
        .peaks
        .iter()
        .map(|(name, kib)| {
            Target::new(
                format!("{name} under 50 MiB RSS at peak"),
                Some((format!("{:.1} MiB", mib(*kib)), mib(*kib) < LIMIT_MIB)),
            )
        })
        .collect()
}

fn section(results: &Results, out: &mut Markdown) {
    out.heading("Peak RSS (VmHWM)");
    let rows = results
        .rss
        .peaks
        .iter()
        .map(|(name, kib)| [name.clone(), format!("{:.1} MiB", mib(*kib))]);
    out.table(&["process", "peak RSS"], "lr", rows);
}

fn method(_: &Results) -> Vec<String> {
    vec!["**Peak RSS** is VmHWM from `/proc/<pid>/status`, read just before each process is stopped (a one-shot command is sampled every 20 ms); a service started more than once reports its highest.".to_owned()]
}
