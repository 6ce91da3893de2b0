//! What a run measured, and its three renderings: text for the terminal, JSON for files, and an SVG of latency by percentile.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::client::CoreResult;

/// Everything a run measured; `--json` writes exactly this.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub url: String,
    /// `closed` (each connection keeps `pipeline` requests in flight) or `open` (`rate`).
    pub mode: String,
    pub connections: usize,
    pub pipeline: usize,
    /// Open loop: the requests per second asked for.
    pub rate: Option<f64>,
    pub cores: usize,
    pub cpus: Vec<usize>,
    pub warmup_s: f64,
    /// The measured time, from the end of the warm-up to the stop.
    pub duration_s: f64,
    /// Stopped early by SIGINT or SIGTERM.
    pub interrupted: bool,
    /// Complete responses, whatever their status.
    pub requests: u64,
    pub requests_per_s: f64,
    /// Bytes received.
    pub bytes: u64,
    pub bytes_per_s: f64,
    /// Send operations started; in the closed loop each carries `pipeline` requests.
    pub sends: u64,
    pub requests_sent: u64,
    pub status: StatusClasses,
    pub errors: ErrorCounts,
    /// Open loop: requests that came due but never went out (the server fell behind).
    pub unsent: u64,
    /// Requests still unanswered when the run ended.
    pub unfinished: u64,
    pub latency_us: Latency,
    /// The latency distribution, for plotting (HdrHistogram's percentile iteration).
    pub percentiles: Vec<Point>,
    pub per_core: Vec<CoreReport>,
    /// Client CPU time (all cores) per complete response.
    pub client_cpu_us_per_request: f64,
}

/// Responses by status class.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct StatusClasses {
    #[serde(rename = "1xx")]
    pub s1xx: u64,
    #[serde(rename = "2xx")]
    pub s2xx: u64,
    #[serde(rename = "3xx")]
    pub s3xx: u64,
    #[serde(rename = "4xx")]
    pub s4xx: u64,
    #[serde(rename = "5xx")]
    pub s5xx: u64,
    pub other: u64,
}

/// Failed requests by kind; `total` is their sum.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub timeout: u64,
    /// Reset or closed by the server with requests outstanding.
    pub closed: u64,
    pub non_2xx: u64,
    pub malformed: u64,
    pub total: u64,
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

/// One point of the percentile curve.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Point {
    pub percentile: f64,
    pub latency_us: f64,
}

/// One client core's share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoreReport {
    pub core: usize,
    pub cpu: usize,
    pub requests: u64,
    /// utime + stime of the core's thread over the measured part.
    pub cpu_s: f64,
    /// `cpu_s` over the wall time, in percent of one CPU.
    pub cpu_percent: f64,
    pub cpu_us_per_request: f64,
}

/// What `--overlay` reads from another run's JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct Curve {
    pub label: String,
    pub percentiles: Vec<Point>,
}

/// The run's settings, for the report.
pub struct RunInfo<'a> {
    pub label: &'a str,
    pub url: &'a str,
    pub connections: usize,
    pub pipeline: usize,
    pub rate: Option<f64>,
    pub cpus: &'a [usize],
    pub warmup_s: f64,
    pub interrupted: bool,
}

