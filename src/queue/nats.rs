//! The job system on NATS JetStream (`--queue nats://HOST:PORT`): the same endpoints and semantics, with the work shared by every node on the stream.
//!
//! One bridge thread runs a single-threaded tokio runtime for the NATS
//! client; io cores and workers reach it through the same channel as the
//! local manager, and its answers go back through the same mailboxes.
//!
//! - Durable before 202: a submission is published to the jobs stream and
//!   acknowledged once JetStream has stored it. Its id is the stream
//!   sequence. `Idempotency-Key` becomes `Nats-Msg-Id`, so JetStream's
//!   duplicate window (2 minutes) answers a repeat with the first job.
//! - Work: one durable pull consumer shared by every node (work-queue
//!   retention: a job leaves the stream when acknowledged). `ack_wait` is
//!   the visibility timeout, `max_deliver` the attempt limit; a retry is a
//!   NAK with the jittered backoff as its delay.
//! - Dead letters: terminated, copied to the dead-letter stream, and
//!   redriven as a new job (a new id).
//! - Status: a stream keeping the last status per job (one subject per
//!   job, as a key-value bucket does, built directly so it works on NATS
//!   2.9), which every node writes and follows with an ordered consumer
//!   into the local table `GET /v1/jobs/{id}` reads.
//! - Backpressure: `max_messages_per_subject` (one subject per kind) with
//!   discard-new: a full kind answers 503.
//! - Not supported here: delayed jobs (`?delay`, `?run_at`) are refused with 400.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream, AckKind};
use crossbeam_channel::{Receiver, Sender};
use futures_util::StreamExt;
use serde_json::Value;

use super::kinds::Outcome;
use super::{
    Answer, Answerers, Completion, Deferred, JobError, JobView, Msg, Queues, Submission, Work,
};

/// Where the jobs live on NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsOptions {
    /// `nats://HOST:PORT`.
    pub url: String,
    /// The jobs stream; the dead letters go to `<stream>_DEAD`, statuses to `<stream>_STATUS`.
    pub stream: String,
}

/// Connects, creates the stream, dead-letter stream, status bucket and
/// consumer as needed, and starts the bridge thread. Fails if NATS cannot
/// be reached within a few seconds.
pub(super) fn start(
    queues: Arc<Queues>,
    nats: NatsOptions,
    rx: Receiver<Msg>,
    mailboxes: Answerers,
    work_tx: Sender<Work>,
) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("percore-nats".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(error.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut bridge = match Bridge::connect(queues, &nats, mailboxes, work_tx).await {
                    Ok(bridge) => {
                        let _ = ready_tx.send(Ok(()));
                        bridge
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                bridge.run(rx).await;
            });
        })?;
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(std::io::Error::other(error)),
        Err(_) => Err(std::io::Error::other("NATS did not answer within 10 s")),
    }
}

struct Bridge {
    queues: Arc<Queues>,
    js: jetstream::Context,
    status: stream::Stream,
    status_prefix: String,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    subject_prefix: String,
    dead_prefix: String,
    mailboxes: Answerers,
    work_tx: Sender<Work>,
    /// Deliveries handed to workers, by job id, to acknowledge when they finish.
    inflight: HashMap<u64, jetstream::Message>,
    rng: u64,
}

