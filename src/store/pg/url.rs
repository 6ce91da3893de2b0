//! Where a PostgreSQL shard is and who connects to it: `postgres://` URLs, `PGPASSWORD` and the password file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One shard's server, database and credentials, from its URL.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub connect_timeout: Duration,
    pub application_name: String,
}

/// The URL shown in logs and errors: never the password.
impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "postgres://{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The default port and user when a URL names none.
const DEFAULT_PORT: u16 = 5432;

impl PgUrl {
    /// Parses `postgres://[user[:password]@]host[:port][/database][?key=value&...]`
    /// (`postgresql://` too). The password, when the URL has none, comes
    /// from `PGPASSWORD` or the password file (`PGPASSFILE`, else
    /// `~/.pgpass`) at connection time. Query keys: `connect_timeout`
    /// (seconds), `application_name`, `sslmode` (only `disable` and
    /// `prefer`: percore speaks to PostgreSQL without TLS).
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("postgres://")
            .or_else(|| text.strip_prefix("postgresql://"))
            .ok_or_else(|| format!("`{}` is not a postgres:// URL", redact(text)))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, database) = match rest.split_once('/') {
            Some((authority, database)) => (authority, decode(database)?),
            None => (rest, String::new()),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (decode(user)?, Some(decode(password)?)),
                None => (decode(info)?, None),
            },
            None => (String::new(), None),
        };
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() {
            return Err(format!("`{}` names no host", redact(text)));
        }
        let user = if user.is_empty() {
            std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into())
        } else {
            user
        };
        let database = if database.is_empty() {
            user.clone()
        } else {
            database
        };
        let mut url = Self {
            host,
            port,
            user,
            password,
            database,
            connect_timeout: Duration::from_secs(5),
            application_name: "percore".into(),
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value)?;
            match key {
                "connect_timeout" => {
                    let secs: u64 = value.parse().map_err(|_| {
                        format!("connect_timeout `{value}` is not a number of seconds")
                    })?;
                    url.connect_timeout = Duration::from_secs(secs.max(1));
                }
                "application_name" => url.application_name = value,
                "sslmode" => match value.as_str() {
                    "disable" | "prefer" | "allow" => {}
                    other => {
                        return Err(format!(
                            "sslmode={other} asks for TLS, which percore does not speak to PostgreSQL yet; \
                             use sslmode=disable on a trusted network"
                        ))
                    }
                },
                other => {
                    return Err(format!(
                        "unknown URL parameter `{other}` (known: connect_timeout, application_name, sslmode)"
                    ))
                }
            }
        }
        Ok(url)
    }

    /// The password for this URL: its own, else `PGPASSWORD`, else the password file's.
    pub fn resolve_password(&self) -> Option<String> {
        if let Some(password) = &self.password {
            return Some(password.clone());
        }
        if let Ok(password) = std::env::var("PGPASSWORD") {
            return Some(password);
        }
        let file = match std::env::var_os("PGPASSFILE") {
            Some(path) => PathBuf::from(path),
            None => Path::new(&std::env::var_os("HOME")?).join(".pgpass"),
        };
        let text = std::fs::read_to_string(file).ok()?;
        passfile_lookup(&text, self)
    }
}

fn split_host_port(hostport: &str) -> Result<(String, u16), String> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed `[` in host `{hostport}`"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => parse_port(port)?,
            None if after.is_empty() => DEFAULT_PORT,
            None => return Err(format!("unexpected `{after}` after host `{host}`")),
        };
        return Ok((host.to_owned(), port));
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) => Ok((decode(host)?, parse_port(port)?)),
        None => Ok((decode(hostport)?, DEFAULT_PORT)),
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    port.parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("port `{port}` is not a number from 1 to 65535"))
}

fn decode(text: &str) -> Result<String, String> {
    let bytes = crate::http::percent::decode(text)
        .map_err(|_| format!("bad percent-escape in `{}`", redact(text)))?;
    String::from_utf8(bytes).map_err(|_| "a URL part is not UTF-8 once decoded".into())
}

/// A URL with any password replaced, for messages.
pub fn redact(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((info, host)) => match info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => text.to_owned(),
        },
        None => text.to_owned(),
    }
}

/// The password a `.pgpass` file gives for `url`: the first line whose
/// `host:port:database:user` fields match (`*` matches anything; `\:` and
/// `\\` are escapes).
pub fn passfile_lookup(text: &str, url: &PgUrl) -> Option<String> {
    let port = url.port.to_string();
    let wanted = [
        url.host.as_str(),
        port.as_str(),
        url.database.as_str(),
        url.user.as_str(),
    ];
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_passfile_line(line);
        if fields.len() < 5 {
            continue;
        }
        if fields[..4]
            .iter()
            .zip(wanted)
            .all(|(field, want)| field == "*" || field == want)
        {
            return Some(fields[4..].join(":"));
        }
    }
    None
}

fn split_passfile_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("one field").push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_part() {
        let url = PgUrl::parse(
            "postgres://al%40ice:p%3Ass@db.example:6543/shard_1?connect_timeout=2&application_name=n1",
        )
        .unwrap();
        assert_eq!(url.user, "al@ice");
        assert_eq!(url.password.as_deref(), Some("p:ss"));
        assert_eq!(url.host, "db.example");
        assert_eq!(url.port, 6543);
        assert_eq!(url.database, "shard_1");
        assert_eq!(url.connect_timeout, Duration::from_secs(2));
        assert_eq!(url.application_name, "n1");
        assert_eq!(url.to_string(), "postgres://al@ice@db.example:6543/shard_1");
    }

    #[test]
    fn defaults_and_ipv6() {
        let url = PgUrl::parse("postgresql://[::1]/test").unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, 5432);
        let url = PgUrl::parse("postgres://bob@127.0.0.1").unwrap();
        assert_eq!(url.database, "bob");
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        assert!(PgUrl::parse("mysql://x/y")
            .unwrap_err()
            .contains("not a postgres"));
        assert!(PgUrl::parse("postgres://h:0/d")
            .unwrap_err()
            .contains("port"));
        assert!(PgUrl::parse("postgres://h/d?sslmode=require")
            .unwrap_err()
            .contains("TLS"));
        assert!(PgUrl::parse("postgres://h/d?bogus=1")
            .unwrap_err()
            .contains("unknown URL parameter"));
        let error = PgUrl::parse("mysql://u:secret@h/d").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn passfile_matches_fields_and_wildcards() {
        let url = PgUrl::parse("postgres://app@db:5432/orders").unwrap();
        let file =
            "# comment\nother:5432:orders:app:no\ndb:*:orders:app:se\\:cret\n*:*:*:*:fallback\n";
        assert_eq!(passfile_lookup(file, &url).as_deref(), Some("se:cret"));
        let url = PgUrl::parse("postgres://app@elsewhere/x").unwrap();
        assert_eq!(passfile_lookup(file, &url).as_deref(), Some("fallback"));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:pw@h:1/d?x=1"),
            "postgres://u:***@h:1/d?x=1"
        );
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
    }
}
