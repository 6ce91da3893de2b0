//! `percore bench`: the load generator's options, the run across client cores, and the exit status.
//!
//! The client has the server's shape: each client core is a thread pinned to
//! one CPU that owns its connections and its own io_uring ([`client`]), with
//! one `io_uring_enter` per loop turn for all of them. The request is
//! rendered once ([`request`]); responses are counted, not kept
//! ([`response`]). Each core records latencies into its own HdrHistogram;
//! the main thread only starts the cores, prints a live line every second,
//! takes SIGINT/SIGTERM as "stop early", and merges the results into a
//! [`report::Report`] (text, `--json`, `--plot` SVG).
//!
//! **Closed loop** (default): `--connections` connections, each with
//! `--pipeline` requests in flight; the server sets the pace, so a server
//! that stalls is asked less and its stall hides in the percentiles.
//! **Open loop** (`--rate`): requests are due at fixed times and their
//! latency counts from then, so a stall shows (coordinated omission
//! corrected, as wrk2 does).

pub mod client;
pub mod report;
pub mod request;
pub mod response;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use clap::Args;
use thiserror::Error;

use crate::config::{parse_duration, whole_number_in};
use crate::runtime::{self, cpu, uring};
use client::{ClientCore, CoreResult, Plan, Shared};
use report::{Curve, Report, RunInfo};

/// Exit status: at least one 2xx response.
pub const EXIT_OK: u8 = 0;
/// Exit status: no request succeeded (no response, or none of them 2xx), or the run could not start.
pub const EXIT_FAILED: u8 = 1;
/// Exit status for a bad flag (sysexits.h EX_USAGE).
pub const EX_USAGE: u8 = 64;

/// Printed after `percore bench --help`.
pub const AFTER_HELP: &str = "\
Latency is response received minus request sent; for a pipelined batch every
request starts at the batch's send time. With --rate it counts from the time
each request was due, so a server that stalls cannot hide it.

Client CPU is the utime+stime of each client core's thread over the run. In
the open loop a core polls instead of sleeping when the next request is due
within 30 µs (a timer costs more than that on a VM, and its lateness would
count against the server), so there CPU per request mostly reflects the rate.

Errors are counted by kind: connect (attempts that failed), timeout (no
response within --timeout), closed (requests lost to a reset or close),
non-2xx (responses, also counted as requests), malformed (not HTTP/1.1).

Exit status: 0 if at least one response was 2xx (errors are reported, not
fatal); 1 if no request succeeded or the run could not start; 64 for a bad
flag, naming it.";

/// The flags of `percore bench`.
#[derive(Debug, Clone, Default, Args)]
pub struct BenchArgs {
    /// The URL to load, plain HTTP/1.1: `http://HOST[:PORT][/PATH][?QUERY]`.
    #[arg(value_name = "URL")]
    pub url: String,
    /// Connections in all, spread evenly over the client cores. [default: 64]
    #[arg(long, short = 'c', value_name = "N")]
    pub connections: Option<String>,
    /// How long to measure, e.g. `10s`, `500ms`, `2m`. [default: 10s]
    #[arg(long, short = 'd', value_name = "DURATION")]
    pub duration: Option<String>,
    /// Requests in flight per connection, sent together (HTTP/1.1 pipelining). [default: 1]
    #[arg(long, short = 'p', value_name = "K")]
    pub pipeline: Option<String>,
    /// Open loop: requests per second over all cores, at fixed intended times. [default: closed loop]
    #[arg(long, short = 'R', value_name = "R", allow_hyphen_values = true)]
    pub rate: Option<String>,
    /// Client cores (threads, one per CPU). [default: one per CPU in --cpus, or 1]
    #[arg(long, value_name = "N")]
    pub cores: Option<String>,
    /// CPUs to pin client cores to, in order, e.g. `1` or `2-3`. [default: the CPUs this process may use]
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Request method. [default: GET]
    #[arg(long, short = 'm', value_name = "METHOD")]
    pub method: Option<String>,
    /// A request header, `Name: value`; repeat for more.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Request body (Content-Length is added).
    #[arg(long, value_name = "STRING")]
    pub body: Option<String>,
    /// A connection whose requests see no response this long is closed and its requests counted as timeouts. [default: 2s]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Load this long before measuring; nothing from it is counted. [default: 0s]
    #[arg(long, value_name = "DURATION")]
    pub warmup: Option<String>,
    /// Write the full report, with the percentile curve, as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw latency by percentile as SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Add another run's curve (its --json file) to --plot; repeat for more.
    #[arg(long = "overlay", value_name = "RUN.json")]
    pub overlays: Vec<PathBuf>,
    /// This run's name in the JSON and on the plot. [default: the URL]
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,
}