fn per(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Report {
    /// Merges the cores' results.
    pub fn build(info: &RunInfo<'_>, cores: &[CoreResult]) -> Self {
        let mut latency = super::client::new_histogram();
        let mut tally = super::client::Tally::default();
        for core in cores {
            latency
                .add(&core.latency)
                .expect("histograms share their bounds");
            tally.add(&core.tally);
        }
        let measured_s = cores.iter().map(|c| c.measured_ns).max().unwrap_or(0) as f64 / 1e9;
        let [other, s1xx, s2xx, s3xx, s4xx, s5xx] = tally.by_class;
        let errors = ErrorCounts {
            connect: tally.errors.connect,
            timeout: tally.errors.timeout,
            closed: tally.errors.closed,
            non_2xx: tally.responses - s2xx,
            malformed: tally.errors.malformed,
            total: tally.errors.total() + tally.responses - s2xx,
        };
        let per_core: Vec<CoreReport> = cores
            .iter()
            .map(|c| CoreReport {
                core: c.core,
                cpu: c.cpu,
                requests: c.tally.responses,
                cpu_s: c.cpu_ns as f64 / 1e9,
                cpu_percent: 100.0 * per(c.cpu_ns as f64, c.wall_ns as f64),
                cpu_us_per_request: per(us(c.cpu_ns), c.tally.responses as f64),
            })
            .collect();
        let cpu_ns: u64 = cores.iter().map(|c| c.cpu_ns).sum();
        let quantile = |q: f64| us(latency.value_at_quantile(q));
        let empty = latency.is_empty();
        Self {
            label: info.label.to_owned(),
            url: info.url.to_owned(),
            mode: if info.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .to_owned(),
            connections: info.connections,
            pipeline: info.pipeline,
            rate: info.rate,
            cores: cores.len(),
            cpus: info.cpus.to_vec(),
            warmup_s: info.warmup_s,
            duration_s: measured_s,
            interrupted: info.interrupted,
            requests: tally.responses,
            requests_per_s: per(tally.responses as f64, measured_s),
            bytes: tally.bytes,
            bytes_per_s: per(tally.bytes as f64, measured_s),
            sends: tally.sends,
            requests_sent: tally.requests_sent,
            status: StatusClasses {
                s1xx,
                s2xx,
                s3xx,
                s4xx,
                s5xx,
                other,
            },
            errors,
            unsent: tally.unsent,
            unfinished: tally.unfinished,
            latency_us: if empty {
                Latency::default()
            } else {
                Latency {
                    mean: latency.mean() / 1000.0,
                    p50: quantile(0.5),
                    p90: quantile(0.9),
                    p99: quantile(0.99),
                    p99_9: quantile(0.999),
                    p99_99: quantile(0.9999),
                    max: us(latency.max()),
                }
            },
            percentiles: percentile_curve(&latency),
            per_core,
            client_cpu_us_per_request: per(us(cpu_ns), tally.responses as f64),
        }
    }

    /// The summary for the terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let cpus = crate::runtime::cpu::format_cpu_list(&self.cpus);
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let _ = writeln!(out, "percore bench {}", self.url);
        let load = match self.rate {
            Some(rate) => format!("open loop at {} req/s", count(rate as u64)),
            None => "closed loop".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {load}, {} connection{} on {} core{} (CPU{} {cpus}), pipeline {}, {:.2}s measured{}{}",
            self.connections,
            plural(self.connections),
            self.cores,
            plural(self.cores),
            plural(self.cpus.len()),
            self.pipeline,
            self.duration_s,
            if self.warmup_s > 0.0 {
                format!(" after {:.2}s warm-up", self.warmup_s)
            } else {
                String::new()
            },
            if self.interrupted { " (interrupted)" } else { "" },
        );
        let _ = writeln!(
            out,
            "  requests   {} = {} req/s   ({} sends, {} requests sent)",
            count(self.requests),
            count(self.requests_per_s.round() as u64),
            count(self.sends),
            count(self.requests_sent)
        );
        let _ = writeln!(
            out,
            "  received   {} = {}/s",
            bytes(self.bytes as f64),
            bytes(self.bytes_per_s)
        );
        let s = &self.status;
        let classes: Vec<String> = [
            ("1xx", s.s1xx),
            ("2xx", s.s2xx),
            ("3xx", s.s3xx),
            ("4xx", s.s4xx),
            ("5xx", s.s5xx),
            ("other", s.other),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {}", count(*n)))
        .collect();
        let _ = writeln!(
            out,
            "  status     {}",
            if classes.is_empty() {
                "no responses".to_owned()
            } else {
                classes.join(", ")
            }
        );
        let e = &self.errors;
        let _ = writeln!(
            out,
            "  errors     {}: connect {}, timeout {}, closed {}, non-2xx {}, malformed {}",
            count(e.total),
            count(e.connect),
            count(e.timeout),
            count(e.closed),
            count(e.non_2xx),
            count(e.malformed)
        );
        if self.unsent > 0 || self.unfinished > 0 {
            let _ = writeln!(
                out,
                "  not done   {} due but never sent (the server fell behind), {} unanswered at the end",
                count(self.unsent),
                count(self.unfinished)
            );
        }
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "  latency    p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  (mean {}{})",
            latency(l.p50),
            latency(l.p90),
            latency(l.p99),
            latency(l.p99_9),
            latency(l.p99_99),
            latency(l.max),
            latency(l.mean),
            if self.rate.is_some() {
                ", from each request's intended send time"
            } else {
                ""
            }
        );
        for c in &self.per_core {
            let _ = writeln!(
                out,
                "  core {:<3}   CPU {:<3} {} requests, CPU {:.1}%, {:.2} µs/request",
                c.core,
                c.cpu,
                count(c.requests),
                c.cpu_percent,
                c.cpu_us_per_request
            );
        }
        let _ = writeln!(
            out,
            "  client CPU {:.2} µs per request",
            self.client_cpu_us_per_request
        );
        out
    }

    pub fn curve(&self) -> Curve {
        Curve {
            label: self.label.clone(),
            percentiles: self.percentiles.clone(),
        }
    }
}

