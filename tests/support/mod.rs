//! Helpers shared by the integration tests: the per-binary lock, the
//! configuration variables, status codes and the default client's set-up,
//! checks of return values and text output, small raw servers, running other
//! programs, and where the built library lives.
//!
//! Included with `mod support;`; each test binary compiles its own copy.
#![allow(dead_code)]

use std::ffi::{c_char, c_int, CStr, CString};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use balena_device::ffi::{
    bd_cleanup, bd_init, bd_last_error, bd_last_http_status, bd_set_timeout_ms, bd_status,
};
use serde_json::Value;

// ------------------------------------------------------------------ one test at a time

/// The C API has one process-wide client, reads process-wide environment
/// variables and has one lock path: the tests of a binary that touch them
/// run one at a time (each binary has its own copy of this lock).
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the binary's lock for the guard's lifetime; a test that panicked
/// while holding it does not stop the others.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------------------------------ environment

/// Every environment variable the library reads its configuration from.
pub const CONFIG_VARS: [&str; 10] = [
    "BALENA_SUPERVISOR_ADDRESS",
    "RESIN_SUPERVISOR_ADDRESS",
    "BALENA_SUPERVISOR_HOST",
    "BALENA_SUPERVISOR_PORT",
    "RESIN_SUPERVISOR_HOST",
    "RESIN_SUPERVISOR_PORT",
    "BALENA_SUPERVISOR_API_KEY",
    "RESIN_SUPERVISOR_API_KEY",
    "BALENA_APP_ID",
    "RESIN_APP_ID",
];

/// Removes every configuration variable from this process's environment.
pub fn clear_env() {
    for name in CONFIG_VARS {
        std::env::remove_var(name);
    }
}

// ------------------------------------------------------------------ statuses

pub const OK: c_int = bd_status::BD_OK as c_int;
pub const INVALID: c_int = bd_status::BD_ERR_INVALID_ARGUMENT as c_int;
pub const NOT_CONFIGURED: c_int = bd_status::BD_ERR_NOT_CONFIGURED as c_int;
pub const CONNECT: c_int = bd_status::BD_ERR_CONNECT as c_int;
pub const TIMEOUT: c_int = bd_status::BD_ERR_TIMEOUT as c_int;
pub const IO: c_int = bd_status::BD_ERR_IO as c_int;
pub const UNAUTHORIZED: c_int = bd_status::BD_ERR_UNAUTHORIZED as c_int;
pub const LOCKED: c_int = bd_status::BD_ERR_LOCKED as c_int;
pub const BAD_REQUEST: c_int = bd_status::BD_ERR_BAD_REQUEST as c_int;
pub const NOT_FOUND: c_int = bd_status::BD_ERR_NOT_FOUND as c_int;
pub const SERVER: c_int = bd_status::BD_ERR_SERVER as c_int;
pub const HTTP: c_int = bd_status::BD_ERR_HTTP as c_int;
pub const INVALID_RESPONSE: c_int = bd_status::BD_ERR_INVALID_RESPONSE as c_int;
pub const TOO_LARGE: c_int = bd_status::BD_ERR_TOO_LARGE as c_int;
pub const INTERNAL: c_int = bd_status::BD_ERR_INTERNAL as c_int;

/// The `int` a function returns for status `s`.
pub fn code(s: bd_status) -> c_int {
    s as c_int
}

// ------------------------------------------------------------------ strings and the last error

/// A C string of `s`, which must not contain a NUL.
pub fn cstr(s: &(impl AsRef<[u8]> + ?Sized)) -> CString {
    CString::new(s.as_ref()).expect("no NUL inside")
}

/// This thread's `bd_last_error` text.
pub fn last_error() -> String {
    // SAFETY: bd_last_error never returns NULL and the text stays valid until
    // the next bd_ call on this thread; it is copied at once.
    unsafe { CStr::from_ptr(bd_last_error()) }
        .to_string_lossy()
        .into_owned()
}

// ------------------------------------------------------------------ the default client

/// `bd_init(address, key)`; returns its status.
pub fn init(address: &str, key: &str) -> c_int {
    let (a, k) = (cstr(address), cstr(key));
    // SAFETY: both are NUL-terminated strings that outlive the call.
    unsafe { bd_init(a.as_ptr(), k.as_ptr()) }
}

/// A fresh default client for `address` with `key` (`bd_cleanup`, then a
/// `bd_init` that must succeed), with the library's default timeout.
pub fn fresh_client(address: &str, key: &str) {
    bd_cleanup();
    assert_eq!(init(address, key), OK, "bd_init: {}", last_error());
}

/// A fresh default client for `address` with `key` and a deadline of
/// `timeout_ms` per call.
pub fn setup(address: &str, key: &str, timeout_ms: u32) {
    fresh_client(address, key);
    assert_eq!(bd_set_timeout_ms(timeout_ms), OK);
}

// ------------------------------------------------------------------ checks of a call

