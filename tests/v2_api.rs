//! Part 2 of the C API (V2 endpoints, streamed logs, the typed device state,
//! waiting for the supervisor and update locks), called through the exported
//! `extern "C"` functions against the supervisor simulator. Each test checks
//! the return value, the output, `bd_last_error` / `bd_last_http_status`,
//! and the exact request the simulator received.

mod sim;
mod support;

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;
use std::thread;
use std::time::{Duration, Instant};

use balena_device::ffi::*;
use serde_json::json;
use sim::check::{assert_nothing_sent, assert_request, assert_sent, only_request, Body};
use sim::{Sim, SimConfig, SimState};
use support::{
    assert_fails, assert_invalid, assert_ok, clear_env, closed_port, code, cstr, init, last_error,
    one_shot, parse, serial, setup, text_call, text_ok, OK,
};

// ------------------------------------------------------------------ helpers

/// A fresh default client for `sim` (environment cleared, 5 s timeout), and
/// the simulator's recording emptied.
fn connect(sim: &Sim) {
    clear_env();
    setup(&sim.address(), &sim.api_key(), 5000);
    sim.clear_requests();
}

/// As `connect`, with the device's global key (returned): a container's
/// key is scoped to its app, so only the global key gets the answers for
/// apps that are not on the device.
fn connect_global(sim: &Sim) -> String {
    clear_env();
    let key = sim.global_key();
    setup(&sim.address(), &key, 5000);
    sim.clear_requests();
    key
}

/// A one-shot server for answers the simulator never gives: it answers the
/// first request with `status` and a JSON `body`, and hands back the request
/// head it read.
fn canned(status: u16, body: &'static str) -> (String, thread::JoinHandle<String>) {
    one_shot(format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// Points the default client at a [`canned`] server answering `status` with
/// the JSON `body`, makes `call`, and checks that it fails with `want` and
/// that HTTP status, naming `label` and never `key`. Returns the last error
/// and the request head the server read.
#[track_caller]
fn fails_against_canned(
    status: u16,
    body: &'static str,
    key: &str,
    call: impl FnOnce() -> c_int,
    want: bd_status,
    label: &str,
) -> (String, String) {
    let (address, server) = canned(status, body);
    assert_eq!(init(&address, key), 0);
    let rc = call();
    let err = assert_fails(rc, want, c_int::from(status), label, key);
    (err, server.join().unwrap())
}

/// An export that writes text into `(buf, len)`.
type TextFn = unsafe extern "C" fn(*mut c_char, usize) -> c_int;

/// Collects the lines a stream delivers (through `userdata`).
#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    arrived: Vec<Instant>,
    /// Return non-zero once this many lines arrived (0: never).
    stop_after: usize,
    /// A delivery that broke the callback contract.
    problem: Option<String>,
}

impl Lines {
    fn stopping_after(n: usize) -> Lines {
        Lines {
            stop_after: n,
            ..Default::default()
        }
    }

    fn userdata(&mut self) -> *mut c_void {
        (self as *mut Lines).cast()
    }
}

/// The `bd_line_cb` of these tests. It must not panic (it is called from C
/// ABI code), so problems are recorded and asserted afterwards.
unsafe extern "C" fn collect(line: *const c_char, len: usize, userdata: *mut c_void) -> c_int {
    // SAFETY: userdata is the &mut Lines the test passed, alive for the call.
    let sink = unsafe { &mut *userdata.cast::<Lines>() };
    if line.is_null() {
        sink.problem = Some("NULL line".into());
        return 1;
    }
    // SAFETY: the contract: `len` bytes, then a NUL.
    let bytes = unsafe { std::slice::from_raw_parts(line.cast::<u8>(), len + 1) };
    if bytes[len] != 0 {
        sink.problem = Some(format!("line {} not NUL-terminated", sink.lines.len()));
    }
    let text = &bytes[..len];
    if text.contains(&b'\n') || text.contains(&b'\r') || text.contains(&0) {
        sink.problem = Some(format!("line {} holds a newline or NUL", sink.lines.len()));
    }
    sink.lines.push(String::from_utf8_lossy(text).into_owned());
    sink.arrived.push(Instant::now());
    c_int::from(sink.stop_after != 0 && sink.lines.len() >= sink.stop_after)
}

// ------------------------------------------------------------------ app and device state

#[test]
fn applications_state_json() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    // SAFETY (text calls in this file): the buffer is valid for its length.
    let v = parse(&text_ok(|b, l| unsafe { bd_applications_state_json(b, l) }));
    assert_eq!(bd_last_http_status(), 200);
    let app = &v["myapp"];
    assert_eq!(app["appId"], 1234);
    assert_eq!(app["commit"], "7fc9c5bea8e361acd49886fe6cc1e1cd");
    assert_eq!(app["services"]["main"]["status"], "Running");
    assert_sent(
        &sim,
        "GET",
        "/v2/applications/state",
        Some(&key),
        Body::Empty,
    );

    // Multi-container: both services.
    sim.with_state(|s| s.multi_container = true);
    let v = parse(&text_ok(|b, l| unsafe { bd_applications_state_json(b, l) }));
    let services = v["myapp"]["services"].as_object().unwrap();
    assert_eq!(services.keys().collect::<Vec<_>>(), vec!["main", "worker"]);
    only_request(&sim);
}

#[test]
fn application_state_json_answers_and_failures() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    let v = parse(&text_ok(|b, l| unsafe {
        bd_application_state_json(1234, b, l)
    }));
    assert_eq!(v["commit"], "7fc9c5bea8e361acd49886fe6cc1e1cd");
    assert_eq!(v["local"]["1234"]["services"]["1001"]["status"], "Running");
    assert_sent(
        &sim,
        "GET",
        "/v2/applications/1234/state",
        Some(&key),
        Body::Empty,
    );

    // BD_CURRENT_APP.
    std::env::set_var("BALENA_APP_ID", "1234");
    let again = parse(&text_ok(|b, l| unsafe {
        bd_application_state_json(BD_CURRENT_APP, b, l)
    }));
    assert_eq!(again, v);
    assert_eq!(only_request(&sim).path, "/v2/applications/1234/state");
    std::env::remove_var("BALENA_APP_ID");

    // An unknown app: 409, which is BD_ERR_HTTP.
    let (rc, _) = text_call(|b, l| unsafe { bd_application_state_json(999, b, l) });
    let err = assert_fails(
        rc,
        bd_status::BD_ERR_HTTP,
        409,
        "GET /v2/applications/999/state",
        &key,
    );
    assert!(err.contains("Application ID does not exist: 999"), "{err}");
    assert_sent(
        &sim,
        "GET",
        "/v2/applications/999/state",
        Some(&key),
        Body::Empty,
    );

    // An app outside the key's scope: 409 too.
    let scoped = "scopedkey_0042";
    sim.with_state(|s| s.scoped_keys = vec![(scoped.to_string(), vec![42])]);
    assert_eq!(init(&sim.address(), scoped), 0);
    let (rc, _) = text_call(|b, l| unsafe { bd_application_state_json(1234, b, l) });
    assert_fails(
        rc,
        bd_status::BD_ERR_HTTP,
        409,
        "GET /v2/applications/1234/state",
        scoped,
    );
    only_request(&sim);

    // 400 (a malformed id; the library never sends one, so a canned server
    // gives the answer).
    let (err, head) = fails_against_canned(
        400,
        r#"{"status":"failed","message":"Invalid app id"}"#,
        "cannedkey_1",
        || text_call(|b, l| unsafe { bd_application_state_json(1234, b, l) }).0,
        bd_status::BD_ERR_BAD_REQUEST,
        "GET /v2/applications/1234/state",
    );
    assert!(err.contains("Invalid app id"), "{err}");
    assert!(
        head.starts_with("GET /v2/applications/1234/state?apikey=cannedkey_1 HTTP/1.1\r\n"),
        "{head}"
    );
}

