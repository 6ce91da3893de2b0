//! Job endpoints: submit (answered once durable), status, dead letters, redrive.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::app::{Ctx, Request};
use crate::config::parse_duration;
use crate::http::Response;
use crate::queue::kinds::JobKinds;
use crate::queue::{Deferred, JobError, Submission};

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// `POST /v1/jobs/{queue}`: validates the payload, then defers the answer
/// until the manager has made the job durable (`202` with its id).
pub fn submit<S>(request: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    if ctx.node.queues.is_none() {
        return response.error(&JobError::JobsDisabled, &mut ctx.scratch);
    }
    let queue = request.params.get("queue").unwrap_or_default();
    let kinds = match &ctx.node.queues {
        Some(queues) => queues.kinds.clone(),
        None => return response.error(&JobError::JobsDisabled, &mut ctx.scratch),
    };
    let submission = match parse_submission(request, queue, &kinds) {
        Ok(submission) => submission,
        Err(message) => return response.error(&JobError::Invalid(message), &mut ctx.scratch),
    };
    ctx.defer_job(Deferred::Submit(submission));
}

fn parse_submission(
    request: &Request<'_>,
    queue: &str,
    kinds: &JobKinds,
) -> Result<Submission, String> {
    let payload: Value = serde_json::from_slice(request.body)
        .map_err(|e| format!("the body is not valid JSON: {e}"))?;
    if !payload.is_object() {
        return Err("the body must be a JSON object".into());
    }
    kinds.validate(queue, &payload)?;
    let idempotency_key = match request.header("idempotency-key") {
        None => None,
        Some(key) => {
            let key = std::str::from_utf8(key).ok().filter(|k| {
                !k.is_empty()
                    && k.len() <= MAX_IDEMPOTENCY_KEY
                    && k.bytes().all(|b| (0x21..0x7f).contains(&b))
            });
            Some(
                key.ok_or(format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
                ))?
                .to_owned(),
            )
        }
    };
    let mut run_at_ms = None;
    for pair in request
        .query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "delay" => {
                let delay = parse_duration(value)
                    .ok_or(format!("delay `{value}` is not a duration like 30s or 5m"))?;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let due = u64::try_from(delay.as_millis())
                    .ok()
                    .and_then(|d| now.checked_add(d));
                run_at_ms = Some(due.ok_or(format!("delay `{value}` is too long"))?);
            }
            "run_at" => {
                run_at_ms =
                    Some(value.parse::<u64>().map_err(|_| {
                        format!("run_at `{value}` is not a Unix time in milliseconds")
                    })?);
            }
            other => {
                return Err(format!(
                    "unknown query parameter `{other}`; known: delay, run_at"
                ))
            }
        }
    }
    Ok(Submission {
        queue: queue.to_owned(),
        payload,
        idempotency_key,
        run_at_ms,
    })
}

fn job_id(request: &Request<'_>) -> Option<u64> {
    request.params.get("id").and_then(|id| id.parse().ok())
}

/// `GET /v1/jobs/{id}`: queued, running, failed (waiting to retry), succeeded or dead.
pub fn status<S>(request: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    let Some(queues) = &ctx.node.queues else {
        return response.error(&JobError::JobsDisabled, &mut ctx.scratch);
    };
    match job_id(request).and_then(|id| queues.status(id)) {
        Some(view) => response.send(200, "application/json", &[], &view.json),
        None => response.error(
            &JobError::NoSuchJob {
                id: request.param("id").unwrap_or_default().to_owned(),
            },
            &mut ctx.scratch,
        ),
    }
}

/// `POST /v1/jobs/{id}/redrive`: runs a dead job again from its first attempt.
pub fn redrive<S>(request: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    if ctx.node.queues.is_none() {
        return response.error(&JobError::JobsDisabled, &mut ctx.scratch);
    }
    match job_id(request) {
        Some(id) => ctx.defer_job(Deferred::Redrive(id)),
        None => response.error(
            &JobError::NoSuchJob {
                id: request.param("id").unwrap_or_default().to_owned(),
            },
            &mut ctx.scratch,
        ),
    }
}

/// `GET /v1/dead`: every dead job with its last error.
pub fn dead_letters<S>(_: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    let Some(queues) = &ctx.node.queues else {
        return response.error(&JobError::JobsDisabled, &mut ctx.scratch);
    };
    let mut body = b"{\"dead\":[".to_vec();
    for (n, view) in queues.dead_letters().iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&view.json);
    }
    body.extend_from_slice(b"]}");
    response.send(200, "application/json", &[], &body);
}
