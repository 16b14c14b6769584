//! Latency recording and its summary: an HDR histogram in microseconds, reported as the
//! percentiles every report of the tool uses (p50, p99, p99.9, max).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// A histogram of latencies from 1 µs to one hour, at three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records `micros`, saturating at the histogram's top instead of failing.
pub fn record(histogram: &mut Histogram<u64>, micros: u64) {
    histogram.saturating_record(micros.max(1));
}

pub fn summarize(histogram: &Histogram<u64>) -> LatencySummary {
    LatencySummary {
        p50: histogram.value_at_quantile(0.50),
        p99: histogram.value_at_quantile(0.99),
        p999: histogram.value_at_quantile(0.999),
        max: histogram.max(),
    }
}

/// Parses "250ms", "5s", "2m" or "1h" (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("'{text}' is not a duration like 500ms, 5s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit '{unit}' in '{text}': use ms, s, m or h")),
    };
    if !(seconds > 0.0 && seconds <= 7.0 * 86400.0) {
        return Err(format!("'{text}' is out of range (above zero, at most a week)"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn summary_reports_percentiles_in_order() {
        let mut histogram = new_histogram();
        for micros in 1..=1000 {
            record(&mut histogram, micros);
        }
        let summary = summarize(&histogram);
        assert!(summary.p50 >= 495 && summary.p50 <= 505, "{summary:?}");
        assert!(summary.p50 <= summary.p99 && summary.p99 <= summary.p999 && summary.p999 <= summary.max);
        assert_eq!(summary.max, 1000);
    }
}