#[test]
fn state_status_json() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    let v = parse(&text_ok(|b, l| unsafe { bd_state_status_json(b, l) }));
    assert_eq!(v["status"], "success");
    assert_eq!(v["appState"], "applied");
    assert_eq!(v["containers"][0]["serviceName"], "main");
    assert_sent(&sim, "GET", "/v2/state/status", Some(&key), Body::Empty);
}

// ------------------------------------------------------------------ service actions

type ByName = unsafe extern "C" fn(u32, *const c_char, bool) -> c_int;
type ByImage = extern "C" fn(u32, u32, bool) -> c_int;

const BY_NAME: [(&str, ByName); 3] = [
    ("restart-service", bd_restart_service),
    ("stop-service", bd_stop_service),
    ("start-service", bd_start_service),
];

const BY_IMAGE: [(&str, ByImage); 3] = [
    ("restart-service", bd_restart_service_by_image),
    ("stop-service", bd_stop_service_by_image),
    ("start-service", bd_start_service_by_image),
];

fn by_name(f: ByName, app_id: u32, service: &str, force: bool) -> c_int {
    let s = cstr(service);
    // SAFETY: a NUL-terminated string.
    unsafe { f(app_id, s.as_ptr(), force) }
}

#[test]
fn service_actions_by_name_send_the_exact_body() {
    let _g = serial();
    let sim = Sim::start_with(SimConfig {
        multi_container: true,
        ..Default::default()
    });
    connect(&sim);
    let key = sim.api_key();

    for (action, f) in BY_NAME {
        let path = format!("/v2/applications/1234/{action}");
        for (service, force) in [("worker", false), ("main", true)] {
            assert_ok(by_name(f, 1234, service, force));
            assert_eq!(bd_last_http_status(), 200);
            assert_sent(
                &sim,
                "POST",
                &path,
                Some(&key),
                Body::Json(json!({"serviceName": service, "force": force})),
            );
        }
        // BD_CURRENT_APP.
        std::env::set_var("RESIN_APP_ID", "1234");
        assert_ok(by_name(f, BD_CURRENT_APP, "worker", false));
        assert_eq!(only_request(&sim).path, path);
        std::env::remove_var("RESIN_APP_ID");
    }
    let st = sim.state();
    assert_eq!(
        st.actions,
        vec![
            "restart-service 1234/worker",
            "restart-service 1234/main",
            "restart-service 1234/worker",
            "stop-service 1234/worker",
            "stop-service 1234/main",
            "stop-service 1234/worker",
            "start-service 1234/worker",
            "start-service 1234/main",
            "start-service 1234/worker",
        ]
    );
}

#[test]
fn service_actions_by_image_id_send_the_exact_body() {
    let _g = serial();
    let sim = Sim::start_with(SimConfig {
        multi_container: true,
        ..Default::default()
    });
    connect(&sim);
    let key = sim.api_key();

    for (action, f) in BY_IMAGE {
        let path = format!("/v2/applications/1234/{action}");
        for (image, force) in [(1002u32, false), (1001, true)] {
            assert_ok(f(1234, image, force));
            assert_sent(
                &sim,
                "POST",
                &path,
                Some(&key),
                Body::Json(json!({"imageId": image, "force": force})),
            );
        }
    }
    assert_eq!(
        sim.state().service_status(1234, "worker").as_deref(),
        Some("Running")
    );
    // Stop by image: the service's state follows.
    assert_ok(bd_stop_service_by_image(1234, 1002, false));
    only_request(&sim);
    assert_eq!(
        sim.state().service_status(1234, "worker").as_deref(),
        Some("exited")
    );

    // An unknown image on a multi-container app: 404.
    let rc = bd_restart_service_by_image(1234, 4242, false);
    assert_fails(
        rc,
        bd_status::BD_ERR_NOT_FOUND,
        404,
        "POST /v2/applications/1234/restart-service",
        &key,
    );
    assert_sent(
        &sim,
        "POST",
        "/v2/applications/1234/restart-service",
        Some(&key),
        Body::Json(json!({"imageId": 4242, "force": false})),
    );
}

#[test]
fn an_unknown_service_on_a_multi_container_app_is_not_found() {
    let _g = serial();
    let sim = Sim::start_with(SimConfig {
        multi_container: true,
        ..Default::default()
    });
    connect(&sim);
    let key = sim.api_key();

    for (action, f) in BY_NAME {
        let path = format!("/v2/applications/1234/{action}");
        let rc = by_name(f, 1234, "nope", false);
        let err = assert_fails(
            rc,
            bd_status::BD_ERR_NOT_FOUND,
            404,
            &format!("POST {path}"),
            &key,
        );
        assert!(err.contains("Service not found"), "{err}");
        assert_sent(
            &sim,
            "POST",
            &path,
            Some(&key),
            Body::Json(json!({"serviceName": "nope", "force": false})),
        );
    }
    // An app that is not on the device: the supervisor's 503 (to the
    // global key; the container's key gets 401).
    let global = connect_global(&sim);
    let rc = by_name(bd_restart_service, 999, "main", false);
    assert_fails(
        rc,
        bd_status::BD_ERR_SERVER,
        503,
        "POST /v2/applications/999/restart-service",
        &global,
    );
    only_request(&sim);
    assert!(sim.state().actions.is_empty());
}

#[test]
fn a_single_container_app_acts_on_its_service_whatever_the_name() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    assert_ok(by_name(bd_stop_service, 1234, "anything", false));
    assert_sent(
        &sim,
        "POST",
        "/v2/applications/1234/stop-service",
        Some(&key),
        Body::Json(json!({"serviceName": "anything", "force": false})),
    );
    assert_eq!(
        sim.state().service_status(1234, "main").as_deref(),
        Some("exited")
    );
    assert_eq!(sim.state().device["status"], "exited");

    assert_ok(bd_start_service_by_image(1234, 9999, false));
    only_request(&sim);
    assert_eq!(sim.state().device["status"], "Idle");
    assert_eq!(
        sim.state().actions,
        vec!["stop-service 1234/main", "start-service 1234/main"]
    );
}

#[test]
fn service_actions_are_locked_except_start() {
    let _g = serial();
    let sim = Sim::start_with(SimConfig {
        locked: true,
        ..Default::default()
    });
    connect(&sim);
    let key = sim.api_key();

    for (action, name_fn) in BY_NAME {
        let path = format!("/v2/applications/1234/{action}");
        let image_fn = BY_IMAGE.iter().find(|(a, _)| *a == action).unwrap().1;
        sim.with_state(|s| s.locked = true);
        if action == "start-service" {
            assert_ok(by_name(name_fn, 1234, "main", false));
            only_request(&sim);
            assert_ok(image_fn(1234, 1001, false));
            only_request(&sim);
            assert!(sim.state().locked, "start takes no lock");
            continue;
        }
        let rc = by_name(name_fn, 1234, "main", false);
        let err = assert_fails(
            rc,
            bd_status::BD_ERR_LOCKED,
            423,
            &format!("POST {path}"),
            &key,
        );
        assert!(err.contains("Lockfile exists"), "{err}");
        only_request(&sim);
        let rc = image_fn(1234, 1001, false);
        assert_fails(
            rc,
            bd_status::BD_ERR_LOCKED,
            423,
            &format!("POST {path}"),
            &key,
        );
        only_request(&sim);

        // Force overrides the lock (and clears it).
        assert_ok(image_fn(1234, 1001, true));
        assert_sent(
            &sim,
            "POST",
            &path,
            Some(&key),
            Body::Json(json!({"imageId": 1001, "force": true})),
        );
        assert!(!sim.state().locked);
        sim.with_state(|s| s.locked = true);
        assert_ok(by_name(name_fn, 1234, "main", true));
        assert_sent(
            &sim,
            "POST",
            &path,
            Some(&key),
            Body::Json(json!({"serviceName": "main", "force": true})),
        );
        assert!(!sim.state().locked);
    }
}

