//! A panic inside the library never crosses the C boundary: the boundary
//! every export runs in turns it into `BD_ERR_INTERNAL` with a message, and
//! the process (and the library) carry on.

mod sim;
mod support;

use std::ffi::{c_char, CStr};

use balena_device::ffi::boundary::boundary;
use balena_device::ffi::*;
use sim::Sim;
use support::{fresh_client, last_error, serial, INTERNAL, OK};

/// A fresh default client for `sim` (the library's default timeout).
fn connect(sim: &Sim) {
    fresh_client(&sim.address(), &sim.api_key());
}

#[test]
fn a_panic_becomes_internal_and_the_process_lives_on() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);

    // A successful call first, so there is a status to be cleared.
    assert_eq!(bd_ping(), OK, "{}", last_error());
    assert_eq!(bd_last_http_status(), 200);

    let rc = boundary(|| panic!("boom"));
    assert_eq!(rc, INTERNAL);
    let msg = last_error();
    assert!(msg.contains("boom"), "{msg}");
    assert!(msg.contains("internal error"), "{msg}");
    assert_eq!(bd_last_http_status(), 0);
    let text = bd_strerror(rc);
    // SAFETY: static text.
    assert!(unsafe { CStr::from_ptr(text) }
        .to_str()
        .unwrap()
        .contains("internal"));

    // A formatted (String) payload and a non-string payload.
    let rc = boundary(|| panic!("formatted {} {}", 4, "two"));
    assert_eq!(rc, INTERNAL);
    assert!(last_error().contains("formatted 4 two"), "{}", last_error());
    let rc = boundary(|| std::panic::panic_any(42_u32));
    assert_eq!(rc, INTERNAL);
    assert!(last_error().contains("unknown panic"), "{}", last_error());

    // Normal calls work afterwards, and clear the message.
    let mut buf = vec![0 as c_char; 4096];
    // SAFETY: a 4096-byte buffer.
    let n = unsafe { bd_state_json(buf.as_mut_ptr(), buf.len()) };
    assert!(n > 0, "{}", last_error());
    assert_eq!(last_error(), "");
    assert_eq!(bd_reboot(false), OK, "{}", last_error());
    assert_eq!(sim.requests().len(), 3);
    bd_cleanup();
}

#[test]
fn a_panic_while_holding_the_client_leaves_it_usable() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    // Panic in the middle of work that holds the default client.
    let rc = boundary(|| {
        let _client = balena_device::global::client()?;
        panic!("in the middle of a call");
    });
    assert_eq!(rc, INTERNAL);
    assert!(last_error().contains("in the middle of a call"));
    // Panics on other threads, concurrently, do not disturb this one.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let rc = boundary(|| panic!("thread {i}"));
                (rc, last_error())
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (rc, msg) = h.join().expect("the panic escaped the boundary");
        assert_eq!(rc, INTERNAL);
        assert!(msg.contains(&format!("thread {i}")), "{msg}");
    }
    assert!(last_error().contains("in the middle of a call"));
    assert_eq!(bd_ping(), OK, "{}", last_error());
    assert_eq!(last_error(), "");
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("GET", "/ping")
    );
    bd_cleanup();
}
