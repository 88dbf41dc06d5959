//! Property tests: whatever bytes a server answers (status line × headers ×
//! framing × body), the library never panics and always returns a
//! documented status; and the snprintf rule of text output holds for any
//! text and any buffer length.

mod fault_server;
mod support;

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use balena_device::ffi::boundary::write_text;
use balena_device::ffi::fill_field;
use balena_device::ffi::*;
use balena_device::ErrorKind;
use fault_server::{Conn, FaultServer};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::{
    last_error, serial, setup, BAD_REQUEST, LOCKED, NOT_FOUND, OK, SERVER, UNAUTHORIZED,
};

const KEY: &str = "propkey0123456789abcdef012345678";
const TIMEOUT_MS: u32 = 1000;
/// Answers tried per run (each is one call over a fresh connection).
const CASES: u32 = 128;

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ------------------------------------------------------------------ responses

/// How the body is delimited.
#[derive(Debug, Clone)]
enum Framing {
    /// Correct Content-Length.
    Exact,
    /// Content-Length off by this much (clamped at 0).
    Off(i64),
    /// A Content-Length value that is not a length.
    Bogus(&'static str),
    /// Two Content-Length headers that disagree.
    Conflicting,
    /// No length: the body ends when the connection closes.
    CloseDelimited,
    /// Valid chunked encoding, in chunks of this size.
    Chunked(usize),
    /// `Transfer-Encoding: chunked` followed by these bytes.
    ChunkedGarbage(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Answer {
    status_line: Vec<u8>,
    headers: Vec<Vec<u8>>,
    framing: Framing,
    body: Vec<u8>,
}

impl Answer {
    fn render(&self) -> Vec<u8> {
        let mut out = self.status_line.clone();
        for h in &self.headers {
            out.extend_from_slice(h);
            out.extend_from_slice(b"\r\n");
        }
        let len = self.body.len();
        let mut body = self.body.clone();
        match &self.framing {
            Framing::Exact => {
                out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes())
            }
            Framing::Off(k) => {
                let n = (len as i64 + k).max(0);
                out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
            }
            Framing::Bogus(v) => {
                out.extend_from_slice(format!("Content-Length: {v}\r\n").as_bytes())
            }
            Framing::Conflicting => out.extend_from_slice(
                format!("Content-Length: {len}\r\nContent-Length: {}\r\n", len + 1).as_bytes(),
            ),
            Framing::CloseDelimited => {}
            Framing::Chunked(size) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                let mut chunked = Vec::new();
                for piece in self.body.chunks((*size).max(1)) {
                    chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    chunked.extend_from_slice(piece);
                    chunked.extend_from_slice(b"\r\n");
                }
                chunked.extend_from_slice(b"0\r\n\r\n");
                body = chunked;
            }
            Framing::ChunkedGarbage(g) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                body = g.clone();
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out
    }
}

fn status_line() -> impl Strategy<Value = Vec<u8>> {
    let common = vec![
        200u16, 200, 200, 200, 202, 204, 301, 302, 304, 307, 400, 401, 404, 409, 423, 500, 503,
    ];
    let odd = vec![
        "HTTP/1.0 200 OK\r\n",
        "HTTP/1.1 200\r\n",
        "HTTP/1.1 200 OK\n",
        "HTTP/1.1 abc OK\r\n",
        "HTTP/1.1 -200 OK\r\n",
        "HTTP/1.1 2000 OK\r\n",
        "HTTP/1.1  200  OK\r\n",
        "HTTP/2 200 OK\r\n",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
        "ICY 200 OK\r\n",
        "garbage\r\n",
        "\r\n",
        "",
    ];
    prop_oneof![
        5 => prop::sample::select(common)
            .prop_map(|c| format!("HTTP/1.1 {c} Reason\r\n").into_bytes()),
        1 => (0u16..1000).prop_map(|c| format!("HTTP/1.1 {c} X\r\n").into_bytes()),
        2 => prop::sample::select(odd).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(|mut v| {
            v.extend_from_slice(b"\r\n");
            v
        }),
    ]
}

fn header() -> impl Strategy<Value = Vec<u8>> {
    let fixed = vec![
        "Content-Type: application/json; charset=utf-8",
        "Content-Type: text/html; charset=utf-8",
        "Content-Type: text/plain",
        "Connection: close",
        "Connection: keep-alive",
        "Keep-Alive: timeout=5",
        "Location: http://127.0.0.1:1/v1/device?apikey=propkey0123456789abcdef012345678",
        "Content-Encoding: gzip",
        "Transfer-Encoding: identity",
        "X-Empty:",
        "Header Without Colon",
        ": no name",
        " folded continuation",
    ];
    prop_oneof![
        4 => prop::sample::select(fixed).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..30),
    ]
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        5 => Just(Framing::Exact),
        1 => (-5i64..40).prop_map(Framing::Off),
        1 => prop::sample::select(vec!["-1", "abc", "99999999999999999999999", " 12", "0x10", "1,2", ""])
            .prop_map(Framing::Bogus),
        1 => Just(Framing::Conflicting),
        1 => Just(Framing::CloseDelimited),
        2 => (1usize..64).prop_map(Framing::Chunked),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Framing::ChunkedGarbage),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let valid = vec![
        r#"{"api_port":48484,"ip_address":"10.0.0.2","status":"Idle","download_progress":null,"update_pending":false}"#,
        r#"{"containerId":"abc123"}"#,
        r#"{"status":"success","version":"19.0.5"}"#,
        r#"{"status":"success","vpn":{"enabled":true,"connected":false}}"#,
        r#"{"status":"success","services":{"main":"abc"}}"#,
        r#"{"status":"failed","message":"Updates are locked"}"#,
        r#"{"Data":"OK","Error":null}"#,
        r#"{"api_port":"x","download_progress":1e400,"status":7}"#,
        "OK",
        "",
        "<html><body><pre>Cannot GET /v1/device</pre></body></html>",
        "line one\nline two\n{\"a\":1}\n",
    ];
    prop_oneof![
        3 => prop::sample::select(valid).prop_map(|s| s.as_bytes().to_vec()),
        2 => prop::collection::vec(any::<u8>(), 0..200),
        2 => "[\\{\\}\\[\\]\":,0-9a-z \\\\.eE+-]{0,60}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..20).prop_map(|junk| {
            let mut v = b"{\"status\":\"".to_vec();
            v.extend_from_slice(&junk);
            v.extend_from_slice(b"\",\"version\":\"1\"}");
            v
        }),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    (
        status_line(),
        prop::collection::vec(header(), 0..4),
        framing(),
        body(),
    )
        .prop_map(|(status_line, headers, framing, body)| Answer {
            status_line,
            headers,
            framing,
            body,
        })
}