#[test]
fn bad_service_names_are_refused_and_nothing_is_sent() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);

    for (_, f) in BY_NAME {
        // SAFETY: NULL must be refused.
        assert_invalid(unsafe { f(1234, ptr::null(), false) });
        for bad in ["", "a\nb", "main\r\n", "tab\there"] {
            assert_invalid(by_name(f, 1234, bad, false));
        }
        let not_utf8 = CString::new(vec![b'm', 0xff]).unwrap();
        // SAFETY: a NUL-terminated string.
        assert_invalid(unsafe { f(1234, not_utf8.as_ptr(), false) });
    }
    assert_nothing_sent(&sim);
}

// ------------------------------------------------------------------ app restart, purge

#[test]
fn app_and_service_actions_outside_the_keys_scope_are_unauthorized() {
    let _g = serial();
    let sim = Sim::start();
    let scoped = "scopedkey_0042";
    sim.with_state(|s| s.scoped_keys = vec![(scoped.to_string(), vec![42])]);
    assert_eq!(init(&sim.address(), scoped), 0);

    let main = cstr("main");
    type Call<'a> = Box<dyn Fn() -> c_int + 'a>;
    // SAFETY (each call): a NUL-terminated service name.
    let calls: Vec<(&str, Call)> = vec![
        (
            "POST /v2/applications/1234/restart-service",
            Box::new(|| unsafe { bd_restart_service(1234, main.as_ptr(), false) }),
        ),
        (
            "POST /v2/applications/1234/stop-service",
            Box::new(|| bd_stop_service_by_image(1234, 1001, true)),
        ),
        (
            "POST /v2/applications/1234/start-service",
            Box::new(|| unsafe { bd_start_service(1234, main.as_ptr(), false) }),
        ),
        (
            "POST /v2/applications/1234/restart",
            Box::new(|| bd_restart_app(1234, true)),
        ),
        (
            "POST /v2/applications/1234/purge",
            Box::new(|| bd_purge_app(1234, false)),
        ),
    ];
    for (label, call) in calls {
        assert_fails(call(), bd_status::BD_ERR_UNAUTHORIZED, 401, label, scoped);
    }
    assert_eq!(sim.requests().len(), 5, "one request per call");
    assert!(sim.state().actions.is_empty(), "{:?}", sim.state().actions);

    // The same key acts on the app it is scoped to.
    sim.with_state(|s| s.scoped_keys = vec![(scoped.to_string(), vec![1234])]);
    assert_ok(bd_restart_app(1234, false));
    assert_eq!(sim.state().actions, vec!["restart 1234".to_string()]);
}

#[test]
fn restart_app_and_purge_app_send_force() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    type AppFn = extern "C" fn(u32, bool) -> c_int;
    let cases: [(&str, AppFn); 2] = [("restart", bd_restart_app), ("purge", bd_purge_app)];
    for (action, f) in cases {
        let path = format!("/v2/applications/1234/{action}");
        let label = format!("POST {path}");

        assert_ok(f(1234, false));
        assert_eq!(bd_last_http_status(), 200);
        assert_sent(
            &sim,
            "POST",
            &path,
            Some(&key),
            Body::Exact(r#"{"force":false}"#),
        );

        std::env::set_var("BALENA_APP_ID", "1234");
        assert_ok(f(BD_CURRENT_APP, false));
        assert_eq!(only_request(&sim).path, path);
        std::env::remove_var("BALENA_APP_ID");

        sim.with_state(|s| s.locked = true);
        let rc = f(1234, false);
        assert_fails(rc, bd_status::BD_ERR_LOCKED, 423, &label, &key);
        assert_sent(
            &sim,
            "POST",
            &path,
            Some(&key),
            Body::Exact(r#"{"force":false}"#),
        );

        assert_ok(f(1234, true));
        assert_sent(
            &sim,
            "POST",
            &path,
            Some(&key),
            Body::Exact(r#"{"force":true}"#),
        );
        assert!(!sim.state().locked);

        // (to the global key; the container's key gets 401)
        let global = connect_global(&sim);
        let rc = f(999, false);
        assert_fails(
            rc,
            bd_status::BD_ERR_SERVER,
            503,
            &format!("POST /v2/applications/999/{action}"),
            &global,
        );
        only_request(&sim);
        connect(&sim);

        let rc = f(BD_CURRENT_APP, false);
        assert_eq!(rc, code(bd_status::BD_ERR_NOT_CONFIGURED));
        assert_nothing_sent(&sim);
    }
    assert_eq!(
        sim.state().actions,
        vec![
            "restart 1234",
            "restart 1234",
            "restart 1234",
            "purge 1234",
            "purge 1234",
            "purge 1234"
        ]
    );
}

// ------------------------------------------------------------------ version, container ids, name

/// A GET that answers one string: `first` as the simulator starts, `second`
/// once `change` changed the device; each call is one request, the first
/// checked to be `GET path` with the key and no body.
fn text_get_follows_the_state(
    get: TextFn,
    path: &str,
    first: &str,
    change: impl FnOnce(&mut SimState),
    second: &str,
) {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    // SAFETY: the buffer is valid for its length.
    assert_eq!(text_ok(|b, l| unsafe { get(b, l) }), first);
    assert_sent(&sim, "GET", path, Some(&key), Body::Empty);
    sim.with_state(change);
    // SAFETY: as above.
    assert_eq!(text_ok(|b, l| unsafe { get(b, l) }), second);
    only_request(&sim);
}

#[test]
fn supervisor_version() {
    text_get_follows_the_state(
        bd_supervisor_version,
        "/v2/version",
        "19.0.5",
        |s| s.supervisor_version = "v20.1.0".into(),
        "v20.1.0",
    );
}

#[test]
fn container_id_percent_encodes_the_service_name() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();
    let main_id = sim.state().apps[0].services[0].container_id.clone();

    let name = cstr("main");
    let id = text_ok(|b, l| unsafe { bd_container_id(name.as_ptr(), b, l) });
    assert_eq!(id, main_id);
    let r = only_request(&sim);
    assert_request(&r, "GET", "/v2/containerId", Some(&key), Body::Empty);
    assert_eq!(r.query_param("service"), Some("main"));
    assert_eq!(r.raw_query, format!("service=main&apikey={key}"));

    // A name that needs encoding in a query.
    let odd = "my svc&x=1+2";
    sim.with_state(|s| s.apps[0].services[0].name = odd.into());
    let name = cstr(odd);
    let id = text_ok(|b, l| unsafe { bd_container_id(name.as_ptr(), b, l) });
    assert_eq!(id, main_id);
    let r = only_request(&sim);
    assert_eq!(r.path, "/v2/containerId");
    assert_eq!(
        r.raw_query,
        format!("service=my%20svc%26x%3D1%2B2&apikey={key}")
    );
    assert_eq!(r.query_param("service"), Some(odd));
    assert_eq!(r.query_param("apikey"), Some(key.as_str()));

    // An unknown service: 503.
    let name = cstr("nope");
    let (rc, _) = text_call(|b, l| unsafe { bd_container_id(name.as_ptr(), b, l) });
    let err = assert_fails(
        rc,
        bd_status::BD_ERR_SERVER,
        503,
        "GET /v2/containerId",
        &key,
    );
    assert!(
        err.contains("Could not find service with that name"),
        "{err}"
    );
    only_request(&sim);

    // Bad names: nothing sent.
    let (rc, _) = text_call(|b, l| unsafe { bd_container_id(ptr::null(), b, l) });
    assert_invalid(rc);
    for bad in ["", "a\r\nb"] {
        let name = cstr(bad);
        let (rc, _) = text_call(|b, l| unsafe { bd_container_id(name.as_ptr(), b, l) });
        assert_invalid(rc);
    }
    assert_nothing_sent(&sim);
}

#[test]
fn container_ids_json() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();
    let st = sim.state();
    let (main_id, worker_id) = (
        st.apps[0].services[0].container_id.clone(),
        st.apps[0].services[1].container_id.clone(),
    );

    let v = parse(&text_ok(|b, l| unsafe { bd_container_ids_json(b, l) }));
    assert_eq!(v, json!({ "main": main_id }));
    let r = only_request(&sim);
    assert_request(&r, "GET", "/v2/containerId", Some(&key), Body::Empty);
    assert_eq!(r.raw_query, format!("apikey={key}"));

    sim.with_state(|s| s.multi_container = true);
    let v = parse(&text_ok(|b, l| unsafe { bd_container_ids_json(b, l) }));
    assert_eq!(v, json!({ "main": main_id, "worker": worker_id }));
    only_request(&sim);
}

