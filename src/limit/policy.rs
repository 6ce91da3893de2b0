//! What the rate limiter enforces: rates, bursts, per-route rules, exemptions, and whose key a request counts against.

use std::net::IpAddr;
use std::time::Duration;

use httparse::Header;

/// A rate such as `100/s` or `6000/min`, as the time between two requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub per: Duration,
}

impl Rate {
    /// Parses `N/s`, `N/sec`, `N/m`, `N/min`, `N/h` (also `N/second`, `N/minute`, `N/hour`).
    pub fn parse(text: &str) -> Option<Self> {
        let (count, unit) = text.trim().split_once('/')?;
        let count: u64 = count.trim().parse().ok().filter(|&n| n > 0)?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return None,
        };
        Some(Self { count, per })
    }

    /// Nanoseconds between two requests at this rate (at least 1).
    pub fn emission_ns(&self) -> u64 {
        (self.per.as_nanos() as u64 / self.count).max(1)
    }
}

/// One budget: a rate and how many requests may come at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Shown in the `RateLimit` headers, e.g. `default`.
    pub name: String,
    pub rate: Rate,
    pub burst: u64,
}

impl Policy {
    pub fn emission_ns(&self) -> u64 {
        self.rate.emission_ns()
    }

    /// The whole burst's worth of time: a full bucket refills in this long.
    pub fn capacity_ns(&self) -> u64 {
        self.emission_ns().saturating_mul(self.burst)
    }

    /// Seconds for an empty bucket to refill (the header's `w`).
    pub fn window_secs(&self) -> u64 {
        self.capacity_ns().div_ceil(1_000_000_000).max(1)
    }
}

/// How a route rule matches a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    /// Written `/v1/jobs/*`: the path starts with `/v1/jobs/`.
    Prefix(String),
    /// Written with `*` for whole segments, e.g. `/v1/jobs/*/redrive`: each
    /// `*` segment matches any one segment; with `rest`, a trailing `*`
    /// matches whatever follows.
    Segments {
        segments: Vec<Option<String>>,
        rest: bool,
    },
}

impl PathPattern {
    pub fn parse(text: &str) -> Option<Self> {
        if !text.starts_with('/') {
            return None;
        }
        let (head, rest) = match text.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (text, false),
        };
        if head.split('/').any(|segment| segment == "*") {
            let head = head.strip_suffix('/').unwrap_or(head);
            let segments = head[1..]
                .split('/')
                .map(|s| (s != "*").then(|| s.to_owned()))
                .collect();
            return Some(Self::Segments { segments, rest });
        }
        Some(if rest {
            Self::Prefix(head.to_owned())
        } else {
            Self::Exact(text.to_owned())
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Segments { segments, rest } => {
                let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
                for segment in segments {
                    match (parts.next(), segment) {
                        (None, _) => return false,
                        (Some(part), Some(literal)) if part != literal => return false,
                        (Some(""), None) => return false,
                        _ => {}
                    }
                }
                match parts.next() {
                    None => true,
                    Some(_) => *rest,
                }
            }
        }
    }
}

/// A per-route override: its own policy, a cost per request, or no limit at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// `None` matches every method.
    pub method: Option<String>,
    pub path: PathPattern,
    /// Index into [`Rules::policies`]; `None` for an exempt route.
    pub policy: Option<usize>,
    /// How many requests' worth of budget one request takes.
    pub cost: u64,
}

/// An IPv4 or IPv6 network, e.g. `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128`, or a bare address (a single host).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let addr = text.parse::<IpAddr>().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) count as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What a request's budget is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The client address: the peer, or what a trusted proxy says the client is.
    Ip,
    /// A header such as an API key; requests without it fall back to the client address.
    Header(String),
    /// The authenticated principal (an API key's name, a token's issuer
    /// and subject); anonymous requests fall back to the client address.
    Principal,
}

impl KeySource {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "ip" => Some(Self::Ip),
            "principal" => Some(Self::Principal),
            other => {
                let name = other.strip_prefix("header:")?.trim();
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                valid.then(|| Self::Header(name.to_owned()))
            }
        }
    }
}

/// Everything the limiter enforces, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Index 0 is the default policy when one is configured.
    pub policies: Vec<Policy>,
    /// The policy for requests no route rule matches.
    pub default_policy: Option<usize>,
    pub routes: Vec<RouteRule>,
    pub key: KeySource,
    pub trusted_proxies: Vec<Cidr>,
    /// Client addresses that are never limited.
    pub exempt: Vec<Cidr>,
    /// Count what would be limited, limit nothing.
    pub shadow: bool,
    /// The most client keys tracked at once.
    pub max_keys: usize,
}

/// Probes and scrapes are never limited by the default policy: a balancer
/// whose health check gets 429 takes the node out. A route rule naming one
/// of them still applies.
pub const UNLIMITED_BY_DEFAULT: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Which policy and cost apply to a request, if any.
pub(crate) fn policy_for(rules: &Rules, method: &str, path: &str) -> Option<(usize, u64)> {
    // Match what handlers will serve: `/static/%70rivate` is `/static/private`.
    let decoded;
    let path = if path.contains('%') {
        decoded = percent_decode_lossy(path);
        decoded.as_str()
    } else {
        path
    };
    for rule in &rules.routes {
        let method_matches = rule.method.as_deref().is_none_or(|m| m == method);
        if method_matches && rule.path.matches(path) {
            return rule.policy.map(|p| (p, rule.cost));
        }
    }
    if UNLIMITED_BY_DEFAULT.contains(&path) {
        return None;
    }
    rules.default_policy.map(|p| (p, 1))
}

