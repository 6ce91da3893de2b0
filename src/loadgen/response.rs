//! Counting HTTP/1.1 responses in a received byte stream: the head with `httparse`, then the body by Content-Length, chunked coding, or up to the close.
//!
//! The reader never copies a body. A head that spans two receives is the
//! only thing carried over, into a buffer of at most [`MAX_HEAD_BYTES`].

use thiserror::Error;

/// The largest response head the reader accepts.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header slots for one response head.
const HEADER_SLOTS: usize = 64;
/// A chunk size longer than this many hex digits would overflow.
const MAX_CHUNK_SIZE_DIGITS: u8 = 15;

/// The bytes received are not an HTTP/1.1 response; the connection must be closed.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
#[error("malformed response: {0}")]
pub struct Malformed(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body {
        left: u64,
    },
    Chunked(Chunk),
    /// Neither Content-Length nor chunked: the body ends when the server closes.
    UntilClose,
    /// A response said `Connection: close`; nothing after it counts.
    Done,
}

/// What reading a head came to; the counts are bytes of the data given.
enum HeadRead {
    Incomplete,
    Interim(usize),
    Final(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size {
        size: u64,
        digits: u8,
        extension: bool,
    },
    SizeLf {
        size: u64,
        digits: u8,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    Trailer {
        line_len: usize,
    },
}

/// Reads one connection's responses, in order.
#[derive(Debug)]
pub struct ResponseReader {
    state: State,
    /// An incomplete head carried over from the previous receive.
    head: Vec<u8>,
    /// The requests are HEAD: responses carry no body whatever they say.
    head_requests: bool,
    status: u16,
    close: bool,
}

impl ResponseReader {
    pub fn new(head_requests: bool) -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            head_requests,
            status: 0,
            close: false,
        }
    }

    /// Back to the start, for a new connection.
    pub fn reset(&mut self) {
        self.state = State::Head;
        self.head.clear();
        self.close = false;
    }

    /// Between responses: nothing of a response has been received.
    pub fn is_idle(&self) -> bool {
        self.state == State::Head && self.head.is_empty()
    }

    /// A response asked to close the connection (or ends at the close).
    pub fn wants_close(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes `data`, calling `done(status)` for every complete response.
    pub fn feed(&mut self, mut data: &[u8], done: &mut impl FnMut(u16)) -> Result<(), Malformed> {
        while !data.is_empty() {
            match self.state {
                State::Head => match self.read_head(data)? {
                    HeadRead::Incomplete => return Ok(()),
                    HeadRead::Interim(used) => data = &data[used..],
                    HeadRead::Final(used) => {
                        data = &data[used..];
                        if self.state == State::Head {
                            // A final response without a body.
                            self.complete(done);
                        }
                    }
                },
                State::Body { left } => {
                    let take = left.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = State::Body { left: left - take };
                    if left == take {
                        self.complete(done);
                    }
                }
                State::Chunked(chunk) => {
                    let (consumed, next) = read_chunked(chunk, data)?;
                    data = &data[consumed..];
                    match next {
                        Some(chunk) => self.state = State::Chunked(chunk),
                        None => self.complete(done),
                    }
                }
                State::UntilClose | State::Done => return Ok(()),
            }
        }
        Ok(())
    }

    /// The server closed the connection. Returns whether a response ended
    /// with the close (one without a length); `done` is called for it.
    pub fn eof(&mut self, done: &mut impl FnMut(u16)) -> bool {
        if self.state == State::UntilClose {
            self.close = true;
            self.complete(done);
            return true;
        }
        false
    }

    /// Parses a head from the carried-over bytes plus `data`, and sets the
    /// state to what follows it (`Head` again if it has no body).
    fn read_head(&mut self, data: &[u8]) -> Result<HeadRead, Malformed> {
        let carried = self.head.len();
        let parsed = if carried == 0 {
            parse_head(data)?
        } else {
            let room = MAX_HEAD_BYTES + 1 - carried;
            self.head.extend_from_slice(&data[..data.len().min(room)]);
            parse_head(&self.head)?
        };
        let Some((len, head)) = parsed else {
            if carried == 0 {
                self.head
                    .extend_from_slice(&data[..data.len().min(MAX_HEAD_BYTES + 1)]);
            }
            if self.head.len() > MAX_HEAD_BYTES {
                return Err(Malformed("response head too large"));
            }
            return Ok(HeadRead::Incomplete);
        };
        self.head.clear();
        let used = len - carried;
        if (100..200).contains(&head.status) && head.status != 101 {
            // An interim response (100 Continue): the final one follows.
            return Ok(HeadRead::Interim(used));
        }
        self.status = head.status;
        self.close = head.close;
        let no_body = self.head_requests || head.status == 204 || head.status == 304;
        self.state = if no_body {
            State::Head
        } else if head.chunked {
            State::Chunked(Chunk::Size {
                size: 0,
                digits: 0,
                extension: false,
            })
        } else {
            match head.content_length {
                Some(0) => State::Head,
                Some(left) => State::Body { left },
                None => State::UntilClose,
            }
        };
        Ok(HeadRead::Final(used))
    }

    fn complete(&mut self, done: &mut impl FnMut(u16)) {
        done(self.status);
        self.state = if self.close { State::Done } else { State::Head };
    }
}

/// What the reader needs from a response head.
struct Head {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
}

/// `Ok(None)`: the head is not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Head)>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed("too many headers")),
        Err(_) => return Err(Malformed("not an HTTP/1.x response head")),
    };
    let mut head = Head {
        status: response.code.unwrap_or(0),
        content_length: None,
        chunked: false,
        close: response.version == Some(0),
    };
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(Malformed("bad Content-Length"))?;
            if head.content_length.is_some_and(|v| v != value) {
                return Err(Malformed("conflicting Content-Length"));
            }
            head.content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    head.close = false;
                }
            }
        }
    }
    Ok(Some((len, head)))
}