#[test]
fn device_name() {
    text_get_follows_the_state(
        bd_device_name,
        "/v2/device/name",
        "sim-device",
        |s| s.device_name = "bright-star é".into(),
        "bright-star é",
    );
}

// ------------------------------------------------------------------ tags

#[test]
fn device_tags_get_and_set() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    assert_eq!(text_ok(|b, l| unsafe { bd_device_tags_json(b, l) }), "[]");
    assert_sent(&sim, "GET", "/v2/device/tags", Some(&key), Body::Empty);

    let body = r#"{"env": "prod" , "zone":"eu-1"}"#;
    let json = cstr(body);
    // SAFETY: a NUL-terminated string.
    assert_ok(unsafe { bd_set_device_tags_json(json.as_ptr()) });
    assert_eq!(bd_last_http_status(), 202);
    assert_sent(
        &sim,
        "PATCH",
        "/v2/device/tags",
        Some(&key),
        Body::Exact(body),
    );

    let tags = parse(&text_ok(|b, l| unsafe { bd_device_tags_json(b, l) }));
    assert_eq!(
        tags,
        json!([
            {"id": 1, "name": "env", "value": "prod"},
            {"id": 2, "name": "zone", "value": "eu-1"}
        ])
    );
    only_request(&sim);
}

#[test]
fn device_tags_validation_and_api_down() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();
    let label = "PATCH /v2/device/tags";

    for body in [r#"{"bad name":"x"}"#, r#"{"n":1}"#] {
        let json = cstr(body);
        // SAFETY: a NUL-terminated string.
        let rc = unsafe { bd_set_device_tags_json(json.as_ptr()) };
        assert_fails(rc, bd_status::BD_ERR_BAD_REQUEST, 400, label, &key);
        assert_sent(
            &sim,
            "PATCH",
            "/v2/device/tags",
            Some(&key),
            Body::Exact(body),
        );
    }
    assert!(sim.state().tags.is_empty());

    // Not a JSON object: refused, nothing sent.
    for bad in ["[]", "\"x\"", "{", "tags"] {
        let json = cstr(bad);
        // SAFETY: a NUL-terminated string.
        assert_invalid(unsafe { bd_set_device_tags_json(json.as_ptr()) });
    }
    // SAFETY: NULL must be refused.
    assert_invalid(unsafe { bd_set_device_tags_json(ptr::null()) });
    assert_nothing_sent(&sim);

    // No connection to the balena API: 500 both ways.
    sim.with_state(|s| s.tags_api_down = true);
    let (rc, _) = text_call(|b, l| unsafe { bd_device_tags_json(b, l) });
    let err = assert_fails(
        rc,
        bd_status::BD_ERR_SERVER,
        500,
        "GET /v2/device/tags",
        &key,
    );
    assert!(err.contains("api.balena-cloud.com"), "{err}");
    only_request(&sim);
    let json = cstr(r#"{"env":"prod"}"#);
    // SAFETY: a NUL-terminated string.
    let rc = unsafe { bd_set_device_tags_json(json.as_ptr()) };
    assert_fails(rc, bd_status::BD_ERR_SERVER, 500, label, &key);
    only_request(&sim);
}

// ------------------------------------------------------------------ vpn, volumes, local mode, info

#[test]
fn vpn_status_writes_its_out_pointers_only_on_success() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    // Sentinels that are not a bool value: any write shows.
    let (mut enabled, mut connected) = (0xAAu8, 0xAAu8);
    let (pe, pc) = (
        (&mut enabled as *mut u8).cast::<bool>(),
        (&mut connected as *mut u8).cast::<bool>(),
    );

    // SAFETY (vpn calls below): valid one-byte locations.
    assert_ok(unsafe { bd_vpn_status(pe, pc) });
    assert_eq!((enabled, connected), (1, 1));
    assert_sent(&sim, "GET", "/v2/device/vpn", Some(&key), Body::Empty);

    sim.with_state(|s| s.vpn_connected = false);
    assert_ok(unsafe { bd_vpn_status(pe, pc) });
    assert_eq!((enabled, connected), (1, 0));
    only_request(&sim);

    sim.with_state(|s| {
        s.vpn_enabled = false;
        s.vpn_connected = true;
    });
    assert_ok(unsafe { bd_vpn_status(pe, pc) });
    assert_eq!((enabled, connected), (0, 1));
    only_request(&sim);

    // An error leaves both untouched.
    let wrong = "wrongkey_77";
    assert_eq!(init(&sim.address(), wrong), 0);
    let (mut enabled, mut connected) = (0xAAu8, 0xAAu8);
    let (pe, pc) = (
        (&mut enabled as *mut u8).cast::<bool>(),
        (&mut connected as *mut u8).cast::<bool>(),
    );
    let rc = unsafe { bd_vpn_status(pe, pc) };
    assert_fails(
        rc,
        bd_status::BD_ERR_UNAUTHORIZED,
        401,
        "GET /v2/device/vpn",
        wrong,
    );
    assert_eq!((enabled, connected), (0xAA, 0xAA));
    only_request(&sim);

    // NULL pointers: refused, nothing sent, the other untouched.
    assert_invalid(unsafe { bd_vpn_status(ptr::null_mut(), pc) });
    assert_invalid(unsafe { bd_vpn_status(pe, ptr::null_mut()) });
    assert_eq!((enabled, connected), (0xAA, 0xAA));
    assert_nothing_sent(&sim);
}

#[test]
fn cleanup_volumes() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    assert_ok(bd_cleanup_volumes());
    assert_eq!(bd_last_http_status(), 200);
    assert_sent(&sim, "GET", "/v2/cleanup-volumes", Some(&key), Body::Empty);
    assert_eq!(sim.state().actions, vec!["cleanup-volumes"]);

    // The documented failure: 503 JSON.
    let (err, head) = fails_against_canned(
        503,
        r#"{"status":"failed","message":"Cannot remove volumes: engine unreachable"}"#,
        "cannedkey_2",
        || bd_cleanup_volumes(),
        bd_status::BD_ERR_SERVER,
        "GET /v2/cleanup-volumes",
    );
    assert!(err.contains("engine unreachable"), "{err}");
    assert!(
        head.starts_with("GET /v2/cleanup-volumes?apikey=cannedkey_2 HTTP/1.1\r\n"),
        "{head}"
    );
}

