//! What firmware does to a library, beyond single calls: callbacks that call
//! it again, exact limits on what a stream may send, panics kept off the
//! host's stderr, connections kept and released as a long-running process
//! needs.

mod fault_server;
mod sim;
mod support;

use std::ffi::{c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use balena_device::client::MAX_LINE_BYTES;
use balena_device::ffi::*;
use fault_server::{Conn, FaultServer};
use sim::Sim;
use support::{cstr, fresh_client, last_error, serial, setup, INVALID, IO, OK, TOO_LARGE};

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

/// A keep-alive server that answers every request with `OK` after `delay`
/// and keeps an idle connection open for 30 s; `live` counts the
/// connections open now (from the server's side).
fn counting_server(delay: Duration) -> (FaultServer, Arc<AtomicUsize>) {
    let live = Arc::new(AtomicUsize::new(0));
    let counter = live.clone();
    let srv = FaultServer::start(move |c: &mut Conn| {
        counter.fetch_add(1, Ordering::SeqCst);
        while c.read_request_within(Duration::from_secs(30)).is_some() {
            thread::sleep(delay);
            if !c.respond(200, &[("Content-Type", "text/plain")], b"OK") {
                break;
            }
        }
        counter.fetch_sub(1, Ordering::SeqCst);
    });
    (srv, live)
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    done()
}

#[test]
fn after_a_burst_only_a_few_idle_connections_stay_open() {
    let _g = serial();
    let (srv, live) = counting_server(Duration::from_millis(150));
    setup(&srv.address(), KEY, 5_000);
    let burst = 16;
    let callers: Vec<_> = (0..burst).map(|_| thread::spawn(|| bd_ping())).collect();
    for c in callers {
        assert_eq!(c.join().unwrap(), OK);
    }
    assert!(srv.connections() >= 8, "the burst did not overlap");
    // No further call: the extra connections are closed as they come back.
    // The header promises at most 4 idle connections.
    let max = 4;
    assert!(
        wait_until(Duration::from_secs(2), || live.load(Ordering::SeqCst)
            <= max),
        "{} connections still open after the burst (at most {max} may stay)",
        live.load(Ordering::SeqCst)
    );

    bd_cleanup();
}

#[test]
fn idle_connections_are_reused_only_within_the_idle_limit() {
    let _g = serial();
    // The server keeps idle connections open far longer than the limit.
    let (srv, _live) = counting_server(Duration::ZERO);
    setup(&srv.address(), KEY, 5_000);
    for _ in 0..3 {
        assert_eq!(bd_ping(), OK, "{}", last_error());
        thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        srv.connections(),
        1,
        "calls 0.5 s apart share one connection"
    );
    // Past the 3.5 s limit (the supervisor closes idle connections at 5 s,
    // and a request must never race that close).
    thread::sleep(Duration::from_millis(3_900));
    assert_eq!(bd_ping(), OK, "{}", last_error());
    assert_eq!(
        srv.connections(),
        2,
        "a call after the idle limit must not reuse the old connection"
    );
    bd_cleanup();
}

#[test]
fn a_host_name_is_looked_up_once_per_client() {
    let _g = serial();
    let (srv, _live) = counting_server(Duration::ZERO);
    setup(&format!("http://localhost:{}", srv.port()), KEY, 5_000);
    let before = balena_device::client::lookups_started();
    for _ in 0..20 {
        assert_eq!(bd_ping(), OK, "{}", last_error());
    }
    assert_eq!(balena_device::client::lookups_started() - before, 1);
    bd_cleanup();
}

/// Forks; the child runs `body` under `alarm(10)` and exits with its result.
fn in_child(body: impl FnOnce() -> c_int) -> c_int {
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        unsafe { libc::alarm(10) };
        let rc = body();
        unsafe { libc::_exit(rc) };
    }
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

#[test]
fn a_stopped_stream_ends_at_the_server_while_a_forked_child_holds_its_socket() {
    let _g = serial();
    // A journal that sends a line every 20 ms for as long as the client
    // listens; `ended` is set when writing fails (the client is gone).
    let ended = Arc::new(AtomicUsize::new(0));
    let flag = ended.clone();
    let srv = FaultServer::start(move |c: &mut Conn| {
        if c.read_request().is_none() {
            return;
        }
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
        if !c.write(head.as_bytes()) {
            return;
        }
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if !c.write(b"5\r\nline\n\r\n") {
                flag.store(1, Ordering::SeqCst);
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    });
    setup(&srv.address(), KEY, 5_000);

    struct Ctx {
        lines: usize,
        child: libc::pid_t,
    }
    unsafe extern "C" fn fork_then_stop(
        _: *const c_char,
        _: usize,
        userdata: *mut c_void,
    ) -> c_int {
        let ctx = unsafe { &mut *userdata.cast::<Ctx>() };
        ctx.lines += 1;
        if ctx.lines == 3 {
            // A helper forked while the stream runs: it holds a copy of the
            // stream's socket for a while.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                unsafe {
                    libc::sleep(3);
                    libc::_exit(0);
                }
            }
            ctx.child = pid;
            return 1; // stop
        }
        0
    }
    let mut ctx = Ctx { lines: 0, child: 0 };
    let opts = cstr(r#"{"follow":true}"#);
    // SAFETY: valid options, callback and userdata.
    let rc = unsafe {
        bd_journal_logs(
            opts.as_ptr(),
            Some(fork_then_stop),
            (&mut ctx as *mut Ctx).cast(),
        )
    };
    assert_eq!(rc, OK, "{}", last_error());
    assert!(ctx.child > 0, "fork failed");
    let ended_at_server = wait_until(Duration::from_millis(1500), || {
        ended.load(Ordering::SeqCst) == 1
    });
    let mut status = 0;
    unsafe { libc::waitpid(ctx.child, &mut status, 0) };
    assert!(
        ended_at_server,
        "the server kept streaming to a stopped stream (the child's copy kept it open)"
    );
    bd_cleanup();
}

#[test]
fn local_failures_say_what_is_really_wrong() {
    let _g = serial();
    let dir = std::env::temp_dir().join(format!("bd-firmware-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a-directory")).unwrap();
    std::fs::write(dir.join("a-file"), b"").unwrap();

    // A lock path that is a directory is not "held by another process".
    let path = cstr(dir.join("a-directory").to_str().unwrap());
    assert_eq!(unsafe { bd_set_update_lock_path(path.as_ptr()) }, OK);
    assert_eq!(bd_lock_updates(), IO, "{}", last_error());
    assert!(last_error().contains("is a directory"), "{}", last_error());

    // A lock path under a regular file: ENOTDIR, naming the file.
    let path = cstr(dir.join("a-file/sub/updates.lock").to_str().unwrap());
    assert_eq!(unsafe { bd_set_update_lock_path(path.as_ptr()) }, OK);
    assert_eq!(bd_lock_updates(), IO, "{}", last_error());
    let msg = last_error();
    assert!(
        msg.contains("not a directory") && msg.contains("a-file"),
        "{msg}"
    );
    assert!(!msg.contains("exists"), "{msg}");
    unsafe { bd_set_update_lock_path(ptr::null()) };
    let _ = std::fs::remove_dir_all(&dir);

    // No free file descriptor: said so, not "the connection broke".
    let (srv, _live) = counting_server(Duration::ZERO);
    setup(&srv.address(), KEY, 2_000);
    let status = in_child(|| {
        // Use up every descriptor.
        while unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) } >= 0 {}
        let rc = bd_ping();
        let msg = last_error();
        let ok = rc == IO && msg.contains("no free file descriptor") && !msg.contains("broke");
        if !ok {
            eprintln!("bd_ping with no descriptor: {rc} {msg}");
        }
        c_int::from(!ok)
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "wait status {status}"
    );
    bd_cleanup();
}

