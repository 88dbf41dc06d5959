//! Concurrency: many threads on the one default client, `bd_init` /
//! `bd_cleanup` racing with calls, and last-error text that stays with the
//! thread it belongs to.

mod sim;
mod support;

use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use balena_device::ffi::*;
use sim::Sim;
use support::{clear_env, last_error, serial, setup, INVALID, NOT_CONFIGURED, OK, SERVER};

/// A fresh default client for `sim`, with a 10 s timeout.
fn connect(sim: &Sim) {
    setup(&sim.address(), &sim.api_key(), 10_000);
}

fn state_json(buf: &mut [c_char]) -> c_int {
    // SAFETY: the buffer is valid for its length.
    unsafe { bd_state_json(buf.as_mut_ptr(), buf.len()) }
}

/// Joins the workers, each of which returns the problems it saw, and asserts
/// there were none (the message counts them as `what` and shows the first).
#[track_caller]
fn assert_workers_clean(workers: Vec<thread::JoinHandle<Vec<String>>>, what: &str) {
    let problems: Vec<String> = workers
        .into_iter()
        .flat_map(|h| h.join().expect("a worker panicked"))
        .collect();
    assert!(
        problems.is_empty(),
        "{} {what}, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
}

/// Whether `rc` is a status the contract documents (success values are >= 0).
fn documented(rc: c_int) -> bool {
    rc >= 0 || (-14..=-1).contains(&rc)
}

#[test]
fn eight_threads_ten_thousand_calls_each_without_a_failure() {
    let _g = serial();
    const THREADS: usize = 8;
    const CALLS: usize = 10_000;
    let sim = Sim::start();
    connect(&sim);
    let expected = {
        let mut buf = vec![0 as c_char; 4096];
        let n = state_json(&mut buf);
        assert!(n > 0, "{}", last_error());
        n
    };
    sim.clear_requests();
    let conns_before = sim.api_connections();

    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let mut failures: Vec<String> = Vec::new();
                let mut buf = vec![0 as c_char; 4096];
                let mut name = vec![0 as c_char; 64];
                start.wait();
                for i in 0..CALLS {
                    let (what, rc, good) = match i % 250 {
                        // A few other GETs mixed in.
                        1 => ("bd_ping", bd_ping(), OK),
                        2 => ("bd_healthy", bd_healthy(), 1),
                        // SAFETY: a 64-byte buffer.
                        3 => {
                            let rc = unsafe { bd_device_name(name.as_mut_ptr(), name.len()) };
                            ("bd_device_name", rc, "sim-device".len() as c_int)
                        }
                        // SAFETY: a 64-byte buffer.
                        4 => {
                            let rc =
                                unsafe { bd_supervisor_version(name.as_mut_ptr(), name.len()) };
                            ("bd_supervisor_version", rc, "19.0.5".len() as c_int)
                        }
                        _ => ("bd_state_json", state_json(&mut buf), expected),
                    };
                    if rc != good || !last_error().is_empty() {
                        failures.push(format!("thread {t} call {i} {what}: {rc} {}", last_error()));
                    }
                }
                failures
            })
        })
        .collect();
    assert_workers_clean(handles, "failures");

    // Each call was exactly one request, and connections were reused.
    let reqs = sim.requests();
    assert_eq!(reqs.len(), THREADS * CALLS);
    let device = reqs.iter().filter(|r| r.path == "/v1/device").count();
    assert_eq!(device, THREADS * (CALLS - 4 * CALLS / 250));
    let opened = sim.api_connections() - conns_before;
    assert!(
        opened <= 2 * THREADS,
        "{opened} connections opened for {} calls",
        THREADS * CALLS
    );
    bd_cleanup();
}