impl Bridge {
    async fn connect(
        queues: Arc<Queues>,
        nats: &NatsOptions,
        mailboxes: Answerers,
        work_tx: Sender<Work>,
    ) -> Result<Self, String> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(nats.url.as_str())
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", nats.url))?;
        let js = jetstream::new(client);
        let options = &queues.options;
        let base = nats.stream.to_ascii_lowercase();
        let subject_prefix = format!("{base}.jobs.");
        let dead_prefix = format!("{base}.dead.");
        let jobs = js
            .get_or_create_stream(stream::Config {
                name: nats.stream.clone(),
                subjects: vec![format!("{subject_prefix}>")],
                retention: stream::RetentionPolicy::WorkQueue,
                max_messages_per_subject: options.capacity as i64,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating the jobs stream {}: {e}", nats.stream))?;
        js.get_or_create_stream(stream::Config {
            name: format!("{}_DEAD", nats.stream),
            subjects: vec![format!("{dead_prefix}>")],
            ..Default::default()
        })
        .await
        .map_err(|e| format!("creating the dead-letter stream: {e}"))?;
        let status_prefix = format!("{base}.status.");
        let status = js
            .get_or_create_stream(stream::Config {
                name: format!("{}_STATUS", nats.stream),
                subjects: vec![format!("{status_prefix}*")],
                max_messages_per_subject: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating the status stream: {e}"))?;
        let consumer = jobs
            .get_or_create_consumer(
                "workers",
                pull::Config {
                    durable_name: Some("workers".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: options.visibility_timeout,
                    max_deliver: i64::from(options.max_attempts),
                    // Shared by every node: only a bound against runaway, since a
                    // dead node's deliveries count here until their ack_wait ends.
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("creating the workers' consumer: {e}"))?;
        Ok(Self {
            queues,
            js,
            status,
            status_prefix,
            consumer,
            subject_prefix,
            dead_prefix,
            mailboxes,
            work_tx,
            inflight: HashMap::new(),
            rng: super::now_ms() | 1,
        })
    }

    async fn run(&mut self, rx: Receiver<Msg>) {
        // The channel is crossbeam (io cores and workers block-free send to
        // it); a forwarding thread turns it into something await-able.
        let (tx, mut inbox) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for msg in rx {
                if tx.send(msg).is_err() {
                    return;
                }
            }
        });
        let follow = pull::OrderedConfig {
            filter_subject: format!("{}*", self.status_prefix),
            deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        };
        let watch = match self.status.create_consumer(follow).await {
            Ok(consumer) => consumer.messages().await.ok(),
            Err(_) => None,
        };
        // Pull no more than this node's workers can hold, so unstarted work
        // stays on the stream for the other nodes.
        let capacity = self.queues.options.workers.max(1) * 2;
        let deliveries = self
            .consumer
            .stream()
            .max_messages_per_batch(capacity)
            .messages()
            .await;
        let (Ok(mut deliveries), Some(mut watch)) = (deliveries, watch) else {
            eprintln!("percore: cannot subscribe to the NATS jobs stream");
            return;
        };
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                msg = inbox.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => return,
                },
                Some(delivery) = deliveries.next(), if self.inflight.len() < capacity => {
                    if let Ok(delivery) = delivery {
                        self.deliver(delivery).await;
                    }
                }
                Some(Ok(update)) = watch.next() => self.mirror(&update.subject, &update.payload),
                _ = gauges.tick() => self.update_gauges().await,
            }
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Deferred(work, reply) => {
                let answer = match work {
                    Deferred::Submit(submission) => self.submit(submission).await,
                    Deferred::Redrive(id) => self.redrive(id).await,
                };
                if let Some(to) = reply {
                    if let Some(mailbox) = self.mailboxes.get(to.core) {
                        mailbox.deliver(Completion { to, answer });
                    }
                }
            }
            Msg::Finished {
                id,
                attempt,
                outcome,
            } => self.finished(id, attempt, outcome).await,
        }
    }

