//! The job system's gauges and counters in Prometheus text.

use super::Queues;

impl Queues {
    /// The job system's gauges and counters in Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        let queues = self;
        use std::fmt::Write as _;
        use std::sync::atomic::Ordering::Relaxed;
        let m = &queues.metrics;
        let oldest_ms = m.oldest_waiting_ms.load(Relaxed);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let age = if oldest_ms == 0 {
            0.0
        } else {
            now_ms.saturating_sub(oldest_ms) as f64 / 1000.0
        };
        let rows: [(&str, &str, &str, String); 8] = [
            (
                "percore_jobs_waiting",
                "gauge",
                "Jobs waiting to run, queued or waiting to retry.",
                m.waiting.load(Relaxed).to_string(),
            ),
            (
                "percore_jobs_running",
                "gauge",
                "Jobs a worker is running now.",
                m.running.load(Relaxed).to_string(),
            ),
            (
                "percore_jobs_oldest_waiting_age_seconds",
                "gauge",
                "Age of the oldest waiting job.",
                format!("{age:.3}"),
            ),
            (
                "percore_jobs_succeeded_total",
                "counter",
                "Jobs that succeeded since start.",
                m.succeeded.load(Relaxed).to_string(),
            ),
            (
                "percore_jobs_retries_total",
                "counter",
                "Failed attempts scheduled for a retry since start.",
                m.retries.load(Relaxed).to_string(),
            ),
            (
                "percore_jobs_dead_total",
                "counter",
                "Jobs moved to the dead letters since start.",
                m.dead.load(Relaxed).to_string(),
            ),
            (
                "percore_jobs_log_write_failures_total",
                "counter",
                "Commits of the job log that failed (disk full, I/O errors); their jobs were refused.",
                m.log_failures.load(Relaxed).to_string(),
            ),
            (
                "percore_jobs_log_writable",
                "gauge",
                "1 while the job log takes writes; 0 while submissions get 503.",
                u8::from(!m.log_failing.load(Relaxed)).to_string(),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}
