//! Rate limiting: GCRA per client key, one budget per key across every io core, in a bounded lock-free table.
//!
//! GCRA keeps one number per key, the theoretical arrival time (TAT) of the
//! next request on a clock shared by all cores. A request of cost `c` is
//! allowed if `max(TAT, now) + c·T` is at most `now + burst·T` (T = time
//! between requests at the configured rate); allowing it stores that sum with
//! a compare-and-swap. Every core checks and updates the same entry, so a
//! client gets the configured rate in total, however many connections and
//! cores it spreads over. There is no lock: the table is a `papaya` map and
//! each entry an `AtomicU64`.
//!
//! An entry whose TAT is in the past says exactly what a missing entry says
//! (a full bucket), so a background thread drops those once a second; that is
//! the whole eviction policy while the table is under `max_keys`. Past it,
//! new keys share one budget per policy ([`OVERFLOW_SHARE`] clients' worth)
//! until the sweep makes room, so a flood of keys cannot switch limiting off.

pub mod policy;

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use httparse::Header;

pub use policy::{Cidr, KeySource, PathPattern, Policy, Rate, RouteRule, Rules};

/// How often idle entries are dropped.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The limiter's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Limited,
    /// Shadow mode: would have been limited, was allowed.
    ShadowLimited,
    /// The table was full: allowed from the budget untracked clients share.
    Overflow,
}

/// While the table is full, clients it cannot track share one budget per
/// policy this many clients large: a flood of new keys can neither grow the
/// table nor switch limiting off.
pub const OVERFLOW_SHARE: u64 = 16;

/// What the response should say about the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub policy: usize,
    /// Requests left in the burst after this one.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds until a limited request would be allowed.
    pub retry_after_secs: u64,
}

/// Keys arrive already hashed with a per-process random key; hashing them again buys nothing.
#[derive(Default, Clone)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default, Clone)]
struct BuildPassThrough;

impl BuildHasher for BuildPassThrough {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// The node's rate limiter, shared by every io core.
pub struct Limiter {
    pub rules: Rules,
    table: papaya::HashMap<u64, AtomicU64, BuildPassThrough>,
    /// Keyed with random keys at start-up, so nobody can aim two keys at one bucket.
    key_hasher: RandomState,
    epoch: Instant,
    evictions: AtomicU64,
    rendered: Vec<RenderedPolicy>,
    /// Per policy, the budget untracked clients share while the table is full.
    overflow: Vec<AtomicU64>,
}

impl Limiter {
    pub fn new(rules: Rules) -> Arc<Self> {
        Arc::new(Self {
            table: papaya::HashMap::builder().hasher(BuildPassThrough).build(),
            key_hasher: RandomState::new(),
            epoch: Instant::now(),
            evictions: AtomicU64::new(0),
            rendered: rules.policies.iter().map(RenderedPolicy::new).collect(),
            overflow: rules.policies.iter().map(|_| AtomicU64::new(0)).collect(),
            rules,
        })
    }

    /// Checks a request against its policy; `None` when no policy applies
    /// (an exempt route or client, or no default policy). `principal` is
    /// the authenticated caller's hash, used when the key is
    /// [`KeySource::Principal`].
    pub fn check(
        &self,
        method: &str,
        path: &str,
        headers: &[Header<'_>],
        peer: Option<IpAddr>,
        principal: Option<u64>,
        now: Instant,
    ) -> Option<Verdict> {
        let (policy, cost) = policy::policy_for(&self.rules, method, path)?;
        let ip = peer.map(|p| policy::client_ip(p, headers, &self.rules.trusted_proxies));
        if let Some(ip) = ip {
            if self.rules.exempt.iter().any(|c| c.contains(ip)) {
                return None;
            }
        }
        let key = self.key(policy, headers, ip, principal);
        Some(self.check_key(policy, key, cost, now))
    }

    fn key(
        &self,
        policy: usize,
        headers: &[Header<'_>],
        ip: Option<IpAddr>,
        principal: Option<u64>,
    ) -> u64 {
        let mut hasher = self.key_hasher.build_hasher();
        hasher.write_usize(policy);
        match (&self.rules.key, principal) {
            (KeySource::Header(name), _) => {
                if let Some(h) = headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)) {
                    hasher.write_u8(1);
                    hasher.write(h.value);
                    return hasher.finish();
                }
            }
            (KeySource::Principal, Some(principal)) => {
                hasher.write_u8(2);
                hasher.write_u64(principal);
                return hasher.finish();
            }
            _ => {}
        }
        match ip {
            Some(IpAddr::V4(v4)) => {
                hasher.write_u8(4);
                hasher.write(&v4.octets());
            }
            // One IPv6 host usually holds a whole /64: budget per /64, or
            // rotating through it would buy a client unlimited budgets.
            Some(IpAddr::V6(v6)) => {
                hasher.write_u8(6);
                hasher.write(&v6.octets()[..8]);
            }
            None => hasher.write_u8(0),
        }
        hasher.finish()
    }

