//! What one request costs inside percore, without the kernel: parsing a head,
//! writing the /plaintext answer, serializing and writing the /json answer.
//!
//! `cargo bench --bench micro` (release profile). Each case runs N iterations
//! five times and prints the best run's ns per operation, and the allocations
//! per operation over all five runs (a counting global allocator: every
//! `alloc` and `realloc` on this thread). The hot path should allocate
//! nothing, so anything but 0.00 there is a finding. Compare rows with each
//! other on one machine, not with another machine's numbers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use percore::http::date::DateCache;
use percore::http::parse::{parse_head, HEADER_SLOTS};
use percore::http::{Limits, Persistence, Response};

/// Counts allocations made by the current thread; the memory comes from `System`.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc`/`realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: `ptr` came from `System` through `alloc`/`realloc` above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Runs per case.
const RUNS: u32 = 5;
/// Iterations per run: long enough (tens of ms) that the timer's cost vanishes.
const ITERS: u64 = 2_000_000;

/// What `wrk URL` sends: the request line and `Host`, nothing else.
const WRK_GET: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
/// The same with the headers TechEmpower's clients add (as tests/alloc.rs sends).
const TFB_GET: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\
Accept: */*\r\nConnection: keep-alive\r\n\r\n";

/// The /json handler's body, as `src/api` defines it.
#[derive(serde::Serialize)]
struct Message {
    message: &'static str,
}

struct Measured {
    best_ns_per_op: f64,
    allocs_per_op: f64,
}

/// Warms up, then times `RUNS` runs of `ITERS` calls of `op`; best run and allocations per call.
fn measure(mut op: impl FnMut()) -> Measured {
    for _ in 0..ITERS / 10 {
        op();
    }
    let mut best = Duration::MAX;
    let before = allocations();
    for _ in 0..RUNS {
        let started = Instant::now();
        for _ in 0..ITERS {
            op();
        }
        best = best.min(started.elapsed());
    }
    let allocs = allocations() - before;
    Measured {
        best_ns_per_op: best.as_nanos() as f64 / ITERS as f64,
        allocs_per_op: allocs as f64 / (u64::from(RUNS) * ITERS) as f64,
    }
}

fn report(name: &str, m: &Measured) {
    println!(
        "{name:<48} {:>8.1} ns/op  {:>6.2} allocs/op",
        m.best_ns_per_op, m.allocs_per_op
    );
}

fn parse_case(request: &'static [u8]) -> Measured {
    let limits = Limits::default();
    // Check once, outside the timing, that the case parses what we think it does.
    {
        let mut slots = [const { MaybeUninit::uninit() }; HEADER_SLOTS];
        let head = parse_head(request, &mut slots, &limits)
            .expect("valid request")
            .expect("complete head");
        assert_eq!(head.path, "/plaintext");
        assert_eq!(head.len, request.len());
    }
    measure(|| {
        let mut slots = [const { MaybeUninit::uninit() }; HEADER_SLOTS];
        let head = parse_head(black_box(request), &mut slots, black_box(&limits));
        black_box(
            head.map(|h| h.map(|h| (h.path.len(), h.len, h.keep_alive)))
                .ok(),
        );
    })
}

fn main() {
    let dates = DateCache::new();
    let date = dates.get();
    println!(
        "percore micro-benchmarks: best of {RUNS} runs × {ITERS} iterations; allocations over all runs"
    );

    report("parse_head: wrk GET (Host only)", &parse_case(WRK_GET));
    report(
        "parse_head: wrk GET + 3 TechEmpower headers",
        &parse_case(TFB_GET),
    );

    let mut out = Vec::with_capacity(4096);
    let plaintext = |out: &mut Vec<u8>| {
        out.clear();
        let mut response = Response::new(out, black_box(date), false, Persistence::KeepAlive);
        response.send(200, "text/plain", &[], black_box(b"Hello, World!"));
    };
    plaintext(&mut out);
    assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n") && out.ends_with(b"\r\n\r\nHello, World!"));
    report(
        "Response::send /plaintext into a reused Vec",
        &measure(|| {
            plaintext(&mut out);
            black_box(&out);
        }),
    );

    let mut scratch = Vec::with_capacity(256);
    let json = |out: &mut Vec<u8>, scratch: &mut Vec<u8>| {
        out.clear();
        let mut response = Response::new(out, black_box(date), false, Persistence::KeepAlive);
        response.json(
            200,
            black_box(&Message {
                message: "Hello, World!",
            }),
            scratch,
        );
    };
    json(&mut out, &mut scratch);
    assert!(out.ends_with(br#"{"message":"Hello, World!"}"#));
    report(
        "Response::json /json, reused Vec and scratch",
        &measure(|| {
            json(&mut out, &mut scratch);
            black_box(&out);
        }),
    );
}