#[test]
fn with_little_memory_left_a_call_fails_or_works_but_never_aborts() {
    let _g = serial();
    let sim = Sim::start();
    let addr = sim.address();
    let key = sim.api_key();
    // In a child: cap the address space near what it uses, fill what malloc
    // can still hand out, then give back `room_kib` KiB (less than one of
    // ureq's 128 KiB default buffers) and make a call on a new connection.
    for room_kib in [48usize, 96] {
        let status = in_child(|| {
            let a = cstr(&addr);
            let k = cstr(&key);
            if unsafe { bd_init(a.as_ptr(), k.as_ptr()) } != OK {
                return 3;
            }
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
            let pages: u64 = statm
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let limit = pages * 4096 + 256 * 1024;
            let rl = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) } != 0 {
                return 4;
            }
            let mut blocks: Vec<*mut c_void> = Vec::with_capacity(1 << 20);
            loop {
                let p = unsafe { libc::malloc(1024) };
                if p.is_null() || blocks.len() == blocks.capacity() {
                    break;
                }
                blocks.push(p);
            }
            for _ in 0..room_kib {
                if let Some(p) = blocks.pop() {
                    unsafe { libc::free(p) };
                }
            }
            let mut st: bd_device_state = unsafe { std::mem::zeroed() };
            let rc = unsafe { bd_state(&mut st) };
            if rc == OK || rc == IO {
                0
            } else {
                2
            }
        });
        assert!(
            libc::WIFEXITED(status),
            "with {room_kib} KiB of memory left the process died (wait status {status})"
        );
        assert_eq!(libc::WEXITSTATUS(status), 0, "{room_kib} KiB");
    }
}

#[test]
fn the_header_states_the_idle_connection_limit_and_the_stack_a_call_needs() {
    let header = balena_device::GENERATED_HEADER;
    let idle = format!(
        "at most {} idle connections",
        balena_device::client::MAX_IDLE_CONNECTIONS
    );
    assert!(header.contains(&idle), "the header does not say {idle:?}");
    assert!(
        header.contains("at least 32 KiB of\n * stack"),
        "no stack minimum in the header"
    );
}

#[test]
fn calls_work_on_a_small_thread_stack() {
    let _g = serial();
    let sim = Sim::start();
    fresh_client(&sim.address(), &sim.api_key());
    // What the header states for the release library; this test runs the
    // build it was compiled in (a debug build needs about 96 KiB).
    let stack = if cfg!(debug_assertions) { 128 } else { 32 } * 1024;
    let address = format!("http://localhost:{}", sim.port());
    let key = sim.api_key();
    let worker = thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let mut st: bd_device_state = unsafe { std::mem::zeroed() };
            let mut seen = Seen::default();
            let opts = cstr(r#"{"count":2}"#);
            let a = cstr(&address);
            let k = cstr(&key);
            [
                bd_ping(),
                unsafe { bd_state(&mut st) },
                unsafe {
                    bd_journal_logs(opts.as_ptr(), Some(record), (&mut seen as *mut Seen).cast())
                },
                unsafe { bd_init(c"ftp://x".as_ptr(), k.as_ptr()) },
                unsafe { bd_init(a.as_ptr(), k.as_ptr()) },
                bd_ping(),
            ]
        })
        .unwrap();
    let rcs = worker.join().expect("the call overflowed a small stack");
    assert_eq!(rcs, [OK, OK, OK, INVALID, OK, OK]);
    bd_cleanup();
}