    /// The GCRA step for one key. Public for benchmarks and tests.
    pub fn check_key(&self, policy: usize, key: u64, cost: u64, now: Instant) -> Verdict {
        let rule = &self.rules.policies[policy];
        let emission = rule.emission_ns();
        let capacity = rule.capacity_ns();
        let increment = emission.saturating_mul(cost);
        // A new entry's TAT of 0 is never after `now_ns`: it reads as a full bucket.
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let table = self.table.pin();
        let (entry, increment, allowed) = match table.get(&key) {
            Some(entry) => (entry, increment, Outcome::Allowed),
            None if table.len() >= self.rules.max_keys => {
                // The shared budget: OVERFLOW_SHARE times the rate and the burst.
                let shared = (increment / OVERFLOW_SHARE).max(1);
                (&self.overflow[policy], shared, Outcome::Overflow)
            }
            None => (
                table.get_or_insert(key, AtomicU64::new(0)),
                increment,
                Outcome::Allowed,
            ),
        };
        let mut tat = entry.load(Ordering::Acquire);
        loop {
            let new_tat = tat.max(now_ns).saturating_add(increment);
            if new_tat - now_ns > capacity {
                let retry = new_tat - capacity - now_ns;
                let outcome = if self.rules.shadow {
                    Outcome::ShadowLimited
                } else {
                    Outcome::Limited
                };
                return self.verdict(outcome, policy, now_ns, tat.max(now_ns), retry);
            }
            // AcqRel: each core's update is ordered after the one it replaced,
            // so the budget is spent exactly once across cores.
            match entry.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return self.verdict(allowed, policy, now_ns, new_tat, 0),
                Err(actual) => tat = actual,
            }
        }
    }

    fn verdict(
        &self,
        outcome: Outcome,
        policy: usize,
        now_ns: u64,
        tat: u64,
        retry_ns: u64,
    ) -> Verdict {
        let rule = &self.rules.policies[policy];
        let used = tat.saturating_sub(now_ns);
        let free = rule.capacity_ns().saturating_sub(used);
        Verdict {
            outcome,
            policy,
            remaining: free / rule.emission_ns(),
            reset_secs: used.div_ceil(1_000_000_000),
            retry_after_secs: retry_ns
                .div_ceil(1_000_000_000)
                .max(u64::from(retry_ns > 0)),
        }
    }

