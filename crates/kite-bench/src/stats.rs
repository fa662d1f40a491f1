//! Latency histograms and the measurement loop shared by every throughput benchmark.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Latencies are recorded in microseconds, from 1 µs to 60 s, 3 significant digits.
const MAX_MICROS: u64 = 60_000_000;

fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// One caller of a benchmark: makes one call per `call()`.
pub(crate) trait Caller: Send + 'static {
    /// One complete call (request sent, response received and checked).
    fn call(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// How long a load runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Load {
    /// Run `warmup` (not recorded), then record for `measure`.
    Timed {
        /// Unrecorded start.
        warmup: Duration,
        /// Recorded window.
        measure: Duration,
    },
    /// Make exactly this many calls in all (shared by the callers), recording all of them.
    Calls(u64),
}

/// What a load produced.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// Successful calls in the recorded window.
    pub calls: u64,
    /// Failed calls in the recorded window.
    pub errors: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// Length of the recorded window.
    pub elapsed: Duration,
    /// Latency of the successful calls, µs.
    pub hist: Histogram<u64>,
}

impl Sample {
    /// Adds another measurement of the same thing (e.g. a later round).
    pub fn merge(&mut self, other: Sample) {
        self.calls += other.calls;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed += other.elapsed;
        let _ = self.hist.add(&other.hist);
    }

    /// Successful calls per second.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.calls as f64 / s
        } else {
            0.0
        }
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return f64::NAN;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs one task per caller, each calling in a loop, and merges what they recorded.
pub(crate) async fn run<C: Caller>(callers: Vec<C>, load: Load) -> Sample {
    let start = Instant::now();
    let (record_from, end, budget) = match load {
        Load::Timed { warmup, measure } => (start + warmup, Some(start + warmup + measure), None),
        Load::Calls(n) => (start, None, Some(Arc::new(AtomicU64::new(n)))),
    };
    let mut tasks = Vec::with_capacity(callers.len());
    for mut caller in callers {
        let budget = budget.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut errors = 0u64;
            let mut first_error = None;
            loop {
                if let Some(b) = &budget {
                    // Take one call from the budget; stop when it is spent.
                    if b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_err()
                    {
                        break;
                    }
                }
                let t0 = Instant::now();
                if end.is_some_and(|end| t0 >= end) {
                    break;
                }
                let r = caller.call().await;
                let t1 = Instant::now();
                let recorded = t0 >= record_from && end.is_none_or(|end| t1 <= end);
                match r {
                    Ok(()) if recorded => {
                        let us = (t1 - t0).as_micros().clamp(1, u128::from(MAX_MICROS));
                        hist.saturating_record(us as u64);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if recorded {
                            errors += 1;
                        }
                        if first_error.is_none() {
                            first_error = Some(format!("{e:#}"));
                        }
                        if budget.is_none() && errors > 1000 {
                            break;
                        }
                        // A broken connection fails at once: don't spin on it.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (hist, errors, first_error)
        }));
    }
    let mut hist = new_histogram();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok((h, e, fe)) => {
                let _ = hist.add(&h);
                errors += e;
                if first_error.is_none() {
                    first_error = fe;
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("caller task failed: {e}"));
            }
        }
    }
    let elapsed = match end {
        Some(end) => end - record_from,
        None => start.elapsed(),
    };
    Sample {
        calls: hist.len(),
        errors,
        first_error,
        elapsed,
        hist,
    }
}

/// Latency percentiles of a set of durations measured one by one (Kontrol queries).
pub(crate) struct Latencies {
    hist: Histogram<u64>,
}

impl Latencies {
    pub fn new() -> Self {
        Latencies {
            hist: new_histogram(),
        }
    }

    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().clamp(1, u128::from(MAX_MICROS));
        self.hist.saturating_record(us as u64);
    }

    /// The latency at quantile `q`, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return f64::NAN;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}
