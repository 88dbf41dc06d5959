//! The fault matrix: one test per fault the library must survive, each
//! checking the exact status, that the call returned within its deadline
//! (plus a small margin), and what reached the server.
//!
//! Faults the simulator can produce (idle keep-alive close, restart, key
//! rotation) use it; the rest use the raw-TCP fault server.

mod fault_server;
mod sim;
mod support;

use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr;
use std::thread;
use std::time::{Duration, Instant};

use balena_device::ffi::*;
use fault_server::{memory_kib, reset_peak_rss, response, Conn, FaultServer, RawRequest};
use sim::{Sim, SimConfig};
use support::{
    closed_port, last_error, serial, setup, CONNECT, HTTP, INVALID_RESPONSE, IO, OK, SERVER,
    TIMEOUT, TOO_LARGE, UNAUTHORIZED,
};

const KEY: &str = "faultkey0123456789abcdef01234567";
/// Slack allowed past a deadline (scheduling on a loaded 2-core machine).
const MARGIN: Duration = Duration::from_millis(600);

const DEVICE_JSON: &str = r#"{"api_port":48484,"ip_address":"10.0.0.2","os_version":"balenaOS 6.0.13","mac_address":"02:42:AC:11:00:02","supervisor_version":"19.0.5","update_pending":false,"update_failed":false,"update_downloaded":false,"commit":"7fc9c5bea8e361acd49886fe6cc1e1cd","status":"Idle","download_progress":null}"#;

/// Run `f`, returning its value and how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let v = f();
    (v, start.elapsed())
}

#[track_caller]
fn assert_within(elapsed: Duration, deadline_ms: u64, what: &str) {
    let limit = Duration::from_millis(deadline_ms) + MARGIN;
    assert!(
        elapsed <= limit,
        "{what}: took {elapsed:?}, deadline {deadline_ms} ms (+{MARGIN:?})"
    );
}

/// Call a text export with a 4 KiB buffer pre-filled with 0x7f; return the
/// status and the text before the first NUL (asserting there is one).
fn text_call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> (c_int, String) {
    let mut buf = vec![0x7f as c_char; 4096];
    let rc = f(buf.as_mut_ptr(), buf.len());
    let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).collect();
    let nul = bytes
        .iter()
        .position(|&b| b == 0)
        .expect("the output buffer is NUL-terminated");
    (rc, String::from_utf8_lossy(&bytes[..nul]).into_owned())
}

fn state_json() -> (c_int, String) {
    // SAFETY: the buffer is valid for its length.
    text_call(|b, l| unsafe { bd_state_json(b, l) })
}

/// `bd_state_json` fails with `want` within `deadline_ms` (+ [`MARGIN`]),
/// writes no text, and leaves `http` as the last HTTP status; returns how
/// long it took. `what` names the case in messages.
#[track_caller]
fn state_json_fails(want: c_int, http: c_int, deadline_ms: u64, what: &str) -> Duration {
    let ((rc, text), took) = timed(state_json);
    assert_eq!(rc, want, "{what}: {}", last_error());
    assert_eq!(text, "", "{what}");
    assert_within(took, deadline_ms, what);
    assert_eq!(bd_last_http_status(), http, "{what}");
    took
}

/// Assert the request is `method path` carrying the key as `apikey`.
fn assert_request(req: &RawRequest, method: &str, path: &str) {
    assert_eq!(req.method, method, "method of {:?}", req.target);
    assert_eq!(req.path(), path);
    assert_eq!(req.query_param("apikey").as_deref(), Some(KEY));
    assert!(
        String::from_utf8_lossy(&req.raw).starts_with(&format!("{method} {path}?apikey=")),
        "raw request: {:?}",
        String::from_utf8_lossy(&req.raw)
    );
}

/// Wait briefly for the server to record what it was sent (its handler
/// threads run on their own).
fn settle() {
    thread::sleep(Duration::from_millis(150));
}

// ------------------------------------------------------------------ transport