    /// Drops entries whose bucket is full again (they say nothing a missing
    /// entry would not), then, if still over `max_keys`, any entries until
    /// under it. Returns how many were dropped.
    pub fn sweep(&self, now: Instant) -> usize {
        let table = self.table.pin();
        let before = table.len();
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        // A TAT not after now is a full bucket, the same as no entry. A core
        // racing this removal may update an entry just dropped; its client
        // then starts again from a full bucket, which is what it had anyway
        // give or take that one request's cost.
        table.retain(|_, tat| tat.load(Ordering::Relaxed) > now_ns);
        let mut excess = table.len().saturating_sub(self.rules.max_keys);
        if excess > 0 {
            table.retain(|_, _| {
                if excess > 0 {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
        let dropped = before.saturating_sub(table.len());
        self.evictions.fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }

    /// Keys tracked now.
    pub fn tracked_keys(&self) -> usize {
        self.table.len()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Starts the thread that sweeps idle entries; it ends when the limiter is dropped.
    pub fn start_sweeper(self: &Arc<Self>) -> std::io::Result<()> {
        let limiter: Weak<Self> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("percore-limit-sweep".into())
            .spawn(move || loop {
                std::thread::sleep(SWEEP_INTERVAL);
                let Some(limiter) = limiter.upgrade() else {
                    return;
                };
                limiter.sweep(Instant::now());
            })?;
        Ok(())
    }

    /// Writes the `RateLimit-Policy`, `RateLimit` and `X-RateLimit-*` header lines for a verdict.
    pub fn write_headers(&self, verdict: &Verdict, out: &mut Vec<u8>) {
        let rendered = &self.rendered[verdict.policy];
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(&rendered.policy_line);
        out.extend_from_slice(&rendered.ratelimit_prefix);
        out.extend_from_slice(n.format(verdict.remaining).as_bytes());
        out.extend_from_slice(b";t=");
        out.extend_from_slice(n.format(verdict.reset_secs).as_bytes());
        out.extend_from_slice(&rendered.limit_line);
        out.extend_from_slice(n.format(verdict.remaining).as_bytes());
        out.extend_from_slice(b"\r\nX-RateLimit-Reset: ");
        out.extend_from_slice(n.format(verdict.reset_secs).as_bytes());
        out.extend_from_slice(b"\r\n");
        if verdict.outcome == Outcome::Limited {
            out.extend_from_slice(b"Retry-After: ");
            out.extend_from_slice(n.format(verdict.retry_after_secs).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The parts of a policy's headers that never change, rendered once.
struct RenderedPolicy {
    /// `RateLimit-Policy: "name";q=B;w=W` and CRLF.
    policy_line: Vec<u8>,
    /// `RateLimit: "name";r=`
    ratelimit_prefix: Vec<u8>,
    /// CRLF, `X-RateLimit-Limit: B`, CRLF, `X-RateLimit-Remaining: `
    limit_line: Vec<u8>,
}

impl RenderedPolicy {
    fn new(policy: &Policy) -> Self {
        Self {
            policy_line: format!(
                "RateLimit-Policy: \"{}\";q={};w={}\r\n",
                policy.name,
                policy.burst,
                policy.window_secs()
            )
            .into_bytes(),
            ratelimit_prefix: format!("RateLimit: \"{}\";r=", policy.name).into_bytes(),
            limit_line: format!(
                "\r\nX-RateLimit-Limit: {}\r\nX-RateLimit-Remaining: ",
                policy.burst
            )
            .into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(rate: &str, burst: u64, max_keys: usize) -> Rules {
        Rules {
            policies: vec![Policy {
                name: "default".into(),
                rate: Rate::parse(rate).unwrap(),
                burst,
            }],
            default_policy: Some(0),
            routes: Vec::new(),
            key: KeySource::Ip,
            trusted_proxies: Vec::new(),
            exempt: Vec::new(),
            shadow: false,
            max_keys,
        }
    }

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let limiter = Limiter::new(rules("10/s", 3, 100));
        let t0 = Instant::now();
        let outcomes: Vec<_> = (0..4).map(|_| limiter.check_key(0, 7, 1, t0)).collect();
        assert_eq!(
            outcomes.iter().map(|v| v.outcome).collect::<Vec<_>>(),
            [
                Outcome::Allowed,
                Outcome::Allowed,
                Outcome::Allowed,
                Outcome::Limited
            ]
        );
        assert_eq!(
            outcomes.iter().map(|v| v.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0]
        );
        assert_eq!(outcomes[3].retry_after_secs, 1);
        // One emission interval later exactly one more fits.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(limiter.check_key(0, 7, 1, t1).outcome, Outcome::Allowed);
        assert_eq!(limiter.check_key(0, 7, 1, t1).outcome, Outcome::Limited);
        // Another key has its own budget.
        assert_eq!(limiter.check_key(0, 8, 1, t1).outcome, Outcome::Allowed);
        // A cost above the burst never fits.
        assert_eq!(limiter.check_key(0, 9, 4, t1).outcome, Outcome::Limited);
    }

    #[test]
    fn shadow_mode_reports_without_limiting_and_does_not_spend() {
        let mut r = rules("1/min", 1, 100);
        r.shadow = true;
        let limiter = Limiter::new(r);
        let now = Instant::now();
        assert_eq!(limiter.check_key(0, 1, 1, now).outcome, Outcome::Allowed);
        assert_eq!(
            limiter.check_key(0, 1, 1, now).outcome,
            Outcome::ShadowLimited
        );
    }

    #[test]
    fn one_budget_across_threads() {
        let limiter = Limiter::new(rules("1/h", 1000, 100));
        let now = Instant::now();
        let allowed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..1000)
                            .filter(|_| {
                                limiter.check_key(0, 42, 1, now).outcome == Outcome::Allowed
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(
            allowed, 1000,
            "exactly the burst is allowed across 4 threads"
        );
    }

    #[test]
    fn a_million_distinct_keys_stay_within_the_cap() {
        let limiter = Limiter::new(rules("1/s", 1, 50_000));
        let start = Instant::now();
        let (mut overflow, mut limited) = (0, 0);
        for key in 0..1_000_000u64 {
            let now = start + Duration::from_micros(key);
            match limiter.check_key(0, key, 1, now).outcome {
                Outcome::Overflow => overflow += 1,
                Outcome::Limited => limited += 1,
                _ => {}
            }
            if key % 100_000 == 99_999 {
                limiter.sweep(now);
                assert!(
                    limiter.tracked_keys() <= 50_000,
                    "{} keys tracked",
                    limiter.tracked_keys()
                );
            }
        }
        assert!(limiter.tracked_keys() <= 50_000);
        // Past the cap new keys share 16 clients' budget (16 per second here):
        // a key flood cannot switch limiting off.
        assert!(overflow > 0, "the cap was reached");
        assert!(
            overflow <= 16 * 2 + 16 * 10,
            "the shared budget held: {overflow} allowed"
        );
        assert!(limited > 900_000, "the flood was limited: {limited}");
        // Once their buckets refill, every entry goes.
        limiter.sweep(start + Duration::from_secs(10));
        assert_eq!(limiter.tracked_keys(), 0);
        assert!(limiter.evictions() >= 50_000);
    }

    #[test]
    fn headers_follow_the_draft() {
        let limiter = Limiter::new(rules("10/s", 5, 100));
        let verdict = limiter.check_key(0, 1, 1, Instant::now());
        let mut out = Vec::new();
        limiter.write_headers(&verdict, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "RateLimit-Policy: \"default\";q=5;w=1\r\nRateLimit: \"default\";r=4;t=1\r\nX-RateLimit-Limit: 5\r\nX-RateLimit-Remaining: 4\r\nX-RateLimit-Reset: 1\r\n"
        );
    }
}
