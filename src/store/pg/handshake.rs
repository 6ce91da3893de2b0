//! Opening one PostgreSQL connection, blocking and off the io core: connect, start up, authenticate (trust, password, MD5, SCRAM-SHA-256), create the schema, listen for invalidations, prepare every statement.
//!
//! Only once all of that is done does the socket join its owner core's ring
//! ([`super::shard`]); the io core never waits on a handshake.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::time::Instant;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;

use super::sql::{self, Statement};
use super::url::PgUrl;
use super::PgError;

/// A connection ready for the ring.
#[derive(Debug)]
pub struct Ready {
    pub socket: OwnedFd,
    /// Where polling for other nodes' changes starts ([`sql::POLL`]).
    pub horizon: i64,
}

/// What to do on the connection before it is handed over.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Create the schema (at start-up; a reconnection skips it).
    pub schema: bool,
    /// TechEmpower rows to fill in where missing ([`sql::seed`]).
    pub seed: Option<String>,
}

/// Connects to `url`, authenticates, runs `setup`, listens on
/// reads the change horizon and prepares [`sql::STATEMENTS`]; all within the URL's
/// connect timeout per step.
pub fn open(url: &PgUrl, setup: &Setup) -> Result<Ready, PgError> {
    let mut conn = Blocking::connect(url)?;
    conn.start_up(url)?;
    if setup.schema {
        conn.simple(sql::SCHEMA)?;
    }
    if let Some(seed) = &setup.seed {
        if !seed.is_empty() {
            conn.simple(seed)?;
        }
    }
    conn.prepare(&sql::STATEMENTS)?;
    let horizon = conn.horizon()?;
    let socket = OwnedFd::from(conn.stream);
    Ok(Ready { socket, horizon })
}

struct Blocking {
    stream: TcpStream,
    read: BytesMut,
    write: BytesMut,
    url: String,
}