#[test]
fn local_target_state_get_and_set() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    let v = parse(&text_ok(|b, l| unsafe { bd_local_target_state_json(b, l) }));
    assert_eq!(v, sim.state().target_state);
    assert_eq!(v["local"]["name"], "sim-device");
    assert_sent(
        &sim,
        "GET",
        "/v2/local/target-state",
        Some(&key),
        Body::Empty,
    );

    // Not in local mode: 400.
    let body = r#"{"local":{"name":"new-name","config":{},"apps":{}},"dependent":{"apps":[],"devices":[]}}"#;
    let json = cstr(body);
    // SAFETY (set calls below): NUL-terminated strings.
    let rc = unsafe { bd_set_local_target_state_json(json.as_ptr()) };
    let err = assert_fails(
        rc,
        bd_status::BD_ERR_BAD_REQUEST,
        400,
        "POST /v2/local/target-state",
        &key,
    );
    assert!(err.contains("local mode"), "{err}");
    assert_sent(
        &sim,
        "POST",
        "/v2/local/target-state",
        Some(&key),
        Body::Exact(body),
    );

    // In local mode: accepted, sent as given, and read back.
    sim.with_state(|s| s.local_mode = true);
    assert_ok(unsafe { bd_set_local_target_state_json(json.as_ptr()) });
    assert_sent(
        &sim,
        "POST",
        "/v2/local/target-state",
        Some(&key),
        Body::Exact(body),
    );
    // Stored as the device's target: `local` only.
    let stored = json!({"local": parse(body)["local"]});
    assert_eq!(sim.state().target_state, stored);
    let v = parse(&text_ok(|b, l| unsafe { bd_local_target_state_json(b, l) }));
    assert_eq!(v, stored);
    only_request(&sim);

    // An invalid state: 400.
    let bad = r#"{"local":{"name":"x","config":{"A":1},"apps":{}}}"#;
    let json = cstr(bad);
    let rc = unsafe { bd_set_local_target_state_json(json.as_ptr()) };
    assert_fails(
        rc,
        bd_status::BD_ERR_BAD_REQUEST,
        400,
        "POST /v2/local/target-state",
        &key,
    );
    only_request(&sim);

    // Not a JSON object: refused, nothing sent.
    for bad in ["[]", "nope", ""] {
        let json = cstr(bad);
        assert_invalid(unsafe { bd_set_local_target_state_json(json.as_ptr()) });
    }
    assert_invalid(unsafe { bd_set_local_target_state_json(ptr::null()) });
    assert_nothing_sent(&sim);
}

#[test]
fn device_info_json() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    let v = parse(&text_ok(|b, l| unsafe { bd_device_info_json(b, l) }));
    assert_eq!(
        v,
        json!({"arch": "aarch64", "deviceType": "raspberrypi4-64"})
    );
    assert_sent(
        &sim,
        "GET",
        "/v2/local/device-info",
        Some(&key),
        Body::Empty,
    );

    // The documented failure: 500 JSON.
    fails_against_canned(
        500,
        r#"{"status":"failed","message":"no device info"}"#,
        "cannedkey_3",
        || text_call(|b, l| unsafe { bd_device_info_json(b, l) }).0,
        bd_status::BD_ERR_SERVER,
        "GET /v2/local/device-info",
    );
}

#[test]
fn answers_without_the_documented_field_are_invalid_responses() {
    let _g = serial();
    clear_env();
    bd_cleanup();
    let cases: [(TextFn, &str, &'static str); 4] = [
        (
            bd_supervisor_version,
            "GET /v2/version",
            r#"{"status":"success"}"#,
        ),
        (
            bd_device_name,
            "GET /v2/device/name",
            r#"{"status":"success","deviceName":7}"#,
        ),
        (
            bd_device_tags_json,
            "GET /v2/device/tags",
            r#"{"status":"success","tags":{}}"#,
        ),
        (bd_container_ids_json, "GET /v2/containerId", r#"[1,2]"#),
    ];
    for (f, label, body) in cases {
        fails_against_canned(
            200,
            body,
            "cannedkey_4",
            // SAFETY: the buffer is valid for its length.
            || text_call(|b, l| unsafe { f(b, l) }).0,
            bd_status::BD_ERR_INVALID_RESPONSE,
            label,
        );
    }
}

// ------------------------------------------------------------------ streamed logs

/// A journal line in journalctl's short format, as the simulator writes it.
fn is_short_journal_line(line: &str, n: usize) -> bool {
    line.ends_with(&format!(" device balena-supervisor[1]: line {n}")) && line.len() < 80
}

/// Each line is the next one (from 1) of the simulator's short-format journal.
#[track_caller]
fn assert_short_journal_lines(lines: &[String]) {
    for (i, line) in lines.iter().enumerate() {
        assert!(is_short_journal_line(line, i + 1), "line {i}: {line:?}");
    }
}

#[test]
fn journal_logs_honour_count_and_deliver_whole_lines() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    // Short format. The options are sent byte for byte.
    let options = r#"{ "count": 5, "format":"short" }"#;
    let opts = cstr(options);
    let mut sink = Lines::default();
    // SAFETY: valid strings, callback and userdata for the call.
    let rc = unsafe { bd_journal_logs(opts.as_ptr(), Some(collect), sink.userdata()) };
    assert_ok(rc);
    assert_eq!(bd_last_http_status(), 200);
    assert_eq!(sink.problem, None);
    assert_eq!(sink.lines.len(), 5, "{:#?}", sink.lines);
    assert_short_journal_lines(&sink.lines);
    assert_sent(
        &sim,
        "POST",
        "/v2/journal-logs",
        Some(&key),
        Body::Exact(options),
    );

    // JSON format, with a unit.
    let options = r#"{"count":3,"format":"json","unit":"openvpn.service"}"#;
    let opts = cstr(options);
    let mut sink = Lines::default();
    // SAFETY: as above.
    let rc = unsafe { bd_journal_logs(opts.as_ptr(), Some(collect), sink.userdata()) };
    assert_ok(rc);
    assert_eq!(sink.problem, None);
    assert_eq!(sink.lines.len(), 3);
    for (i, line) in sink.lines.iter().enumerate() {
        let v = parse(line);
        assert_eq!(v["MESSAGE"], format!("line {}", i + 1));
        assert_eq!(v["SYSLOG_IDENTIFIER"], "openvpn");
        assert_eq!(v["_HOSTNAME"], "device");
    }
    assert_sent(
        &sim,
        "POST",
        "/v2/journal-logs",
        Some(&key),
        Body::Exact(options),
    );
}

#[test]
fn journal_logs_stop_early_when_the_callback_says_so() {
    let _g = serial();
    let sim = Sim::start_with(SimConfig {
        log_interval: Duration::from_millis(50),
        ..Default::default()
    });
    connect(&sim);
    let key = sim.api_key();

    // follow: the stream never ends by itself.
    let options = r#"{"follow":true,"count":2}"#;
    let opts = cstr(options);
    let mut sink = Lines::stopping_after(4);
    // SAFETY: valid strings, callback and userdata for the call.
    let rc = unsafe { bd_journal_logs(opts.as_ptr(), Some(collect), sink.userdata()) };
    assert_ok(rc);
    assert_eq!(sink.problem, None);
    assert_eq!(sink.lines.len(), 4, "no line after the stop");
    assert_short_journal_lines(&sink.lines);
    assert_sent(
        &sim,
        "POST",
        "/v2/journal-logs",
        Some(&key),
        Body::Exact(options),
    );

    // Stopping at the very first line.
    let mut sink = Lines::stopping_after(1);
    // SAFETY: as above.
    let rc = unsafe { bd_journal_logs(opts.as_ptr(), Some(collect), sink.userdata()) };
    assert_ok(rc);
    assert_eq!(sink.lines.len(), 1);
    only_request(&sim);

    // The client still works afterwards.
    assert_ok(bd_ping());
}

#[test]
fn journal_logs_bad_arguments_send_nothing() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let mut sink = Lines::default();

    let opts = cstr("{}");
    // SAFETY (all calls): valid or NULL pointers, as each case says.
    assert_invalid(unsafe { bd_journal_logs(opts.as_ptr(), None, sink.userdata()) });
    assert_invalid(unsafe { bd_journal_logs(ptr::null(), Some(collect), sink.userdata()) });
    for bad in ["", "[]", "{\"count\":", "count=5"] {
        let opts = cstr(bad);
        assert_invalid(unsafe { bd_journal_logs(opts.as_ptr(), Some(collect), sink.userdata()) });
    }
    assert_invalid(unsafe { bd_local_logs(None, sink.userdata()) });
    assert!(sink.lines.is_empty());
    assert_nothing_sent(&sim);
}

