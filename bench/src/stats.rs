//! Latency samples, percentiles and medians.

use std::time::Duration;

/// How long a measurement warms up, then measures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub warmup: Duration,
    pub measure: Duration,
}

/// One measurement of a closed- or open-loop load: what completed inside the window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    /// Completed operations per second inside the measurement window.
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub count: usize,
    pub errors: usize,
    /// Optional note (aborted clients, conflicts, ...).
    pub note: Option<String>,
}

impl Sample {
    /// Builds a sample from latencies (µs) completed within `window`.
    pub(crate) fn from_latencies(
        mut latencies_us: Vec<u64>,
        window: Duration,
        errors: usize,
    ) -> Self {
        latencies_us.sort_unstable();
        let seconds = window.as_secs_f64().max(1e-9);
        Self {
            throughput: latencies_us.len() as f64 / seconds,
            p50_ms: percentile(&latencies_us, 0.50) / 1000.0,
            p99_ms: percentile(&latencies_us, 0.99) / 1000.0,
            count: latencies_us.len(),
            errors,
            note: None,
        }
    }
}

/// A rate measured by draining a known amount of work.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Drain {
    pub(crate) events: u64,
    pub(crate) took: Duration,
}

impl Drain {
    /// Events per second.
    pub(crate) fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

/// The `q` quantile (0..=1) of sorted values, nearest-rank; 0 when empty.
pub(crate) fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0);
    let index = to_usize(rank).saturating_sub(1).min(sorted.len() - 1);
    sorted[index] as f64
}

/// The median of some figures (the mean of the middle two for an even count); NaN when empty.
pub(crate) fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        f64::midpoint(values[mid - 1], values[mid])
    }
}

/// The median sample of repeats: each figure is the median of that figure.
pub(crate) fn median_sample(samples: &[Sample]) -> Option<Sample> {
    if samples.is_empty() {
        return None;
    }
    let notes: Vec<String> = samples.iter().filter_map(|s| s.note.clone()).collect();
    Some(Sample {
        throughput: median(samples.iter().map(|s| s.throughput)),
        p50_ms: median(samples.iter().map(|s| s.p50_ms)),
        p99_ms: median(samples.iter().map(|s| s.p99_ms)),
        count: samples.iter().map(|s| s.count).sum(),
        errors: samples.iter().map(|s| s.errors).sum(),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    })
}

/// A non-negative float rounded to the nearest integer (saturating).
pub(crate) fn to_u64(value: f64) -> u64 {
    if !value.is_finite() || value <= 0.0 {
        return 0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "checked finite and positive; the cast saturates"
    )]
    let rounded = value.round() as u64;
    rounded
}

/// A non-negative float rounded to the nearest usize (saturating).
pub(crate) fn to_usize(value: f64) -> usize {
    usize::try_from(to_u64(value)).unwrap_or(usize::MAX)
}

/// Microseconds of a duration, saturating.
pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7], 0.99), 7.0);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median([]).is_nan());
    }

    #[test]
    fn samples_count_what_completed_in_the_window() {
        let sample =
            Sample::from_latencies(vec![2000, 1000, 3000, 4000], Duration::from_secs(2), 1);
        assert_eq!(sample.count, 4);
        assert_eq!(sample.throughput, 2.0);
        assert_eq!(sample.p50_ms, 2.0);
        assert_eq!(sample.p99_ms, 4.0);
        assert_eq!(sample.errors, 1);
    }

    #[test]
    fn float_conversions_saturate() {
        assert_eq!(to_u64(-1.0), 0);
        assert_eq!(to_u64(f64::NAN), 0);
        assert_eq!(to_u64(2.6), 3);
        assert_eq!(to_usize(1e30), usize::MAX);
    }
}
