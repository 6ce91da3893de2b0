//! The local job manager: one thread that owns the job log and every job's state, commits each batch with one fdatasync, then answers.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::Value;

use super::kinds::Outcome;
use super::log::{JobLog, Record};
use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    Running,
    /// Waiting for a retry after a failed attempt.
    Failed,
    Succeeded,
    Dead,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Failed => "failed",
            State::Succeeded => "succeeded",
            State::Dead => "dead",
        }
    }
}

struct Job {
    queue: String,
    payload: Value,
    idempotency_key: Option<String>,
    max_attempts: u32,
    created_ms: u64,
    state: State,
    attempts: u32,
    last_error: Option<String>,
    result: Option<Value>,
    run_at_ms: u64,
    /// When it succeeded or died: kept `retention` after that.
    finished_at_ms: Option<u64>,
}

pub(super) struct Manager {
    queues: Arc<Queues>,
    log: JobLog,
    mailboxes: Answerers,
    work_tx: Sender<Work>,
    jobs: HashMap<u64, Job>,
    idempotency: HashMap<(String, String), u64>,
    waiting_per_queue: HashMap<String, usize>,
    /// Waiting jobs by creation time: the oldest is the first.
    waiting_by_age: BTreeSet<(u64, u64)>,
    /// Finished jobs by finish time: the first is trimmed first.
    finished: BTreeSet<(u64, u64)>,
    /// Jobs trimmed since the log was last compacted.
    trimmed: usize,
    /// Log size right after the last compaction.
    compacted_len: u64,
    /// Jobs not yet due, by due time.
    timers: BinaryHeap<Reverse<(u64, u64)>>,
    ready: VecDeque<u64>,
    /// Running attempts and when they are presumed lost.
    running: HashMap<u64, u64>,
    next_id: u64,
    rng: u64,
    /// The log failed a commit: submissions and redrives are refused (503)
    /// and no attempt starts, until a commit succeeds again.
    broken: bool,
    /// The state in memory may hold changes the log lost: rebuild it from
    /// the log before taking writes again.
    needs_rebuild: bool,
    replies: Vec<Completion>,
    changed: Vec<u64>,
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Manager {
    pub(super) fn new(
        queues: Arc<Queues>,
        log: JobLog,
        mailboxes: Answerers,
        work_tx: Sender<Work>,
    ) -> Self {
        Self {
            queues,
            log,
            mailboxes,
            work_tx,
            jobs: HashMap::new(),
            idempotency: HashMap::new(),
            waiting_per_queue: HashMap::new(),
            waiting_by_age: BTreeSet::new(),
            finished: BTreeSet::new(),
            trimmed: 0,
            compacted_len: 0,
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            running: HashMap::new(),
            next_id: 1,
            rng: now_ms() | 1,
            broken: false,
            needs_rebuild: false,
            replies: Vec::new(),
            changed: Vec::new(),
        }
    }

    /// Rebuilds every job from the log. Attempts that were running when the
    /// process died are run again: delivery is at least once.
    pub(super) fn replay(&mut self, records: Vec<Record>) {
        for record in records {
            self.apply(&record);
        }
        let ids: Vec<u64> = self.jobs.keys().copied().collect();
        for id in ids {
            let job = self.jobs.get_mut(&id).expect("listed");
            if job.state == State::Running {
                job.state = State::Queued;
            }
            if matches!(job.state, State::Queued | State::Failed) {
                let run_at_ms = job.run_at_ms;
                self.mark_waiting(id);
                self.timers.push(Reverse((run_at_ms, id)));
            }
            self.changed.push(id);
        }
        self.publish();
    }

    /// Applies a record to the in-memory state (at replay and as it is written).
    fn apply(&mut self, record: &Record) {
        match record {
            Record::Enqueued {
                id,
                queue,
                payload,
                idempotency_key,
                run_at_ms,
                max_attempts,
                created_ms,
            } => {
                if let Some(key) = idempotency_key {
                    self.idempotency.insert((queue.clone(), key.clone()), *id);
                }
                self.next_id = self.next_id.max(id + 1);
                self.jobs.insert(
                    *id,
                    Job {
                        queue: queue.clone(),
                        payload: payload.clone(),
                        idempotency_key: idempotency_key.clone(),
                        max_attempts: *max_attempts,
                        created_ms: *created_ms,
                        state: State::Queued,
                        attempts: 0,
                        last_error: None,
                        result: None,
                        run_at_ms: *run_at_ms,
                        finished_at_ms: None,
                    },
                );
            }
            Record::Started { id, attempt } => {
                if let Some(job) = self.jobs.get_mut(id) {
                    job.state = State::Running;
                    job.attempts = *attempt;
                }
            }
            Record::Succeeded { id, result, at_ms } => {
                if let Some(job) = self.jobs.get_mut(id) {
                    job.state = State::Succeeded;
                    job.result = Some(result.clone());
                    job.finished_at_ms = Some(*at_ms);
                    self.finished.insert((*at_ms, *id));
                }
            }
            Record::Failed {
                id,
                attempt,
                error,
                retry_at_ms,
            } => {
                if let Some(job) = self.jobs.get_mut(id) {
                    job.state = State::Failed;
                    job.attempts = *attempt;
                    job.last_error = Some(error.clone());
                    job.run_at_ms = *retry_at_ms;
                }
            }
            Record::Dead {
                id,
                attempt,
                error,
                at_ms,
            } => {
                if let Some(job) = self.jobs.get_mut(id) {
                    job.state = State::Dead;
                    job.attempts = *attempt;
                    job.last_error = Some(error.clone());
                    job.finished_at_ms = Some(*at_ms);
                    self.finished.insert((*at_ms, *id));
                }
            }
            Record::NextId { id } => self.next_id = self.next_id.max(*id),
            Record::Redriven { id } => {
                if let Some(job) = self.jobs.get_mut(id) {
                    if let Some(at_ms) = job.finished_at_ms.take() {
                        self.finished.remove(&(at_ms, *id));
                    }
                    job.state = State::Queued;
                    job.attempts = 0;
                    job.run_at_ms = 0;
                }
            }
        }
    }

    fn record(&mut self, record: Record) {
        self.log.stage(&record);
        self.apply(&record);
    }

    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let wait = self
                .timers
                .peek()
                .map(|Reverse((due, _))| Duration::from_millis(due.saturating_sub(now_ms())))
                .unwrap_or(Duration::from_millis(200))
                .min(Duration::from_millis(200));
            match rx.recv_timeout(wait) {
                Ok(msg) => {
                    self.handle(msg);
                    // Group commit: take everything already queued into this batch.
                    for msg in rx.try_iter().take(4096) {
                        self.handle(msg);
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            self.expire_lost_attempts();
            self.trim_finished();
            let probe = self.broken && !self.log.has_staged();
            if probe {
                // A record that changes nothing, to learn whether the disk takes writes again.
                self.log.stage(&Record::NextId { id: self.next_id });
            }
            self.commit_or_degrade(probe);
            if !self.broken {
                self.compact_if_due();
            }
            // Statuses first, so a client that has its 202 can read its job.
            self.publish();
            for completion in self.replies.drain(..) {
                if let Some(mailbox) = self.mailboxes.get(completion.to.core) {
                    mailbox.deliver(completion);
                }
            }
            // Only now, after the commit: a job runs only once its acceptance
            // is durable; and none starts while its start cannot be recorded.
            if !self.broken {
                self.dispatch();
            }
            self.publish();
            if self.queues.stop.load(Relaxed) {
                return;
            }
        }
    }

    /// Commits what the turn staged. On failure (disk full, an I/O error)
    /// nothing staged is durable, so nothing staged is acknowledged; the
    /// state in memory is rebuilt from the log, which holds exactly what
    /// was acknowledged; and the manager refuses work until a commit
    /// succeeds again: then it takes jobs again, with no restart.
    fn commit_or_degrade(&mut self, probe: bool) {
        match self.log.commit() {
            Ok(()) => {
                if self.needs_rebuild {
                    // The probe went through, but the state could not be rebuilt yet.
                    self.rebuild_from_log();
                }
                if self.broken && !self.needs_rebuild {
                    self.broken = false;
                    self.queues.metrics.log_failing.store(false, Relaxed);
                    eprintln!(
                        "percore: the job log {} takes writes again; jobs are accepted",
                        self.log.path().display()
                    );
                }
            }
            Err(error) => {
                self.queues.metrics.log_failures.fetch_add(1, Relaxed);
                if !self.broken {
                    eprintln!(
                        "percore: cannot write the job log {}: {error}; submissions get 503 until it can be written again",
                        self.log.path().display()
                    );
                }
                self.broken = true;
                self.queues.metrics.log_failing.store(true, Relaxed);
                for reply in &mut self.replies {
                    if matches!(
                        reply.answer,
                        Answer::Accepted { .. } | Answer::Redriven { .. }
                    ) {
                        reply.answer = Answer::Rejected(JobError::JobLogUnavailable);
                    }
                }
                // A probe changed nothing in memory; anything else did.
                if probe && !self.needs_rebuild {
                    return;
                }
                self.needs_rebuild = true;
                self.rebuild_from_log();
            }
        }
    }

    /// Replaces the state in memory with what the log holds, as at start-up.
    /// Attempts running now are presumed lost and run again later (their
    /// late answers are ignored): delivery stays at least once.
    fn rebuild_from_log(&mut self) {
        let dir = self
            .log
            .path()
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default();
        let (log, records) = match JobLog::open(&dir) {
            Ok(opened) => opened,
            Err(error) => {
                eprintln!(
                    "percore: cannot read the job log {} back: {error}; trying again",
                    self.log.path().display()
                );
                return;
            }
        };
        let mut fresh = Manager::new(
            Arc::clone(&self.queues),
            log,
            self.mailboxes.clone(),
            self.work_tx.clone(),
        );
        fresh.rng = self.rng;
        fresh.broken = self.broken;
        fresh.compacted_len = self.compacted_len;
        fresh.replies = std::mem::take(&mut self.replies);
        fresh.replay(records);
        *self = fresh;
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Deferred(Deferred::Submit(submission), reply) => {
                let answer = self.submit(submission);
                if let Some(to) = reply {
                    self.replies.push(Completion { to, answer });
                }
            }
            Msg::Deferred(Deferred::Redrive(id), reply) => {
                let answer = match self.jobs.get(&id).map(|j| (j.state, j.queue.clone())) {
                    Some((State::Dead, _)) => {
                        self.record(Record::Redriven { id });
                        self.mark_waiting(id);
                        self.timers.push(Reverse((0, id)));
                        self.changed.push(id);
                        Answer::Redriven { id }
                    }
                    Some((state, _)) => Answer::Rejected(JobError::NotDead {
                        id,
                        state: state.name().to_owned(),
                    }),
                    None => Answer::Rejected(JobError::NoSuchJob { id: id.to_string() }),
                };
                if let Some(to) = reply {
                    self.replies.push(Completion { to, answer });
                }
            }
            Msg::Finished {
                id,
                attempt,
                outcome,
            } => self.finished(id, attempt, outcome),
        }
    }

    fn submit(&mut self, submission: Submission) -> Answer {
        let Submission {
            queue,
            payload,
            idempotency_key,
            run_at_ms,
        } = submission;
        if self.broken {
            return Answer::Rejected(JobError::JobLogUnavailable);
        }
        if let Some(key) = &idempotency_key {
            if let Some(&id) = self.idempotency.get(&(queue.clone(), key.clone())) {
                return Answer::Accepted {
                    id,
                    queue,
                    replayed: true,
                };
            }
        }
        let waiting = self.waiting_per_queue.get(&queue).copied().unwrap_or(0);
        if waiting >= self.queues.options.capacity {
            return Answer::Rejected(JobError::QueueFull {
                queue,
                capacity: self.queues.options.capacity,
            });
        }
        let id = self.next_id;
        let now = now_ms();
        let run_at_ms = run_at_ms.unwrap_or(now);
        self.record(Record::Enqueued {
            id,
            queue: queue.clone(),
            payload,
            idempotency_key,
            run_at_ms,
            max_attempts: self.queues.options.max_attempts,
            created_ms: now,
        });
        self.mark_waiting(id);
        self.timers.push(Reverse((run_at_ms, id)));
        self.changed.push(id);
        Answer::Accepted {
            id,
            queue,
            replayed: false,
        }
    }

    fn finished(&mut self, id: u64, attempt: u32, outcome: Outcome) {
        // A late answer from an attempt already presumed lost is ignored.
        let current = self
            .jobs
            .get(&id)
            .is_some_and(|j| j.state == State::Running && j.attempts == attempt);
        if !current {
            return;
        }
        self.running.remove(&id);
        let max_attempts = self.jobs[&id].max_attempts;
        match outcome {
            Outcome::Succeeded(result) => {
                self.record(Record::Succeeded {
                    id,
                    result,
                    at_ms: now_ms(),
                });
                self.queues.metrics.succeeded.fetch_add(1, Relaxed);
            }
            Outcome::Retry(error) if attempt < max_attempts => {
                let retry_at_ms = now_ms() + self.backoff_ms(attempt);
                self.record(Record::Failed {
                    id,
                    attempt,
                    error,
                    retry_at_ms,
                });
                self.mark_waiting(id);
                self.timers.push(Reverse((retry_at_ms, id)));
                self.queues.metrics.retries.fetch_add(1, Relaxed);
            }
            Outcome::Retry(error) | Outcome::Fatal(error) => {
                self.record(Record::Dead {
                    id,
                    attempt,
                    error,
                    at_ms: now_ms(),
                });
                self.queues.metrics.dead.fetch_add(1, Relaxed);
            }
        }
        self.changed.push(id);
    }

    fn backoff_ms(&mut self, attempt: u32) -> u64 {
        self.queues.options.backoff_ms(attempt, &mut self.rng)
    }

    fn expire_lost_attempts(&mut self) {
        let now = now_ms();
        let lost: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, &deadline)| deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in lost {
            let attempt = self.jobs[&id].attempts;
            let error = format!("attempt {attempt} did not finish within the visibility timeout");
            self.finished(id, attempt, Outcome::Retry(error));
        }
    }