#[test]
fn local_logs_arrive_over_time_and_stop_early() {
    let _g = serial();
    // The app's lines come only in local mode.
    let sim = Sim::start_with(SimConfig {
        log_interval: Duration::from_millis(150),
        local_mode: true,
        ..Default::default()
    });
    connect(&sim);
    let key = sim.api_key();

    let mut sink = Lines::stopping_after(4);
    let start = Instant::now();
    // SAFETY: valid callback and userdata for the call.
    let rc = unsafe { bd_local_logs(Some(collect), sink.userdata()) };
    assert_ok(rc);
    assert_eq!(sink.problem, None);
    assert_eq!(sink.lines.len(), 4, "{:#?}", sink.lines);
    assert_eq!(
        parse(&sink.lines[0]),
        json!({"message": "Streaming logs", "isSystem": true})
    );
    for (i, line) in sink.lines.iter().enumerate().skip(1) {
        let v = parse(line);
        assert_eq!(v["message"], format!("log line {i} from main"));
        assert_eq!(v["serviceName"], "main");
        assert!(v["timestamp"].is_u64(), "{line}");
    }
    // Delivered as they came, one interval apart, not all at the end.
    let t = &sink.arrived;
    assert!(
        t[3].duration_since(t[1]) >= Duration::from_millis(200),
        "lines 1..3 arrived within {:?}",
        t[3].duration_since(t[1])
    );
    assert!(t[1].duration_since(start) >= Duration::from_millis(100));
    assert_sent(&sim, "GET", "/v2/local/logs", Some(&key), Body::Empty);

    // Stop at the first line.
    let mut sink = Lines::stopping_after(1);
    // SAFETY: as above.
    assert_ok(unsafe { bd_local_logs(Some(collect), sink.userdata()) });
    assert_eq!(sink.lines.len(), 1);
    only_request(&sim);
}

#[test]
fn a_stalled_stream_or_request_times_out() {
    let _g = serial();
    let sim = Sim::start_with(SimConfig {
        log_interval: Duration::from_secs(4),
        ..Default::default()
    });
    connect(&sim);
    let key = sim.api_key();
    assert_ok(bd_set_timeout_ms(300));
    // Streams have no stall limit unless one is set.
    assert_ok(bd_set_stream_timeout_ms(300));

    // Local logs: the first line comes at once, then nothing for 4 s.
    let mut sink = Lines::default();
    let start = Instant::now();
    // SAFETY: valid callback and userdata for the call.
    let rc = unsafe { bd_local_logs(Some(collect), sink.userdata()) };
    let took = start.elapsed();
    assert_fails(
        rc,
        bd_status::BD_ERR_TIMEOUT,
        200,
        "GET /v2/local/logs",
        &key,
    );
    assert_eq!(sink.lines.len(), 1, "{:#?}", sink.lines);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    only_request(&sim);

    // Journal logs with follow: the initial lines, then a stall.
    let opts = cstr(r#"{"follow":true,"count":2}"#);
    let mut sink = Lines::default();
    let start = Instant::now();
    // SAFETY: as above.
    let rc = unsafe { bd_journal_logs(opts.as_ptr(), Some(collect), sink.userdata()) };
    let took = start.elapsed();
    assert_fails(
        rc,
        bd_status::BD_ERR_TIMEOUT,
        200,
        "POST /v2/journal-logs",
        &key,
    );
    assert_eq!(sink.lines.len(), 2);
    assert!(took < Duration::from_millis(2500), "{took:?}");
    only_request(&sim);

    // A plain request the supervisor does not answer in time.
    sim.with_state(|s| s.stall_ms = 3000);
    let start = Instant::now();
    // SAFETY: a size query.
    let rc = unsafe { bd_state_json(ptr::null_mut(), 0) };
    let took = start.elapsed();
    assert_fails(rc, bd_status::BD_ERR_TIMEOUT, 0, "GET /v1/device", &key);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    only_request(&sim);
}

// ------------------------------------------------------------------ typed device state

/// A struct filled with values the library never writes.
fn sentinel_state() -> bd_device_state {
    bd_device_state {
        status: [b'Z' as c_char; 32],
        commit: [b'Z' as c_char; 72],
        os_version: [b'Z' as c_char; 64],
        supervisor_version: [b'Z' as c_char; 32],
        ip_address: [b'Z' as c_char; 256],
        mac_address: [b'Z' as c_char; 256],
        download_progress: 12345,
        api_port: 4242,
        update_pending: true,
        update_downloaded: true,
        update_failed: true,
    }
}

#[track_caller]
fn assert_untouched(s: &bd_device_state) {
    let z = b'Z' as c_char;
    assert!(s.status.iter().all(|&c| c == z));
    assert!(s.commit.iter().all(|&c| c == z));
    assert!(s.os_version.iter().all(|&c| c == z));
    assert!(s.supervisor_version.iter().all(|&c| c == z));
    assert!(s.ip_address.iter().all(|&c| c == z));
    assert!(s.mac_address.iter().all(|&c| c == z));
    assert_eq!(s.download_progress, 12345);
    assert_eq!(s.api_port, 4242);
    assert!(s.update_pending && s.update_downloaded && s.update_failed);
}

/// A C string field: NUL-terminated inside the array, UTF-8.
#[track_caller]
fn field(a: &[c_char]) -> String {
    let bytes: Vec<u8> = a.iter().map(|&c| c as u8).collect();
    let nul = bytes
        .iter()
        .position(|&b| b == 0)
        .expect("the field is not NUL-terminated within its size");
    String::from_utf8(bytes[..nul].to_vec()).expect("the field is UTF-8")
}

fn get_state(out: &mut bd_device_state) -> c_int {
    // SAFETY: a valid, writable struct.
    unsafe { bd_state(out) }
}

#[test]
fn state_struct_carries_every_field() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    // The default device: download_progress null.
    let mut s = sentinel_state();
    assert_ok(get_state(&mut s));
    assert_eq!(field(&s.status), "Idle");
    assert_eq!(field(&s.commit), "7fc9c5bea8e361acd49886fe6cc1e1cd");
    assert_eq!(field(&s.os_version), "balenaOS 6.0.13");
    assert_eq!(field(&s.supervisor_version), "19.0.5");
    assert_eq!(field(&s.ip_address), "10.0.0.2");
    assert_eq!(field(&s.mac_address), "02:42:AC:11:00:02");
    assert_eq!(s.download_progress, -1, "null download_progress");
    assert_eq!(s.api_port, 48484);
    assert!(!s.update_pending && !s.update_downloaded && !s.update_failed);
    assert_sent(&sim, "GET", "/v1/device", Some(&key), Body::Empty);

    // The documentation's example, with every field set.
    sim.with_state(|st| {
        st.device = json!({
            "api_port": 48484,
            "ip_address": "192.168.0.114 10.42.0.3",
            "commit": "414e65cd378a69a96f403b75f14b40b55856f860",
            "status": "Downloading",
            "download_progress": 84,
            "os_version": "balenaOS 2.44.0+rev1",
            "supervisor_version": "10.3.7",
            "update_pending": true,
            "update_downloaded": false,
            "update_failed": true,
            "mac_address": "B8:27:EB:00:00:01 02:42:AC:11:00:02"
        })
    });
    let mut s = sentinel_state();
    assert_ok(get_state(&mut s));
    assert_eq!(field(&s.status), "Downloading");
    assert_eq!(field(&s.commit), "414e65cd378a69a96f403b75f14b40b55856f860");
    assert_eq!(field(&s.os_version), "balenaOS 2.44.0+rev1");
    assert_eq!(field(&s.supervisor_version), "10.3.7");
    assert_eq!(field(&s.ip_address), "192.168.0.114 10.42.0.3");
    assert_eq!(field(&s.mac_address), "B8:27:EB:00:00:01 02:42:AC:11:00:02");
    assert_eq!(s.download_progress, 84);
    assert_eq!(s.api_port, 48484);
    assert!(s.update_pending);
    assert!(!s.update_downloaded);
    assert!(s.update_failed);
    only_request(&sim);

    // The struct follows the device: stopping the app shows in `status`.
    sim.with_state(|st| st.device["status"] = json!("Idle"));
    // SAFETY: NULL with len 0.
    assert_eq!(unsafe { bd_stop_app(1234, false, ptr::null_mut(), 0) }, 64);
    let mut s = sentinel_state();
    assert_ok(get_state(&mut s));
    assert_eq!(field(&s.status), "exited");
}