/// Why `percore bench` could not run.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("invalid value for `{flag}`: {message}")]
    Invalid { flag: &'static str, message: String },
    #[error("client core {core} on CPU {cpu}: {source}")]
    Uring {
        core: usize,
        cpu: usize,
        source: uring::UringError,
    },
    #[error("cannot pin client core {core} to CPU {cpu}: {source}")]
    Pin {
        core: usize,
        cpu: usize,
        source: io::Error,
    },
    #[error("client core {core}: {source}")]
    Core { core: usize, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl BenchError {
    /// The exit status this error ends the command with.
    pub fn exit_code(&self) -> u8 {
        match self {
            BenchError::Invalid { .. } => EX_USAGE,
            _ => EXIT_FAILED,
        }
    }
}

fn invalid(flag: &'static str, message: impl Into<String>) -> BenchError {
    BenchError::Invalid {
        flag,
        message: message.into(),
    }
}

/// The validated options of one run.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub target: request::Target,
    pub method: String,
    pub request: Vec<u8>,
    pub connections: usize,
    pub duration: Duration,
    pub pipeline: usize,
    pub rate: Option<f64>,
    /// One CPU per client core.
    pub cpus: Vec<usize>,
    pub timeout: Duration,
    pub warmup: Duration,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub overlays: Vec<Curve>,
    pub label: String,
}

const MAX_CONNECTIONS_PER_CORE: usize = 65_536;
const MAX_PIPELINE: usize = 1024;

fn count(flag: &'static str, text: &str, min: usize, max: usize) -> Result<usize, BenchError> {
    whole_number_in(text, min, max).map_err(|message| invalid(flag, message))
}

fn duration(
    flag: &'static str,
    text: Option<&str>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, BenchError> {
    let Some(text) = text else { return Ok(default) };
    parse_duration(text)
        .filter(|d| (min..=max).contains(d))
        .ok_or_else(|| {
            invalid(
                flag,
                format!("`{text}` is not a duration from {min:?} to {max:?}, like 500ms, 10s, 2m"),
            )
        })
}

impl Options {
    /// Validates the flags; a bad one is [`BenchError::Invalid`] naming it.
    pub fn resolve(args: &BenchArgs) -> Result<Self, BenchError> {
        let target = request::parse_url(&args.url).map_err(|m| invalid("URL", m))?;
        let allowed = cpu::allowed_cpus();
        let cpus = match &args.cpus {
            Some(text) => {
                let cpus = cpu::parse_cpu_list(text).map_err(|m| invalid("--cpus", m))?;
                if let Some(bad) = cpus.iter().find(|c| !allowed.contains(c)) {
                    return Err(invalid(
                        "--cpus",
                        format!(
                            "CPU {bad} is not available to this process (available: {})",
                            cpu::format_cpu_list(&allowed)
                        ),
                    ));
                }
                cpus
            }
            None => allowed,
        };
        let cores = match &args.cores {
            Some(text) => count("--cores", text, 1, 4096)?,
            None if args.cpus.is_some() => cpus.len(),
            None => 1,
        };
        if cores > cpus.len() {
            return Err(invalid(
                "--cores",
                format!(
                    "{cores} client cores need {cores} CPUs, but only {} are given ({})",
                    cpus.len(),
                    cpu::format_cpu_list(&cpus)
                ),
            ));
        }
        let cpus = cpus[..cores].to_vec();
        let connections = match &args.connections {
            Some(text) => count("--connections", text, 1, MAX_CONNECTIONS_PER_CORE * cores)?,
            None => 64,
        };
        if connections < cores {
            return Err(invalid("--connections",
                format!("{connections} connections cannot be spread over {cores} cores; give at least one per core"),
            ));
        }
        let pipeline = match &args.pipeline {
            Some(text) => count("--pipeline", text, 1, MAX_PIPELINE)?,
            None => 1,
        };
        let rate = match &args.rate {
            Some(text) => Some(
                text.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && (1.0..=1e8).contains(r))
                    .ok_or_else(|| {
                        invalid(
                            "--rate",
                            format!(
                                "`{text}` is not a rate from 1 to 100000000 requests per second"
                            ),
                        )
                    })?,
            ),
            None => None,
        };
        let day = Duration::from_secs(86_400);
        let duration_ = duration(
            "--duration",
            args.duration.as_deref(),
            Duration::from_secs(10),
            Duration::from_millis(1),
            day,
        )?;
        let timeout = duration(
            "--timeout",
            args.timeout.as_deref(),
            Duration::from_secs(2),
            Duration::from_millis(1),
            Duration::from_secs(60),
        )?;
        let warmup = duration(
            "--warmup",
            args.warmup.as_deref(),
            Duration::ZERO,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        let method = match &args.method {
            Some(text) => request::parse_method(text).map_err(|m| invalid("--method", m))?,
            None => "GET".to_owned(),
        };
        let headers = args
            .headers
            .iter()
            .map(|h| request::parse_header(h).map_err(|m| invalid("--header", m)))
            .collect::<Result<Vec<_>, _>>()?;
        let body = args.body.as_deref().unwrap_or_default().as_bytes();
        let request = request::render(&method, &target, &headers, body);
        if !args.overlays.is_empty() && args.plot.is_none() {
            return Err(invalid("--overlay", "needs --plot FILE.svg to draw on"));
        }
        if let Some(plot) = &args.plot {
            if plot.as_os_str().is_empty() {
                return Err(invalid("--plot", "the file name is empty"));
            }
        }
        let overlays = args
            .overlays
            .iter()
            .map(|path| read_curve(path).map_err(|m| invalid("--overlay", m)))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(label) = &args.label {
            if label.trim().is_empty() {
                return Err(invalid("--label", "the label is empty"));
            }
        }
        Ok(Self {
            url: args.url.clone(),
            target,
            method,
            request,
            connections,
            duration: duration_,
            pipeline,
            rate,
            cpus,
            timeout,
            warmup,
            json: args.json.clone(),
            plot: args.plot.clone(),
            overlays,
            label: args.label.clone().unwrap_or_else(|| args.url.clone()),
        })
    }

    pub fn cores(&self) -> usize {
        self.cpus.len()
    }
}

/// Reads the curve of another run from its `--json` file.
fn read_curve(path: &std::path::Path) -> Result<Curve, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    simd_json::serde::from_slice::<Curve>(&mut bytes).map_err(|e| {
        format!(
            "{} is not the --json output of percore bench: {e}",
            path.display()
        )
    })
}

/// What a run came to.
pub struct Outcome {
    pub report: Report,
}

/// Runs the load: starts the client cores, prints the live line, stops at
/// the end or on SIGINT/SIGTERM, and merges what the cores measured.
pub fn run(options: &Options) -> Result<Outcome, BenchError> {
    uring::raise_memlock_limit();
    // Blocked here, so the client cores (started below) inherit the mask and
    // only this thread takes the signals.
    let signals = runtime::block_shutdown_signals();
    let cores = options.cores();
    let plan = Arc::new(Plan {
        addr: options.target.addr,
        request: options.request.clone(),
        pipeline: options.pipeline,
        head_requests: options.method == "HEAD",
        rate: options.rate,
        cores,
        timeout_ns: options.timeout.as_nanos() as u64,
        warmup_ns: options.warmup.as_nanos() as u64,
        duration_ns: options.duration.as_nanos() as u64,
    });
    let shared = Arc::new(Shared::new(cores));
    let go = Arc::new(Barrier::new(cores + 1));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), BenchError>>();
    let mut handles = Vec::with_capacity(cores);
    for (core, &cpu) in options.cpus.iter().enumerate() {
        let connections =
            options.connections / cores + usize::from(core < options.connections % cores);
        let (plan, shared, go, ready) = (
            Arc::clone(&plan),
            Arc::clone(&shared),
            Arc::clone(&go),
            ready_tx.clone(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("percore-bench-{core}"))
            .spawn(move || -> Result<Option<CoreResult>, BenchError> {
                let setup = cpu::pin_current_thread(cpu)
                    .map_err(|source| BenchError::Pin { core, cpu, source })
                    .and_then(|()| {
                        ClientCore::new(core, cpu, connections, plan, Arc::clone(&shared))
                            .map_err(|source| BenchError::Uring { core, cpu, source })
                    });
                let client = match setup {
                    Ok(client) => {
                        let _ = ready.send(Ok(()));
                        client
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        go.wait();
                        return Ok(None);
                    }
                };
                drop(ready);
                go.wait();
                if shared.stop.load(Relaxed) {
                    return Ok(None);
                }
                let start = shared.start_ns.load(Relaxed);
                client
                    .run(start)
                    .map(Some)
                    .map_err(|source| BenchError::Core { core, source })
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failure = failure.or(Some(error)),
            Err(_) => {
                failure = failure.or(Some(BenchError::Io(io::Error::other(
                    "a client core exited while starting",
                ))))
            }
        }
    }
    if failure.is_some() {
        shared.stop.store(true, Relaxed);
    }
    let start = client::now_ns();
    shared.start_ns.store(start, Relaxed);
    // The barrier orders the stores above before every core's loads.
    go.wait();
    if let Some(error) = failure {
        for handle in handles {
            let _ = handle.join();
        }
        return Err(error);
    }

    let interrupted = watch(options, &shared, &handles, &signals, start);
    let mut results = Vec::with_capacity(cores);
    for handle in handles {
        let result = handle
            .join()
            .map_err(|_| BenchError::Io(io::Error::other("a client core panicked")))??;
        results.extend(result);
    }
    let info = RunInfo {
        label: &options.label,
        url: &options.url,
        connections: options.connections,
        pipeline: options.pipeline,
        rate: options.rate,
        cpus: &options.cpus,
        warmup_s: options.warmup.as_secs_f64(),
        interrupted,
    };
    Ok(Outcome {
        report: Report::build(&info, &results),
    })
}

/// Until every core is done: a live line each second on runs of 3 s or
/// more, and SIGINT/SIGTERM turned into the stop flag. Returns whether a
/// signal stopped the run.
fn watch<T>(
    options: &Options,
    shared: &Shared,
    handles: &[std::thread::JoinHandle<T>],
    signals: &libc::sigset_t,
    start: u64,
) -> bool {
    const SECOND: u64 = 1_000_000_000;
    let warmup = options.warmup.as_nanos() as u64;
    let end = start + warmup + options.duration.as_nanos() as u64;
    let live = options.warmup + options.duration >= Duration::from_secs(3);
    let mut interrupted = false;
    let mut next_line = start + SECOND;
    let mut last = (start, 0u64);
    let mut stderr = io::stderr();
    while !handles.iter().all(|h| h.is_finished()) {
        let now = client::now_ns();
        let wait = if live && !interrupted && now < end {
            next_line.saturating_sub(now).clamp(1_000_000, 100_000_000)
        } else {
            50_000_000
        };
        if runtime::wait_for_signal(signals, Some(Duration::from_nanos(wait))).is_some()
            && !interrupted
        {
            interrupted = true;
            shared.stop.store(true, Relaxed);
            let _ = writeln!(
                stderr,
                "percore bench: stopping early; finishing what is in flight"
            );
        }
        let now = client::now_ns();
        if live && !interrupted && now >= next_line && now < end + SECOND / 2 {
            let responses: u64 = shared.live.iter().map(|l| l.responses.load(Relaxed)).sum();
            let errors: u64 = shared.live.iter().map(|l| l.errors.load(Relaxed)).sum();
            let per_s = (responses.saturating_sub(last.1)) as f64 * 1e9
                / now.saturating_sub(last.0).max(1) as f64;
            let elapsed = (now - start + SECOND / 2) / SECOND;
            let phase = if now < start + warmup {
                " (warm-up)"
            } else {
                ""
            };
            let _ = writeln!(
                stderr,
                "  {elapsed:>4}s  {:>12} req/s  errors {}{phase}",
                report::count(per_s.round() as u64),
                report::count(errors)
            );
            last = (now, responses);
            while next_line <= now {
                next_line += SECOND;
            }
        }
    }
    interrupted
}

/// `percore bench`: validates, runs, prints, writes the files. Returns the exit status.
pub fn command(args: &BenchArgs) -> u8 {
    let options = match Options::resolve(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("percore bench: {error}");
            return error.exit_code();
        }
    };
    let outcome = match run(&options) {
        Ok(outcome) => outcome,
        Err(error) => {
            eprintln!("percore bench: {error}");
            return error.exit_code();
        }
    };
    let report = outcome.report;
    print!("{}", report.text());
    let _ = io::stdout().flush();
    if let Err(error) = write_files(&options, &report) {
        eprintln!("percore bench: {error}");
        return error.exit_code();
    }
    if report.status.s2xx > 0 {
        EXIT_OK
    } else {
        eprintln!("percore bench: no request succeeded");
        EXIT_FAILED
    }
}

fn write_files(options: &Options, report: &Report) -> Result<(), BenchError> {
    let write = |path: &PathBuf, bytes: &[u8]| {
        std::fs::write(path, bytes).map_err(|source| BenchError::Write {
            path: path.clone(),
            source,
        })
    };
    if let Some(path) = &options.json {
        // Through a value: simd-json's own pretty printer for serde types
        // breaks lines only inside arrays.
        let value = simd_json::serde::to_owned_value(report)
            .map_err(|e| BenchError::Io(io::Error::other(e.to_string())))?;
        let json = simd_json::prelude::Writable::encode_pp(&value) + "\n";
        write(path, json.as_bytes())?;
    }
    if let Some(path) = &options.plot {
        let mut curves = vec![report.curve()];
        curves.extend(options.overlays.iter().cloned());
        let title = format!("Latency by percentile: {}", options.url);
        write(path, report::svg(&curves, &title).as_bytes())?;
    }
    Ok(())
}
