//! How an error becomes an answer ([`ApiError`]), and every way the HTTP layer itself can refuse a request, with the one place each maps to a status.
//!
//! The layers above have their own error types, each the one place its
//! errors map to a status: the document API's ([`crate::documents::DocError`]),
//! the job system's ([`crate::queue::JobError`]), an application's.

use thiserror::Error;

/// An error a handler answers with: one HTTP status, a stable machine-readable
/// code and a message for the client (its `Display`), rendered by
/// [`crate::http::Response::error`] as `{"error": code, "message": ...}`.
///
/// percore's own errors implement it ([`HttpError`], the document store's
/// and the job system's); so can an application's, which then answer in
/// the same shape:
///
/// ```
/// use percore::http::ApiError;
///
/// #[derive(Debug, thiserror::Error)]
/// enum CatalogueError {
///     #[error("no product `{0}`")]
///     NoProduct(String),
///     #[error("price must be positive, got {0}")]
///     BadPrice(i64),
/// }
///
/// impl ApiError for CatalogueError {
///     fn status(&self) -> u16 {
///         match self {
///             Self::NoProduct(_) => 404,
///             Self::BadPrice(_) => 422,
///         }
///     }
///     fn code(&self) -> &str {
///         match self {
///             Self::NoProduct(_) => "no_product",
///             Self::BadPrice(_) => "bad_price",
///         }
///     }
/// }
/// assert_eq!(CatalogueError::BadPrice(-1).status(), 422);
/// ```
pub trait ApiError: std::fmt::Display {
    /// The HTTP status this error is answered with.
    fn status(&self) -> u16;
    /// A stable machine-readable name for the error, used in the JSON body.
    fn code(&self) -> &str;
    /// One header line that must go with the answer (`Allow`, `Retry-After`).
    fn header(&self) -> Option<(&'static str, &str)> {
        None
    }
}

/// A request the server refuses to serve, with what the client needs to fix it.
///
/// `status()` is the only mapping from an error to an HTTP status; the response
/// writer renders any `HttpError` as a small JSON body naming `code()` and the
/// message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("the request line and headers exceed the limit of {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("the request has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("the request body of {size} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge { size: u64, limit: usize },
    #[error("the request body exceeds the limit of {limit} bytes")]
    ChunkedBodyTooLarge { limit: usize },
    #[error("transfer coding `{0}` is not supported; only `chunked` is")]
    UnsupportedTransferCoding(String),
    #[error("ambiguous message framing: {0}")]
    AmbiguousFraming(&'static str),
    #[error("invalid Content-Length header")]
    InvalidContentLength,
    #[error("HTTP/1.1 requests need exactly one Host header")]
    MissingHost,
    #[error("HTTP version not supported; percore speaks HTTP/1.0 and HTTP/1.1")]
    UnsupportedVersion,
    #[error("the request headers were not received within {seconds} s")]
    HeaderTimeout { seconds: u64 },
    #[error("the request body was not received within {seconds} s")]
    BodyTimeout { seconds: u64 },
    #[error("no route for {path}")]
    NotFound { path: String },
    #[error("method {method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("too many requests from this client; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("the server is shutting down")]
    Draining,
    #[error("the server is overloaded: {0}; retry later")]
    Overloaded(&'static str),
    #[error("this io core is at its limit of {limit} connections; retry later")]
    TooManyConnections { limit: usize },
}

impl ApiError for HttpError {
    fn status(&self) -> u16 {
        HttpError::status(self)
    }

    fn code(&self) -> &str {
        HttpError::code(self)
    }

    fn header(&self) -> Option<(&'static str, &str)> {
        match self {
            HttpError::MethodNotAllowed { allow, .. } => Some(("Allow", allow.as_str())),
            HttpError::Draining
            | HttpError::Overloaded(_)
            | HttpError::TooManyConnections { .. } => Some(("Retry-After", "1")),
            _ => None,
        }
    }
}

impl HttpError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_)
            | Self::AmbiguousFraming(_)
            | Self::InvalidContentLength
            | Self::MissingHost
            | Self::BadRequest(_) => 400,
            Self::NotFound { .. } => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::HeaderTimeout { .. } | Self::BodyTimeout { .. } => 408,
            Self::BodyTooLarge { .. } | Self::ChunkedBodyTooLarge { .. } => 413,
            Self::HeadersTooLarge { .. } | Self::TooManyHeaders { .. } => 431,
            Self::RateLimited { .. } => 429,
            Self::Internal(_) => 500,
            Self::UnsupportedTransferCoding(_) => 501,
            Self::Draining | Self::Overloaded(_) | Self::TooManyConnections { .. } => 503,
            Self::UnsupportedVersion => 505,
        }
    }

    /// A stable machine-readable name for the error, used in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed_request",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::TooManyHeaders { .. } => "too_many_headers",
            Self::BodyTooLarge { .. } | Self::ChunkedBodyTooLarge { .. } => "body_too_large",
            Self::UnsupportedTransferCoding(_) => "unsupported_transfer_coding",
            Self::AmbiguousFraming(_) => "ambiguous_framing",
            Self::InvalidContentLength => "invalid_content_length",
            Self::MissingHost => "missing_host",
            Self::UnsupportedVersion => "unsupported_version",
            Self::HeaderTimeout { .. } => "header_timeout",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::BadRequest(_) => "bad_request",
            Self::RateLimited { .. } => "rate_limited",
            Self::Internal(_) => "internal",
            Self::Draining => "draining",
            Self::Overloaded(_) => "overloaded",
            Self::TooManyConnections { .. } => "too_many_connections",
        }
    }

    /// Whether the connection must close after this answer: the framing of
    /// whatever follows on the wire can no longer be trusted.
    pub fn closes_connection(&self) -> bool {
        !matches!(
            self,
            Self::NotFound { .. }
                | Self::MethodNotAllowed { .. }
                | Self::BadRequest(_)
                | Self::RateLimited { .. }
                | Self::Overloaded(_)
                | Self::Internal(_)
        )
    }
}