/// A success: `rc` is BD_OK and the last error is empty.
#[track_caller]
pub fn assert_ok(rc: c_int) {
    let err = last_error();
    assert_eq!(rc, OK, "expected BD_OK; last error: {err}");
    assert_eq!(err, "", "the last error must be empty after a success");
}

/// A failure: the status, the HTTP status, a last error that names `label`
/// (e.g. "POST /v1/reboot") and never contains `key`. Returns the last error.
#[track_caller]
pub fn assert_fails(rc: c_int, want: bd_status, http: c_int, label: &str, key: &str) -> String {
    let err = last_error();
    let status = bd_last_http_status();
    assert_eq!(rc, want as c_int, "expected {want:?}; last error: {err}");
    assert_eq!(status, http, "bd_last_http_status; last error: {err}");
    assert!(
        err.contains(label),
        "the last error {err:?} does not name {label:?}"
    );
    assert!(!key.is_empty());
    assert!(
        !err.contains(key),
        "the last error {err:?} contains the API key"
    );
    err
}

/// Bad input: BD_ERR_INVALID_ARGUMENT with a message, no HTTP status.
#[track_caller]
pub fn assert_invalid(rc: c_int) {
    let err = last_error();
    assert_eq!(rc, INVALID, "{err}");
    assert!(!err.is_empty());
    assert_eq!(bd_last_http_status(), 0);
}

/// Calls a text-producing function with a large buffer; checks the snprintf
/// rules on success and returns the status and the text.
pub fn text_call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> (c_int, String) {
    let mut buf = vec![0x55 as c_char; 64 * 1024];
    let rc = f(buf.as_mut_ptr(), buf.len());
    if rc < 0 {
        return (rc, String::new());
    }
    let n = rc as usize;
    assert!(n < buf.len(), "text longer than the test buffer");
    assert_eq!(buf[n], 0, "not NUL-terminated at the returned length");
    let bytes: Vec<u8> = buf[..n].iter().map(|&c| c as u8).collect();
    assert!(!bytes.contains(&0), "a NUL inside the returned length");
    (rc, String::from_utf8(bytes).expect("UTF-8 text"))
}

/// A text call expected to succeed: the text, with an empty last error.
#[track_caller]
pub fn text_ok(f: impl FnOnce(*mut c_char, usize) -> c_int) -> String {
    let (rc, text) = text_call(f);
    assert!(rc >= 0, "failed: {}", last_error());
    assert_eq!(rc as usize, text.len());
    assert_eq!(last_error(), "");
    text
}

/// `text` parsed as JSON.
pub fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

// ------------------------------------------------------------------ servers

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let port = l.local_addr().expect("local address").port();
    drop(l);
    port
}

/// A one-shot server on 127.0.0.1 for answers the simulator never gives: it
/// answers the first request with `response` (a whole HTTP response) and
/// hands back the request head it read. Returns its `http://` address.
pub fn one_shot(response: String) -> (String, thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut w = stream;
        w.write_all(response.as_bytes()).unwrap();
        w.flush().unwrap();
        head
    });
    (address, handle)
}

// ------------------------------------------------------------------ other programs

/// How a program run by [`run`] ended, and everything it printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Echoes `src` line by line (tagged `[tag]`) as it comes; the thread hands
/// back all of it.
fn pump(src: impl Read + Send + 'static, tag: &'static str) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut reader = BufReader::new(src);
        let mut all = String::new();
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            println!("[{tag}] {line}");
            all.push_str(line);
            all.push('\n');
        }
        all
    })
}

/// Runs `cmd` (no stdin), echoing its output line by line as it comes and
/// then its exit status, so that a failing test shows them; killed and failed
/// after `limit`.
pub fn run(mut cmd: Command, limit: Duration) -> Finished {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("$ {cmd:?}");
    let mut child: Child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let out = pump(child.stdout.take().expect("stdout"), "out");
    let err = pump(child.stderr.take().expect("stderr"), "err");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the program") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}: killed");
        }
        thread::sleep(Duration::from_millis(20));
    };
    println!("--- {status}");
    Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

// ------------------------------------------------------------------ paths

/// The repository root.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>`: a test executable lives in `target/<profile>/deps`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test executable path {}", exe.display()))
        .to_path_buf()
}

/// The cdylib built together with this test executable. `cargo test` builds
/// the library's crate types (cdylib, staticlib, rlib) in one rustc run into
/// `target/<profile>/deps` and does not copy the cdylib up to
/// `target/<profile>` (only `cargo build` does), so the copy up there may be
/// stale or missing: the one in `deps` matches the current sources.
pub fn built_cdylib() -> PathBuf {
    let profile = profile_dir();
    let candidates = [
        profile.join("deps/libbalena_device.so"),
        profile.join("libbalena_device.so"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "libbalena_device.so not found ({candidates:?}): it is built by `cargo test` \
                 and `cargo build` (crate-type \"cdylib\" in Cargo.toml)"
            )
        })
}