#[test]
fn init_and_cleanup_racing_with_calls_return_documented_statuses() {
    let _g = serial();
    clear_env();
    let sim = Sim::start();
    connect(&sim);
    let stop = Arc::new(AtomicBool::new(false));
    let succeeded = Arc::new(AtomicUsize::new(0));
    let unconfigured = Arc::new(AtomicUsize::new(0));

    let workers: Vec<_> = (0..4)
        .map(|t| {
            let stop = Arc::clone(&stop);
            let succeeded = Arc::clone(&succeeded);
            let unconfigured = Arc::clone(&unconfigured);
            thread::spawn(move || {
                let mut bad: Vec<String> = Vec::new();
                let mut buf = vec![0 as c_char; 4096];
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let (what, rc) = match (t + i) % 4 {
                        0 => ("bd_ping", bd_ping()),
                        1 => ("bd_blink", bd_blink()),
                        2 => ("bd_healthy", bd_healthy()),
                        _ => ("bd_state_json", state_json(&mut buf)),
                    };
                    let msg = last_error();
                    if !documented(rc) {
                        bad.push(format!("{what}: undocumented {rc}"));
                    } else if rc >= 0 {
                        succeeded.fetch_add(1, Ordering::Relaxed);
                        if !msg.is_empty() {
                            bad.push(format!("{what}: success with message {msg:?}"));
                        }
                    } else if rc == NOT_CONFIGURED {
                        unconfigured.fetch_add(1, Ordering::Relaxed);
                        if !msg.contains("BALENA_SUPERVISOR_ADDRESS") {
                            bad.push(format!("{what}: not configured, message {msg:?}"));
                        }
                    } else {
                        // The client is either there or not: nothing else may fail.
                        bad.push(format!("{what}: {rc} {msg}"));
                    }
                }
                bad
            })
        })
        .collect();

    let a = CString::new(sim.address()).unwrap();
    let k = CString::new(sim.api_key()).unwrap();
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut rounds = 0;
    while Instant::now() < deadline {
        rounds += 1;
        // SAFETY: valid strings.
        assert_eq!(
            unsafe { bd_init(a.as_ptr(), k.as_ptr()) },
            OK,
            "{}",
            last_error()
        );
        assert_eq!(bd_set_timeout_ms(5000 + rounds), OK);
        thread::sleep(Duration::from_millis(3));
        bd_cleanup();
        thread::sleep(Duration::from_millis(1));
        // SAFETY: valid strings.
        assert_eq!(unsafe { bd_init(a.as_ptr(), k.as_ptr()) }, OK);
        thread::sleep(Duration::from_millis(2));
        bd_cleanup();
    }
    stop.store(true, Ordering::Relaxed);
    assert_workers_clean(workers, "bad returns");
    // Both outcomes really happened: the race was exercised.
    assert!(succeeded.load(Ordering::Relaxed) > 0);
    assert!(unconfigured.load(Ordering::Relaxed) > 0);
    assert!(rounds > 10);

    // And the library works normally afterwards.
    connect(&sim);
    assert_eq!(bd_ping(), OK, "{}", last_error());
    bd_cleanup();
}

#[test]
fn last_error_of_one_thread_never_shows_in_another() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    const ROUNDS: usize = 400;
    let start = Arc::new(Barrier::new(3));

    // A: fails at the supervisor (503) with its own service name in the text.
    let a = {
        let start = Arc::clone(&start);
        thread::spawn(move || {
            let mut buf = vec![0 as c_char; 128];
            start.wait();
            for i in 0..ROUNDS {
                // SAFETY: a valid string and buffer.
                let rc = unsafe {
                    bd_container_id(c"no-such-service-A".as_ptr(), buf.as_mut_ptr(), buf.len())
                };
                let msg = last_error();
                assert_eq!(rc, SERVER, "A {i}: {msg}");
                assert!(msg.contains("no-such-service-A"), "A {i}: {msg}");
                assert!(!msg.contains("marker-C"), "A {i} sees C: {msg}");
                assert_eq!(bd_last_http_status(), 503);
            }
        })
    };
    // C: fails locally (bad input), with its own marker in the text.
    let c = {
        let start = Arc::clone(&start);
        thread::spawn(move || {
            let bad = c"http://marker-C bad:1";
            start.wait();
            for i in 0..ROUNDS * 4 {
                // SAFETY: valid strings.
                let rc = unsafe { bd_init(bad.as_ptr(), c"key".as_ptr()) };
                let msg = last_error();
                assert_eq!(rc, INVALID, "C {i}: {msg}");
                assert!(msg.contains("marker-C"), "C {i}: {msg}");
                assert!(!msg.contains("no-such-service-A"), "C {i} sees A: {msg}");
                assert_eq!(bd_last_http_status(), 0);
            }
        })
    };
    // B (this thread): succeeds, so its last error is always "".
    let mut buf = vec![0 as c_char; 4096];
    start.wait();
    for i in 0..ROUNDS {
        let rc = state_json(&mut buf);
        assert!(rc > 0, "B {i}: {rc} {}", last_error());
        assert_eq!(last_error(), "", "B {i}");
        assert_eq!(bd_last_http_status(), 200);
    }
    a.join().expect("thread A failed");
    c.join().expect("thread C failed");

    // B's own failure shows only B's message.
    // SAFETY: a valid string and buffer.
    let rc = unsafe { bd_container_id(c"service-of-B".as_ptr(), buf.as_mut_ptr(), buf.len()) };
    assert_eq!(rc, SERVER);
    let msg = last_error();
    assert!(
        msg.contains("service-of-B") && !msg.contains("no-such-service-A"),
        "{msg}"
    );
    bd_cleanup();
}