// ------------------------------------------------------------------ calls

unsafe extern "C" fn count_lines(_: *const c_char, _: usize, seen: *mut c_void) -> c_int {
    // SAFETY: the test passes a pointer to a usize.
    unsafe { *seen.cast::<usize>() += 1 };
    0
}

/// What kind of success value an export has.
enum Success {
    /// `BD_OK`.
    Zero,
    /// 0 or 1.
    Flag,
    /// A text length; `true` when the text must be a JSON object.
    Text(bool),
}

const EXPORTS: usize = 11;

/// Call export number `which` (of [`EXPORTS`]); return its name, status,
/// kind of success, and the text it wrote (if any).
fn call(which: usize) -> (&'static str, c_int, Success, Option<String>) {
    let mut buf = vec![0x7f as c_char; 512];
    let (b, l) = (buf.as_mut_ptr(), buf.len());
    let hostcfg = CString::new(r#"{"network":{"hostname":"x"}}"#).unwrap();
    let mut seen = 0usize;
    let mut flags = (false, false);
    let mut state = std::mem::MaybeUninit::<bd_device_state>::uninit();
    // SAFETY (all arms): valid buffers, strings, callbacks and out-pointers.
    let (name, rc, success, text) = unsafe {
        match which {
            0 => (
                "bd_state_json",
                bd_state_json(b, l),
                Success::Text(true),
                true,
            ),
            1 => ("bd_healthy", bd_healthy(), Success::Flag, false),
            2 => ("bd_reboot", bd_reboot(false), Success::Zero, false),
            3 => (
                "bd_stop_app",
                bd_stop_app(1, true, b, l),
                Success::Text(false),
                true,
            ),
            4 => (
                "bd_vpn_status",
                bd_vpn_status(&mut flags.0, &mut flags.1),
                Success::Zero,
                false,
            ),
            5 => (
                "bd_supervisor_version",
                bd_supervisor_version(b, l),
                Success::Text(false),
                true,
            ),
            6 => (
                "bd_state",
                bd_state(state.as_mut_ptr()),
                Success::Zero,
                false,
            ),
            7 => (
                "bd_journal_logs",
                bd_journal_logs(
                    c"{}".as_ptr(),
                    Some(count_lines),
                    (&mut seen as *mut usize).cast(),
                ),
                Success::Zero,
                false,
            ),
            8 => ("bd_update", bd_update(false), Success::Zero, false),
            9 => (
                "bd_container_ids_json",
                bd_container_ids_json(b, l),
                Success::Text(true),
                true,
            ),
            _ => (
                "bd_set_host_config_json",
                bd_set_host_config_json(hostcfg.as_ptr()),
                Success::Zero,
                false,
            ),
        }
    };
    let text = text.then(|| {
        let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).collect();
        let nul = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        assert!(nul < bytes.len(), "{name}: output not NUL-terminated");
        String::from_utf8_lossy(&bytes[..nul]).into_owned()
    });
    (name, rc, success, text)
}