#[test]
fn connection_refused_is_connect() {
    let _g = serial();
    let port = closed_port();
    setup(&format!("http://127.0.0.1:{port}"), KEY, 1500);

    state_json_fails(CONNECT, 0, 1500, "GET on a refused connection");
    let msg = last_error();
    assert!(msg.contains("GET /v1/device"), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(!msg.contains(KEY), "{msg}");

    let (rc, took) = timed(|| bd_reboot(false));
    assert_eq!(rc, CONNECT, "{}", last_error());
    assert_within(took, 1500, "POST on a refused connection");
    assert!(last_error().contains("POST /v1/reboot"), "{}", last_error());
}

#[test]
fn accepted_but_never_answered_is_timeout() {
    let _g = serial();
    let srv = FaultServer::start(|c: &mut Conn| {
        if c.read_request().is_some() {
            c.hold(Duration::from_secs(30));
        }
    });
    setup(&srv.address(), KEY, 1000);

    let took = state_json_fails(TIMEOUT, 0, 1000, "GET with no answer");
    assert!(
        took >= Duration::from_millis(950),
        "gave up early: {took:?}"
    );
    assert!(last_error().contains("1000 ms"), "{}", last_error());

    let (rc, took) = timed(|| bd_reboot(true));
    assert_eq!(rc, TIMEOUT, "{}", last_error());
    assert_within(took, 1000, "POST with no answer");

    settle();
    // One request per call: a timed-out request is never re-sent.
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_request(&reqs[0], "GET", "/v1/device");
    assert_request(&reqs[1], "POST", "/v1/reboot");
    assert_eq!(reqs[1].body_text(), r#"{"force":true}"#);
    assert_eq!(reqs[1].header("content-type"), Some("application/json"));
}

#[test]
fn body_trickled_past_deadline_is_timeout() {
    let _g = serial();
    // Headers at once, then one body byte a second: every read makes progress
    // well within the timeout, only a deadline over the whole request stops it.
    let srv = FaultServer::start(|c: &mut Conn| {
        if c.read_request().is_none() {
            return;
        }
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n";
        if !c.write(head.as_bytes()) {
            return;
        }
        for _ in 0..64 {
            if !c.write(b" ") || !c.pause(Duration::from_secs(1)) {
                return;
            }
        }
    });
    setup(&srv.address(), KEY, 2000);

    let took = state_json_fails(TIMEOUT, 200, 2000, "trickled body");
    assert!(
        took >= Duration::from_millis(1950),
        "gave up early: {took:?}"
    );

    settle();
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 1);
    assert_request(&reqs[0], "GET", "/v1/device");
}

#[test]
fn reset_mid_body_is_io() {
    let _g = serial();
    let srv = FaultServer::start(|c: &mut Conn| {
        if c.read_request().is_none() {
            return;
        }
        let mut out =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                .to_vec();
        out.extend_from_slice(&DEVICE_JSON.as_bytes()[..200]);
        c.write(&out);
        // Let the client read the head and the first bytes, then reset.
        c.pause(Duration::from_millis(200));
        c.reset_on_close();
    });
    setup(&srv.address(), KEY, 3000);

    let ((rc, text), took) = timed(state_json);
    assert_eq!(rc, IO, "{}", last_error());
    assert_eq!(text, "");
    assert!(took < Duration::from_millis(2000), "took {took:?}");
    assert!(last_error().contains("GET /v1/device"), "{}", last_error());

    settle();
    // The body was broken, not the connection before the answer: no re-send.
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_request(&reqs[0], "GET", "/v1/device");
}

// ------------------------------------------------------------------ keep-alive

/// Every call of a mixed sequence, `gap` apart, against a simulator that
/// closes idle connections after `idle`.
fn stale_keep_alive(idle: Duration, gap: Duration, calls: &[&str]) {
    let sim = Sim::start_with(SimConfig {
        idle_timeout: idle,
        ..SimConfig::default()
    });
    setup(&sim.address(), &sim.api_key(), 3000);
    let app = sim.app_id();
    let hostcfg = CString::new(r#"{"network":{"hostname":"renamed"}}"#).unwrap();
    for (i, call) in calls.iter().enumerate() {
        if i > 0 {
            thread::sleep(gap);
        }
        let (rc, took) = timed(|| match *call {
            // SAFETY (all arms): valid buffers and strings.
            "GET /v1/device" => state_json().0,
            "GET /v1/apps" => text_call(|b, l| unsafe { bd_app_state_json(app, b, l) }).0,
            "POST /v1/reboot" => bd_reboot(false),
            "POST /v1/blink" => bd_blink(),
            "PATCH /v1/device/host-config" => unsafe { bd_set_host_config_json(hostcfg.as_ptr()) },
            other => panic!("unknown call {other}"),
        });
        assert!(rc >= 0, "call {i} ({call}) failed: {rc} {}", last_error());
        assert_within(took, 3000, call);
    }
    let reqs = sim.requests();
    let seen: Vec<String> = reqs
        .iter()
        .map(|r| {
            let p = if r.path.starts_with("/v1/apps/") {
                "/v1/apps"
            } else {
                r.path.as_str()
            };
            format!("{} {}", r.method, p)
        })
        .collect();
    // Exactly one request per call, in order: nothing was sent twice.
    assert_eq!(seen, calls);
    // The server closed each connection while idle, so no request shared one.
    let mut conns: Vec<u64> = reqs.iter().map(|r| r.conn_id).collect();
    conns.dedup();
    assert_eq!(conns.len(), calls.len(), "{reqs:?}");
    let actions = sim.state().actions;
    assert_eq!(
        actions.iter().filter(|a| a.starts_with("reboot")).count(),
        calls.iter().filter(|c| **c == "POST /v1/reboot").count(),
        "{actions:?}"
    );
}

#[test]
fn stale_keep_alive_short_idle_every_call_succeeds_once() {
    let _g = serial();
    stale_keep_alive(
        Duration::from_secs(1),
        Duration::from_millis(1500),
        &[
            "GET /v1/device",
            "POST /v1/reboot",
            "GET /v1/apps",
            "PATCH /v1/device/host-config",
            "POST /v1/blink",
        ],
    );
}

#[test]
fn stale_keep_alive_real_supervisor_timing_5s_idle_6s_apart() {
    let _g = serial();
    stale_keep_alive(
        Duration::from_secs(5),
        Duration::from_secs(6),
        &["GET /v1/device", "POST /v1/reboot", "GET /v1/device"],
    );
}

/// A server that answers the first request of a connection and, on a reused
/// connection, reads the request and then closes (with a FIN or a reset)
/// without answering: the server's idle close racing the client's send.
fn closes_reused_connections(reset: bool) -> FaultServer {
    FaultServer::start(move |c: &mut Conn| {
        while let Some(req) = c.read_request() {
            if c.served() >= 2 {
                if reset {
                    c.reset_on_close();
                }
                return;
            }
            let body = if req.method == "GET" {
                DEVICE_JSON
            } else {
                r#"{"Data":"OK","Error":null}"#
            };
            let status = if req.method == "GET" { 200 } else { 202 };
            if !c.respond(
                status,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            ) {
                return;
            }
        }
    })
}

#[test]
fn close_racing_a_get_on_a_reused_connection_resends_it_once() {
    let _g = serial();
    for reset in [false, true] {
        let srv = closes_reused_connections(reset);
        setup(&srv.address(), KEY, 3000);

        let (rc, text) = state_json();
        assert_eq!(rc as usize, DEVICE_JSON.len(), "{}", last_error());
        assert_eq!(text, DEVICE_JSON);
        let ((rc, text), took) = timed(state_json);
        assert_eq!(
            rc as usize,
            DEVICE_JSON.len(),
            "reset={reset}: {}",
            last_error()
        );
        assert_eq!(text, DEVICE_JSON);
        assert_eq!(last_error(), "");
        assert_within(took, 3000, "re-sent GET");

        settle();
        let reqs = srv.requests();
        let at: Vec<(usize, usize)> = reqs.iter().map(|r| (r.conn, r.seq_on_conn)).collect();
        // First call on connection 1; the second call went out on the reused
        // connection 1, was dropped, and was re-sent once on a new connection.
        assert_eq!(at, [(1, 1), (1, 2), (2, 1)], "reset={reset}");
        for r in &reqs {
            assert_request(r, "GET", "/v1/device");
        }
        assert_eq!(srv.connections(), 2);
    }
}

#[test]
fn close_racing_a_post_on_a_reused_connection_is_io_and_sent_once() {
    let _g = serial();
    for reset in [false, true] {
        let srv = closes_reused_connections(reset);
        setup(&srv.address(), KEY, 3000);

        assert!(state_json().0 > 0, "{}", last_error());
        let (rc, took) = timed(|| bd_reboot(false));
        assert_eq!(rc, IO, "reset={reset}: {}", last_error());
        assert_within(took, 3000, "dropped POST");
        assert!(last_error().contains("POST /v1/reboot"), "{}", last_error());

        settle();
        let reqs = srv.requests();
        assert_eq!(reqs.len(), 2, "reset={reset}: {reqs:?}");
        assert_request(&reqs[1], "POST", "/v1/reboot");
        assert_eq!((reqs[1].conn, reqs[1].seq_on_conn), (1, 2));
        assert_eq!(reqs[1].body_text(), r#"{"force":false}"#);

        // The client recovers: the next call goes out on a fresh connection.
        assert_eq!(bd_reboot(false), OK, "{}", last_error());
        settle();
        let reqs = srv.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!((reqs[2].conn, reqs[2].seq_on_conn), (2, 1));
        assert_eq!(
            reqs.iter().filter(|r| r.method == "POST").count(),
            2,
            "each POST call reached the server exactly once"
        );
    }
}

// ------------------------------------------------------------------ answers

#[test]
fn garbage_instead_of_json_is_invalid_response() {
    let _g = serial();
    let bodies: [&[u8]; 5] = [
        b"<html><body>garbage</body></html>",
        b"{\"api_port\":48484,",
        b"[1,2,3]",
        b"\"x\"",
        b"\xff\xfe\x00\x01not utf-8",
    ];
    for body in bodies {
        let srv = FaultServer::answering(move |_| {
            response(200, &[("Content-Type", "application/json")], body)
        });
        setup(&srv.address(), KEY, 2000);
        state_json_fails(INVALID_RESPONSE, 200, 2000, &format!("garbage {body:?}"));
        assert!(last_error().contains("GET /v1/device"), "{}", last_error());
        settle();
        assert_eq!(srv.request_count(), 1);
        assert_request(&srv.requests()[0], "GET", "/v1/device");
    }
}

#[test]
fn body_of_64_mib_is_too_large_with_memory_bounded() {
    let _g = serial();
    const SIZE: usize = 64 * 1024 * 1024;
    let srv = FaultServer::start(|c: &mut Conn| {
        if c.read_request().is_none() {
            return;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {SIZE}\r\n\r\n"
        );
        if !c.write(head.as_bytes()) {
            return;
        }
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < SIZE && c.write(&chunk) {
            sent += chunk.len();
        }
    });
    setup(&srv.address(), KEY, 10_000);

    reset_peak_rss();
    let (rss0, hwm0) = memory_kib();
    let ((rc, text), took) = timed(state_json);
    let (rss1, hwm1) = memory_kib();
    assert_eq!(rc, TOO_LARGE, "{}", last_error());
    assert_eq!(text, "");
    assert_within(took, 10_000, "64 MiB body");
    assert_eq!(bd_last_http_status(), 200);
    assert!(
        last_error().contains("4194304"),
        "the message names the cap: {}",
        last_error()
    );
    let bound_kib = 24 * 1024;
    assert!(
        hwm1.saturating_sub(hwm0.max(rss0)) < bound_kib,
        "peak RSS grew from {hwm0} KiB to {hwm1} KiB"
    );
    assert!(
        rss1.saturating_sub(rss0) < bound_kib,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
    settle();
    assert_eq!(srv.request_count(), 1);
}

#[test]
fn server_error_with_html_body_is_server_with_readable_message() {
    let _g = serial();
    let page = "<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head>\n\
                <body><h1>Service Unavailable</h1>\n<p>The supervisor is restarting, try again \
                later.</p></body></html>\n";
    let srv = FaultServer::answering(move |req| {
        let status = if req.method == "GET" { 503 } else { 500 };
        response(
            status,
            &[("Content-Type", "text/html; charset=utf-8")],
            page.as_bytes(),
        )
    });
    setup(&srv.address(), KEY, 2000);

    let ((rc, _), took) = timed(state_json);
    assert_eq!(rc, SERVER, "{}", last_error());
    assert_within(took, 2000, "503");
    assert_eq!(bd_last_http_status(), 503);
    let msg = last_error();
    assert!(msg.starts_with("GET /v1/device"), "{msg}");
    assert!(msg.contains("HTTP 503"), "{msg}");
    assert!(
        msg.contains("Service Unavailable The supervisor is restarting, try again later."),
        "{msg}"
    );
    assert!(
        !msg.contains('<') && !msg.contains('>') && !msg.contains('\n'),
        "{msg}"
    );

    let rc = bd_reboot(false);
    assert_eq!(rc, SERVER, "{}", last_error());
    assert_eq!(bd_last_http_status(), 500);
    let msg = last_error();
    assert!(msg.starts_with("POST /v1/reboot"), "{msg}");
    assert!(msg.contains("HTTP 500"), "{msg}");
    assert!(msg.contains("The supervisor is restarting"), "{msg}");
    assert!(!msg.contains('<'), "{msg}");

    settle();
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert_request(&reqs[0], "GET", "/v1/device");
    assert_request(&reqs[1], "POST", "/v1/reboot");
}

#[test]
fn ok_with_wrong_shape_is_invalid_response() {
    let _g = serial();
    // stop answers without containerId; start answers a number where the
    // id string belongs.
    let srv = FaultServer::answering(|req| {
        let body: &[u8] = if req.path().ends_with("/stop") {
            br#"{"status":"success"}"#
        } else {
            br#"{"containerId":5}"#
        };
        response(200, &[("Content-Type", "application/json")], body)
    });
    setup(&srv.address(), KEY, 2000);

    // SAFETY: valid buffers.
    let (rc, text) = text_call(|b, l| unsafe { bd_stop_app(1234, false, b, l) });
    assert_eq!(rc, INVALID_RESPONSE, "{}", last_error());
    assert_eq!(text, "");
    assert!(last_error().contains("containerId"), "{}", last_error());
    // SAFETY: valid buffers.
    let (rc, _) = text_call(|b, l| unsafe { bd_start_app(1234, b, l) });
    assert_eq!(rc, INVALID_RESPONSE, "{}", last_error());

    settle();
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert_request(&reqs[0], "POST", "/v1/apps/1234/stop");
    assert_eq!(reqs[0].body_text(), r#"{"force":false}"#);
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    assert_request(&reqs[1], "POST", "/v1/apps/1234/start");
    assert_eq!(reqs[1].body, b"");
}

// ------------------------------------------------------------------ environment

#[test]
fn supervisor_restarted_between_calls_next_call_succeeds() {
    let _g = serial();
    let sim = Sim::start();
    let port = sim.port();
    let key = sim.api_key();
    setup(&sim.address(), &key, 3000);
    assert!(state_json().0 > 0, "{}", last_error());
    assert_eq!(sim.requests().len(), 1);
    drop(sim);

    let sim = Sim::start_on(port, SimConfig::default()).expect("restart on the same port");
    assert_eq!(sim.api_key(), key);
    // A POST first: the pooled connection to the old process must not be used.
    let (rc, took) = timed(|| bd_reboot(false));
    assert_eq!(rc, OK, "{}", last_error());
    assert_within(took, 3000, "POST after restart");
    let (rc, _) = state_json();
    assert!(rc > 0, "{}", last_error());

    let reqs = sim.requests();
    let seen: Vec<(&str, &str)> = reqs
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(seen, [("POST", "/v1/reboot"), ("GET", "/v1/device")]);
    assert_eq!(reqs[0].query_param("apikey"), Some(key.as_str()));
    assert_eq!(sim.state().actions, ["reboot"]);
}

const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
];

/// Sets environment variables for its lifetime and removes them on drop.
struct EnvGuard(Vec<&'static str>);

impl EnvGuard {
    fn set(vars: &[&'static str], value: &str) -> EnvGuard {
        for v in vars {
            std::env::set_var(v, value);
        }
        EnvGuard(vars.to_vec())
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        for v in &self.0 {
            std::env::remove_var(v);
        }
    }
}

#[test]
fn proxy_variables_are_never_used() {
    let _g = serial();
    let sim = Sim::start();
    let key = sim.api_key();
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");

    // A dead proxy, and a live one that must never see a connection.
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let live = FaultServer::answering(|_| response(502, &[], b"proxy"));
    for proxy in [dead, live.address()] {
        let _env = EnvGuard::set(&PROXY_VARS, &proxy);

        // Client created by bd_init with the variables present.
        setup(&sim.address(), &key, 2000);
        let (rc, took) = timed(|| state_json().0);
        assert!(rc > 0, "proxy {proxy}: {rc} {}", last_error());
        assert_within(took, 2000, "GET with proxy variables set");
        assert_eq!(bd_reboot(false), OK, "{}", last_error());

        // Client created from the environment on first use.
        let _cfg = EnvGuard::set(&["BALENA_SUPERVISOR_ADDRESS"], &sim.address());
        let _key = EnvGuard::set(&["BALENA_SUPERVISOR_API_KEY"], &key);
        bd_cleanup();
        assert!(state_json().0 > 0, "from env: {}", last_error());
    }
    settle();
    assert_eq!(live.connections(), 0, "the proxy was contacted");
    let seen: Vec<String> = sim
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        seen,
        [
            "GET /v1/device",
            "POST /v1/reboot",
            "GET /v1/device",
            "GET /v1/device",
            "POST /v1/reboot",
            "GET /v1/device"
        ]
    );
    for r in sim.requests() {
        assert_eq!(r.query_param("apikey"), Some(key.as_str()));
    }
    bd_cleanup();
}

#[test]
fn key_rotated_by_another_party_is_unauthorized_without_the_key() {
    let _g = serial();
    let sim = Sim::start();
    let old = sim.api_key();
    setup(&sim.address(), &old, 2000);
    assert!(state_json().0 > 0, "{}", last_error());

    let new = "rotated0123456789abcdef012345678".to_string();
    sim.with_state(|s| s.api_key = new.clone());
    sim.clear_requests();

    let rc = bd_reboot(false);
    assert_eq!(rc, UNAUTHORIZED, "{}", last_error());
    assert_eq!(bd_last_http_status(), 401);
    let msg = last_error();
    assert!(msg.starts_with("POST /v1/reboot"), "{msg}");
    assert!(msg.contains("HTTP 401"), "{msg}");
    assert!(msg.contains("API key"), "{msg}");
    assert!(msg.contains("regenerated"), "{msg}");
    assert!(!msg.contains(&old) && !msg.contains(&new), "{msg}");

    let (rc, text) = state_json();
    assert_eq!(rc, UNAUTHORIZED, "{}", last_error());
    assert_eq!(text, "");
    assert!(!last_error().contains(&old), "{}", last_error());

    let reqs = sim.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/reboot");
    assert_eq!(reqs[0].query_param("apikey"), Some(old.as_str()));
    assert!(
        !sim.state().actions.iter().any(|a| a.starts_with("reboot")),
        "the rejected reboot was carried out"
    );
}

#[test]
fn redirect_to_another_host_is_not_followed() {
    let _g = serial();
    let other = FaultServer::answering(|_| {
        response(
            200,
            &[("Content-Type", "application/json")],
            DEVICE_JSON.as_bytes(),
        )
    });
    let target = format!("http://127.0.0.1:{}/v1/device?apikey={KEY}", other.port());
    let srv = FaultServer::answering(move |req| {
        let status = if req.method == "GET" { 302 } else { 307 };
        response(
            status,
            &[("Location", &target), ("Content-Type", "text/plain")],
            format!("Found. Redirecting to {target}").as_bytes(),
        )
    });
    setup(&srv.address(), KEY, 2000);

    state_json_fails(HTTP, 302, 2000, "redirect");
    let msg = last_error();
    assert!(msg.contains("redirect not followed"), "{msg}");
    assert!(msg.contains("HTTP 302"), "{msg}");
    assert!(!msg.contains(KEY), "{msg}");

    let rc = bd_reboot(true);
    assert_eq!(rc, HTTP, "{}", last_error());
    assert_eq!(bd_last_http_status(), 307);

    settle();
    assert_eq!(other.connections(), 0, "the redirect was followed");
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert_request(&reqs[0], "GET", "/v1/device");
    assert_request(&reqs[1], "POST", "/v1/reboot");
}

/// A supervisor that accepts but never reads: a stream whose request body
/// cannot be sent must still give up after the timeout (a stream has no
/// overall deadline, but neither sending nor any single read may stall).
#[test]
fn stream_request_that_cannot_be_sent_times_out() {
    let _g = serial();
    let srv = FaultServer::start(|c: &mut Conn| {
        // Never reads a byte.
        c.pause(Duration::from_secs(30));
    });
    setup(&srv.address(), KEY, 500);

    // Far more than the socket buffers of both ends hold.
    let options = format!(r#"{{"count":1,"pad":"{}"}}"#, "x".repeat(8 << 20));
    let options = CString::new(options).unwrap();
    // SAFETY: a valid JSON string and a callback that is never called.
    let (rc, took) =
        timed(|| unsafe { bd_journal_logs(options.as_ptr(), Some(never_called), ptr::null_mut()) });
    assert_eq!(rc, TIMEOUT, "{}", last_error());
    // The deadline counts from the start of the call, so checking the 8 MiB
    // argument is inside it: the call ends at its deadline, not after it.
    assert!(took >= Duration::from_millis(495), "ended early: {took:?}");
    assert_within(took, 500, "journal request that cannot be sent");
    assert!(
        srv.connections() >= 1,
        "the request must have reached the server"
    );
}

/// Stops the stream at once; the server never answers, so it is not called.
unsafe extern "C" fn never_called(_: *const c_char, _: usize, _: *mut c_void) -> c_int {
    1
}

/// `bd_wait_for_supervisor` against a supervisor that accepts but never
/// answers: it gives up after its own time, not the client's timeout, and says
/// so.
#[test]
fn wait_for_a_supervisor_that_never_answers_times_out_on_its_own_time() {
    let _g = serial();
    let srv = FaultServer::start(|c: &mut Conn| {
        if c.read_request().is_some() {
            c.hold(Duration::from_secs(30));
        }
    });
    setup(&srv.address(), KEY, 5000);

    let (rc, took) = timed(|| bd_wait_for_supervisor(700));
    assert_eq!(rc, TIMEOUT, "{}", last_error());
    assert_within(took, 700, "wait_for_supervisor(700)");
    let msg = last_error();
    assert!(msg.contains("GET /ping within 700 ms"), "{msg}");
    assert!(
        !msg.contains("5000 ms"),
        "quotes the client's timeout: {msg}"
    );
    settle();
    assert!(srv.request_count() >= 1);
    assert!(srv
        .requests()
        .iter()
        .all(|r| r.method == "GET" && r.path() == "/ping"));
}