impl Blocking {
    fn connect(url: &PgUrl) -> Result<Self, PgError> {
        let unreachable = |source: std::io::Error| PgError::Connect {
            url: url.to_string(),
            source,
        };
        let addrs: Vec<_> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(unreachable)?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, url.connect_timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true).map_err(unreachable)?;
                    stream
                        .set_read_timeout(Some(url.connect_timeout))
                        .map_err(unreachable)?;
                    stream
                        .set_write_timeout(Some(url.connect_timeout))
                        .map_err(unreachable)?;
                    return Ok(Self {
                        stream,
                        read: BytesMut::with_capacity(8192),
                        write: BytesMut::with_capacity(1024),
                        url: url.to_string(),
                    });
                }
                Err(error) => last = error,
            }
        }
        Err(unreachable(last))
    }

    fn flush(&mut self) -> Result<(), PgError> {
        let bytes = self.write.split();
        self.stream.write_all(&bytes).map_err(|e| self.io_error(e))
    }

    fn io_error(&self, source: std::io::Error) -> PgError {
        PgError::Connect {
            url: self.url.clone(),
            source,
        }
    }

    fn next(&mut self) -> Result<Message, PgError> {
        let started = Instant::now();
        loop {
            if let Some(message) = Message::parse(&mut self.read)
                .map_err(|e| PgError::Protocol(format!("{}: {e}", self.url)))?
            {
                return Ok(message);
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).map_err(|e| self.io_error(e))?;
            if n == 0 {
                return Err(self.io_error(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "PostgreSQL closed the connection during the handshake after {:?}",
                        started.elapsed()
                    ),
                )));
            }
            self.read.extend_from_slice(&chunk[..n]);
        }
    }

    /// Start-up and authentication.
    fn start_up(&mut self, url: &PgUrl) -> Result<(), PgError> {
        let params = [
            ("user", url.user.as_str()),
            ("database", url.database.as_str()),
            ("application_name", url.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut self.write)
            .map_err(|e| PgError::Protocol(e.to_string()))?;
        self.flush()?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next()? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let password = self.password(url)?;
                    frontend::password_message(password.as_bytes(), &mut self.write)
                        .map_err(|e| PgError::Protocol(e.to_string()))?;
                    self.flush()?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let password = self.password(url)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        url.user.as_bytes(),
                        password.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write)
                        .map_err(|e| PgError::Protocol(e.to_string()))?;
                    self.flush()?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Some(mechanism) = mechanisms
                        .next()
                        .map_err(|e| PgError::Protocol(e.to_string()))?
                    {
                        offered |= mechanism == SCRAM_SHA_256;
                    }
                    if !offered {
                        return Err(PgError::Auth {
                            url: self.url.clone(),
                            message: "the server offers no SASL mechanism percore speaks (SCRAM-SHA-256)".into(),
                        });
                    }
                    let password = self.password(url)?;
                    let state = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, state.message(), &mut self.write)
                        .map_err(|e| PgError::Protocol(e.to_string()))?;
                    self.flush()?;
                    scram = Some(state);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let state = scram.as_mut().ok_or_else(|| {
                        PgError::Protocol("SASL continue without a SASL start".into())
                    })?;
                    state.update(body.data()).map_err(|e| PgError::Auth {
                        url: self.url.clone(),
                        message: e.to_string(),
                    })?;
                    frontend::sasl_response(state.message(), &mut self.write)
                        .map_err(|e| PgError::Protocol(e.to_string()))?;
                    self.flush()?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let state = scram.as_mut().ok_or_else(|| {
                        PgError::Protocol("SASL final without a SASL start".into())
                    })?;
                    state.finish(body.data()).map_err(|e| PgError::Auth {
                        url: self.url.clone(),
                        message: format!("the server's SCRAM proof does not check out: {e}"),
                    })?;
                }
                Message::BackendKeyData(_)
                | Message::ParameterStatus(_)
                | Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => return Err(self.refusal(&body)),
                _ => {
                    return Err(PgError::Auth {
                        url: self.url.clone(),
                        message: "the server asks for an authentication method percore does not speak (use trust, password, md5 or scram-sha-256)".into(),
                    })
                }
            }
        }
    }

    fn password(&self, url: &PgUrl) -> Result<String, PgError> {
        url.resolve_password()
            .ok_or_else(|| PgError::PasswordNeeded {
                url: self.url.clone(),
            })
    }

    fn refusal(&self, body: &ErrorResponseBody) -> PgError {
        let (code, message) = error_fields(body);
        match code.as_str() {
            // too_many_connections
            "53300" => PgError::TooManyConnections {
                url: self.url.clone(),
                message,
            },
            // invalid_password, invalid_authorization_specification
            "28P01" | "28000" => PgError::Auth {
                url: self.url.clone(),
                message,
            },
            _ => PgError::Server {
                url: self.url.clone(),
                code,
                message,
            },
        }
    }

    /// The oldest transaction running now: every change committed later has
    /// an id at or above it.
    fn horizon(&mut self) -> Result<i64, PgError> {
        frontend::query(sql::HORIZON, &mut self.write)
            .map_err(|e| PgError::Protocol(e.to_string()))?;
        self.flush()?;
        let mut horizon = None;
        loop {
            match self.next()? {
                Message::DataRow(row) => {
                    let buffer = row.buffer();
                    let mut ranges = row.ranges();
                    if let Ok(Some(Some(range))) = ranges.next() {
                        horizon = std::str::from_utf8(&buffer[range])
                            .ok()
                            .and_then(|text| text.parse().ok());
                    }
                }
                Message::ErrorResponse(body) => return Err(self.refusal(&body)),
                Message::ReadyForQuery(_) => {
                    return horizon.ok_or_else(|| {
                        PgError::Protocol("no transaction horizon in the answer".into())
                    })
                }
                _ => {}
            }
        }
    }

    /// Runs SQL through the simple query protocol; fails on its first error.
    fn simple(&mut self, sql: &str) -> Result<(), PgError> {
        frontend::query(sql, &mut self.write).map_err(|e| PgError::Protocol(e.to_string()))?;
        self.until_ready()
    }

    /// Sends what is written and reads up to `ReadyForQuery`; the first error fails it.
    fn until_ready(&mut self) -> Result<(), PgError> {
        self.flush()?;
        let mut failed = None;
        loop {
            match self.next()? {
                Message::ReadyForQuery(_) => {
                    return match failed {
                        Some(error) => Err(error),
                        None => Ok(()),
                    }
                }
                Message::ErrorResponse(body) => {
                    failed.get_or_insert(self.refusal(&body));
                }
                _ => {}
            }
        }
    }

    fn prepare(&mut self, statements: &[Statement]) -> Result<(), PgError> {
        for statement in statements {
            frontend::parse(
                statement.name,
                statement.sql,
                statement.params.iter().copied(),
                &mut self.write,
            )
            .map_err(|e| PgError::Protocol(e.to_string()))?;
        }
        frontend::sync(&mut self.write);
        self.until_ready()
    }
}

/// The SQLSTATE and message of an error response.
pub fn error_fields(body: &ErrorResponseBody) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        match field.type_() {
            b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            _ => {}
        }
    }
    (code, message)
}