fn check_call(which: usize) -> Result<(), TestCaseError> {
    let started = Instant::now();
    let (name, rc, success, text) = call(which);
    let took = started.elapsed();
    let msg = last_error();
    let http = bd_last_http_status();
    prop_assert!(
        rc != bd_status::BD_ERR_INTERNAL as c_int,
        "{name} panicked inside: {msg}"
    );
    if rc < 0 {
        // Only answer- and transport-related statuses can come from a
        // server's answer: not bad input, not configuration, not a panic.
        let answer_status = (-13..=-3).contains(&rc)
            || rc == bd_status::BD_ERR_BUSY as c_int
            || rc == bd_status::BD_ERR_HOST_UPDATE as c_int;
        prop_assert!(answer_status, "{name}: undocumented {rc}: {msg}");
        prop_assert!(!msg.is_empty(), "{name}: {rc} without a message");
        let expected_http = match rc {
            UNAUTHORIZED => Some(401..=401),
            LOCKED => Some(423..=423),
            _ if rc == bd_status::BD_ERR_BUSY as c_int => Some(423..=423),
            _ if rc == bd_status::BD_ERR_HOST_UPDATE as c_int => Some(423..=423),
            BAD_REQUEST => Some(400..=400),
            NOT_FOUND => Some(404..=404),
            SERVER => Some(500..=599),
            _ => None,
        };
        if let Some(range) = expected_http {
            prop_assert!(range.contains(&http), "{name}: {rc} with HTTP {http}");
        }
    } else {
        prop_assert!(msg.is_empty(), "{name}: success {rc} with message {msg:?}");
        match success {
            Success::Zero => prop_assert_eq!(rc, OK, "{}", name),
            Success::Flag => prop_assert!(rc == 0 || rc == 1, "{name}: {rc}"),
            Success::Text(object) => {
                let text = text.unwrap_or_default();
                prop_assert_eq!(text.len(), (rc as usize).min(511), "{}", name);
                if object && (rc as usize) < 512 {
                    // Valid JSON text (numbers of any magnitude are valid
                    // JSON, so check the grammar, not f64 parsing).
                    serde_json::from_str::<&serde_json::value::RawValue>(&text)
                        .map_err(|e| TestCaseError::fail(format!("{name}: {e}: {text:?}")))?;
                    prop_assert!(text.starts_with('{'), "{name}: not an object: {text:?}");
                }
            }
        }
    }
    prop_assert!(!msg.contains(KEY), "{name}: key in message {msg:?}");
    prop_assert!(
        took <= Duration::from_millis(u64::from(TIMEOUT_MS) * 2 + 600),
        "{name} took {took:?}"
    );
    Ok(())
}

