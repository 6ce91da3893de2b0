//! Async processing: jobs accepted durably, answered at once, run on worker threads with retries, backoff and dead letters.
//!
//! One manager thread owns the job log and every job's state: io cores send
//! it submissions, workers send it outcomes, and it is the only writer of
//! both the log and the published status table. It commits each batch of
//! log records with one `fdatasync` (group commit) and only then tells the
//! io core that submitted a job to answer `202`, so an accepted job survives
//! `kill -9`. Workers are plain threads (pinned with `--worker-cpus`) that
//! take jobs from a bounded channel, so a slow job never touches an io core.
//!
//! A commit of the job log that fails (disk full, an I/O error) answers its
//! submissions and redrives 503 `job_log_unavailable` with `Retry-After`;
//! the log is cut back to its last durable record, the manager rebuilds its
//! state from the log (exactly what was acknowledged; attempts running then
//! are presumed lost and run again), starts no attempt, and probes with a
//! record that changes nothing on every turn (at most 200 ms apart) until a
//! commit succeeds: then it takes jobs again, with no restart.

pub mod egress;
mod error;
pub mod kinds;
pub mod log;
mod manager;
mod metrics;
pub mod nats;

pub use error::JobError;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use serde_json::Value;

use crate::runtime::cpu;
use kinds::{JobKinds, KindOptions, Outcome};
use log::JobLog;
use manager::{now_ms, Manager};

/// How the job system runs; from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    pub data_dir: PathBuf,
    pub workers: usize,
    /// CPUs to pin worker threads to, in order; empty leaves them unpinned.
    pub worker_cpus: Vec<usize>,
    /// Jobs waiting per queue before submissions get 503.
    pub capacity: usize,
    pub max_attempts: u32,
    /// The first retry's delay; each retry doubles it, with jitter.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// A running attempt not finished within this is presumed lost and run again.
    pub visibility_timeout: Duration,
    pub webhook_secret: Option<String>,
    pub webhook_timeout: Duration,
    /// Internal networks webhooks may reach (`--webhook-allow`).
    pub webhook_allow: Vec<crate::limit::Cidr>,
    /// CA certificates of https receivers (`--webhook-ca`); `None`: the system's.
    pub webhook_ca: Option<std::path::PathBuf>,
    /// Domains e-mail jobs may send to (`--email-allow-domain`); `None`: any.
    pub email_allow_domains: Option<Vec<String>>,
    pub smtp: Option<(String, u16)>,
    pub smtp_from: String,
    /// Finished jobs are forgotten this long after they finish.
    pub retention: Duration,
    /// The local log is compacted once it is larger than this.
    pub compact_above: u64,
    /// Keep the jobs on NATS JetStream instead of the local log.
    pub nats: Option<nats::NatsOptions>,
}

impl QueueOptions {
    /// The delay before retrying after failed attempt `attempt`: exponential
    /// backoff with jitter, base·2^(attempt-1) capped at `retry_max`, then a
    /// random point in its upper half so retries of many jobs spread out.
    /// `rng` is the caller's xorshift64 state.
    pub fn backoff_ms(&self, attempt: u32, rng: &mut u64) -> u64 {
        let base = self.retry_base.as_millis() as u64;
        let ceiling = base
            .saturating_mul(1 << attempt.saturating_sub(1).min(20))
            .min(self.retry_max.as_millis() as u64);
        // xorshift64: jitter needs spread, not cryptographic strength.
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        ceiling / 2 + *rng % (ceiling / 2 + 1)
    }

    /// What the job kinds need of these options.
    pub fn kind_options(&self) -> KindOptions {
        KindOptions {
            webhook_secret: self.webhook_secret.clone(),
            webhook_timeout: self.webhook_timeout,
            egress: std::sync::Arc::new(egress::Egress {
                allow: self.webhook_allow.clone(),
            }),
            webhook_ca: self.webhook_ca.clone(),
            email_allow_domains: self.email_allow_domains.clone(),
            smtp: self.smtp.clone(),
            smtp_from: self.smtp_from.clone(),
        }
    }

    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            workers: 1,
            worker_cpus: Vec::new(),
            capacity: 10_000,
            max_attempts: 5,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            visibility_timeout: Duration::from_secs(60),
            webhook_secret: None,
            webhook_timeout: Duration::from_secs(10),
            webhook_allow: Vec::new(),
            webhook_ca: None,
            email_allow_domains: None,
            smtp: None,
            smtp_from: "percore@localhost".into(),
            retention: Duration::from_secs(24 * 3600),
            compact_above: 64 << 20,
            nats: None,
        }
    }
}

/// The io core connection a deferred answer goes back to.
pub use crate::net::ConnId as ReplyTo;

/// What the manager answers a submission with.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Durable: `replayed` when an `Idempotency-Key` matched an earlier job.
    Accepted {
        id: u64,
        queue: String,
        replayed: bool,
    },
    Redriven {
        id: u64,
    },
    Rejected(JobError),
}

impl Answer {
    /// The response to the request that submitted or redrove the job.
    pub fn render(self, response: &mut crate::http::Response<'_>, scratch: &mut Vec<u8>) {
        match self {
            Answer::Accepted {
                id,
                queue,
                replayed,
            } => {
                let location = format!("/v1/jobs/{id}");
                let body = serde_json::json!({ "id": id.to_string(), "queue": queue, "status": "queued", "location": location });
                let body = serde_json::to_vec(&body).expect("JSON values serialize");
                let mut headers = vec![("Location", location.as_str())];
                if replayed {
                    headers.push(("Idempotent-Replayed", "true"));
                }
                response.send(202, "application/json", &headers, &body);
            }
            Answer::Redriven { id } => {
                let location = format!("/v1/jobs/{id}");
                let body = format!("{{\"id\":\"{id}\",\"status\":\"queued\"}}");
                response.send(
                    202,
                    "application/json",
                    &[("Location", location.as_str())],
                    body.as_bytes(),
                );
            }
            Answer::Rejected(error) => response.error(&error, scratch),
        }
    }
}

