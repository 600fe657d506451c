//! The services' `/metrics` (Prometheus text format): histograms scraped before and
//! after a measurement, and quantiles of what happened in between, interpolated
//! linearly within a bucket.

use std::collections::BTreeMap;

/// One scrape: every `_bucket` series of every histogram, by metric name and the
/// labels other than `le`, with its cumulative counts by upper bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Scrape {
    buckets: BTreeMap<(String, Labels), Vec<(f64, f64)>>,
}

/// Labels of a series, sorted, without `le`.
pub(crate) type Labels = Vec<(String, String)>;

/// Quantiles of a histogram's observations between two scrapes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Quantiles {
    /// Observations between the scrapes.
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

impl Scrape {
    /// Reads the text format; lines that are not histogram buckets are ignored.
    pub(crate) fn parse(text: &str) -> Self {
        let mut buckets: BTreeMap<(String, Labels), Vec<(f64, f64)>> = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let Some((series, value)) = split_sample(line) else {
                continue;
            };
            let Some((name, labels)) = parse_series(series) else {
                continue;
            };
            let Some(name) = name.strip_suffix("_bucket") else {
                continue;
            };
            let Some(le) = labels.iter().find(|(k, _)| k == "le").map(|(_, v)| v) else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(bound) => bound,
                    Err(_) => continue,
                }
            };
            let mut rest: Labels = labels.into_iter().filter(|(k, _)| k != "le").collect();
            rest.sort();
            buckets
                .entry((name.to_owned(), rest))
                .or_default()
                .push((bound, value));
        }
        for series in buckets.values_mut() {
            series.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Self { buckets }
    }

    /// Whether the scrape has a histogram called `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.buckets.keys().any(|(n, _)| n == name)
    }

    /// The cumulative buckets of `name`, summed over the series whose labels include
    /// every one of `matching`.
    fn series(&self, name: &str, matching: &[(&str, &str)]) -> Option<Vec<(f64, f64)>> {
        let mut summed: Option<Vec<(f64, f64)>> = None;
        for ((n, labels), buckets) in &self.buckets {
            let matches = matching
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v));
            if n != name || !matches {
                continue;
            }
            match &mut summed {
                None => summed = Some(buckets.clone()),
                Some(total) if total.len() == buckets.len() => {
                    for (sum, (_, count)) in total.iter_mut().zip(buckets) {
                        sum.1 += count;
                    }
                }
                Some(_) => {}
            }
        }
        summed
    }

    /// Values of `label` among the series of `name`.
    pub(crate) fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .buckets
            .keys()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, labels)| {
                labels
                    .iter()
                    .find(|(k, _)| k == label)
                    .map(|(_, v)| v.clone())
            })
            .collect();
        values.sort();
        values.dedup();
        values
    }

    /// p50 and p99 of the observations of `name` (series matching `matching`) made
    /// between `before` and `self`; `None` when `self` has no such histogram.
    pub(crate) fn since(
        &self,
        before: &Self,
        name: &str,
        matching: &[(&str, &str)],
    ) -> Option<Quantiles> {
        let after = self.series(name, matching)?;
        let before = before.series(name, matching);
        let delta: Vec<(f64, f64)> = after
            .iter()
            .map(|&(bound, count)| {
                let earlier = before
                    .as_ref()
                    .and_then(|b| b.iter().find(|(le, _)| le.total_cmp(&bound).is_eq()))
                    .map_or(0.0, |(_, c)| *c);
                (bound, (count - earlier).max(0.0))
            })
            .collect();
        let total = delta.last().map_or(0.0, |(_, c)| *c);
        Some(Quantiles {
            count: crate::stats::to_u64(total),
            p50_ms: quantile(&delta, 0.5) * 1000.0,
            p99_ms: quantile(&delta, 0.99) * 1000.0,
        })
    }
}

/// The `q` quantile of cumulative buckets `(upper bound, count)`, sorted by bound:
/// linear within the bucket it falls in (from 0 for the first); the highest finite
/// bound when it falls in `+Inf`; NaN without observations.
pub(crate) fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |(_, c)| *c);
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank && count > lower.1 {
            if bound.is_infinite() {
                return lower.0;
            }
            let within = (rank - lower.1) / (count - lower.1);
            return lower.0 + (bound - lower.0) * within;
        }
        if bound.is_finite() {
            lower = (bound, count);
        }
    }
    lower.0
}

/// `name{labels} value` → (`name{labels}`, value); a timestamp after the value is ignored.
fn split_sample(line: &str) -> Option<(&str, f64)> {
    let end_of_series = match line.rfind('}') {
        Some(brace) => brace + 1,
        None => line.find(' ')?,
    };
    let (series, rest) = line.split_at(end_of_series);
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some((series, value))
}

fn parse_series(series: &str) -> Option<(&str, Labels)> {
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, Vec::new()));
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => return None,
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.push((key.trim().to_owned(), value));
    }
    Some((name, labels))
}

/// The server-side latency of the credit route (`POST` on the route whose template
/// contains `credit`, from `http_request_duration_seconds`) between two scrapes.
pub(crate) fn credit_latency(before: &Scrape, after: &Scrape) -> Option<Quantiles> {
    const HTTP: &str = "http_request_duration_seconds";
    let route = after
        .label_values(HTTP, "route")
        .into_iter()
        .find(|route| route.contains("credit"))?;
    after.since(
        before,
        HTTP,
        &[("method", "POST"), ("route", route.as_str())],
    )
}

