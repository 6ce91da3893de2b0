//! Why the job system refused a request, and the one place each maps to an HTTP status.

use thiserror::Error;

use crate::http::ApiError;

/// A submission, redrive or status request the job system refuses.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum JobError {
    /// The payload or the request cannot make a job (no such kind, a bad field, a bad delay).
    #[error("{0}")]
    Invalid(String),
    #[error("no job {id}")]
    NoSuchJob { id: String },
    /// Only a dead job can be redriven.
    #[error("job {id} is {state}, not dead")]
    NotDead { id: u64, state: String },
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("queue `{queue}` is full ({capacity} jobs waiting); retry later")]
    QueueFull { queue: String, capacity: usize },
    #[error("jobs are off: start the server with --data-dir DIR to keep a durable job log, or --queue nats://HOST:PORT")]
    JobsDisabled,
    #[error("the job log cannot be written now (disk full or failing), so no job was accepted; retry later")]
    JobLogUnavailable,
}

impl ApiError for JobError {
    fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) | Self::NotDead { .. } => 400,
            Self::NoSuchJob { .. } => 404,
            Self::Internal(_) => 500,
            Self::QueueFull { .. } | Self::JobsDisabled | Self::JobLogUnavailable => 503,
        }
    }

    fn code(&self) -> &str {
        match self {
            Self::Invalid(_) | Self::NotDead { .. } => "bad_request",
            Self::NoSuchJob { .. } => "not_found",
            Self::Internal(_) => "internal",
            Self::QueueFull { .. } => "queue_full",
            Self::JobsDisabled => "jobs_disabled",
            Self::JobLogUnavailable => "job_log_unavailable",
        }
    }

    fn header(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::QueueFull { .. } | Self::JobLogUnavailable => Some(("Retry-After", "1")),
            _ => None,
        }
    }
}