/// The percentile curve as HdrHistogram iterates it: denser toward the tail, ending at 100%.
fn percentile_curve(latency: &Histogram<u64>) -> Vec<Point> {
    if latency.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<Point> = latency
        .iter_quantiles(5)
        .map(|v| Point {
            percentile: v.quantile_iterated_to() * 100.0,
            latency_us: us(v.value_iterated_to()),
        })
        .collect();
    if points.last().is_none_or(|p| p.percentile < 100.0) {
        points.push(Point {
            percentile: 100.0,
            latency_us: us(latency.max()),
        });
    }
    points
}

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds, in the unit that reads best.
pub fn latency(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[0])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The x position of a percentile in "nines": 90% → 1, 99% → 2, 99.9% → 3.
fn nines(percentile: f64, right_edge: f64) -> f64 {
    if percentile >= 100.0 {
        return right_edge;
    }
    (-(1.0 - percentile / 100.0).log10()).clamp(0.0, right_edge)
}

/// A step of 1, 2 or 5 times a power of ten that splits `max` into about five parts.
fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Latency (ms, linear) by percentile (log scale in nines, as HdrHistogram's
/// plotter draws it), one line per curve, with a legend.
pub fn svg(curves: &[Curve], title: &str) -> String {
    const WIDTH: f64 = 900.0;
    const HEIGHT: f64 = 540.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 30.0;
    const TOP: f64 = 50.0;
    const BOTTOM: f64 = 70.0;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;

    // The right edge: the deepest percentile below 100% any curve reached, in whole nines.
    let deepest = curves
        .iter()
        .flat_map(|c| c.percentiles.iter())
        .filter(|p| p.percentile < 100.0)
        .map(|p| -(1.0 - p.percentile / 100.0).log10())
        .fold(0.0f64, f64::max);
    let right_edge = deepest.ceil().clamp(2.0, 7.0);
    let max_ms = curves
        .iter()
        .flat_map(|c| c.percentiles.iter())
        .map(|p| p.latency_us / 1000.0)
        .fold(0.0f64, f64::max);
    let step = nice_step(if max_ms > 0.0 { max_ms } else { 1.0 });
    let y_max = (max_ms / step).ceil().max(1.0) * step;
    let x = |percentile: f64| LEFT + plot_w * nines(percentile, right_edge) / right_edge;
    let y = |ms: f64| TOP + plot_h * (1.0 - ms / y_max);
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        WIDTH / 2.0,
        xml_escape(title)
    );
    // Grid and ticks: x at every nine, y at every step.
    for n in 0..=right_edge as usize {
        let percentile = 100.0 * (1.0 - 10f64.powi(-(n as i32)));
        let px = LEFT + plot_w * n as f64 / right_edge;
        let label = match n {
            0 => "0%".to_owned(),
            _ => format!("{:.*}%", n.saturating_sub(2), percentile),
        };
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 20.0
        );
    }
    let mut tick = 0.0;
    while tick <= y_max + step / 2.0 {
        let py = y(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick:.decimals$}</text>"##,
            LEFT + plot_w,
            LEFT - 8.0,
            py + 4.0
        );
        tick += step;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 20.0
    );
    let _ = writeln!(
        out,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">latency (ms)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for (i, curve) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = curve
            .percentiles
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.percentile), y(p.latency_us / 1000.0)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 20.0 + 20.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 15.0,
            LEFT + 45.0,
            LEFT + 52.0,
            ly + 4.0,
            xml_escape(&curve.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(123), "123");
        assert_eq!(latency(85.2), "85 µs");
        assert_eq!(latency(1234.0), "1.23 ms");
        assert_eq!(bytes(2048.0), "2.0 KiB");
        assert_eq!(nice_step(9.0), 2.0);
        assert_eq!(nice_step(0.3), 0.1);
        assert!((nines(99.9, 6.0) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0, 6.0), 6.0);
    }

    #[test]
    fn svg_has_every_curve_and_the_nines() {
        let mut h = super::super::client::new_histogram();
        for v in 1..=100_000u64 {
            h.record(v * 1000).unwrap();
        }
        let curve = Curve {
            label: "a <b>".into(),
            percentiles: percentile_curve(&h),
        };
        assert_eq!(curve.percentiles.last().unwrap().percentile, 100.0);
        let other = Curve {
            label: "peer".into(),
            percentiles: vec![
                Point {
                    percentile: 0.0,
                    latency_us: 10.0,
                },
                Point {
                    percentile: 100.0,
                    latency_us: 20.0,
                },
            ],
        };
        let svg = svg(&[curve, other], "t");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        for label in ["0%", "90%", "99%", "99.9%", "99.99%", "a &lt;b&gt;", "peer"] {
            assert!(svg.contains(&format!(">{label}<")), "{label}");
        }
    }
}
