//! Writing responses straight into the connection's output buffer.

use serde::Serialize;

use super::date::DATE_LEN;
use super::error::{ApiError, HttpError};

/// The `Server` header every response carries.
pub const SERVER_NAME: &str = "percore";

/// What the response says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 keep-alive: nothing to say.
    KeepAlive,
    /// HTTP/1.0 client that asked for keep-alive: `Connection: keep-alive`.
    KeepAliveHttp10,
    /// The server closes after this response: `Connection: close`.
    Close,
}

/// Writes one response into `out`. Created per request by the connection.
pub struct Response<'a> {
    out: &'a mut Vec<u8>,
    date: &'a [u8; DATE_LEN],
    head_only: bool,
    persistence: Persistence,
    /// Header lines (each ending in CRLF) added to whatever is sent, such as rate-limit headers.
    extra_headers: &'a [u8],
    written: bool,
    status: u16,
}

impl<'a> Response<'a> {
    pub fn new(
        out: &'a mut Vec<u8>,
        date: &'a [u8; DATE_LEN],
        head_only: bool,
        persistence: Persistence,
    ) -> Self {
        Self {
            out,
            date,
            head_only,
            persistence,
            extra_headers: &[],
            written: false,
            status: 0,
        }
    }

    /// Adds pre-rendered header lines (each ending in CRLF) to the response.
    #[must_use]
    pub fn with_extra_headers(mut self, lines: &'a [u8]) -> Self {
        self.extra_headers = lines;
        self
    }

    /// Whether a response was written (handlers must write exactly one).
    pub fn is_written(&self) -> bool {
        self.written
    }

    /// The status written, or 0 before a response is written.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Writes a complete response with a body of known length.
    pub fn send(&mut self, status: u16, content_type: &str, headers: &[(&str, &str)], body: &[u8]) {
        self.write_head(status, Some((content_type, body.len() as u64)), headers);
        if !self.head_only {
            self.out.extend_from_slice(body);
        }
    }

    /// Writes the head of a response whose `len`-byte body the connection
    /// sends afterwards from a file.
    pub fn send_head(
        &mut self,
        status: u16,
        content_type: &str,
        headers: &[(&str, &str)],
        len: u64,
    ) {
        self.write_head(status, Some((content_type, len)), headers);
    }

    /// 304 Not Modified: the validators, no body and no length.
    pub fn not_modified(&mut self, headers: &[(&str, &str)]) {
        self.write_head(304, None, headers);
    }

    /// 204 No Content: no body and, as RFC 9110 requires, no length.
    pub fn no_content(&mut self, headers: &[(&str, &str)]) {
        self.write_head(204, None, headers);
    }

