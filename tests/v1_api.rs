//! Part 1 of the C API (the V1 endpoints, configuration and the conventions
//! every function follows), called through the exported `extern "C"`
//! functions against the supervisor simulator. Each test checks the return
//! value, the text written, `bd_last_error` / `bd_last_http_status`, and the
//! exact request the simulator received.

mod sim;
mod support;

use std::ffi::{c_char, c_int, CStr, CString};
use std::ptr;

use balena_device::ffi::*;
use serde_json::json;
use sim::check::{assert_nothing_sent, assert_request, assert_sent, only_request, Body};
use sim::{Sim, SimConfig};
use support::{
    assert_fails, assert_ok, clear_env, closed_port, code, cstr, init, last_error, one_shot, parse,
    serial, setup, text_call,
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

// ------------------------------------------------------------------ ping, healthy, blink

#[test]
fn ping_sends_no_key_and_succeeds() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);

    assert_ok(bd_ping());
    assert_eq!(bd_last_http_status(), 200);
    let r = only_request(&sim);
    assert_request(&r, "GET", "/ping", None, Body::Empty);
    assert!(!r.raw_query.contains(&sim.api_key()));
}

#[test]
fn ping_against_a_closed_port_is_a_connect_error() {
    let _g = serial();
    clear_env();
    bd_cleanup();
    let key = "some-key-123";
    assert_eq!(init(&format!("http://127.0.0.1:{}", closed_port()), key), 0);
    let rc = bd_ping();
    assert_fails(rc, bd_status::BD_ERR_CONNECT, 0, "GET /ping", key);
}

#[test]
fn healthy_answers_one_or_zero() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);

    assert_eq!(bd_healthy(), 1, "{}", last_error());
    assert_eq!(last_error(), "");
    assert_eq!(bd_last_http_status(), 200);
    assert_sent(&sim, "GET", "/v1/healthy", None, Body::Empty);

    sim.with_state(|s| s.healthy = false);
    assert_eq!(bd_healthy(), 0, "{}", last_error());
    assert_eq!(last_error(), "", "unhealthy is an answer, not an error");
    assert_eq!(bd_last_http_status(), 500);
    assert_sent(&sim, "GET", "/v1/healthy", None, Body::Empty);
}

#[test]
fn blink_posts_with_the_key_and_no_body() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);

    assert_ok(bd_blink());
    assert_eq!(bd_last_http_status(), 200);
    let key = sim.api_key();
    assert_sent(&sim, "POST", "/v1/blink", Some(&key), Body::Empty);
    assert_eq!(sim.state().actions, vec!["blink"]);
}

#[test]
fn a_wrong_key_is_unauthorized_and_never_echoed() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let wrong = "wrongkey_5f3a9c";
    assert_eq!(init(&sim.address(), wrong), 0);

    let rc = bd_blink();
    assert_fails(
        rc,
        bd_status::BD_ERR_UNAUTHORIZED,
        401,
        "POST /v1/blink",
        wrong,
    );
    assert_sent(&sim, "POST", "/v1/blink", Some(wrong), Body::Empty);
    assert!(sim.state().actions.is_empty());
}

// ------------------------------------------------------------------ reboot, shutdown, update