/// Scrapes `base_url/metrics`; `None` when it cannot be read.
pub(crate) async fn scrape(client: &reqwest::Client, base_url: &str) -> Option<Scrape> {
    Some(Scrape::parse(&scrape_text(client, base_url).await?))
}

/// `base_url/metrics` as text; `None` when it cannot be read.
pub(crate) async fn scrape_text(client: &reqwest::Client, base_url: &str) -> Option<String> {
    let response = client
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// The sum of the samples of counter `name` whose labels include every one of
/// `matching` (0 when there is none).
pub(crate) fn counter(text: &str, name: &str, matching: &[(&str, &str)]) -> f64 {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(split_sample)
        .filter_map(|(series, value)| Some((parse_series(series)?, value)))
        .filter(|((series, labels), _)| {
            *series == name
                && matching
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, value)| value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE event_pipeline_seconds histogram
event_pipeline_seconds_bucket{stage="committed",le="0.001"} 10
event_pipeline_seconds_bucket{stage="committed",le="0.002"} 10
event_pipeline_seconds_bucket{stage="committed",le="+Inf"} 10
event_pipeline_seconds_sum{stage="committed"} 0.005
event_pipeline_seconds_count{stage="committed"} 10
http_request_duration_seconds{method="POST",route="/x",quantile="0.5"} 0.001
"#;

    const AFTER: &str = r#"event_pipeline_seconds_bucket{stage="committed",le="0.001"} 60
event_pipeline_seconds_bucket{stage="committed",le="0.002"} 110
event_pipeline_seconds_bucket{stage="committed",le="+Inf"} 110
event_pipeline_seconds_bucket{stage="published",le="0.001"} 0
event_pipeline_seconds_bucket{stage="published",le="0.002"} 99
event_pipeline_seconds_bucket{stage="published",le="+Inf"} 100
"#;

    #[test]
    fn counters_sum_the_series_with_the_labels_asked_for() {
        let text = r#"# TYPE projection_events_total counter
projection_events_total{path="broker",outcome="applied"} 40
projection_events_total{path="broker",outcome="duplicate"} 2
projection_events_total{path="feed",outcome="applied"} 5
projection_events_total_other{path="broker",outcome="applied"} 9
"#;
        let broker = [("path", "broker")];
        assert!((counter(text, "projection_events_total", &broker) - 42.0).abs() < 1e-9);
        let applied = [("outcome", "applied")];
        assert!((counter(text, "projection_events_total", &applied) - 45.0).abs() < 1e-9);
        assert!(counter(text, "projection_gap_fills_total", &broker).abs() < 1e-9);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let buckets = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
        assert!((quantile(&buckets, 0.5) - 0.001).abs() < 1e-12);
        assert!((quantile(&buckets, 0.75) - 0.0015).abs() < 1e-12);
        assert!((quantile(&buckets, 0.25) - 0.0005).abs() < 1e-12);
        assert!(quantile(&[(f64::INFINITY, 0.0)], 0.5).is_nan());
    }

    #[test]
    fn a_quantile_past_the_last_bound_is_that_bound() {
        let buckets = [(0.001, 1.0), (0.002, 2.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&buckets, 0.99), 0.002);
    }

    #[test]
    fn deltas_between_scrapes_count_only_what_happened_between() {
        let (before, after) = (Scrape::parse(BEFORE), Scrape::parse(AFTER));
        let committed = after
            .since(&before, "event_pipeline_seconds", &[("stage", "committed")])
            .unwrap();
        assert_eq!(committed.count, 100);
        assert!((committed.p50_ms - 1.0).abs() < 1e-9);
        assert!((committed.p99_ms - 1.98).abs() < 1e-9);
        let published = after
            .since(&before, "event_pipeline_seconds", &[("stage", "published")])
            .unwrap();
        assert_eq!(published.count, 100);
        assert!((published.p99_ms - 2.0).abs() < 1e-9);
        assert_eq!(
            after.label_values("event_pipeline_seconds", "stage"),
            ["committed", "published"]
        );
    }

    #[test]
    fn summaries_and_missing_histograms_are_absent() {
        let before = Scrape::parse(BEFORE);
        assert!(!before.has("http_request_duration_seconds"));
        assert!(
            before
                .since(&before, "projection_lag_seconds", &[])
                .is_none()
        );
    }

    #[test]
    fn route_templates_with_braces_parse() {
        let scrape = Scrape::parse(
            "http_request_duration_seconds_bucket{method=\"POST\",route=\"/accounts/{id}/credit\",le=\"0.001\"} 7\nhttp_request_duration_seconds_bucket{method=\"POST\",route=\"/accounts/{id}/credit\",le=\"+Inf\"} 8\n",
        );
        assert_eq!(
            scrape.label_values("http_request_duration_seconds", "route"),
            ["/accounts/{id}/credit"]
        );
        let q = scrape
            .since(
                &Scrape::default(),
                "http_request_duration_seconds",
                &[("method", "POST"), ("route", "/accounts/{id}/credit")],
            )
            .unwrap();
        assert_eq!(q.count, 8);
    }

    #[test]
    fn labels_with_escapes_and_commas_parse() {
        let scrape = Scrape::parse(
            "h_bucket{route=\"/a,b\",method=\"P\\\"T\",le=\"0.5\"} 3 1700000000\nh_bucket{route=\"/a,b\",method=\"P\\\"T\",le=\"+Inf\"} 4\n",
        );
        let q = scrape
            .since(
                &Scrape::default(),
                "h",
                &[("route", "/a,b"), ("method", "P\"T")],
            )
            .unwrap();
        assert_eq!(q.count, 4);
    }
}