    /// Moves due jobs to the workers, as many as they have room for.
    fn dispatch(&mut self) {
        let now = now_ms();
        while let Some(&Reverse((due, id))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            self.ready.push_back(id);
        }
        while let Some(&id) = self.ready.front() {
            let Some(job) = self.jobs.get(&id) else {
                self.ready.pop_front();
                continue;
            };
            let attempt = job.attempts + 1;
            let work = Work {
                id,
                queue: job.queue.clone(),
                payload: job.payload.clone(),
                attempt,
            };
            match self.work_tx.try_send(work) {
                Ok(()) => {
                    self.ready.pop_front();
                    self.mark_dispatched(id);
                    // Not waited for: if this is lost in a crash the attempt runs again.
                    self.record(Record::Started { id, attempt });
                    let deadline = now + self.queues.options.visibility_timeout.as_millis() as u64;
                    self.running.insert(id, deadline);
                    self.changed.push(id);
                }
                Err(TrySendError::Full(_)) => break,
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// Renders every changed job's status for `GET /v1/jobs/{id}`, and the gauges.
    fn publish(&mut self) {
        let statuses = self.queues.statuses.pin();
        for id in self.changed.drain(..) {
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            let mut view = serde_json::json!({
                "id": id.to_string(),
                "queue": job.queue,
                "status": job.state.name(),
                "attempts": job.attempts,
                "max_attempts": job.max_attempts,
                "created_ms": job.created_ms,
            });
            if let Some(error) = &job.last_error {
                view["last_error"] = Value::from(error.as_str());
            }
            if let Some(result) = &job.result {
                view["result"] = result.clone();
            }
            if let Some(key) = &job.idempotency_key {
                view["idempotency_key"] = Value::from(key.as_str());
            }
            if matches!(job.state, State::Queued | State::Failed) {
                view["run_at_ms"] = Value::from(job.run_at_ms);
            }
            let json = serde_json::to_vec(&view).expect("JSON values serialize");
            statuses.insert(
                id,
                Arc::new(JobView {
                    state: job.state.name(),
                    json,
                }),
            );
        }
        let metrics = &self.queues.metrics;
        let waiting: usize = self.waiting_per_queue.values().sum();
        metrics.waiting.store(waiting as u64, Relaxed);
        metrics.running.store(self.running.len() as u64, Relaxed);
        let oldest = self
            .waiting_by_age
            .first()
            .map_or(0, |(created_ms, _)| *created_ms);
        metrics.oldest_waiting_ms.store(oldest, Relaxed);
    }

    /// Forgets jobs that finished more than `retention` ago: their status,
    /// their idempotency key and, at the next compaction, their records.
    fn trim_finished(&mut self) {
        let Some(cutoff) = now_ms().checked_sub(self.queues.options.retention.as_millis() as u64)
        else {
            return;
        };
        let statuses = self.queues.statuses.pin();
        while let Some(&(at_ms, id)) = self.finished.first() {
            if at_ms > cutoff {
                break;
            }
            self.finished.pop_first();
            if let Some(job) = self.jobs.remove(&id) {
                if let Some(key) = job.idempotency_key {
                    self.idempotency.remove(&(job.queue, key));
                }
            }
            statuses.remove(&id);
            self.trimmed += 1;
        }
    }

    /// Rewrites the log with only the jobs still kept, once it has grown
    /// past `compact_above` and twice its size after the last compaction.
    fn compact_if_due(&mut self) {
        let threshold = self
            .queues
            .options
            .compact_above
            .max(self.compacted_len.saturating_mul(2));
        if self.trimmed == 0 || self.log.len() <= threshold || self.log.has_staged() {
            return;
        }
        let mut ids: Vec<u64> = self.jobs.keys().copied().collect();
        ids.sort_unstable();
        let mut records = Vec::with_capacity(ids.len() * 2);
        for id in ids {
            let job = &self.jobs[&id];
            records.push(Record::Enqueued {
                id,
                queue: job.queue.clone(),
                payload: job.payload.clone(),
                idempotency_key: job.idempotency_key.clone(),
                run_at_ms: job.run_at_ms,
                max_attempts: job.max_attempts,
                created_ms: job.created_ms,
            });
            let error = || job.last_error.clone().unwrap_or_default();
            match job.state {
                State::Queued if job.attempts == 0 => {}
                State::Queued | State::Running => records.push(Record::Started {
                    id,
                    attempt: job.attempts,
                }),
                State::Failed => records.push(Record::Failed {
                    id,
                    attempt: job.attempts,
                    error: error(),
                    retry_at_ms: job.run_at_ms,
                }),
                State::Succeeded => records.push(Record::Succeeded {
                    id,
                    result: job.result.clone().unwrap_or(Value::Null),
                    at_ms: job.finished_at_ms.unwrap_or(0),
                }),
                State::Dead => records.push(Record::Dead {
                    id,
                    attempt: job.attempts,
                    error: error(),
                    at_ms: job.finished_at_ms.unwrap_or(0),
                }),
            }
        }
        // Ids must not be reused after a restart, even if the newest jobs were trimmed.
        records.push(Record::NextId { id: self.next_id });
        match self.log.rewrite(&records) {
            Ok(()) => {
                self.trimmed = 0;
                self.compacted_len = self.log.len();
            }
            Err(error) => eprintln!(
                "percore: compacting the job log {} failed (it keeps growing): {error}",
                self.log.path().display()
            ),
        }
    }

    /// Counts a job as waiting (for capacity and the oldest-waiting gauge).
    fn mark_waiting(&mut self, id: u64) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if self.waiting_by_age.insert((job.created_ms, id)) {
            *self.waiting_per_queue.entry(job.queue.clone()).or_default() += 1;
        }
    }

    /// A waiting job went to a worker.
    fn mark_dispatched(&mut self, id: u64) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if self.waiting_by_age.remove(&(job.created_ms, id)) {
            if let Some(waiting) = self.waiting_per_queue.get_mut(&job.queue) {
                *waiting = waiting.saturating_sub(1);
            }
        }
    }
}