#[test]
fn reboot_and_shutdown_send_force_and_honour_the_lock() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    type Action = extern "C" fn(bool) -> c_int;
    let cases: [(&str, Action); 2] = [("reboot", bd_reboot), ("shutdown", bd_shutdown)];
    for (name, f) in cases {
        let path = format!("/v1/{name}");
        let label = format!("POST {path}");

        // Unlocked, without force.
        assert_ok(f(false));
        assert_eq!(bd_last_http_status(), 202);
        assert_sent(
            &sim,
            "POST",
            &path,
            Some(&key),
            Body::Exact(r#"{"force":false}"#),
        );

        // Locked, without force: 423.
        sim.with_state(|s| {
            s.locked = true;
            s.actions.clear();
        });
        let rc = f(false);
        let err = assert_fails(rc, bd_status::BD_ERR_LOCKED, 423, &label, &key);
        assert!(err.contains("423"), "{err}");
        assert!(err.contains("Lockfile exists"), "{err}");
        assert_sent(
            &sim,
            "POST",
            &path,
            Some(&key),
            Body::Exact(r#"{"force":false}"#),
        );
        assert!(sim.state().actions.is_empty(), "nothing was done");

        // Locked, with force: done, and the lock is gone.
        assert_ok(f(true));
        assert_eq!(bd_last_http_status(), 202);
        assert_sent(
            &sim,
            "POST",
            &path,
            Some(&key),
            Body::Exact(r#"{"force":true}"#),
        );
        let st = sim.state();
        assert!(!st.locked, "a forced {name} overrides the lock");
        assert_eq!(st.actions, vec![format!("{name}(force)")]);
    }
}

#[test]
fn update_succeeds_on_202_and_204_and_is_never_locked() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    assert_ok(bd_update(false));
    assert_eq!(bd_last_http_status(), 202);
    assert_sent(
        &sim,
        "POST",
        "/v1/update",
        Some(&key),
        Body::Exact(r#"{"force":false}"#),
    );

    assert_ok(bd_update(true));
    assert_eq!(bd_last_http_status(), 204);
    assert_sent(
        &sim,
        "POST",
        "/v1/update",
        Some(&key),
        Body::Exact(r#"{"force":true}"#),
    );

    sim.with_state(|s| {
        s.instant_updates = true;
        s.locked = true;
    });
    assert_ok(bd_update(false));
    assert_eq!(bd_last_http_status(), 204);
    assert_sent(
        &sim,
        "POST",
        "/v1/update",
        Some(&key),
        Body::Exact(r#"{"force":false}"#),
    );
    assert_eq!(
        sim.state().actions,
        vec!["update", "update(force)", "update"]
    );
}

// ------------------------------------------------------------------ purge, restart

type AppAction = extern "C" fn(u32) -> c_int;
const APP_ACTIONS: [(&str, AppAction); 2] = [("purge", bd_purge), ("restart", bd_restart)];

#[test]
fn purge_and_restart_send_the_app_id() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    for (name, f) in APP_ACTIONS {
        assert_ok(f(1234));
        assert_eq!(bd_last_http_status(), 200);
        assert_sent(
            &sim,
            "POST",
            &format!("/v1/{name}"),
            Some(&key),
            Body::Exact(r#"{"appId":1234}"#),
        );
    }
    assert_eq!(sim.state().actions, vec!["purge 1234", "restart 1234"]);
}

#[test]
fn current_app_is_resolved_from_balena_then_resin_app_id() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    // (BALENA_APP_ID, RESIN_APP_ID), unset where None: BALENA_APP_ID alone,
    // BALENA_APP_ID winning over RESIN_APP_ID, RESIN_APP_ID alone.
    let envs = [
        (Some("1234"), None),
        (Some("1234"), Some("777")),
        (None, Some("1234")),
    ];
    for (name, f) in APP_ACTIONS {
        let path = format!("/v1/{name}");
        for (balena, resin) in envs {
            for (var, value) in [("BALENA_APP_ID", balena), ("RESIN_APP_ID", resin)] {
                match value {
                    Some(v) => std::env::set_var(var, v),
                    None => std::env::remove_var(var),
                }
            }
            assert_ok(f(BD_CURRENT_APP));
            assert_sent(
                &sim,
                "POST",
                &path,
                Some(&key),
                Body::Exact(r#"{"appId":1234}"#),
            );
        }
        std::env::remove_var("RESIN_APP_ID");
    }
}

#[test]
fn current_app_without_an_app_id_is_not_configured_and_sends_nothing() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);

    for (_, f) in APP_ACTIONS {
        let rc = f(BD_CURRENT_APP);
        let err = last_error();
        assert_eq!(rc, code(bd_status::BD_ERR_NOT_CONFIGURED), "{err}");
        assert_eq!(bd_last_http_status(), 0);
        assert!(err.contains("BALENA_APP_ID"), "{err}");
        assert!(err.contains("RESIN_APP_ID"), "{err}");
        assert_nothing_sent(&sim);
    }
    // The same for an app endpoint with the id in the path.
    // SAFETY: NULL with len 0 is a size query.
    let rc = unsafe { bd_app_state_json(BD_CURRENT_APP, ptr::null_mut(), 0) };
    assert_eq!(rc, code(bd_status::BD_ERR_NOT_CONFIGURED));
    assert_nothing_sent(&sim);
}

#[test]
fn purge_and_restart_failures() {
    let _g = serial();
    let sim = Sim::start();
    let key = connect_global(&sim);

    for (name, f) in APP_ACTIONS {
        let path = format!("/v1/{name}");
        let label = format!("POST {path}");

        // An app that is not on the device: 503.
        let rc = f(999);
        let err = assert_fails(rc, bd_status::BD_ERR_SERVER, 503, &label, &key);
        assert!(
            err.contains("Application with ID 999 is not in the current state"),
            "{err}"
        );
        assert_sent(
            &sim,
            "POST",
            &path,
            Some(&key),
            Body::Exact(r#"{"appId":999}"#),
        );

        // Locked: 423.
        sim.with_state(|s| s.locked = true);
        let rc = f(1234);
        assert_fails(rc, bd_status::BD_ERR_LOCKED, 423, &label, &key);
        assert_sent(
            &sim,
            "POST",
            &path,
            Some(&key),
            Body::Exact(r#"{"appId":1234}"#),
        );
        sim.with_state(|s| s.locked = false);

        // A key scoped to another app: 401.
        let scoped = "scopedkey_0042";
        sim.with_state(|s| s.scoped_keys = vec![(scoped.to_string(), vec![42])]);
        assert_eq!(init(&sim.address(), scoped), 0);
        let rc = f(1234);
        assert_fails(rc, bd_status::BD_ERR_UNAUTHORIZED, 401, &label, scoped);
        assert_sent(
            &sim,
            "POST",
            &path,
            Some(scoped),
            Body::Exact(r#"{"appId":1234}"#),
        );
        assert_eq!(init(&sim.address(), &key), 0);
    }
    assert!(sim.state().actions.is_empty());
}

// ------------------------------------------------------------------ app state, start, stop

#[test]
fn app_state_json_single_multi_and_scoped() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();
    let main_id = sim.state().apps[0].services[0].container_id.clone();

    // SAFETY (all text calls below): the buffer is valid for its length.
    let (rc, text) = text_call(|b, l| unsafe { bd_app_state_json(1234, b, l) });
    assert_eq!(rc as usize, text.len(), "{}", last_error());
    assert_eq!(last_error(), "");
    assert_eq!(bd_last_http_status(), 200);
    assert_eq!(
        parse(&text),
        json!({
            "appId": 1234,
            "commit": "7fc9c5bea8e361acd49886fe6cc1e1cd",
            "containerId": main_id,
            "env": {"GREETING": "hello", "BALENA_APP_ID": "1234"},
            // The image's name, not its id.
            "imageId": parse(&text)["imageId"].as_str().filter(|i| i.starts_with("registry2.balena-cloud.com/v2/")),
            "releaseId": 2_345_678,
        })
    );
    assert_sent(&sim, "GET", "/v1/apps/1234", Some(&key), Body::Empty);

    // BD_CURRENT_APP.
    std::env::set_var("BALENA_APP_ID", "1234");
    let (rc, text2) = text_call(|b, l| unsafe { bd_app_state_json(BD_CURRENT_APP, b, l) });
    assert!(rc > 0, "{}", last_error());
    assert_eq!(text2, text);
    assert_sent(&sim, "GET", "/v1/apps/1234", Some(&key), Body::Empty);
    std::env::remove_var("BALENA_APP_ID");

    // Multi-container: 400.
    sim.with_state(|s| s.multi_container = true);
    let (rc, _) = text_call(|b, l| unsafe { bd_app_state_json(1234, b, l) });
    let err = assert_fails(
        rc,
        bd_status::BD_ERR_BAD_REQUEST,
        400,
        "GET /v1/apps/1234",
        &key,
    );
    assert!(err.contains("single-container"), "{err}");
    assert_sent(&sim, "GET", "/v1/apps/1234", Some(&key), Body::Empty);
    sim.with_state(|s| s.multi_container = false);

    // Not installed here: 400 (with the global key; the container's key,
    // scoped to its app, gets 401).
    let global = connect_global(&sim);
    let (rc, _) = text_call(|b, l| unsafe { bd_app_state_json(999, b, l) });
    assert_fails(
        rc,
        bd_status::BD_ERR_BAD_REQUEST,
        400,
        "GET /v1/apps/999",
        &global,
    );
    only_request(&sim);

    // A key scoped to another app: 401.
    let scoped = "scopedkey_0042";
    sim.with_state(|s| s.scoped_keys = vec![(scoped.to_string(), vec![42])]);
    assert_eq!(init(&sim.address(), scoped), 0);
    let (rc, _) = text_call(|b, l| unsafe { bd_app_state_json(1234, b, l) });
    assert_fails(
        rc,
        bd_status::BD_ERR_UNAUTHORIZED,
        401,
        "GET /v1/apps/1234",
        scoped,
    );
    assert_sent(&sim, "GET", "/v1/apps/1234", Some(scoped), Body::Empty);
}

#[test]
fn stop_and_start_app_return_the_container_id_and_change_the_device() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();
    let main_id = sim.state().apps[0].services[0].container_id.clone();
    assert_eq!(main_id.len(), 64);

    // SAFETY (all text calls below): the buffer is valid for its length.
    let (rc, text) = text_call(|b, l| unsafe { bd_stop_app(1234, false, b, l) });
    assert_eq!(rc, 64, "{}", last_error());
    assert_eq!(text, main_id);
    assert_eq!(last_error(), "");
    assert_sent(
        &sim,
        "POST",
        "/v1/apps/1234/stop",
        Some(&key),
        Body::Exact(r#"{"force":false}"#),
    );
    assert_eq!(sim.state().device["status"], "exited");
    assert_eq!(
        sim.state().service_status(1234, "main").as_deref(),
        Some("exited")
    );

    let (rc, text) = text_call(|b, l| unsafe { bd_start_app(1234, b, l) });
    assert_eq!(rc, 64, "{}", last_error());
    assert_eq!(text, main_id);
    assert_sent(&sim, "POST", "/v1/apps/1234/start", Some(&key), Body::Empty);
    assert_eq!(sim.state().device["status"], "Idle");

    // The id is optional: NULL with len 0 still acts and returns the length.
    // SAFETY: NULL with len 0 is allowed.
    let rc = unsafe { bd_stop_app(1234, true, ptr::null_mut(), 0) };
    assert_eq!(rc, 64, "{}", last_error());
    assert_sent(
        &sim,
        "POST",
        "/v1/apps/1234/stop",
        Some(&key),
        Body::Exact(r#"{"force":true}"#),
    );
    assert_eq!(sim.state().device["status"], "exited");
    // SAFETY: as above.
    let rc = unsafe { bd_start_app(1234, ptr::null_mut(), 0) };
    assert_eq!(rc, 64, "{}", last_error());
    only_request(&sim);
    assert_eq!(sim.state().device["status"], "Idle");

    // BD_CURRENT_APP.
    std::env::set_var("BALENA_APP_ID", "1234");
    // SAFETY: as above.
    let rc = unsafe { bd_stop_app(BD_CURRENT_APP, false, ptr::null_mut(), 0) };
    assert_eq!(rc, 64, "{}", last_error());
    assert_eq!(only_request(&sim).path, "/v1/apps/1234/stop");
    // SAFETY: as above.
    let rc = unsafe { bd_start_app(BD_CURRENT_APP, ptr::null_mut(), 0) };
    assert_eq!(rc, 64, "{}", last_error());
    assert_eq!(only_request(&sim).path, "/v1/apps/1234/start");
    std::env::remove_var("BALENA_APP_ID");

    // NULL with a length is bad input: nothing is sent.
    // SAFETY: the function must reject the NULL buffer before writing.
    let rc = unsafe { bd_stop_app(1234, false, ptr::null_mut(), 8) };
    assert_eq!(rc, code(bd_status::BD_ERR_INVALID_ARGUMENT));
    assert_nothing_sent(&sim);

    assert_eq!(
        sim.state().actions,
        vec![
            "stop 1234/main",
            "start 1234/main",
            "stop 1234/main",
            "start 1234/main",
            "stop 1234/main",
            "start 1234/main"
        ]
    );
}

#[test]
fn stop_app_is_locked_but_start_app_never() {
    let _g = serial();
    let sim = Sim::start_with(SimConfig {
        locked: true,
        ..Default::default()
    });
    connect(&sim);
    let key = sim.api_key();

    // SAFETY (all text calls below): the buffer is valid for its length.
    let (rc, _) = text_call(|b, l| unsafe { bd_stop_app(1234, false, b, l) });
    let err = assert_fails(
        rc,
        bd_status::BD_ERR_LOCKED,
        423,
        "POST /v1/apps/1234/stop",
        &key,
    );
    assert!(err.contains("Lockfile exists"), "{err}");
    assert_sent(
        &sim,
        "POST",
        "/v1/apps/1234/stop",
        Some(&key),
        Body::Exact(r#"{"force":false}"#),
    );
    assert_eq!(sim.state().device["status"], "Idle", "not stopped");

    let (rc, _) = text_call(|b, l| unsafe { bd_start_app(1234, b, l) });
    assert_eq!(rc, 64, "start takes no lock: {}", last_error());
    only_request(&sim);
    assert!(sim.state().locked, "start leaves the lock alone");

    let (rc, _) = text_call(|b, l| unsafe { bd_stop_app(1234, true, b, l) });
    assert_eq!(rc, 64, "{}", last_error());
    assert_sent(
        &sim,
        "POST",
        "/v1/apps/1234/stop",
        Some(&key),
        Body::Exact(r#"{"force":true}"#),
    );
    assert!(!sim.state().locked);
    assert_eq!(sim.state().device["status"], "exited");
}

#[test]
fn stop_and_start_app_failures() {
    let _g = serial();
    let sim = Sim::start_with(SimConfig {
        multi_container: true,
        ..Default::default()
    });
    let key = connect_global(&sim);

    // Multi-container: 400 for both.
    // SAFETY (all calls below): NULL with len 0 is allowed.
    let rc = unsafe { bd_stop_app(1234, false, ptr::null_mut(), 0) };
    let err = assert_fails(
        rc,
        bd_status::BD_ERR_BAD_REQUEST,
        400,
        "POST /v1/apps/1234/stop",
        &key,
    );
    assert!(err.contains("multi-container"), "{err}");
    only_request(&sim);
    let rc = unsafe { bd_start_app(1234, ptr::null_mut(), 0) };
    assert_fails(
        rc,
        bd_status::BD_ERR_BAD_REQUEST,
        400,
        "POST /v1/apps/1234/start",
        &key,
    );
    only_request(&sim);

    // An app that is not on the device: 503.
    let rc = unsafe { bd_start_app(999, ptr::null_mut(), 0) };
    assert_fails(
        rc,
        bd_status::BD_ERR_SERVER,
        503,
        "POST /v1/apps/999/start",
        &key,
    );
    only_request(&sim);
    assert!(sim.state().actions.is_empty());
}

// ------------------------------------------------------------------ device state, host config

#[test]
fn state_json_is_the_device_object() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    // SAFETY: the buffer is valid for its length.
    let (rc, text) = text_call(|b, l| unsafe { bd_state_json(b, l) });
    assert_eq!(rc as usize, text.len(), "{}", last_error());
    assert_eq!(parse(&text), sim.state().device);
    assert_eq!(parse(&text)["status"], "Idle");
    assert_sent(&sim, "GET", "/v1/device", Some(&key), Body::Empty);

    // An answer that is not a JSON object.
    sim.with_state(|s| s.device = json!([1, 2]));
    // SAFETY: as above.
    let (rc, _) = text_call(|b, l| unsafe { bd_state_json(b, l) });
    assert_fails(
        rc,
        bd_status::BD_ERR_INVALID_RESPONSE,
        200,
        "GET /v1/device",
        &key,
    );
    only_request(&sim);
}

#[test]
fn host_config_get_and_set_pass_the_body_through() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    // SAFETY: the buffer is valid for its length.
    let (rc, text) = text_call(|b, l| unsafe { bd_host_config_json(b, l) });
    assert!(rc > 0, "{}", last_error());
    assert_eq!(parse(&text), json!({"network": {"hostname": "device"}}));
    assert_sent(
        &sim,
        "GET",
        "/v1/device/host-config",
        Some(&key),
        Body::Empty,
    );

    // Sent byte for byte as given (spacing and key order kept, no key added).
    let body = r#"{ "network" : {"hostname":"newname"},"extra":[1, 2] }"#;
    let json = cstr(body);
    // SAFETY: a NUL-terminated string.
    assert_ok(unsafe { bd_set_host_config_json(json.as_ptr()) });
    assert_eq!(bd_last_http_status(), 200);
    assert_sent(
        &sim,
        "PATCH",
        "/v1/device/host-config",
        Some(&key),
        Body::Exact(body),
    );
    assert_eq!(
        sim.state().host_config["network"]["hostname"],
        json!("newname")
    );

    // SAFETY: the buffer is valid for its length.
    let (_, text) = text_call(|b, l| unsafe { bd_host_config_json(b, l) });
    assert_eq!(parse(&text)["network"]["hostname"], "newname");
}

#[test]
fn set_host_config_lock_force_and_bad_request() {
    let _g = serial();
    let sim = Sim::start_with(SimConfig {
        locked: true,
        ..Default::default()
    });
    connect(&sim);
    let key = sim.api_key();
    let label = "PATCH /v1/device/host-config";

    // Locked and the hostname changes, no force: 423.
    let body = r#"{"network":{"hostname":"other"}}"#;
    let json = cstr(body);
    // SAFETY (all calls below): NUL-terminated strings.
    let rc = unsafe { bd_set_host_config_json(json.as_ptr()) };
    assert_fails(rc, bd_status::BD_ERR_LOCKED, 423, label, &key);
    assert_sent(
        &sim,
        "PATCH",
        "/v1/device/host-config",
        Some(&key),
        Body::Exact(body),
    );
    assert_eq!(sim.state().host_config["network"]["hostname"], "device");

    // The caller's own force false is kept as given: still 423.
    let body = r#"{"network":{"hostname":"other"},"force":false}"#;
    let json = cstr(body);
    let rc = unsafe { bd_set_host_config_json(json.as_ptr()) };
    assert_fails(rc, bd_status::BD_ERR_LOCKED, 423, label, &key);
    assert_sent(
        &sim,
        "PATCH",
        "/v1/device/host-config",
        Some(&key),
        Body::Exact(body),
    );

    // The caller's force true: done, body untouched.
    let body = r#"{"force":true,"network":{"hostname":"other"}}"#;
    let json = cstr(body);
    assert_ok(unsafe { bd_set_host_config_json(json.as_ptr()) });
    assert_sent(
        &sim,
        "PATCH",
        "/v1/device/host-config",
        Some(&key),
        Body::Exact(body),
    );
    let st = sim.state();
    assert_eq!(st.host_config["network"]["hostname"], "other");
    assert!(!st.locked);

    // No network object: 400.
    let body = r#"{"hostname":"x"}"#;
    let json = cstr(body);
    let rc = unsafe { bd_set_host_config_json(json.as_ptr()) };
    let err = assert_fails(rc, bd_status::BD_ERR_BAD_REQUEST, 400, label, &key);
    assert!(err.contains("network"), "{err}");
    assert_sent(
        &sim,
        "PATCH",
        "/v1/device/host-config",
        Some(&key),
        Body::Exact(body),
    );
}

#[test]
fn set_host_config_rejects_bad_json_and_sends_nothing() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);

    for bad in ["", "not json", "[1,2]", "\"text\"", "{\"network\":", "42"] {
        let json = cstr(bad);
        // SAFETY: a NUL-terminated string.
        let rc = unsafe { bd_set_host_config_json(json.as_ptr()) };
        assert_eq!(
            rc,
            code(bd_status::BD_ERR_INVALID_ARGUMENT),
            "{bad:?}: {}",
            last_error()
        );
        assert_ne!(last_error(), "");
        assert_eq!(bd_last_http_status(), 0);
    }
    // SAFETY: NULL must be refused.
    let rc = unsafe { bd_set_host_config_json(ptr::null()) };
    assert_eq!(rc, code(bd_status::BD_ERR_INVALID_ARGUMENT));
    // Not UTF-8.
    let bytes = CString::new(vec![b'{', 0xff, b'}']).unwrap();
    // SAFETY: a NUL-terminated string.
    let rc = unsafe { bd_set_host_config_json(bytes.as_ptr()) };
    assert_eq!(rc, code(bd_status::BD_ERR_INVALID_ARGUMENT));
    assert_nothing_sent(&sim);
}

// ------------------------------------------------------------------ regenerate the key

#[test]
fn regenerate_api_key_returns_the_new_key_and_uses_it() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let old = sim.api_key();

    // SAFETY: the buffer is valid for its length.
    let (rc, new) = text_call(|b, l| unsafe { bd_regenerate_api_key(b, l) });
    assert_eq!(rc as usize, new.len(), "{}", last_error());
    assert_eq!(last_error(), "");
    assert_eq!(new.len(), 32);
    assert!(new.bytes().all(|b| b.is_ascii_hexdigit()), "{new}");
    assert_ne!(new, old);
    assert_eq!(sim.api_key(), new, "the simulator's key changed");
    assert_sent(
        &sim,
        "POST",
        "/v1/regenerate-api-key",
        Some(&old),
        Body::Empty,
    );

    // The next call uses the new key, and succeeds.
    assert_ok(bd_blink());
    assert_sent(&sim, "POST", "/v1/blink", Some(&new), Body::Empty);

    // The old key is now rejected, and the error shows neither key.
    assert_eq!(init(&sim.address(), &old), 0);
    let rc = bd_blink();
    let err = assert_fails(
        rc,
        bd_status::BD_ERR_UNAUTHORIZED,
        401,
        "POST /v1/blink",
        &old,
    );
    assert!(!err.contains(&new), "{err}");
    only_request(&sim);
}

// ------------------------------------------------------------------ redirects, echoed keys

#[test]
fn redirects_are_not_followed_and_echoed_keys_are_scrubbed() {
    let _g = serial();
    clear_env();
    bd_cleanup();
    // A key with characters that percent-encode, echoed both ways.
    let key = "k+y/z_123";
    let encoded = "k%2By%2Fz_123";
    let target = format!(
        "http://127.0.0.1:{}/v1/device?apikey={encoded}",
        closed_port()
    );
    let body = format!("Found. Redirecting to {target} (key {key})");
    let (address, server) = one_shot(format!(
        "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(init(&address, key), 0);
    // SAFETY: the buffer is valid for its length.
    let (rc, _) = text_call(|b, l| unsafe { bd_state_json(b, l) });
    let err = assert_fails(rc, bd_status::BD_ERR_HTTP, 302, "GET /v1/device", key);
    assert!(err.contains("redirect"), "{err}");
    assert!(!err.contains(encoded), "{err}");
    let head = server.join().unwrap();
    assert!(
        head.starts_with(&format!("GET /v1/device?apikey={encoded} HTTP/1.1\r\n")),
        "the key is percent-encoded in the query: {head}"
    );

    // A server error whose message echoes the key.
    let body = format!(r#"{{"status":"failed","message":"bad key {key} / {encoded}"}}"#);
    let (address, server) = one_shot(format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(init(&address, key), 0);
    let rc = bd_blink();
    let err = assert_fails(rc, bd_status::BD_ERR_SERVER, 503, "POST /v1/blink", key);
    assert!(err.contains("bad key"), "{err}");
    assert!(!err.contains(encoded), "{err}");
    server.join().unwrap();
    bd_cleanup();
}

// ------------------------------------------------------------------ configuration

#[test]
fn init_validates_the_address_and_the_key() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let key = sim.api_key();

    for bad in [
        "",
        "127.0.0.1:48484",
        "https://127.0.0.1:48484",
        "ftp://127.0.0.1:1",
        "http://",
        "http://:48484",
        "http://127.0.0.1:0",
        "http://127.0.0.1:65536",
        "http://127.0.0.1:port",
        "http://127.0.0.1:1/v1",
        "http://127.0.0.1:1?x=1",
        "http://user@127.0.0.1:1",
        "http://127.0.0.1:1\r\nX-Injected: 1",
        "http://127.0.0.1 :1",
    ] {
        let rc = init(bad, &key);
        let err = last_error();
        assert_eq!(
            rc,
            code(bd_status::BD_ERR_INVALID_ARGUMENT),
            "{bad:?}: {err}"
        );
        assert!(!err.is_empty());
        assert!(!err.contains(&key), "{err}");
    }
    // A key over 1 KiB could never be sent in a request line.
    let long_key = "k".repeat(1025);
    for bad_key in ["", "a b", "key\r\nX: 1", "tab\tkey", long_key.as_str()] {
        let rc = init(&sim.address(), bad_key);
        assert_eq!(
            rc,
            code(bd_status::BD_ERR_INVALID_ARGUMENT),
            "{bad_key:?}: {}",
            last_error()
        );
    }
    // Not UTF-8.
    let a = cstr(&sim.address());
    let k = CString::new(vec![b'k', 0xfe, 0xff]).unwrap();
    // SAFETY: NUL-terminated strings.
    let rc = unsafe { bd_init(a.as_ptr(), k.as_ptr()) };
    assert_eq!(rc, code(bd_status::BD_ERR_INVALID_ARGUMENT));
    let a = CString::new(vec![b'h', b't', b't', b'p', b':', b'/', b'/', 0xc3]).unwrap();
    let k = cstr(&key);
    // SAFETY: NUL-terminated strings.
    let rc = unsafe { bd_init(a.as_ptr(), k.as_ptr()) };
    assert_eq!(rc, code(bd_status::BD_ERR_INVALID_ARGUMENT));

    // Nothing was sent, and the previous configuration stayed in place.
    assert_nothing_sent(&sim);
    assert_ok(bd_blink());
    assert_sent(&sim, "POST", "/v1/blink", Some(&key), Body::Empty);

    // Accepted forms: a trailing slash, an upper-case scheme.
    for good in [
        format!("{}/", sim.address()),
        sim.address().replace("http://", "HTTP://"),
    ] {
        assert_ok(init(&good, &key));
        assert_ok(bd_blink());
        assert_sent(&sim, "POST", "/v1/blink", Some(&key), Body::Empty);
    }
}

/// Two simulators with different keys, to tell which one a call reached.
fn two_sims() -> (Sim, Sim) {
    let a = Sim::start_with(SimConfig {
        api_key: "key_of_sim_a".into(),
        ..Default::default()
    });
    let b = Sim::start_with(SimConfig {
        api_key: "key_of_sim_b".into(),
        ..Default::default()
    });
    (a, b)
}

/// Re-read the environment, blink, and check that `sim` received it with `key`.
#[track_caller]
fn blink_reaches(sim: &Sim, other: &Sim, key: &str) {
    assert_ok(bd_init_from_env());
    assert_ok(bd_blink());
    assert_sent(sim, "POST", "/v1/blink", Some(key), Body::Empty);
    assert_nothing_sent(other);
}

#[test]
fn the_environment_is_read_with_every_fallback() {
    let _g = serial();
    let (a, b) = two_sims();
    clear_env();
    bd_cleanup();
    let set = |k: &str, v: &str| std::env::set_var(k, v);

    // BALENA_SUPERVISOR_ADDRESS (with a trailing slash) + BALENA key.
    set("BALENA_SUPERVISOR_ADDRESS", &format!("{}/", a.address()));
    set("BALENA_SUPERVISOR_API_KEY", "key_of_sim_a");
    blink_reaches(&a, &b, "key_of_sim_a");

    // RESIN_SUPERVISOR_ADDRESS + RESIN key.
    clear_env();
    set("RESIN_SUPERVISOR_ADDRESS", &b.address());
    set("RESIN_SUPERVISOR_API_KEY", "key_of_sim_b");
    blink_reaches(&b, &a, "key_of_sim_b");

    // BALENA_SUPERVISOR_HOST + PORT.
    clear_env();
    set("BALENA_SUPERVISOR_HOST", "127.0.0.1");
    set("BALENA_SUPERVISOR_PORT", &a.port().to_string());
    set("BALENA_SUPERVISOR_API_KEY", "key_of_sim_a");
    blink_reaches(&a, &b, "key_of_sim_a");

    // RESIN_SUPERVISOR_HOST + PORT.
    clear_env();
    set("RESIN_SUPERVISOR_HOST", "127.0.0.1");
    set("RESIN_SUPERVISOR_PORT", &b.port().to_string());
    set("RESIN_SUPERVISOR_API_KEY", "key_of_sim_b");
    blink_reaches(&b, &a, "key_of_sim_b");

    // Precedence: BALENA_ address over RESIN_ address over the BALENA_
    // HOST/PORT pair over the RESIN_ pair; BALENA_ key over RESIN_ key.
    clear_env();
    set("BALENA_SUPERVISOR_ADDRESS", &a.address());
    set("RESIN_SUPERVISOR_ADDRESS", &b.address());
    set("BALENA_SUPERVISOR_HOST", "127.0.0.1");
    set("BALENA_SUPERVISOR_PORT", &b.port().to_string());
    set("RESIN_SUPERVISOR_HOST", "127.0.0.1");
    set("RESIN_SUPERVISOR_PORT", &b.port().to_string());
    set("BALENA_SUPERVISOR_API_KEY", "key_of_sim_a");
    set("RESIN_SUPERVISOR_API_KEY", "key_of_sim_b");
    blink_reaches(&a, &b, "key_of_sim_a");

    std::env::remove_var("BALENA_SUPERVISOR_ADDRESS");
    set("BALENA_SUPERVISOR_PORT", &a.port().to_string());
    set("BALENA_SUPERVISOR_API_KEY", "key_of_sim_b");
    blink_reaches(&b, &a, "key_of_sim_b");

    std::env::remove_var("RESIN_SUPERVISOR_ADDRESS");
    set("BALENA_SUPERVISOR_PORT", &b.port().to_string());
    set("RESIN_SUPERVISOR_PORT", &a.port().to_string());
    blink_reaches(&b, &a, "key_of_sim_b");

    clear_env();
}

#[test]
fn init_with_null_takes_that_value_from_the_environment() {
    let _g = serial();
    let (a, b) = two_sims();
    // Each simulator also takes the other's key (scoped), so that a call
    // mixing the two succeeds and shows which value came from where.
    a.with_state(|s| s.scoped_keys = vec![("key_of_sim_b".into(), vec![1234])]);
    b.with_state(|s| s.scoped_keys = vec![("key_of_sim_a".into(), vec![1234])]);
    clear_env();
    bd_cleanup();
    std::env::set_var("BALENA_SUPERVISOR_ADDRESS", a.address());
    std::env::set_var("BALENA_SUPERVISOR_API_KEY", "key_of_sim_a");

    // SAFETY (all bd_init calls): NULL or NUL-terminated strings.
    assert_ok(unsafe { bd_init(ptr::null(), ptr::null()) });
    assert_ok(bd_blink());
    assert_sent(&a, "POST", "/v1/blink", Some("key_of_sim_a"), Body::Empty);

    // Explicit address, key from the environment.
    let addr_b = cstr(&b.address());
    assert_ok(unsafe { bd_init(addr_b.as_ptr(), ptr::null()) });
    assert_ok(bd_blink());
    let r = only_request(&b);
    assert_eq!(r.query_param("apikey"), Some("key_of_sim_a"));

    // Explicit key, address from the environment.
    let key_b = cstr("key_of_sim_b");
    assert_ok(unsafe { bd_init(ptr::null(), key_b.as_ptr()) });
    assert_ok(bd_blink());
    let r = only_request(&a);
    assert_eq!(r.query_param("apikey"), Some("key_of_sim_b"));
    assert_nothing_sent(&b);
    clear_env();
}

#[test]
fn init_from_env_and_cleanup_start_again_from_the_environment() {
    let _g = serial();
    let (a, b) = two_sims();
    clear_env();
    bd_cleanup();

    // Explicit configuration for A; the environment names B.
    assert_ok(init(&a.address(), "key_of_sim_a"));
    std::env::set_var("BALENA_SUPERVISOR_ADDRESS", b.address());
    std::env::set_var("BALENA_SUPERVISOR_API_KEY", "key_of_sim_b");
    assert_ok(bd_blink());
    only_request(&a);
    assert_nothing_sent(&b);

    // After cleanup the next call starts from the environment.
    bd_cleanup();
    assert_eq!(last_error(), "");
    assert_ok(bd_blink());
    assert_sent(&b, "POST", "/v1/blink", Some("key_of_sim_b"), Body::Empty);
    assert_nothing_sent(&a);

    // bd_init_from_env re-reads the environment now.
    std::env::set_var("BALENA_SUPERVISOR_ADDRESS", a.address());
    std::env::set_var("BALENA_SUPERVISOR_API_KEY", "key_of_sim_a");
    assert_ok(bd_init_from_env());
    assert_ok(bd_blink());
    only_request(&a);

    // A failing bd_init_from_env keeps the previous configuration.
    clear_env();
    let rc = bd_init_from_env();
    assert_eq!(rc, code(bd_status::BD_ERR_NOT_CONFIGURED));
    assert!(last_error().contains("BALENA_SUPERVISOR_ADDRESS"));
    assert_ok(bd_blink());
    only_request(&a);
    assert_nothing_sent(&b);
    bd_cleanup();
}

#[test]
fn missing_environment_is_not_configured_and_says_what_to_set() {
    let _g = serial();
    let sim = Sim::start();
    clear_env();
    bd_cleanup();

    let rc = bd_ping();
    let err = last_error();
    assert_eq!(rc, code(bd_status::BD_ERR_NOT_CONFIGURED), "{err}");
    assert_eq!(bd_last_http_status(), 0);
    assert!(err.contains("BALENA_SUPERVISOR_ADDRESS"), "{err}");
    assert!(err.contains("io.balena.features.supervisor-api"), "{err}");

    // SAFETY: a size query.
    let rc = unsafe { bd_state_json(ptr::null_mut(), 0) };
    assert_eq!(rc, code(bd_status::BD_ERR_NOT_CONFIGURED));
    assert_eq!(bd_init_from_env(), code(bd_status::BD_ERR_NOT_CONFIGURED));
    // SAFETY: NULL means "from the environment".
    let rc = unsafe { bd_init(ptr::null(), ptr::null()) };
    assert_eq!(rc, code(bd_status::BD_ERR_NOT_CONFIGURED));

    // A key in the environment that is too long to send is unusable, and the
    // message names the variable.
    std::env::set_var("BALENA_SUPERVISOR_ADDRESS", sim.address());
    std::env::set_var("BALENA_SUPERVISOR_API_KEY", "k".repeat(70_000));
    assert_eq!(bd_init_from_env(), code(bd_status::BD_ERR_NOT_CONFIGURED));
    let err = last_error();
    assert!(err.contains("BALENA_SUPERVISOR_API_KEY"), "{err}");
    assert!(err.contains("70000 bytes"), "{err}");
    clear_env();

    // An address but no key.
    std::env::set_var("BALENA_SUPERVISOR_ADDRESS", sim.address());
    let rc = bd_blink();
    let err = last_error();
    assert_eq!(rc, code(bd_status::BD_ERR_NOT_CONFIGURED), "{err}");
    assert!(err.contains("BALENA_SUPERVISOR_API_KEY"), "{err}");
    assert!(err.contains("io.balena.features.supervisor-api"), "{err}");

    // A key but no address.
    clear_env();
    std::env::set_var("BALENA_SUPERVISOR_API_KEY", sim.api_key());
    let rc = bd_blink();
    let err = last_error();
    assert_eq!(rc, code(bd_status::BD_ERR_NOT_CONFIGURED), "{err}");
    assert!(err.contains("BALENA_SUPERVISOR_ADDRESS"), "{err}");
    assert!(!err.contains(&sim.api_key()), "{err}");

    assert_nothing_sent(&sim);
    clear_env();
    bd_cleanup();
}

#[test]
fn a_timeout_of_zero_is_invalid() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let rc = bd_set_timeout_ms(0);
    assert_eq!(rc, code(bd_status::BD_ERR_INVALID_ARGUMENT));
    assert!(!last_error().is_empty());
    assert_ok(bd_set_timeout_ms(1));
    assert_ok(bd_set_timeout_ms(u32::MAX));
    assert_ok(bd_set_timeout_ms(5000));
    assert_ok(bd_ping());
    only_request(&sim);
}

// ------------------------------------------------------------------ library conventions

#[test]
fn strerror_describes_every_status() {
    let codes: Vec<c_int> = (0..=16).map(|n| -n).collect();
    let mut seen = std::collections::HashSet::new();
    for c in codes {
        let p = bd_strerror(c);
        assert!(!p.is_null());
        // SAFETY: a static NUL-terminated string.
        let text = unsafe { CStr::from_ptr(p) }.to_str().unwrap();
        assert!(!text.is_empty(), "{c}");
        assert_ne!(text, "unknown status", "{c}");
        assert!(seen.insert(text.to_string()), "{c}: duplicate {text:?}");
        assert_eq!(bd_strerror(c), p, "static text");
    }
    for c in [1, 5, -17, -100, c_int::MIN, c_int::MAX] {
        // SAFETY: a static NUL-terminated string.
        let text = unsafe { CStr::from_ptr(bd_strerror(c)) }.to_str().unwrap();
        assert_eq!(text, "unknown status", "{c}");
    }
    // The enum's values are the contract's.
    let values = [
        (bd_status::BD_OK, 0),
        (bd_status::BD_ERR_INVALID_ARGUMENT, -1),
        (bd_status::BD_ERR_NOT_CONFIGURED, -2),
        (bd_status::BD_ERR_CONNECT, -3),
        (bd_status::BD_ERR_TIMEOUT, -4),
        (bd_status::BD_ERR_IO, -5),
        (bd_status::BD_ERR_UNAUTHORIZED, -6),
        (bd_status::BD_ERR_LOCKED, -7),
        (bd_status::BD_ERR_BAD_REQUEST, -8),
        (bd_status::BD_ERR_NOT_FOUND, -9),
        (bd_status::BD_ERR_SERVER, -10),
        (bd_status::BD_ERR_HTTP, -11),
        (bd_status::BD_ERR_INVALID_RESPONSE, -12),
        (bd_status::BD_ERR_TOO_LARGE, -13),
        (bd_status::BD_ERR_INTERNAL, -14),
        (bd_status::BD_ERR_BUSY, -15),
        (bd_status::BD_ERR_HOST_UPDATE, -16),
    ];
    for (s, v) in values {
        assert_eq!(s as c_int, v, "{s:?}");
    }
    assert_eq!(BD_CURRENT_APP, 0);
}

#[test]
fn version_equals_the_cargo_version() {
    // SAFETY: a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(bd_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    assert_eq!(bd_version(), bd_version(), "static text");
}

#[test]
fn text_out_follows_the_snprintf_rules() {
    let _g = serial();
    let sim = Sim::start();
    connect(&sim);
    let full = serde_json::to_string(&sim.state().device).unwrap();
    let n = full.len();
    assert!(n > 100);

    // Size query: NULL, 0.
    // SAFETY (all calls below): each buffer is valid for the length given.
    let rc = unsafe { bd_state_json(ptr::null_mut(), 0) };
    assert_eq!(rc as usize, n, "{}", last_error());
    only_request(&sim);

    // len 0 with a buffer: nothing written.
    let mut buf = vec![0x7f as c_char; n + 8];
    let rc = unsafe { bd_state_json(buf.as_mut_ptr(), 0) };
    assert_eq!(rc as usize, n);
    assert!(buf.iter().all(|&c| c == 0x7f), "len 0 writes nothing");
    only_request(&sim);

    for len in [1usize, 2, 10, n - 1, n, n + 1, n + 8] {
        let mut buf = vec![0x7f as c_char; n + 8];
        let rc = unsafe { bd_state_json(buf.as_mut_ptr(), len) };
        assert_eq!(rc as usize, n, "len {len}: the full length is returned");
        let written = (len - 1).min(n);
        let got: Vec<u8> = buf[..written].iter().map(|&c| c as u8).collect();
        assert_eq!(&got[..], &full.as_bytes()[..written], "len {len}");
        assert_eq!(buf[written], 0, "len {len}: NUL at {written}");
        assert!(
            buf[written + 1..].iter().all(|&c| c == 0x7f),
            "len {len}: nothing written past the NUL"
        );
        assert_eq!((rc as usize) >= len, len <= n, "truncation is visible");
        only_request(&sim);
    }

    // NULL with a length: bad input, nothing sent.
    let rc = unsafe { bd_state_json(ptr::null_mut(), 16) };
    assert_eq!(rc, code(bd_status::BD_ERR_INVALID_ARGUMENT));
    assert!(!last_error().is_empty());
    assert_nothing_sent(&sim);
}

fn header_macro(header: &str, name: &str) -> String {
    let prefix = format!("#define {name} ");
    header
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} is not defined in the header"))
        .trim()
        .to_string()
}

#[test]
fn committed_header_is_the_generated_one_and_carries_the_cargo_version() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/balena_device.h");
    let committed = std::fs::read_to_string(path).expect("include/balena_device.h exists");
    assert!(
        committed == balena_device::GENERATED_HEADER,
        "include/balena_device.h differs from the header the build generates"
    );
    assert_eq!(
        header_macro(&committed, "BD_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MAJOR")
    );
    assert_eq!(
        header_macro(&committed, "BD_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    assert_eq!(
        header_macro(&committed, "BD_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION_PATCH")
    );
    assert_eq!(
        header_macro(&committed, "BD_VERSION_STRING"),
        format!("\"{}\"", env!("CARGO_PKG_VERSION"))
    );
}