    async fn submit(&mut self, submission: Submission) -> Answer {
        let Submission {
            queue,
            payload,
            idempotency_key,
            run_at_ms,
        } = submission;
        if run_at_ms.is_some() {
            return Answer::Rejected(JobError::Invalid(
                "delayed jobs are not supported with --queue nats".into(),
            ));
        }
        let mut headers = async_nats::HeaderMap::new();
        if let Some(key) = &idempotency_key {
            headers.insert("Nats-Msg-Id", format!("{queue}:{key}").as_str());
        }
        let body = serde_json::to_vec(&payload).expect("JSON values serialize");
        let subject = format!("{}{queue}", self.subject_prefix);
        let published = match self
            .js
            .publish_with_headers(subject, headers, body.into())
            .await
        {
            Ok(future) => future.await,
            Err(error) => return Answer::Rejected(unavailable(&error)),
        };
        let ack = match published {
            Ok(ack) => ack,
            Err(error) if error.to_string().contains("maximum messages per subject") => {
                return Answer::Rejected(JobError::QueueFull {
                    queue,
                    capacity: self.queues.options.capacity,
                });
            }
            Err(error) => return Answer::Rejected(unavailable(&error)),
        };
        if !ack.duplicate {
            let view = serde_json::json!({
                "id": ack.sequence.to_string(),
                "queue": queue,
                "status": "queued",
                "attempts": 0,
                "max_attempts": self.queues.options.max_attempts,
                "created_ms": super::now_ms(),
                "idempotency_key": idempotency_key,
                "payload": payload,
            });
            self.put_status(ack.sequence, &view).await;
        }
        Answer::Accepted {
            id: ack.sequence,
            queue,
            replayed: ack.duplicate,
        }
    }

    async fn redrive(&mut self, id: u64) -> Answer {
        let Some(bytes) = self.get_status(id).await else {
            return Answer::Rejected(JobError::NoSuchJob { id: id.to_string() });
        };
        let Ok(mut view) = serde_json::from_slice::<Value>(&bytes) else {
            return Answer::Rejected(JobError::Internal("unreadable job status"));
        };
        if view["status"] != "dead" {
            return Answer::Rejected(JobError::NotDead {
                id,
                state: view["status"].as_str().unwrap_or("?").to_owned(),
            });
        }
        let queue = view["queue"].as_str().unwrap_or_default().to_owned();
        let submission = Submission {
            queue,
            payload: view["payload"].clone(),
            idempotency_key: None,
            run_at_ms: None,
        };
        match self.submit(submission).await {
            Answer::Accepted { id: new_id, .. } => {
                view["status"] = Value::from("redriven");
                view["redriven_as"] = Value::from(new_id.to_string());
                self.put_status(id, &view).await;
                Answer::Redriven { id: new_id }
            }
            other => other,
        }
    }