#[test]
fn state_struct_missing_null_and_long_fields() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);

    // Nothing at all.
    sim.with_state(|st| st.device = json!({}));
    let mut s = sentinel_state();
    assert_ok(get_state(&mut s));
    for f in [
        &s.status[..],
        &s.commit[..],
        &s.os_version[..],
        &s.supervisor_version[..],
        &s.ip_address[..],
        &s.mac_address[..],
    ] {
        assert_eq!(field(f), "");
    }
    assert_eq!(s.download_progress, -1);
    assert_eq!(s.api_port, 0);
    assert!(!s.update_pending && !s.update_downloaded && !s.update_failed);

    // Every field null.
    sim.with_state(|st| {
        st.device = json!({
            "api_port": null, "ip_address": null, "commit": null, "status": null,
            "download_progress": null, "os_version": null, "supervisor_version": null,
            "update_pending": null, "update_downloaded": null, "update_failed": null,
            "mac_address": null
        })
    });
    let mut s = sentinel_state();
    assert_ok(get_state(&mut s));
    assert_eq!(field(&s.status), "");
    assert_eq!(field(&s.mac_address), "");
    assert_eq!(s.download_progress, -1);
    assert_eq!(s.api_port, 0);
    assert!(!s.update_pending && !s.update_downloaded && !s.update_failed);

    // Over-long strings: truncated to the field, NUL inside it, never split
    // inside a UTF-8 character.
    let long_status = "S".repeat(100);
    let long_commit = "c".repeat(200);
    let long_ip = "10.0.0.1 ".repeat(60);
    let wide_os = "é".repeat(40); // 80 bytes, 2 per character
    sim.with_state(|st| {
        st.device = json!({
            "status": long_status,
            "commit": long_commit,
            "ip_address": long_ip,
            "os_version": wide_os,
            "supervisor_version": "x".repeat(31),
            "mac_address": "m".repeat(255),
        })
    });
    let mut s = sentinel_state();
    assert_ok(get_state(&mut s));
    assert_eq!(field(&s.status), "S".repeat(31));
    assert_eq!(field(&s.commit), "c".repeat(71));
    assert_eq!(field(&s.ip_address), long_ip[..255]);
    assert_eq!(
        field(&s.os_version),
        "é".repeat(31),
        "63 bytes would split a character"
    );
    assert_eq!(field(&s.supervisor_version), "x".repeat(31), "fits exactly");
    assert_eq!(field(&s.mac_address), "m".repeat(255), "fits exactly");
    assert_eq!(s.download_progress, -1);
}

#[test]
fn state_struct_with_wrong_types_is_invalid_and_leaves_out_untouched() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    for device in [
        json!({"api_port": "48484"}),
        json!({"api_port": 70000}),
        json!({"api_port": -1}),
        json!({"status": 5}),
        json!({"commit": ["a"]}),
        json!({"update_pending": "yes"}),
        json!({"update_failed": 0}),
        json!({"download_progress": "84"}),
        json!({"ip_address": {"eth0": "10.0.0.2"}}),
        json!([1, 2]),
        json!("device"),
    ] {
        sim.with_state(|st| st.device = device.clone());
        let mut s = sentinel_state();
        let rc = get_state(&mut s);
        let err = assert_fails(
            rc,
            bd_status::BD_ERR_INVALID_RESPONSE,
            200,
            "GET /v1/device",
            &key,
        );
        assert!(!err.is_empty(), "{device}");
        assert_untouched(&s);
        only_request(&sim);
    }

    // Any other failure leaves it untouched too.
    sim.with_state(|st| st.api_key = "rotated_key".into());
    let mut s = sentinel_state();
    let rc = get_state(&mut s);
    assert_fails(
        rc,
        bd_status::BD_ERR_UNAUTHORIZED,
        401,
        "GET /v1/device",
        &key,
    );
    assert_untouched(&s);
    only_request(&sim);

    // NULL: refused, nothing sent.
    // SAFETY: NULL must be refused.
    assert_invalid(unsafe { bd_state(ptr::null_mut()) });
    assert_nothing_sent(&sim);
}

// ------------------------------------------------------------------ waiting for the supervisor

#[test]
fn wait_for_supervisor_returns_at_once_when_it_is_up() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);

    let start = Instant::now();
    assert_ok(bd_wait_for_supervisor(5000));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(bd_last_http_status(), 200);
    assert_sent(&sim, "GET", "/ping", None, Body::Empty);

    assert_invalid(bd_wait_for_supervisor(0));
    assert_nothing_sent(&sim);
}

#[test]
fn wait_for_supervisor_times_out_against_a_closed_port() {
    let _g = serial();
    clear_env();
    bd_cleanup();
    let key = "waitkey_1";
    assert_eq!(init(&format!("http://127.0.0.1:{}", closed_port()), key), 0);

    let start = Instant::now();
    let rc = bd_wait_for_supervisor(600);
    let took = start.elapsed();
    let err = assert_fails(rc, bd_status::BD_ERR_TIMEOUT, 0, "GET /ping", key);
    assert!(err.contains("600 ms"), "{err}");
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(2600),
        "{took:?}"
    );
}

#[test]
fn wait_for_supervisor_succeeds_once_it_comes_up() {
    let _g = serial();
    clear_env();
    bd_cleanup();
    let port = closed_port();
    let cfg = SimConfig::default();
    assert_eq!(init(&format!("http://127.0.0.1:{port}"), &cfg.api_key), 0);

    let starter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(700));
        Sim::start_on(port, cfg).expect("the released port is free again")
    });
    let start = Instant::now();
    let rc = bd_wait_for_supervisor(10_000);
    let took = start.elapsed();
    let sim = starter.join().unwrap();
    assert_ok(rc);
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let reqs = sim.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_request(r, "GET", "/ping", None, Body::Empty);
    }
    // And the client now talks to it normally.
    sim.clear_requests();
    assert_ok(bd_blink());
    only_request(&sim);
}

// ------------------------------------------------------------------ update locks

/// A fresh temporary directory (removed by the test).
fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("bd-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn set_lock_path(path: &Path) -> c_int {
    let p = cstr(path.to_str().unwrap());
    // SAFETY: a NUL-terminated string.
    unsafe { bd_set_update_lock_path(p.as_ptr()) }
}

/// `flock <options> <path> true` in a second process: its exit code (1
/// while this or another process holds a conflicting flock on the file).
fn flock_in_another_process(options: &[&str], path: &Path) -> i32 {
    Command::new("flock")
        .args(options)
        .arg(path)
        .arg("true")
        .status()
        .expect("flock(1) runs")
        .code()
        .expect("flock exited")
}

