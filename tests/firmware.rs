//! What firmware does to a library, beyond single calls: callbacks that call
//! it again, exact limits on what a stream may send, panics kept off the
//! host's stderr, connections kept and released as a long-running process
//! needs.

mod fault_server;
mod sim;
mod support;

use std::ffi::{c_char, c_int, c_void};
use std::ptr;

use balena_device::client::MAX_LINE_BYTES;
use balena_device::ffi::*;
use fault_server::{Conn, FaultServer};
use sim::Sim;
use support::{cstr, fresh_client, last_error, serial, setup, INVALID, OK, TOO_LARGE};

const KEY: &str = "firmwarekey";

/// Lines a stream delivered (their lengths and first bytes), and what a
/// nested call made from the callback returned.
#[derive(Default)]
struct Seen {
    lines: Vec<(usize, u8)>,
    nested: Vec<c_int>,
}

unsafe extern "C" fn record(line: *const c_char, len: usize, userdata: *mut c_void) -> c_int {
    // SAFETY: the test passes a `Seen` and the library a `len`-byte line.
    let seen = unsafe { &mut *userdata.cast::<Seen>() };
    let first = if len > 0 {
        unsafe { *line.cast::<u8>() }
    } else {
        0
    };
    seen.lines.push((len, first));
    0
}

unsafe extern "C" fn call_again(line: *const c_char, len: usize, userdata: *mut c_void) -> c_int {
    // SAFETY: as in `record`.
    unsafe { record(line, len, userdata) };
    let seen = unsafe { &mut *userdata.cast::<Seen>() };
    // A nested call that fails (NULL service) and sets its own last error.
    let rc = unsafe { bd_container_id(ptr::null(), ptr::null_mut(), 0) };
    seen.nested.push(rc);
    0
}

/// A server that answers every journal request with `body`, then closes.
fn journal_server(body: Vec<u8>) -> FaultServer {
    FaultServer::start(move |c: &mut Conn| {
        if c.read_request().is_some() {
            c.respond(200, &[("Connection", "close")], &body);
        }
    })
}

#[test]
fn a_stream_line_may_be_exactly_the_cap_and_not_a_byte_more() {
    let _g = serial();
    // A line of exactly the cap (with \r\n), then one a byte longer that
    // arrives with its newline in the same read as its end.
    let mut body = vec![b'a'; MAX_LINE_BYTES];
    body.extend_from_slice(b"\r\n");
    body.extend(std::iter::repeat_n(b'b', MAX_LINE_BYTES + 1));
    body.extend_from_slice(b"\nc\n");
    let srv = journal_server(body);
    setup(&srv.address(), KEY, 5_000);
    let mut seen = Seen::default();
    let opts = cstr("{}");
    // SAFETY: valid options, callback and userdata.
    let rc =
        unsafe { bd_journal_logs(opts.as_ptr(), Some(record), (&mut seen as *mut Seen).cast()) };
    assert_eq!(rc, TOO_LARGE, "{}", last_error());
    assert!(last_error().contains("longer than"), "{}", last_error());
    assert_eq!(bd_last_http_status(), 200);
    assert_eq!(seen.lines, vec![(MAX_LINE_BYTES, b'a')], "lines delivered");

    // Far longer, in one piece with its newline: refused too.
    let mut body = vec![b'x'; MAX_LINE_BYTES + 16 * 1024];
    body.push(b'\n');
    let srv = journal_server(body);
    setup(&srv.address(), KEY, 5_000);
    let mut seen = Seen::default();
    // SAFETY: as above.
    let rc =
        unsafe { bd_journal_logs(opts.as_ptr(), Some(record), (&mut seen as *mut Seen).cast()) };
    assert_eq!(rc, TOO_LARGE, "{}", last_error());
    assert!(seen.lines.is_empty(), "{:?}", seen.lines);
    bd_cleanup();
}

#[test]
fn a_streams_result_describes_the_stream_not_a_call_made_from_its_callback() {
    let _g = serial();
    let sim = Sim::start();
    fresh_client(&sim.address(), &sim.api_key());
    let mut seen = Seen::default();
    let opts = cstr(r#"{"count":3}"#);
    // SAFETY: valid options, callback and userdata.
    let rc = unsafe {
        bd_journal_logs(
            opts.as_ptr(),
            Some(call_again),
            (&mut seen as *mut Seen).cast(),
        )
    };
    assert_eq!(seen.nested, vec![INVALID; 3], "the nested calls failed");
    assert_eq!(rc, OK, "{}", last_error());
    assert_eq!(last_error(), "", "the nested call's message is left over");
    assert_eq!(
        bd_last_http_status(),
        200,
        "the nested call's status is left over"
    );
    assert_eq!(seen.lines.len(), 3);
    bd_cleanup();
}

/// Run as its own process (see the next test): a panic inside the boundary.
#[test]
fn panic_child() {
    if std::env::var_os("BD_PANIC_CHILD").is_none() {
        return; // only meaningful as the child of the next test
    }
    let rc = balena_device::ffi::boundary::boundary(|| panic!("a bug in the library"));
    assert_eq!(rc, support::INTERNAL);
    assert!(last_error().contains("a bug in the library"));
    // A panic outside the boundary still reaches the host's own hook.
    let outside = std::panic::catch_unwind(|| panic!("the host's own panic"));
    assert!(outside.is_err());
}

#[test]
fn a_panic_inside_the_library_prints_nothing_on_the_hosts_stderr() {
    // Without libtest's output capture (--nocapture), so that a panic hook
    // writes to the process's real stderr, as in a C host.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "panic_child", "--nocapture", "--test-threads=1"])
        .env("BD_PANIC_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert!(
        !stderr.contains("a bug in the library"),
        "panic text on stderr: {stderr}"
    );
    assert!(
        stderr.contains("the host's own panic"),
        "the host's hook no longer runs: {stderr}"
    );
}
