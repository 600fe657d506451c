//! How figures are written in the report.

use std::time::Duration;

use crate::stats::Sample;

/// Shown where a figure could not be measured.
pub(crate) const MISSING: &str = "–";

/// Milliseconds: two decimals under 10, one above.
pub(crate) fn ms(value: f64) -> String {
    if !value.is_finite() {
        return MISSING.to_owned();
    }
    if value < 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.1}")
    }
}

/// A rate per second: whole numbers from 100 up.
pub(crate) fn rate(value: f64) -> String {
    if !value.is_finite() {
        return MISSING.to_owned();
    }
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// A ratio such as `1.40×`.
pub(crate) fn ratio(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}×")
    } else {
        MISSING.to_owned()
    }
}

/// `value` over `base` with both figures: `1.40× (2100 vs 1500 /s)`.
pub(crate) fn compared(value: f64, base: f64, figure: fn(f64) -> String, unit: &str) -> String {
    format!(
        "{} ({} vs {} {unit})",
        ratio(value / base),
        figure(value),
        figure(base)
    )
}

/// Mebibytes from kibibytes.
pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `1.5 s`, or `2 min 05 s` from a minute up.
pub(crate) fn duration(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds >= 60 {
        format!("{} min {:02} s", seconds / 60, seconds % 60)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// A sample's throughput, p50 and p99, the columns most tables show.
pub(crate) fn rate_p50_p99(sample: &Sample) -> [String; 3] {
    [
        rate(sample.throughput),
        ms(sample.p50_ms),
        ms(sample.p99_ms),
    ]
}

/// Figures of a list, comma-separated.
pub(crate) fn list<T>(values: impl IntoIterator<Item = T>, figure: impl Fn(T) -> String) -> String {
    values
        .into_iter()
        .map(figure)
        .collect::<Vec<_>>()
        .join(", ")
}