/// An answer on its way to an io core.
#[derive(Debug)]
pub struct Completion {
    pub to: ReplyTo,
    pub answer: Answer,
}

/// A job a handler asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub queue: String,
    pub payload: Value,
    pub idempotency_key: Option<String>,
    /// Run no earlier than this (Unix ms); `None` for now.
    pub run_at_ms: Option<u64>,
}

/// Work an io core hands to the manager, answered later through its mailbox.
#[derive(Debug)]
pub enum Deferred {
    Submit(Submission),
    Redrive(u64),
}

enum Msg {
    Deferred(Deferred, Option<ReplyTo>),
    Finished {
        id: u64,
        attempt: u32,
        outcome: Outcome,
    },
}

/// A job given to a worker.
struct Work {
    id: u64,
    queue: String,
    payload: Value,
    attempt: u32,
}

use crate::net::Outlet;

/// The way back to each io core, by core: answers to its connections.
pub type Answerers = Vec<Outlet<Completion>>;

/// Gauges the manager publishes for `/metrics`.
#[derive(Default)]
pub struct QueueMetrics {
    pub waiting: AtomicU64,
    pub running: AtomicU64,
    pub succeeded: AtomicU64,
    pub retries: AtomicU64,
    pub dead: AtomicU64,
    /// Created time (Unix ms) of the oldest waiting job; 0 when none.
    pub oldest_waiting_ms: AtomicU64,
    /// Commits of the job log that failed (disk full, I/O errors).
    pub log_failures: AtomicU64,
    /// The job log cannot be written now: submissions get 503.
    pub log_failing: std::sync::atomic::AtomicBool,
}

/// The handle io cores and handlers use: submit, and read job status.
pub struct Queues {
    tx: Sender<Msg>,
    /// Each job's status as rendered JSON, published by the manager.
    statuses: papaya::HashMap<u64, Arc<JobView>>,
    pub metrics: QueueMetrics,
    pub options: QueueOptions,
    /// The job kinds this node runs, by queue name.
    pub kinds: JobKinds,
    stop: AtomicBool,
}

/// A job's published status.
#[derive(Debug)]
pub struct JobView {
    pub state: &'static str,
    pub json: Vec<u8>,
}

impl Queues {
    /// Opens the log, replays it, and starts the manager and the workers.
    /// `mailboxes[core]` carries answers back to io core `core`.
    pub fn start(
        options: QueueOptions,
        kinds: JobKinds,
        mailboxes: Answerers,
    ) -> std::io::Result<Arc<Self>> {
        let log = match options.nats {
            Some(_) => None,
            None => Some(JobLog::open(&options.data_dir)?),
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let queues = Arc::new(Self {
            tx,
            statuses: papaya::HashMap::new(),
            metrics: QueueMetrics::default(),
            options: options.clone(),
            kinds: kinds.clone(),
            stop: AtomicBool::new(false),
        });
        let (work_tx, work_rx) = crossbeam_channel::bounded::<Work>(options.workers.max(1) * 2);
        for n in 0..options.workers {
            let work_rx = work_rx.clone();
            let done = queues.tx.clone();
            let kinds = kinds.clone();
            let cpu = options.worker_cpus.get(n).copied();
            std::thread::Builder::new()
                .name(format!("percore-worker-{n}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        let _ = cpu::pin_current_thread(cpu);
                    }
                    for work in work_rx {
                        let outcome = kinds.run(&kinds::Job {
                            id: work.id,
                            queue: &work.queue,
                            payload: &work.payload,
                            attempt: work.attempt,
                        });
                        if done
                            .send(Msg::Finished {
                                id: work.id,
                                attempt: work.attempt,
                                outcome,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                })?;
        }
        let Some((log, records)) = log else {
            let nats = options.nats.clone().expect("checked above");
            nats::start(Arc::clone(&queues), nats, rx, mailboxes, work_tx)?;
            return Ok(queues);
        };
        let mut manager = Manager::new(Arc::clone(&queues), log, mailboxes, work_tx);
        manager.replay(records);
        std::thread::Builder::new()
            .name("percore-jobs".into())
            .spawn(move || manager.run(rx))?;
        Ok(queues)
    }

    /// Hands work to the manager; the answer comes back to `reply` through its core's mailbox.
    pub fn defer(&self, work: Deferred, reply: Option<ReplyTo>) -> bool {
        self.tx.send(Msg::Deferred(work, reply)).is_ok()
    }

    pub fn status(&self, id: u64) -> Option<Arc<JobView>> {
        self.statuses.pin().get(&id).cloned()
    }

    /// Every dead job's status, oldest id first.
    pub fn dead_letters(&self) -> Vec<Arc<JobView>> {
        let statuses = self.statuses.pin();
        let mut dead: Vec<(u64, Arc<JobView>)> = statuses
            .iter()
            .filter(|(_, v)| v.state == "dead")
            .map(|(id, v)| (*id, Arc::clone(v)))
            .collect();
        dead.sort_by_key(|(id, _)| *id);
        dead.into_iter().map(|(_, v)| v).collect()
    }

    /// Asks the manager to stop once its current batch is committed.
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }
}