    fn write_head(&mut self, status: u16, body: Option<(&str, u64)>, headers: &[(&str, &str)]) {
        debug_assert!(!self.written, "a handler wrote two responses");
        self.written = true;
        // Only final statuses are answers; a handler's slip is a server error.
        let status = if (200..=599).contains(&status) {
            status
        } else {
            500
        };
        self.status = status;
        let out = &mut *self.out;
        match status_line(status) {
            "" => {
                out.extend_from_slice(b"HTTP/1.1 ");
                out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
                out.extend_from_slice(b" \r\n");
            }
            line => out.extend_from_slice(line.as_bytes()),
        }
        out.extend_from_slice(b"Server: percore\r\nDate: ");
        out.extend_from_slice(self.date);
        if let Some((content_type, len)) = body {
            out.extend_from_slice(b"\r\nContent-Type: ");
            out.extend_from_slice(content_type.as_bytes());
            out.extend_from_slice(b"\r\nContent-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
        }
        out.extend_from_slice(match self.persistence {
            Persistence::KeepAlive => b"\r\n".as_slice(),
            Persistence::KeepAliveHttp10 => b"\r\nConnection: keep-alive\r\n",
            Persistence::Close => b"\r\nConnection: close\r\n",
        });
        out.extend_from_slice(self.extra_headers);
        for (name, value) in headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Serializes `value` with simd-json into `scratch`, then sends it.
    pub fn json<T: Serialize>(&mut self, status: u16, value: &T, scratch: &mut Vec<u8>) {
        scratch.clear();
        if simd_json::to_writer(&mut *scratch, value).is_err() {
            // Serializing our own plain structs cannot fail; answer honestly if it does.
            scratch.clear();
            scratch.extend_from_slice(
                br#"{"error":"internal","message":"response serialization failed"}"#,
            );
            return self.send(500, "application/json", &[], scratch);
        }
        self.send(status, "application/json", &[], scratch);
    }

    /// Renders an error as `{"error": code, "message": text}` with its status.
    pub fn error<E: ApiError + ?Sized>(&mut self, error: &E, scratch: &mut Vec<u8>) {
        #[derive(Serialize)]
        struct Body<'e> {
            error: &'e str,
            message: &'e str,
        }
        let message = error.to_string();
        let header;
        let headers: &[(&str, &str)] = match error.header() {
            Some(line) => {
                header = [line];
                &header
            }
            None => &[],
        };
        scratch.clear();
        let body = Body {
            error: error.code(),
            message: &message,
        };
        if simd_json::to_writer(&mut *scratch, &body).is_err() {
            scratch.clear();
        }
        self.send(error.status(), "application/json", headers, scratch);
    }
}

/// A response body the connection sends from a file after the head (zero-copy, by splice).
#[derive(Debug, Clone)]
pub struct FileBody {
    pub file: std::sync::Arc<std::fs::File>,
    pub offset: u64,
    pub len: u64,
}

/// The interim response sent before reading a body the client is holding back.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Status line for `status`, pre-rendered.
pub fn status_line(status: u16) -> &'static str {
    match status {
        200 => "HTTP/1.1 200 OK\r\n",
        201 => "HTTP/1.1 201 Created\r\n",
        202 => "HTTP/1.1 202 Accepted\r\n",
        204 => "HTTP/1.1 204 No Content\r\n",
        206 => "HTTP/1.1 206 Partial Content\r\n",
        301 => "HTTP/1.1 301 Moved Permanently\r\n",
        304 => "HTTP/1.1 304 Not Modified\r\n",
        400 => "HTTP/1.1 400 Bad Request\r\n",
        404 => "HTTP/1.1 404 Not Found\r\n",
        405 => "HTTP/1.1 405 Method Not Allowed\r\n",
        408 => "HTTP/1.1 408 Request Timeout\r\n",
        412 => "HTTP/1.1 412 Precondition Failed\r\n",
        413 => "HTTP/1.1 413 Content Too Large\r\n",
        415 => "HTTP/1.1 415 Unsupported Media Type\r\n",
        416 => "HTTP/1.1 416 Range Not Satisfiable\r\n",
        429 => "HTTP/1.1 429 Too Many Requests\r\n",
        431 => "HTTP/1.1 431 Request Header Fields Too Large\r\n",
        500 => "HTTP/1.1 500 Internal Server Error\r\n",
        501 => "HTTP/1.1 501 Not Implemented\r\n",
        503 => "HTTP/1.1 503 Service Unavailable\r\n",
        505 => "HTTP/1.1 505 HTTP Version Not Supported\r\n",
        203 => "HTTP/1.1 203 Non-Authoritative Information\r\n",
        205 => "HTTP/1.1 205 Reset Content\r\n",
        207 => "HTTP/1.1 207 Multi-Status\r\n",
        302 => "HTTP/1.1 302 Found\r\n",
        303 => "HTTP/1.1 303 See Other\r\n",
        307 => "HTTP/1.1 307 Temporary Redirect\r\n",
        308 => "HTTP/1.1 308 Permanent Redirect\r\n",
        401 => "HTTP/1.1 401 Unauthorized\r\n",
        402 => "HTTP/1.1 402 Payment Required\r\n",
        403 => "HTTP/1.1 403 Forbidden\r\n",
        406 => "HTTP/1.1 406 Not Acceptable\r\n",
        409 => "HTTP/1.1 409 Conflict\r\n",
        410 => "HTTP/1.1 410 Gone\r\n",
        411 => "HTTP/1.1 411 Length Required\r\n",
        414 => "HTTP/1.1 414 URI Too Long\r\n",
        417 => "HTTP/1.1 417 Expectation Failed\r\n",
        421 => "HTTP/1.1 421 Misdirected Request\r\n",
        422 => "HTTP/1.1 422 Unprocessable Content\r\n",
        423 => "HTTP/1.1 423 Locked\r\n",
        424 => "HTTP/1.1 424 Failed Dependency\r\n",
        425 => "HTTP/1.1 425 Too Early\r\n",
        426 => "HTTP/1.1 426 Upgrade Required\r\n",
        428 => "HTTP/1.1 428 Precondition Required\r\n",
        451 => "HTTP/1.1 451 Unavailable For Legal Reasons\r\n",
        502 => "HTTP/1.1 502 Bad Gateway\r\n",
        504 => "HTTP/1.1 504 Gateway Timeout\r\n",
        507 => "HTTP/1.1 507 Insufficient Storage\r\n",
        // Any other final status is written with an empty reason phrase (RFC 9112 §4).
        _ => "",
    }
}

/// A complete response for a connection refused before any request was read.
pub fn render_refusal(error: &HttpError, date: &[u8; DATE_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut scratch = Vec::new();
    Response::new(&mut out, date, false, Persistence::Close).error(error, &mut scratch);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &[u8; DATE_LEN] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    #[test]
    fn writes_head_and_body() {
        let mut out = Vec::new();
        Response::new(&mut out, DATE, false, Persistence::KeepAlive).send(
            200,
            "text/plain",
            &[("X-A", "b")],
            b"hi",
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nServer: percore\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi"
        );
    }

    #[test]
    fn head_keeps_length_drops_body() {
        let mut out = Vec::new();
        Response::new(&mut out, DATE, true, Persistence::Close).send(200, "text/plain", &[], b"hi");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 2\r\nConnection: close\r\n\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn errors_are_json_with_allow() {
        let mut out = Vec::new();
        let error = HttpError::MethodNotAllowed {
            method: "PUT".into(),
            allow: "GET, HEAD".into(),
        };
        Response::new(&mut out, DATE, false, Persistence::KeepAlive).error(&error, &mut Vec::new());
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(text.ends_with(
            r#"{"error":"method_not_allowed","message":"method PUT is not allowed here; allowed: GET, HEAD"}"#
        ));
    }
}
