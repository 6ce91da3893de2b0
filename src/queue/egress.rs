//! Where webhooks may connect: the internal address ranges refused by default, the resolver that enforces them on the address actually connected to, and the TLS roots of https receivers.
//!
//! A job's URL is chosen by whoever may submit jobs; without this guard a
//! webhook to `http://127.0.0.1:.../internal/admin` or to the cloud
//! metadata service at 169.254.169.254 is a server-side request forgery.
//! The model is Stripe's smokescreen: refuse loopback, private, link-local,
//! shared (CGNAT), unique-local, multicast, reserved and unspecified
//! addresses, IPv4 and IPv6 alike, and IPv4 addresses wrapped in IPv6
//! (mapped, compatible, NAT64, 6to4) by what they wrap.
//!
//! The check runs in the HTTP client's resolver ([`GuardedResolver`]), on
//! the addresses the client then connects to: a name that resolves to an
//! allowed address at submission and to loopback at delivery (DNS
//! rebinding) gets nowhere, and every redirect hop goes through the same
//! resolver. A URL naming an address is refused at submission already
//! ([`Egress::check_url`]). `--webhook-allow CIDR` opens what an operator
//! means to reach.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use crate::limit::Cidr;

/// Why an address is internal, or `None` for a public one.
pub fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared address space (100.64.0.0/10)",
        (127, _, _) => "loopback (127.0.0.0/8)",
        (169, 254, _) => "link-local (169.254.0.0/16, cloud metadata)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast (224.0.0.0/4)",
        (240..=255, _, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    let embedded_v4 =
        |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    // IPv4 wrapped in IPv6 is judged by the IPv4 address it wraps.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    if segments[..6] == [0; 6] {
        return Some("IPv4-compatible IPv6 (::/96, deprecated)");
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return internal_v4(embedded_v4(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return internal_v4(embedded_v4(segments[1], segments[2]));
    }
    Some(match segments[0] {
        0xfc00..=0xfdff => "unique-local (fc00::/7)",
        0xfe80..=0xfebf => "link-local (fe80::/10)",
        0xfec0..=0xfeff => "site-local (fec0::/10, deprecated)",
        0xff00..=0xffff => "multicast (ff00::/8)",
        0x0100 if segments[1..4] == [0, 0, 0] => "discard (100::/64)",
        0x2001 if segments[1] == 0x0db8 => "documentation (2001:db8::/32)",
        _ => return None,
    })
}

/// The egress policy of webhook deliveries.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    /// Networks an operator opened although they are internal.
    pub allow: Vec<Cidr>,
}

impl Egress {
    /// `Err` says why `ip` may not be reached.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        match internal(ip) {
            Some(_) if self.allow.iter().any(|net| net.contains(ip)) => Ok(()),
            Some(why) => Err(format!(
                "{ip} is {why}; webhooks may not reach internal addresses unless --webhook-allow names them"
            )),
            None => Ok(()),
        }
    }

    /// Checks a webhook URL at submission: its scheme, and its host when
    /// that is an address (a name is checked when it is resolved).
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("`url` is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("`url` must be http:// or https://, got `{url}`"));
        }
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(format!("`url` has no host: `{url}`")),
        };
        self.check(ip)
            .map_err(|why| format!("`url` is refused: {why}"))
    }
}

thread_local! {
    /// Why the resolver refused the last destination on this worker thread.
    static REFUSED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Takes the refusal the resolver recorded on this thread, if any.
pub fn take_refusal() -> Option<String> {
    REFUSED.with(|r| r.borrow_mut().take())
}

/// A resolver that keeps only the addresses the egress policy allows.
pub struct GuardedResolver {
    pub egress: Arc<Egress>,
}

impl ureq::Resolver for GuardedResolver {
    fn resolve(&self, netloc: &str) -> io::Result<Vec<SocketAddr>> {
        let resolved: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
        let mut refusal = None;
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| match self.egress.check(addr.ip()) {
                Ok(()) => true,
                Err(why) => {
                    refusal.get_or_insert(why);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            if let Some(why) = refusal {
                let host = netloc.rsplit_once(':').map_or(netloc, |(host, _)| host);
                let message = format!("refused destination: {host} resolves to {why}");
                REFUSED.with(|r| *r.borrow_mut() = Some(message.clone()));
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, message));
            }
        }
        Ok(allowed)
    }
}

/// The TLS configuration of https deliveries: the certificates of `ca`
/// (a PEM file) when given, else the system's roots (Mozilla's, built in,
/// on a host that has none).
pub fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read --webhook-ca {}: {e}", path.display()))?;
            let mut found = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("--webhook-ca {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--webhook-ca {}: {e}", path.display()))?;
                found += 1;
            }
            if found == 0 {
                return Err(format!(
                    "--webhook-ca {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
        None => {
            let added = match rustls_native_certs::load_native_certs() {
                Ok(native) => roots.add_parsable_certificates(native).0,
                Err(_) => 0,
            };
            if added == 0 {
                // A host without a CA bundle (no ca-certificates) still
                // verifies https receivers: against Mozilla's roots, built in.
                eprintln!(
                    "percore: the system has no CA certificates; https webhooks are verified against Mozilla's roots (webpki-roots), or set --webhook-ca"
                );
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        internal(text.parse().unwrap()).is_some()
    }

    #[test]
    fn internal_addresses_in_every_form() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(refused(ip), "{ip} should be internal");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!refused(ip), "{ip} should be public");
        }
    }

    #[test]
    fn the_allow_list_opens_only_what_it_names() {
        let egress = Egress {
            allow: vec![Cidr::parse("127.0.0.1").unwrap()],
        };
        assert!(egress.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(egress.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(egress.check("127.0.0.2".parse().unwrap()).is_err());
        assert!(egress.check("10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn urls_naming_internal_addresses_are_refused_at_submission() {
        let egress = Egress::default();
        for url in [
            "http://127.0.0.1:9/x",
            "http://[::1]/x",
            "https://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "http://0x7f.1/",
        ] {
            let error = egress.check_url(url).unwrap_err();
            assert!(error.contains("refused"), "{url}: {error}");
        }
        assert!(egress.check_url("https://example.com/hook").is_ok());
        assert!(egress.check_url("ftp://example.com/").is_err());
        assert!(egress.check_url("not a url").is_err());
    }

    #[test]
    fn the_resolver_keeps_only_allowed_addresses() {
        let resolver = GuardedResolver {
            egress: Arc::new(Egress::default()),
        };
        let error = ureq::Resolver::resolve(&resolver, "localhost:80").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        assert!(take_refusal().unwrap().contains("loopback"));
        let open = GuardedResolver {
            egress: Arc::new(Egress {
                allow: vec![
                    Cidr::parse("127.0.0.0/8").unwrap(),
                    Cidr::parse("::1").unwrap(),
                ],
            }),
        };
        assert!(!ureq::Resolver::resolve(&open, "localhost:80")
            .unwrap()
            .is_empty());
    }
}
