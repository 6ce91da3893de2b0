//! The target URL (plain `http://` only) and the request, rendered once into the bytes every send reuses.

use std::net::{SocketAddr, ToSocketAddrs};

/// Where the load goes: the resolved address, the Host header and the request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host[:port]` as written in the URL, for the Host header.
    pub authority: String,
    /// The path and query, `/` if the URL has none.
    pub path: String,
}

/// Parses `http://host[:port][/path][?query]` and resolves the host once.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err("https is not supported: percore bench speaks plain HTTP/1.1".into())
        }
        _ => {
            return Err(format!(
                "`{url}` is not a URL like http://127.0.0.1:8080/json"
            ))
        }
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = path.split('#').next().unwrap_or_default();
    let path = match path.chars().next() {
        None => "/".to_owned(),
        Some('?') => format!("/{path}"),
        Some(_) => path.to_owned(),
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("the path must not contain spaces or control characters".into());
    }
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "`{url}` has no host, or has user info (not supported)"
        ));
    }
    let (host, port) = split_host_port(authority)?;
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{host}` resolves to no address"))?;
    Ok(Target {
        addr,
        authority: authority.to_owned(),
        path,
    })
}

fn split_host_port(authority: &str) -> Result<(&str, u16), String> {
    let bad_port = |p: &str| format!("`{p}` is not a port number");
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{authority}` has an unclosed `[`"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, p.parse().map_err(|_| bad_port(p))?)),
            None if after.is_empty() => Ok((host, 80)),
            None => Err(format!("`{authority}` is not host:port")),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, p)) => Ok((host, p.parse().map_err(|_| bad_port(p))?)),
        None => Ok((authority, 80)),
    }
}

/// Checks one `--header 'Name: value'` and returns it as (name, value).
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not `Name: value`"))?;
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("`{name}` is not a header name"));
    }
    let value = value.trim();
    if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(format!(
            "the value of `{name}` contains a control character"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// Checks a method token (`GET`, `POST`, ...).
pub fn parse_method(text: &str) -> Result<String, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
        return Err(format!("`{text}` is not a method like GET or POST"));
    }
    Ok(text.to_owned())
}

/// Renders the request: request line, Host (unless given), the headers,
/// Content-Length for a body (unless given), the body.
pub fn render(method: &str, target: &Target, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut out = format!("{method} {} HTTP/1.1\r\n", target.path);
    if !has("host") {
        out.push_str(&format!("Host: {}\r\n", target.authority));
    }
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if (!body.is_empty() || method == "POST" || method == "PUT") && !has("content-length") {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/json?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/json?x=1")
        );
        assert_eq!(parse_url("HTTP://127.0.0.1").unwrap().path, "/");
        assert_eq!(parse_url("http://127.0.0.1?q").unwrap().path, "/?q");
        assert_eq!(
            parse_url("http://[::1]:9/").unwrap().addr,
            "[::1]:9".parse().unwrap()
        );
        assert_eq!(parse_url("http://127.0.0.1").unwrap().addr.port(), 80);
        for bad in [
            "https://x/",
            "127.0.0.1:80",
            "http://",
            "http://h:x/",
            "http://u@h/",
            "http://127.0.0.1/a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rendering() {
        let t = parse_url("http://127.0.0.1:80/p").unwrap();
        let h = vec![parse_header("X-A: 1").unwrap()];
        assert_eq!(
            render("GET", &t, &h, b""),
            b"GET /p HTTP/1.1\r\nHost: 127.0.0.1:80\r\nX-A: 1\r\n\r\n"
        );
        assert_eq!(
            render("POST", &t, &[parse_header("host:h").unwrap()], b"{}"),
            b"POST /p HTTP/1.1\r\nhost: h\r\nContent-Length: 2\r\n\r\n{}"
        );
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header("bad name: 1").is_err());
        assert!(parse_method("get").is_err());
    }
}
