//! CPU steering: a client pinned to each CPU in turn is accepted by the io core on that CPU, and `percore_accepted_off_cpu_total` shows what happens without steering.
//!
//! On loopback the softirq that takes a client's SYN runs on the client's
//! own CPU, so pinning the client picks the CPU the kernel sees the
//! connection arrive on.

mod common;

use std::collections::HashMap;

use common::Server;
use percore::runtime::cpu;

/// Connections each pinned client opens per CPU.
const PER_CPU: u64 = 16;

/// Per-core values of one counter in a /metrics text.
fn per_core(text: &str, name: &str) -> HashMap<usize, u64> {
    let prefix = format!("{name}{{core=\"");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (core, value) = rest.split_once("\"} ")?;
            Some((core.parse().ok()?, value.trim().parse().ok()?))
        })
        .collect()
}

/// What each core accepted, and accepted off its CPU, while a client pinned
/// to `cpu` opened [`PER_CPU`] connections, each answered, then asked /metrics.
struct Round {
    accepted: HashMap<usize, u64>,
    off_cpu: HashMap<usize, u64>,
}

fn snapshot(server: &Server) -> (HashMap<usize, u64>, HashMap<usize, u64>) {
    let text = server.get("/metrics").text();
    (
        per_core(&text, "percore_connections_accepted_total"),
        per_core(&text, "percore_accepted_off_cpu_total"),
    )
}

fn round(
    server: &Server,
    cpu: usize,
    before: &(HashMap<usize, u64>, HashMap<usize, u64>),
) -> Round {
    let after = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                cpu::pin_current_thread(cpu).expect("pin the client");
                let conns: Vec<_> = (0..PER_CPU).map(|_| server.connect()).collect();
                for mut conn in conns {
                    conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
                    assert_eq!(conn.response().status, 200);
                }
                // The scrape is one more connection from this CPU.
                snapshot(server)
            })
            .join()
            .expect("the pinned client")
    });
    let delta = |after: &HashMap<usize, u64>, before: &HashMap<usize, u64>| {
        after
            .iter()
            .map(|(core, n)| (*core, n - before.get(core).copied().unwrap_or(0)))
            .collect()
    };
    Round {
        accepted: delta(&after.0, &before.0),
        off_cpu: delta(&after.1, &before.1),
    }
}

/// Two CPUs this process may use, or why the test cannot run.
fn two_cpus() -> Option<Vec<usize>> {
    let cpus = cpu::allowed_cpus();
    if cpus.len() >= 2 {
        return Some(cpus[..2].to_vec());
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true requires two CPUs to test steering; this process may use {}",
        cpu::format_cpu_list(&cpus)
    );
    eprintln!("skipped: steering needs two CPUs, this process may use one");
    None
}

fn serve(cpus: &[usize], steer: &str) -> Server {
    let list = cpu::format_cpu_list(cpus);
    let mut server = Server::start(&["--cores", "2", "--cpus", &list, "--steer", steer]);
    let _store = server.next_line();
    let steering = server.next_line();
    assert!(
        steering.starts_with(&format!("steering: {steer}")),
        "the start-up log says {steering:?}"
    );
    server
}

#[test]
fn each_connection_is_accepted_on_the_cpu_that_took_it() {
    let Some(cpus) = two_cpus() else { return };
    let server = serve(&cpus, "on");
    for (core, &cpu) in cpus.iter().enumerate() {
        let before = snapshot(&server);
        let round = round(&server, cpu, &before);
        for (&other, &accepted) in &round.accepted {
            let expected = if other == core { PER_CPU + 1 } else { 0 };
            assert_eq!(
                accepted, expected,
                "a client on CPU {cpu} (core {core}'s) got {accepted} connections accepted by core {other}"
            );
        }
        assert!(
            round.off_cpu.values().all(|&n| n == 0),
            "steered connections were accepted off their CPU: {:?}",
            round.off_cpu
        );
    }
}

#[test]
fn without_steering_the_counter_shows_connections_off_their_cpu() {
    let Some(cpus) = two_cpus() else { return };
    let server = serve(&cpus, "off");
    let mut off_cpu_total = 0;
    for (core, &cpu) in cpus.iter().enumerate() {
        let before = snapshot(&server);
        let round = round(&server, cpu, &before);
        // Every connection the other core took arrived on this CPU, not its own.
        for (&other, &accepted) in &round.accepted {
            let off = round.off_cpu.get(&other).copied().unwrap_or(0);
            let expected = if other == core { 0 } else { accepted };
            assert_eq!(
                off, expected,
                "core {other} accepted {accepted} connections from CPU {cpu} and counted {off} off its CPU"
            );
            off_cpu_total += off;
        }
    }
    // The hash spreads 34 connections over two cores: all 34 on the right
    // core by chance has a probability of 2^-34.
    assert!(
        off_cpu_total > 0,
        "no connection landed off its CPU without steering"
    );
}

#[test]
fn cpus_without_an_io_core_are_named_at_start_up() {
    let Some(cpus) = two_cpus() else { return };
    let mut server = Server::start(&[
        "--cores",
        "1",
        "--cpus",
        &cpus[0].to_string(),
        "--steer",
        "on",
    ]);
    let _store = server.next_line();
    let steering = server.next_line();
    assert!(
        steering.starts_with(&format!("steering: on; CPU {} runs no io core", cpus[1])),
        "the start-up log says {steering:?}"
    );
    assert!(steering.contains("spread by hash"), "{steering}");
}
