//! Why a document request was refused, and the one place each maps to an HTTP status.

use thiserror::Error;

use crate::http::ApiError;

/// A document request the document API or the store refuses.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DocError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no document `{key}` in collection `{collection}`")]
    DocumentNotFound { collection: String, key: String },
    #[error("{0}")]
    PreconditionFailed(String),
    #[error(
        "the document of {size} bytes exceeds the limit of {limit} bytes (--max-document-bytes)"
    )]
    DocumentTooLarge { size: usize, limit: usize },
    #[error("{0}")]
    InvalidDocument(String),
    #[error("{0}")]
    InvalidFields(String),
    #[error("{0}")]
    InvalidKey(String),
    #[error("Content-Type `{got}` is not accepted here; send {expected}")]
    UnsupportedMediaType { got: String, expected: &'static str },
    #[error("the document store cannot serve this request: {0}; nothing was written")]
    StoreUnavailable(String),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ApiError for DocError {
    fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_)
            | Self::InvalidDocument(_)
            | Self::InvalidFields(_)
            | Self::InvalidKey(_) => 400,
            Self::DocumentNotFound { .. } => 404,
            Self::PreconditionFailed(_) => 412,
            Self::DocumentTooLarge { .. } => 413,
            Self::UnsupportedMediaType { .. } => 415,
            Self::Internal(_) => 500,
            Self::StoreUnavailable(_) => 503,
        }
    }

    fn header(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::StoreUnavailable(_) => Some(("Retry-After", "1")),
            _ => None,
        }
    }

    fn code(&self) -> &str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::DocumentNotFound { .. } => "not_found",
            Self::PreconditionFailed(_) => "precondition_failed",
            Self::DocumentTooLarge { .. } => "document_too_large",
            Self::InvalidDocument(_) => "invalid_document",
            Self::InvalidFields(_) => "invalid_fields",
            Self::InvalidKey(_) => "invalid_key",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::Internal(_) => "internal",
        }
    }
}
