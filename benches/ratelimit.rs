//! What the rate limiter costs per request: one key and many, one core and all of them, and the memory of a million keys.
//!
//! `cargo bench --bench ratelimit`. Prints ns per check; compare the rows
//! with each other (same run), not with another machine's numbers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use percore::limit::{KeySource, Limiter, Outcome, Policy, Rate, Rules};

fn rules(max_keys: usize) -> Rules {
    Rules {
        policies: vec![Policy {
            name: "default".into(),
            rate: Rate::parse("1000000000/s").unwrap(),
            burst: 1_000_000_000,
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

/// Keys reach the limiter as keyed SipHash values; spread the bench's small
/// integers the same way (splitmix64) so the table sees realistic hashes.
fn spread_key(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs `checks` checks on each of `threads` threads; returns ns per check per thread.
fn run(limiter: &Arc<Limiter>, threads: usize, checks: u64, key_of: fn(usize, u64) -> u64) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let limiter = Arc::clone(limiter);
            s.spawn(move || {
                let now = Instant::now();
                let mut allowed = 0u64;
                for i in 0..checks {
                    if limiter
                        .check_key(0, spread_key(key_of(t, i)), 1, now)
                        .outcome
                        == Outcome::Allowed
                    {
                        allowed += 1;
                    }
                }
                std::hint::black_box(allowed);
            });
        }
    });
    started.elapsed().as_nanos() as f64 / checks as f64
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    const CHECKS: u64 = 2_000_000;
    println!("rate limiter, {CHECKS} checks per thread, {cpus} CPUs");
    let hot = Limiter::new(rules(1_000_000));
    run(&hot, 1, 100_000, |_, _| 7);
    println!(
        "  one key, 1 thread:            {:6.1} ns/check",
        run(&hot, 1, CHECKS, |_, _| 7)
    );
    println!(
        "  one key, {cpus} threads (contended): {:6.1} ns/check per thread",
        run(&hot, cpus, CHECKS, |_, _| 7)
    );
    let spread = Limiter::new(rules(1_000_000));
    println!(
        "  10k keys, 1 thread:           {:6.1} ns/check",
        run(&spread, 1, CHECKS, |_, i| i % 10_000)
    );
    println!(
        "  10k keys, {cpus} threads:          {:6.1} ns/check per thread",
        run(&spread, cpus, CHECKS, |t, i| (t as u64) << 32
            | (i % 10_000))
    );

    // A flood of distinct keys (IP rotation) against a capped table.
    let cap = 100_000;
    let flood = Limiter::new(rules(cap));
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut peak = 0;
    for round in 0..10u64 {
        for i in 0..100_000u64 {
            flood.check_key(0, spread_key(round << 32 | i), 1, Instant::now());
        }
        peak = peak.max(flood.tracked_keys());
        flood.sweep(Instant::now() + Duration::from_secs(2));
    }
    println!(
        "  1,000,000 distinct keys, cap {cap}: {:.1} ns/check, peak {peak} keys tracked, {} evicted, RSS +{} KiB",
        started.elapsed().as_nanos() as f64 / 1e6,
        flood.evictions(),
        rss_kib().saturating_sub(rss_before)
    );
}