    /// A delivery from the shared consumer: hand it to a worker of this node.
    async fn deliver(&mut self, delivery: jetstream::Message) {
        let (id, attempt) = match delivery.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(_) => return,
        };
        let queue = self.kind_of(&delivery);
        let Ok(payload) = serde_json::from_slice::<Value>(&delivery.payload) else {
            let _ = delivery.ack_with(AckKind::Term).await;
            return;
        };
        let work = Work {
            id,
            queue: queue.clone(),
            payload,
            attempt,
        };
        if self.work_tx.try_send(work).is_err() {
            // Workers full (max_ack_pending should prevent it): let another node or a later turn take it.
            let _ = delivery
                .ack_with(AckKind::Nak(Some(Duration::from_millis(200))))
                .await;
            return;
        }
        self.inflight.insert(id, delivery);
        self.update_status(id, |view| {
            view["status"] = Value::from("running");
            view["attempts"] = Value::from(attempt);
        })
        .await;
    }

    async fn finished(&mut self, id: u64, attempt: u32, outcome: Outcome) {
        let Some(delivery) = self.inflight.remove(&id) else {
            return;
        };
        let max_attempts = self.queues.options.max_attempts;
        let queues = Arc::clone(&self.queues);
        let metrics = &queues.metrics;
        match outcome {
            Outcome::Succeeded(result) => {
                let _ = delivery.double_ack().await;
                metrics.succeeded.fetch_add(1, Relaxed);
                self.update_status(id, |view| {
                    view["status"] = Value::from("succeeded");
                    view["result"] = result;
                })
                .await;
            }
            Outcome::Retry(error) if attempt < max_attempts => {
                let delay = self.backoff(attempt);
                let _ = delivery.ack_with(AckKind::Nak(Some(delay))).await;
                metrics.retries.fetch_add(1, Relaxed);
                self.update_status(id, |view| {
                    view["status"] = Value::from("failed");
                    view["last_error"] = Value::from(error);
                })
                .await;
            }
            Outcome::Retry(error) | Outcome::Fatal(error) => {
                let _ = delivery.ack_with(AckKind::Term).await;
                let queue = self.kind_of(&delivery);
                let dead_subject = format!("{}{queue}", self.dead_prefix);
                if let Ok(future) = self
                    .js
                    .publish(dead_subject, delivery.payload.clone())
                    .await
                {
                    let _ = future.await;
                }
                metrics.dead.fetch_add(1, Relaxed);
                self.update_status(id, |view| {
                    view["status"] = Value::from("dead");
                    view["last_error"] = Value::from(error);
                })
                .await;
            }
        }
    }

    /// The job kind a delivery is for: its subject after the jobs prefix.
    fn kind_of(&self, delivery: &jetstream::Message) -> String {
        let subject = delivery.subject.as_str();
        subject
            .strip_prefix(self.subject_prefix.as_str())
            .unwrap_or_default()
            .to_owned()
    }

    fn backoff(&mut self, attempt: u32) -> Duration {
        Duration::from_millis(self.queues.options.backoff_ms(attempt, &mut self.rng))
    }

    async fn update_status(&self, id: u64, change: impl FnOnce(&mut Value)) {
        let mut view = match self.get_status(id).await {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| serde_json::json!({})),
            None => serde_json::json!({ "id": id.to_string() }),
        };
        change(&mut view);
        self.put_status(id, &view).await;
    }

    async fn get_status(&self, id: u64) -> Option<Vec<u8>> {
        let subject = format!("{}{id}", self.status_prefix);
        self.status
            .get_last_raw_message_by_subject(&subject)
            .await
            .ok()
            .map(|m| m.payload.to_vec())
    }

    async fn put_status(&self, id: u64, view: &Value) {
        let bytes = serde_json::to_vec(view).expect("JSON values serialize");
        let subject = format!("{}{id}", self.status_prefix);
        // This node sees its own writes at once; the others through the stream.
        self.mirror(&subject, &bytes);
        if let Ok(ack) = self.js.publish(subject, bytes.into()).await {
            let _ = ack.await;
        }
    }

    /// A status written by any node: into the local table `GET /v1/jobs/{id}` reads.
    fn mirror(&self, subject: &str, payload: &[u8]) {
        let Some(Ok(id)) = subject
            .strip_prefix(self.status_prefix.as_str())
            .map(str::parse::<u64>)
        else {
            return;
        };
        let Ok(mut view) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        if let Some(object) = view.as_object_mut() {
            // Kept for redrive, not shown.
            object.remove("payload");
        }
        let state = match view["status"].as_str() {
            Some("queued") => "queued",
            Some("running") => "running",
            Some("failed") => "failed",
            Some("succeeded") => "succeeded",
            Some("dead") => "dead",
            Some("redriven") => "redriven",
            _ => "unknown",
        };
        let json = serde_json::to_vec(&view).expect("JSON values serialize");
        self.queues
            .statuses
            .pin()
            .insert(id, Arc::new(JobView { state, json }));
    }

    async fn update_gauges(&mut self) {
        let metrics = &self.queues.metrics;
        metrics.running.store(self.inflight.len() as u64, Relaxed);
        if let Ok(info) = self.consumer.info().await {
            metrics.waiting.store(info.num_pending, Relaxed);
        }
    }
}

fn unavailable(error: &dyn std::fmt::Display) -> JobError {
    eprintln!("percore: NATS did not take a job: {error}");
    JobError::JobLogUnavailable
}