/// Advances the chunked-body machine over `data`. Returns the bytes used
/// and the next state, or `None` when the body (with its trailer) is complete.
fn read_chunked(mut chunk: Chunk, data: &[u8]) -> Result<(usize, Option<Chunk>), Malformed> {
    let mut i = 0;
    while i < data.len() {
        chunk = match chunk {
            Chunk::Data { left } => {
                let take = left.min((data.len() - i) as u64);
                i += take as usize;
                if take == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data { left: left - take }
                }
            }
            _ => {
                let byte = data[i];
                i += 1;
                match chunk {
                    Chunk::Size {
                        size,
                        digits,
                        extension,
                    } => match byte {
                        b'\r' => Chunk::SizeLf { size, digits },
                        b'\n' => end_of_size_line(size, digits)?,
                        _ if extension => chunk,
                        b';' | b' ' | b'\t' => Chunk::Size {
                            size,
                            digits,
                            extension: true,
                        },
                        _ => {
                            let digit = (byte as char)
                                .to_digit(16)
                                .ok_or(Malformed("bad chunk size"))?;
                            if digits >= MAX_CHUNK_SIZE_DIGITS {
                                return Err(Malformed("chunk size too large"));
                            }
                            Chunk::Size {
                                size: size << 4 | u64::from(digit),
                                digits: digits + 1,
                                extension,
                            }
                        }
                    },
                    Chunk::SizeLf { size, digits } if byte == b'\n' => {
                        end_of_size_line(size, digits)?
                    }
                    Chunk::DataCr if byte == b'\r' => Chunk::DataLf,
                    Chunk::DataLf if byte == b'\n' => Chunk::Size {
                        size: 0,
                        digits: 0,
                        extension: false,
                    },
                    Chunk::Trailer { line_len } => match byte {
                        b'\n' if line_len == 0 => return Ok((i, None)),
                        b'\n' => Chunk::Trailer { line_len: 0 },
                        b'\r' => chunk,
                        _ => Chunk::Trailer {
                            line_len: line_len + 1,
                        },
                    },
                    _ => return Err(Malformed("bad chunk framing")),
                }
            }
        };
    }
    Ok((i, Some(chunk)))
}

fn end_of_size_line(size: u64, digits: u8) -> Result<Chunk, Malformed> {
    match (digits, size) {
        (0, _) => Err(Malformed("empty chunk size")),
        (_, 0) => Ok(Chunk::Trailer { line_len: 0 }),
        (_, left) => Ok(Chunk::Data { left }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step` bytes; returns the statuses seen.
    fn read_in_steps(bytes: &[u8], step: usize) -> Result<Vec<u16>, Malformed> {
        let mut reader = ResponseReader::new(false);
        let mut seen = Vec::new();
        for piece in bytes.chunks(step) {
            reader.feed(piece, &mut |status| seen.push(status))?;
        }
        reader.eof(&mut |status| seen.push(status));
        Ok(seen)
    }

    const STREAM: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n\
HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n\
HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n\
HTTP/1.1 503 Busy\r\n\r\nuntil the close";

    #[test]
    fn counts_every_response_however_the_bytes_are_split() {
        for step in 1..=STREAM.len() {
            assert_eq!(
                read_in_steps(STREAM, step).unwrap(),
                vec![200, 404, 204, 200, 503],
                "step {step}"
            );
        }
    }

    #[test]
    fn close_ends_the_stream() {
        let mut reader = ResponseReader::new(false);
        let mut seen = Vec::new();
        reader
            .feed(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n\r\n",
                &mut |s| seen.push(s),
            )
            .unwrap();
        assert_eq!(seen, vec![200]);
        assert!(reader.wants_close());
        let mut reader = ResponseReader::new(false);
        reader
            .feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", &mut |_| {})
            .unwrap();
        assert!(reader.wants_close(), "HTTP/1.0 closes by default");
    }

    #[test]
    fn head_requests_have_no_body() {
        let mut reader = ResponseReader::new(true);
        let mut n = 0;
        reader
            .feed(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                &mut |_| n += 1,
            )
            .unwrap();
        assert_eq!(n, 2);
        assert!(reader.is_idle());
    }

    #[test]
    fn partial_response_is_not_counted() {
        let mut reader = ResponseReader::new(false);
        let mut n = 0;
        reader
            .feed(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
                &mut |_| n += 1,
            )
            .unwrap();
        assert!(!reader.eof(&mut |_| n += 1));
        assert_eq!(n, 0);
        assert!(!reader.is_idle());
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
        ] {
            assert!(
                read_in_steps(bad, bad.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = vec![b'a'; MAX_HEAD_BYTES + 10];
        let mut stream = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        stream.extend_from_slice(&huge);
        assert!(read_in_steps(&stream, 1000).is_err());
        assert!(read_in_steps(&stream, stream.len()).is_err());
    }
}
