//! The result of a scenario: printed as one JSON line.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// Named figures of one run, in insertion order.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Report {
    pub fn new(scenario: &str) -> Report {
        let mut r = Report::default();
        r.set("scenario", scenario);
        r
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_owned(), value.into());
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.fields.get(key).and_then(Value::as_f64)
    }

    /// p50/p90/p99/max of a latency histogram recorded in microseconds, as milliseconds.
    pub fn latency(&mut self, prefix: &str, h: &Histogram<u64>) {
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        self.set(
            prefix,
            json!({
                "count": h.len(),
                "p50_ms": ms(h.value_at_quantile(0.50)),
                "p90_ms": ms(h.value_at_quantile(0.90)),
                "p99_ms": ms(h.value_at_quantile(0.99)),
                "max_ms": ms(h.max()),
            }),
        );
    }

    /// Server CPU per unit of work, when the server's pid was given.
    pub fn cpu_per(&mut self, key: &str, cpu: Option<Duration>, units: u64) {
        if let Some(cpu) = cpu {
            self.set("server_cpu_s", (cpu.as_secs_f64() * 1000.0).round() / 1000.0);
            if units > 0 {
                self.set(key, ((cpu.as_secs_f64() * 1e6 / units as f64) * 100.0).round() / 100.0);
            }
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("valid sigfig"))
}

/// Rounds to two decimals for readable JSON.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