/// Percent-decodes for matching only; an invalid escape stays as it is.
pub(crate) fn percent_decode_lossy(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The client's address: the peer, unless the peer is a trusted proxy, in
/// which case the nearest address in the forwarding chain that is not a
/// trusted proxy (reading `Forwarded`, else `X-Forwarded-For`, from the right).
pub fn client_ip(peer: IpAddr, headers: &[Header<'_>], trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    let forwarded = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("forwarded"));
    for header in forwarded {
        let Ok(value) = std::str::from_utf8(header.value) else {
            return peer;
        };
        for element in value.split(',') {
            for pair in element.split(';') {
                let Some((name, node)) = pair.trim().split_once('=') else {
                    continue;
                };
                if name.trim().eq_ignore_ascii_case("for") {
                    // A proxy that cannot parse its own header's node is not to be believed.
                    let Some(ip) = parse_forwarded_node(node) else {
                        return peer;
                    };
                    chain.push(ip);
                }
            }
        }
    }
    if chain.is_empty() {
        let xff = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"));
        for header in xff {
            let Ok(value) = std::str::from_utf8(header.value) else {
                return peer;
            };
            for item in value.split(',') {
                let Ok(ip) = item.trim().parse::<IpAddr>() else {
                    return peer;
                };
                chain.push(ip);
            }
        }
    }
    let mut client = peer;
    for &hop in chain.iter().rev() {
        client = canonical(hop);
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// `192.0.2.60`, `"192.0.2.60:47011"`, `"[2001:db8::1]:4711"`.
fn parse_forwarded_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let host = node.rsplit_once(':').map_or(node, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            node
        }
    });
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(name: &'a str, value: &'a str) -> Header<'a> {
        Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn path_patterns_with_segment_wildcards() {
        let redrive = PathPattern::parse("/v1/jobs/*/redrive").unwrap();
        assert!(redrive.matches("/v1/jobs/42/redrive"));
        assert!(!redrive.matches("/v1/jobs/42"));
        assert!(!redrive.matches("/v1/jobs//redrive"));
        assert!(!redrive.matches("/v1/jobs/42/redrive/x"));
        let under = PathPattern::parse("/v1/*/items/*").unwrap();
        assert!(under.matches("/v1/a/items/b/c"));
        assert!(!under.matches("/v1/a/other/b"));
        assert_eq!(
            PathPattern::parse("/v1/jobs/*"),
            Some(PathPattern::Prefix("/v1/jobs/".into()))
        );
        assert_eq!(
            PathPattern::parse("/json"),
            Some(PathPattern::Exact("/json".into()))
        );
    }

    #[test]
    fn rates_and_cidrs() {
        assert_eq!(Rate::parse("100/s").unwrap().emission_ns(), 10_000_000);
        assert_eq!(Rate::parse("60/min").unwrap().emission_ns(), 1_000_000_000);
        assert!(
            Rate::parse("0/s").is_none()
                && Rate::parse("5/day").is_none()
                && Rate::parse("x").is_none()
        );
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [
            Cidr::parse("127.0.0.1").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ];
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.9".parse().unwrap();
        let xff = [header("X-Forwarded-For", "1.1.1.1, 203.0.113.5, 10.0.0.2")];
        // From the proxy: the nearest untrusted hop, not the leftmost (which the client wrote).
        assert_eq!(
            client_ip(proxy, &xff, &trusted),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        // From anyone else: the header is ignored.
        assert_eq!(client_ip(stranger, &xff, &trusted), stranger);
        let fwd = [header(
            "Forwarded",
            "for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\";proto=https",
        )];
        assert_eq!(
            client_ip(proxy, &fwd, &trusted),
            "2001:db8:cafe::17".parse::<IpAddr>().unwrap()
        );
        let garbage = [header("X-Forwarded-For", "not-an-ip")];
        assert_eq!(client_ip(proxy, &garbage, &trusted), proxy);
    }

    #[test]
    fn route_rules_see_decoded_paths() {
        let rules = Rules {
            policies: vec![Policy {
                name: "private".into(),
                rate: Rate::parse("1/s").unwrap(),
                burst: 1,
            }],
            default_policy: None,
            routes: vec![RouteRule {
                method: None,
                path: PathPattern::parse("/static/private/*").unwrap(),
                policy: Some(0),
                cost: 1,
            }],
            key: KeySource::Ip,
            trusted_proxies: Vec::new(),
            exempt: Vec::new(),
            shadow: false,
            max_keys: 10,
        };
        assert_eq!(
            policy_for(&rules, "GET", "/static/%70rivate/x"),
            Some((0, 1))
        );
        assert_eq!(
            policy_for(&rules, "GET", "/static/private/%zz"),
            Some((0, 1))
        );
        assert_eq!(policy_for(&rules, "GET", "/static/public/x"), None);
    }

    #[test]
    fn key_sources() {
        assert_eq!(KeySource::parse("ip"), Some(KeySource::Ip));
        assert_eq!(
            KeySource::parse("header:X-Api-Key"),
            Some(KeySource::Header("X-Api-Key".into()))
        );
        assert_eq!(KeySource::parse("header:"), None);
        assert_eq!(KeySource::parse("cookie"), None);
    }
}