#[test]
fn any_answer_gives_a_documented_status_and_never_panics() {
    let _g = serial();
    let current: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let serving = Arc::clone(&current);
    // Answer every request with the current bytes, then close.
    let srv = FaultServer::start(move |c: &mut Conn| {
        if c.read_request().is_some() {
            let bytes = serving.lock().unwrap_or_else(|e| e.into_inner()).clone();
            c.write(&bytes);
        }
    });
    setup(&srv.address(), KEY, TIMEOUT_MS);

    let mut runner = TestRunner::new(config(CASES));
    let result = runner.run(&(answer(), 0..EXPORTS), |(ans, which)| {
        *current.lock().unwrap_or_else(|e| e.into_inner()) = ans.render();
        check_call(which)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The calls reached the server (not every one: a POST sent on a pooled
    // connection the server was closing is lost, and correctly not re-sent).
    assert!(srv.request_count() >= CASES as usize / 2);

    // A known-good answer through the same path succeeds (the harness works).
    let good = Answer {
        status_line: b"HTTP/1.1 200 OK\r\n".to_vec(),
        headers: vec![b"Content-Type: application/json".to_vec()],
        framing: Framing::Chunked(7),
        body: br#"{"status":"Idle"}"#.to_vec(),
    };
    *current.lock().unwrap_or_else(|e| e.into_inner()) = good.render();
    let (_, rc, _, text) = call(0);
    assert_eq!(rc, 17, "{}", last_error());
    assert_eq!(text.as_deref(), Some(r#"{"status":"Idle"}"#));
    bd_cleanup();
}

// ------------------------------------------------------------------ text out

#[test]
fn write_text_follows_the_snprintf_rule() {
    let mut runner = TestRunner::new(config(512));
    let strategy = (any::<String>(), 0usize..8, any::<bool>());
    let result = runner.run(&strategy, |(text, extra, around_len)| {
        // Lengths around the text's length, and small ones.
        let len = if around_len {
            (text.len() + extra).saturating_sub(4)
        } else {
            extra
        };
        let mut buf = vec![0x7f as c_char; len + 8];
        // SAFETY: the buffer has len (+8 guard) writable bytes.
        let r = unsafe { write_text(buf.as_mut_ptr(), len, &text) };
        if text.contains('\0') {
            let e = r.expect_err("text with a NUL must be refused");
            prop_assert_eq!(e.kind(), ErrorKind::InvalidResponse);
            prop_assert!(buf.iter().all(|&c| c == 0x7f), "wrote on refusal");
            return Ok(());
        }
        let n = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(n as usize, text.len());
        let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).collect();
        if len == 0 {
            prop_assert!(
                bytes.iter().all(|&b| b == 0x7f),
                "wrote into a 0-byte buffer"
            );
        } else {
            let m = text.len().min(len - 1);
            prop_assert_eq!(&bytes[..m], &text.as_bytes()[..m]);
            prop_assert_eq!(bytes[m], 0);
            prop_assert!(
                bytes[m + 1..].iter().all(|&b| b == 0x7f),
                "wrote past the NUL"
            );
        }
        // NULL with len 0 is a size query.
        // SAFETY: NULL with len 0 is allowed.
        let q = unsafe { write_text(std::ptr::null_mut(), 0, &text) };
        prop_assert_eq!(q.ok(), Some(n));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn fixed_fields_truncate_at_a_character_boundary() {
    let mut runner = TestRunner::new(config(512));
    let result = runner.run(&prop::option::of(any::<String>()), |text| {
        let mut field = [0x7f as c_char; 8];
        fill_field(&mut field, text.as_deref());
        let bytes: Vec<u8> = field.iter().map(|&c| c as u8).collect();
        let nul = bytes.iter().position(|&b| b == 0);
        prop_assert!(nul.is_some(), "no NUL in the field");
        let nul = nul.unwrap_or(0);
        let stored = std::str::from_utf8(&bytes[..nul])
            .map_err(|_| TestCaseError::fail("cut inside a character"))?;
        let text = text.unwrap_or_default();
        prop_assert!(text.starts_with(stored));
        // As long as fits: the next character would not have.
        if stored.len() < text.len() {
            let next = text[stored.len()..]
                .chars()
                .next()
                .map_or(0, char::len_utf8);
            prop_assert!(
                stored.len() + next > 7 || text.as_bytes()[stored.len()] == 0,
                "stopped early: {stored:?} of {text:?}"
            );
        }
        prop_assert_eq!(bytes[7], 0, "the field does not end with a NUL");
        if !text.contains('\0') {
            prop_assert!(bytes[nul..].iter().all(|&b| b == 0), "junk after the text");
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