/// `flock -n <path> true` in a second process: its exit code (1 while
/// another process holds an exclusive flock on the file).
fn flock_from_another_process(path: &Path) -> i32 {
    flock_in_another_process(&["-n"], path)
}

/// `flock -s -n <path> true` in a second process: even a shared flock must
/// be refused while this process holds its exclusive one.
fn shared_flock_from_another_process(path: &Path) -> i32 {
    flock_in_another_process(&["-s", "-n"], path)
}

/// `test -e <path>` in a second process.
fn exists_for_another_process(path: &Path) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg("test -e \"$1\"")
        .arg("sh")
        .arg(path)
        .status()
        .expect("sh runs")
        .success()
}

/// Start a lock test: nothing held, the path inside a new temp dir.
fn lock_test_setup(tag: &str) -> (PathBuf, PathBuf) {
    assert_eq!(bd_unlock_updates(), 0);
    let dir = temp_dir(tag);
    let path = dir.join("missing").join("parent").join("updates.lock");
    assert_ok(set_lock_path(&path));
    (dir, path)
}

fn lock_test_teardown(dir: &Path) {
    assert_eq!(bd_unlock_updates(), 0);
    // SAFETY: NULL restores the default path.
    assert_eq!(unsafe { bd_set_update_lock_path(ptr::null()) }, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn update_lock_holds_both_mechanisms_until_unlocked() {
    let _g = serial();
    let (dir, path) = lock_test_setup("lock");

    assert_eq!(bd_updates_locked(), 0, "{}", last_error());
    assert!(!path.parent().unwrap().exists());

    assert_ok(bd_lock_updates());
    assert!(path.is_file(), "the parent directories were created");
    assert_eq!(bd_updates_locked(), 1);
    assert!(exists_for_another_process(&path));
    assert_eq!(
        flock_from_another_process(&path),
        1,
        "flock -n must fail while the lock is held"
    );
    assert_eq!(
        shared_flock_from_another_process(&path),
        1,
        "the flock held is exclusive"
    );
    // A second name for the same file, to check the flock after unlock.
    let alias = dir.join("alias.lock");
    std::fs::hard_link(&path, &alias).unwrap();
    assert_eq!(flock_from_another_process(&alias), 1);

    // Taken twice: LOCKED (also from this process).
    let rc = bd_lock_updates();
    assert_eq!(rc, code(bd_status::BD_ERR_LOCKED), "{}", last_error());
    assert!(last_error().contains(path.to_str().unwrap()));
    // Changing the path while held: LOCKED.
    let other = dir.join("other.lock");
    assert_eq!(set_lock_path(&other), code(bd_status::BD_ERR_LOCKED));
    assert!(!other.exists());
    assert_eq!(bd_updates_locked(), 1, "the path did not change");

    assert_ok(bd_unlock_updates());
    assert!(!path.exists(), "unlock removes the file");
    assert!(!exists_for_another_process(&path));
    assert_eq!(bd_updates_locked(), 0);
    assert_eq!(
        flock_from_another_process(&alias),
        0,
        "the flock is released on unlock"
    );
    assert_eq!(
        flock_from_another_process(&path),
        0,
        "flock -n succeeds after unlock"
    );
    // flock(1) created the file again: it is someone else's now.
    assert_eq!(bd_updates_locked(), 1);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(bd_updates_locked(), 0);

    // Unlock when not held: a no-op.
    assert_ok(bd_unlock_updates());
    assert_ok(bd_unlock_updates());

    // Lock again after unlocking.
    assert_ok(bd_lock_updates());
    assert_eq!(flock_from_another_process(&path), 1);
    assert_ok(bd_unlock_updates());
    assert!(!path.exists());

    lock_test_teardown(&dir);
}

#[test]
fn unlock_leaves_a_file_that_someone_else_put_there() {
    let _g = serial();
    let (dir, path) = lock_test_setup("replaced");

    assert_ok(bd_lock_updates());
    // A forced supervisor action deletes the lock; then another process
    // takes it: same path, another inode.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"someone else").unwrap();
    assert_eq!(bd_updates_locked(), 1);

    assert_ok(bd_unlock_updates());
    assert!(path.exists(), "a file this process did not create stays");
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else");
    assert_eq!(bd_updates_locked(), 1);

    // A file already there (someone else's lock): LOCKED, and untouched.
    let rc = bd_lock_updates();
    assert_eq!(rc, code(bd_status::BD_ERR_LOCKED), "{}", last_error());
    assert_ok(bd_unlock_updates());
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else");

    std::fs::remove_file(&path).unwrap();
    assert_eq!(bd_updates_locked(), 0);
    lock_test_teardown(&dir);
}

#[test]
fn the_lock_is_taken_again_after_a_forced_action_deleted_its_file() {
    let _g = serial();
    let (dir, path) = lock_test_setup("forced");

    assert_ok(bd_lock_updates());
    // A forced supervisor action deletes the app's lock files.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(bd_updates_locked(), 0);

    // Nothing protects the app now: taking the lock again must work, with
    // both mechanisms, and the path may change meanwhile too.
    let other = dir.join("other.lock");
    let other_c = cstr(other.to_str().unwrap());
    // SAFETY: a NUL-terminated string.
    assert_ok(unsafe { bd_set_update_lock_path(other_c.as_ptr()) });
    let path_c = cstr(path.to_str().unwrap());
    // SAFETY: a NUL-terminated string.
    assert_ok(unsafe { bd_set_update_lock_path(path_c.as_ptr()) });
    assert_ok(bd_lock_updates());
    assert!(path.exists());
    assert_eq!(bd_updates_locked(), 1);
    assert_eq!(flock_from_another_process(&path), 1, "flock held again");
    let rc = bd_lock_updates();
    assert_eq!(rc, code(bd_status::BD_ERR_LOCKED), "{}", last_error());

    assert_ok(bd_unlock_updates());
    assert!(!path.exists());
    assert_eq!(flock_from_another_process(&path), 0);
    lock_test_teardown(&dir);
}

#[test]
fn update_lock_path_validation() {
    let _g = serial();
    let (dir, path) = lock_test_setup("paths");

    for bad in [
        "",
        "relative/updates.lock",
        "updates.lock",
        "./x.lock",
        "/tmp/dir/",
    ] {
        let p = cstr(bad);
        // SAFETY: a NUL-terminated string.
        assert_invalid(unsafe { bd_set_update_lock_path(p.as_ptr()) });
    }
    let not_utf8 = CString::new(vec![b'/', b't', 0xff]).unwrap();
    // SAFETY: a NUL-terminated string.
    assert_invalid(unsafe { bd_set_update_lock_path(not_utf8.as_ptr()) });

    // The path in use did not change.
    assert_ok(bd_lock_updates());
    assert!(path.exists());
    assert_ok(bd_unlock_updates());

    // NULL restores the default path.
    // SAFETY: NULL is allowed.
    assert_ok(unsafe { bd_set_update_lock_path(ptr::null()) });
    let default_exists = Path::new("/tmp/balena/updates.lock").exists();
    assert_eq!(bd_updates_locked(), c_int::from(default_exists));

    lock_test_teardown(&dir);
}

#[test]
fn update_lock_taken_by_one_thread_at_a_time() {
    let _g = serial();
    let (dir, path) = lock_test_setup("threads");

    let results: Vec<c_int> = (0..8)
        .map(|_| thread::spawn(|| bd_lock_updates()))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(
        results.iter().filter(|&&r| r == OK).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .all(|&r| r == OK || r == code(bd_status::BD_ERR_LOCKED)));
    assert!(path.exists());
    assert_eq!(flock_from_another_process(&path), 1);

    assert_ok(bd_unlock_updates());
    assert!(!path.exists());
    lock_test_teardown(&dir);
}
