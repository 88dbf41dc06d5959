//! The bad-input matrix: every exported function given NULL for each
//! pointer, non-UTF-8 bytes, control characters in addresses, keys and
//! service names, malformed or non-object JSON, zero-length and one-byte
//! buffers, `BD_CURRENT_APP` with no app id, or no configuration at all.
//! Each case checks the documented status, that nothing reached the
//! supervisor simulator, and that text buffers are NUL-terminated.

mod sim;
mod support;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;

use balena_device::ffi::*;
use sim::Sim;
use support::{clear_env, cstr, last_error, serial, setup, INVALID, NOT_CONFIGURED, OK};

/// Pre-fill byte of output buffers: anything the library did not write.
const FILL: c_char = 0x7f;

/// A simulator with the default client pointed at it, no app id in the
/// environment, and an empty recording.
fn fixture() -> Sim {
    clear_env();
    let sim = Sim::start();
    setup(&sim.address(), &sim.api_key(), 5000);
    sim.clear_requests();
    sim
}

/// The status is `want`, a message explains it, no response was received
/// and the simulator recorded no request.
fn assert_rejected(sim: &Sim, case: &str, rc: c_int, want: c_int) {
    assert_eq!(rc, want, "{case}: {}", last_error());
    assert!(!last_error().is_empty(), "{case}: no message");
    assert_eq!(bd_last_http_status(), 0, "{case}");
    let sent = sim.requests();
    assert!(
        sent.is_empty(),
        "{case}: sent {:?}",
        sent.iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
}

/// A buffer of `len` bytes plus 8 guard bytes, all `FILL`.
fn filled(len: usize) -> Vec<c_char> {
    vec![FILL; len + 8]
}

/// After a failed call with a buffer of `len` > 0: only the NUL was written.
fn assert_only_nul(case: &str, buf: &[c_char]) {
    assert_eq!(buf[0], 0, "{case}: buffer not NUL-terminated");
    assert!(
        buf[1..].iter().all(|&c| c == FILL),
        "{case}: wrote past the NUL"
    );
}

type TextFn = Box<dyn Fn(*mut c_char, usize) -> c_int>;
type PlainFn = Box<dyn Fn() -> c_int>;

/// Every export that writes text into `(buf, len)`, for app `app` (GETs
/// first, then the POSTs).
fn text_exports(app: u32) -> Vec<(&'static str, TextFn)> {
    // SAFETY (every closure): the callers pass NULL with len 0, NULL with
    // len > 0 (which the library must reject), or a buffer of len bytes.
    let list: Vec<(&'static str, TextFn)> = vec![
        (
            "bd_state_json",
            Box::new(|b, l| unsafe { bd_state_json(b, l) }),
        ),
        (
            "bd_host_config_json",
            Box::new(|b, l| unsafe { bd_host_config_json(b, l) }),
        ),
        (
            "bd_app_state_json",
            Box::new(move |b, l| unsafe { bd_app_state_json(app, b, l) }),
        ),
        (
            "bd_applications_state_json",
            Box::new(|b, l| unsafe { bd_applications_state_json(b, l) }),
        ),
        (
            "bd_application_state_json",
            Box::new(move |b, l| unsafe { bd_application_state_json(app, b, l) }),
        ),
        (
            "bd_state_status_json",
            Box::new(|b, l| unsafe { bd_state_status_json(b, l) }),
        ),
        (
            "bd_supervisor_version",
            Box::new(|b, l| unsafe { bd_supervisor_version(b, l) }),
        ),
        (
            "bd_container_id",
            Box::new(|b, l| unsafe { bd_container_id(c"main".as_ptr(), b, l) }),
        ),
        (
            "bd_container_ids_json",
            Box::new(|b, l| unsafe { bd_container_ids_json(b, l) }),
        ),
        (
            "bd_device_name",
            Box::new(|b, l| unsafe { bd_device_name(b, l) }),
        ),
        (
            "bd_device_tags_json",
            Box::new(|b, l| unsafe { bd_device_tags_json(b, l) }),
        ),
        (
            "bd_local_target_state_json",
            Box::new(|b, l| unsafe { bd_local_target_state_json(b, l) }),
        ),
        (
            "bd_device_info_json",
            Box::new(|b, l| unsafe { bd_device_info_json(b, l) }),
        ),
        (
            "bd_start_app",
            Box::new(move |b, l| unsafe { bd_start_app(app, b, l) }),
        ),
        (
            "bd_stop_app",
            Box::new(move |b, l| unsafe { bd_stop_app(app, true, b, l) }),
        ),
        (
            "bd_regenerate_api_key",
            Box::new(|b, l| unsafe { bd_regenerate_api_key(b, l) }),
        ),
    ];
    list
}

#[test]
fn null_buffer_with_nonzero_len_is_invalid_and_sends_nothing() {
    let _g = serial();
    let sim = fixture();
    for (name, f) in text_exports(sim.app_id()) {
        for len in [1, 2, 64, usize::MAX] {
            let rc = f(ptr::null_mut(), len);
            assert_rejected(&sim, &format!("{name}(NULL, {len})"), rc, INVALID);
            assert!(last_error().contains("NULL"), "{name}: {}", last_error());
        }
    }
}

#[test]
fn zero_length_and_one_byte_buffers_follow_snprintf() {
    let _g = serial();
    let sim = fixture();
    for (name, f) in text_exports(sim.app_id()) {
        sim.clear_requests();
        // Size query.
        let full = f(ptr::null_mut(), 0);
        assert!(full > 0, "{name}(NULL, 0): {full} {}", last_error());
        let full = full as usize;

        // Zero-length buffer: nothing written, full length returned.
        let mut buf = filled(0);
        assert_eq!(f(buf.as_mut_ptr(), 0) as usize, full, "{name} len 0");
        assert!(
            buf.iter().all(|&c| c == FILL),
            "{name}: wrote into a 0-byte buffer"
        );

        // One-byte buffer: just the NUL.
        let mut buf = filled(1);
        assert_eq!(f(buf.as_mut_ptr(), 1) as usize, full, "{name} len 1");
        assert_only_nul(&format!("{name} len 1"), &buf);

        // One byte short: truncated by one, NUL at the end, guard intact.
        let mut short = filled(full);
        assert_eq!(f(short.as_mut_ptr(), full) as usize, full, "{name} short");
        assert_eq!(
            short[full - 1],
            0,
            "{name}: truncated text not NUL-terminated"
        );
        assert!(short[full..].iter().all(|&c| c == FILL), "{name}: overflow");

        // Exactly enough room.
        let mut exact = filled(full + 1);
        assert_eq!(
            f(exact.as_mut_ptr(), full + 1) as usize,
            full,
            "{name} exact"
        );
        assert_eq!(exact[full], 0);
        assert!(
            exact[full + 1..].iter().all(|&c| c == FILL),
            "{name}: overflow"
        );
        assert!(exact[..full].iter().all(|&c| c != 0 && c != FILL));
        if name != "bd_regenerate_api_key" {
            assert_eq!(
                short[..full - 1],
                exact[..full - 1],
                "{name}: prefix differs"
            );
        }

        // Each call above was one request.
        assert_eq!(sim.requests().len(), 5, "{name}");
        assert_eq!(last_error(), "");
    }
}

#[test]
fn current_app_without_app_id_is_not_configured_and_sends_nothing() {
    let _g = serial();
    let sim = fixture();
    let app = BD_CURRENT_APP;
    // SAFETY (closures): valid strings.
    let plain: Vec<(&str, PlainFn)> = vec![
        ("bd_purge", Box::new(move || bd_purge(app))),
        ("bd_restart", Box::new(move || bd_restart(app))),
        (
            "bd_restart_service",
            Box::new(move || unsafe { bd_restart_service(app, c"main".as_ptr(), false) }),
        ),
        (
            "bd_stop_service",
            Box::new(move || unsafe { bd_stop_service(app, c"main".as_ptr(), true) }),
        ),
        (
            "bd_start_service",
            Box::new(move || unsafe { bd_start_service(app, c"main".as_ptr(), false) }),
        ),
        (
            "bd_restart_service_by_image",
            Box::new(move || bd_restart_service_by_image(app, 1001, false)),
        ),
        (
            "bd_stop_service_by_image",
            Box::new(move || bd_stop_service_by_image(app, 1001, false)),
        ),
        (
            "bd_start_service_by_image",
            Box::new(move || bd_start_service_by_image(app, 1001, false)),
        ),
        (
            "bd_restart_app",
            Box::new(move || bd_restart_app(app, false)),
        ),
        ("bd_purge_app", Box::new(move || bd_purge_app(app, true))),
    ];
    // SAFETY (closures): buffers of the given length.
    let text: Vec<(&str, TextFn)> = vec![
        (
            "bd_app_state_json",
            Box::new(move |b, l| unsafe { bd_app_state_json(app, b, l) }),
        ),
        (
            "bd_application_state_json",
            Box::new(move |b, l| unsafe { bd_application_state_json(app, b, l) }),
        ),
        (
            "bd_start_app",
            Box::new(move |b, l| unsafe { bd_start_app(app, b, l) }),
        ),
        (
            "bd_stop_app",
            Box::new(move |b, l| unsafe { bd_stop_app(app, false, b, l) }),
        ),
    ];

    // Unset, then set to values that are not app ids.
    let envs: [(&str, Option<&str>); 5] = [
        ("BALENA_APP_ID", None),
        ("BALENA_APP_ID", Some("abc")),
        ("BALENA_APP_ID", Some("0")),
        ("RESIN_APP_ID", Some("-5")),
        ("BALENA_APP_ID", Some("12\r\n34")),
    ];
    for (var, value) in envs {
        clear_env();
        if let Some(v) = value {
            std::env::set_var(var, v);
        }
        let case = format!("{var}={value:?}");
        for (name, f) in &plain {
            let rc = f();
            assert_rejected(&sim, &format!("{name} {case}"), rc, NOT_CONFIGURED);
            if value.is_none() {
                assert!(last_error().contains("BALENA_APP_ID"), "{}", last_error());
            }
        }
        for (name, f) in &text {
            let mut buf = filled(16);
            let rc = f(buf.as_mut_ptr(), 16);
            assert_rejected(&sim, &format!("{name} {case}"), rc, NOT_CONFIGURED);
            assert_only_nul(name, &buf);
            assert_eq!(f(ptr::null_mut(), 0), NOT_CONFIGURED, "{name} size query");
        }
    }

    // With the app id set, the same calls resolve it and reach the supervisor.
    clear_env();
    std::env::set_var("BALENA_APP_ID", sim.app_id().to_string());
    assert_eq!(
        bd_restart_app(BD_CURRENT_APP, false),
        OK,
        "{}",
        last_error()
    );
    let req = sim.last_request().expect("a request");
    assert_eq!(
        req.path,
        format!("/v2/applications/{}/restart", sim.app_id())
    );
    clear_env();
}

/// Service names that must be refused, with what makes them bad.
fn bad_service_names() -> Vec<(&'static str, Option<CString>)> {
    vec![
        ("NULL", None),
        ("empty", Some(cstr(b""))),
        ("non-UTF-8", Some(cstr(b"ma\xffin"))),
        ("truncated UTF-8", Some(cstr(b"main\xc3"))),
        ("CR LF", Some(cstr(b"main\r\nX-Injected: 1"))),
        ("LF", Some(cstr(b"ma\nin"))),
        ("CR", Some(cstr(b"main\r"))),
        ("TAB", Some(cstr(b"ma\tin"))),
        ("SOH", Some(cstr(b"\x01main"))),
        ("ESC", Some(cstr(b"\x1b[31mmain"))),
        ("DEL", Some(cstr(b"main\x7f"))),
        ("C1 NEL", Some(cstr("main\u{85}".as_bytes()))),
    ]
}

#[test]
fn bad_service_names_are_invalid_and_send_nothing() {
    let _g = serial();
    let sim = fixture();
    let app = sim.app_id();
    for (what, name) in bad_service_names() {
        let p = name.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: p is NULL or a valid string.
        let calls: [(&str, c_int); 3] = unsafe {
            [
                ("bd_restart_service", bd_restart_service(app, p, false)),
                ("bd_stop_service", bd_stop_service(app, p, true)),
                ("bd_start_service", bd_start_service(app, p, false)),
            ]
        };
        for (f, rc) in calls {
            assert_rejected(&sim, &format!("{f}({what})"), rc, INVALID);
        }
        let mut buf = filled(16);
        // SAFETY: as above, and a 16-byte buffer.
        let rc = unsafe { bd_container_id(p, buf.as_mut_ptr(), 16) };
        assert_rejected(&sim, &format!("bd_container_id({what})"), rc, INVALID);
        assert_only_nul("bd_container_id", &buf);
        // SAFETY: as above.
        let rc = unsafe { bd_container_id(p, ptr::null_mut(), 0) };
        assert_rejected(
            &sim,
            &format!("bd_container_id({what}, NULL, 0)"),
            rc,
            INVALID,
        );
    }
}

/// JSON arguments that must be refused.
fn bad_json() -> Vec<(&'static str, Option<CString>)> {
    vec![
        ("NULL", None),
        ("empty", Some(cstr(b""))),
        ("blank", Some(cstr(b"  \n"))),
        ("non-UTF-8", Some(cstr(b"{\"a\":\"\xff\"}"))),
        ("array", Some(cstr(b"[1]"))),
        ("string", Some(cstr(b"\"x\""))),
        ("number", Some(cstr(b"1"))),
        ("null", Some(cstr(b"null"))),
        ("true", Some(cstr(b"true"))),
        ("unterminated", Some(cstr(b"{"))),
        ("trailing garbage", Some(cstr(b"{}x"))),
        ("two objects", Some(cstr(b"{} {}"))),
        ("extra brace", Some(cstr(b"{\"a\":1}}"))),
        ("single quotes", Some(cstr(b"{'force':true}"))),
        ("raw CR LF in string", Some(cstr(b"{\"a\":\"x\r\ny\"}"))),
    ]
}

unsafe extern "C" fn stop_at_first_line(_: *const c_char, _: usize, seen: *mut c_void) -> c_int {
    // SAFETY: the tests pass a pointer to a usize.
    unsafe { *seen.cast::<usize>() += 1 };
    1
}

#[test]
fn malformed_json_arguments_are_invalid_and_send_nothing() {
    let _g = serial();
    let sim = fixture();
    let cb: bd_line_cb = Some(stop_at_first_line);
    for (what, json) in bad_json() {
        let p = json.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        let mut seen = 0usize;
        let ud = (&mut seen as *mut usize).cast::<c_void>();
        // SAFETY: p is NULL or a valid string; cb and ud are valid.
        let calls: [(&str, c_int); 4] = unsafe {
            [
                ("bd_set_host_config_json", bd_set_host_config_json(p)),
                ("bd_set_device_tags_json", bd_set_device_tags_json(p)),
                (
                    "bd_set_local_target_state_json",
                    bd_set_local_target_state_json(p),
                ),
                ("bd_journal_logs", bd_journal_logs(p, cb, ud)),
            ]
        };
        for (f, rc) in calls {
            assert_rejected(&sim, &format!("{f}({what})"), rc, INVALID);
        }
        assert_eq!(seen, 0, "the callback ran");
    }
    // A valid object goes through (the checks above are not blanket refusals).
    let mut seen = 0usize;
    // SAFETY: valid string, callback and userdata.
    let rc = unsafe {
        bd_journal_logs(
            c"{\"count\":3}".as_ptr(),
            cb,
            (&mut seen as *mut usize).cast(),
        )
    };
    assert_eq!(rc, OK, "{}", last_error());
    assert_eq!(seen, 1);
    assert_eq!(sim.requests().len(), 1);
}

#[test]
fn null_callbacks_and_out_pointers_are_invalid_and_send_nothing() {
    let _g = serial();
    let sim = fixture();
    let mut seen = 0usize;
    let ud = (&mut seen as *mut usize).cast::<c_void>();
    // SAFETY: NULL callbacks must be refused before any use.
    let rc = unsafe { bd_journal_logs(c"{}".as_ptr(), None, ud) };
    assert_rejected(&sim, "bd_journal_logs(cb NULL)", rc, INVALID);
    // SAFETY: as above.
    let rc = unsafe { bd_local_logs(None, ud) };
    assert_rejected(&sim, "bd_local_logs(cb NULL)", rc, INVALID);

    // Out-pointers: the one that is valid must not be written.
    let mut flag = false;
    let fp: *mut bool = &mut flag;
    // SAFETY: NULL or valid bool pointers.
    let cases = unsafe {
        [
            ("enabled NULL", bd_vpn_status(ptr::null_mut(), fp)),
            ("connected NULL", bd_vpn_status(fp, ptr::null_mut())),
            ("both NULL", bd_vpn_status(ptr::null_mut(), ptr::null_mut())),
        ]
    };
    for (what, rc) in cases {
        assert_rejected(&sim, &format!("bd_vpn_status({what})"), rc, INVALID);
    }
    assert!(!flag, "an out-pointer was written on error");

    // SAFETY: NULL must be refused.
    let rc = unsafe { bd_state(ptr::null_mut()) };
    assert_rejected(&sim, "bd_state(NULL)", rc, INVALID);
    assert_eq!(seen, 0);
}

#[test]
fn bad_addresses_and_keys_are_invalid_and_keep_the_previous_config() {
    let _g = serial();
    let sim = fixture();
    let addr = CString::new(sim.address()).unwrap();
    let key = CString::new(sim.api_key()).unwrap();
    let port = sim.port();
    let bad_addresses: Vec<(&str, CString)> = vec![
        ("empty", cstr(b"")),
        (
            "non-UTF-8",
            cstr(&[format!("http://127.0.0.1:{port}").as_bytes(), b"\xff"].concat()),
        ),
        (
            "non-UTF-8 host",
            cstr(
                &[
                    b"http://12\xff.0.0.1:".as_slice(),
                    port.to_string().as_bytes(),
                ]
                .concat(),
            ),
        ),
        (
            "CR LF",
            cstr(format!("http://127.0.0.1:{port}\r\n").as_bytes()),
        ),
        (
            "header injection",
            cstr(format!("http://127.0.0.1\r\nHost: evil:{port}").as_bytes()),
        ),
        (
            "LF in host",
            cstr(format!("http://127.0.\n0.1:{port}").as_bytes()),
        ),
        ("TAB", cstr(format!("http://127.0.0.1:{port}\t").as_bytes())),
        (
            "SOH",
            cstr(format!("http://\x01127.0.0.1:{port}").as_bytes()),
        ),
        (
            "space",
            cstr(format!("http://127.0.0.1 :{port}").as_bytes()),
        ),
        ("no scheme", cstr(format!("127.0.0.1:{port}").as_bytes())),
        (
            "https",
            cstr(format!("https://127.0.0.1:{port}").as_bytes()),
        ),
        ("ftp", cstr(format!("ftp://127.0.0.1:{port}").as_bytes())),
        ("port 0", cstr(b"http://127.0.0.1:0")),
        ("port too big", cstr(b"http://127.0.0.1:65536")),
        ("port not a number", cstr(b"http://127.0.0.1:http")),
        (
            "path",
            cstr(format!("http://127.0.0.1:{port}/v1").as_bytes()),
        ),
        (
            "query",
            cstr(format!("http://127.0.0.1:{port}?apikey=x").as_bytes()),
        ),
        (
            "user info",
            cstr(format!("http://u:p@127.0.0.1:{port}").as_bytes()),
        ),
        ("no host", cstr(format!("http://:{port}").as_bytes())),
    ];
    for (what, a) in &bad_addresses {
        // SAFETY: valid strings.
        let rc = unsafe { bd_init(a.as_ptr(), key.as_ptr()) };
        assert_rejected(&sim, &format!("bd_init(address {what})"), rc, INVALID);
    }
    let bad_keys: Vec<(&str, CString)> = vec![
        ("empty", cstr(b"")),
        ("non-UTF-8", cstr(b"key\xff\xfe")),
        ("CR LF", cstr(b"key\r\nX-Injected: 1")),
        ("LF", cstr(b"key\n")),
        ("space", cstr(b"key with space")),
        ("TAB", cstr(b"key\tkey")),
        ("SOH", cstr(b"\x01key")),
        ("DEL", cstr(b"key\x7f")),
        ("C1 NEL", cstr("key\u{85}".as_bytes())),
    ];
    for (what, k) in &bad_keys {
        // SAFETY: valid strings.
        let rc = unsafe { bd_init(addr.as_ptr(), k.as_ptr()) };
        assert_rejected(&sim, &format!("bd_init(key {what})"), rc, INVALID);
        // Key from the caller, address from the (empty) environment.
        // SAFETY: NULL or valid strings.
        let rc = unsafe { bd_init(ptr::null(), k.as_ptr()) };
        assert!(rc == INVALID || rc == NOT_CONFIGURED, "{what}: {rc}");
    }
    // NULL = "from the environment", which is empty here.
    // SAFETY: NULL is allowed.
    let rc = unsafe { bd_init(ptr::null(), ptr::null()) };
    assert_rejected(&sim, "bd_init(NULL, NULL) without env", rc, NOT_CONFIGURED);
    // An unusable address in the environment.
    std::env::set_var(
        "BALENA_SUPERVISOR_ADDRESS",
        format!("http://127.0.0.1:{port}\r\n"),
    );
    std::env::set_var("BALENA_SUPERVISOR_API_KEY", sim.api_key());
    assert_rejected(
        &sim,
        "bd_init_from_env(CR LF)",
        bd_init_from_env(),
        NOT_CONFIGURED,
    );
    clear_env();

    // Every refusal left the configuration as it was.
    let mut buf = filled(4096);
    // SAFETY: a 4096-byte buffer.
    let rc = unsafe { bd_state_json(buf.as_mut_ptr(), 4096) };
    assert!(rc > 0, "{}", last_error());
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].query_param("apikey"), Some(sim.api_key().as_str()));
}

#[test]
fn zero_timeouts_are_invalid_and_send_nothing() {
    let _g = serial();
    let sim = fixture();
    assert_rejected(&sim, "bd_set_timeout_ms(0)", bd_set_timeout_ms(0), INVALID);
    assert_rejected(
        &sim,
        "bd_wait_for_supervisor(0)",
        bd_wait_for_supervisor(0),
        INVALID,
    );
    // The timeout in force is unchanged: a call still works.
    assert_eq!(bd_ping(), OK, "{}", last_error());
}

#[test]
fn bad_lock_paths_are_invalid() {
    let _g = serial();
    let sim = fixture();
    let cases: Vec<(&str, CString)> = vec![
        ("empty", cstr(b"")),
        ("relative", cstr(b"tmp/updates.lock")),
        ("directory", cstr(b"/tmp/balena/")),
        ("non-UTF-8", cstr(b"/tmp/\xff.lock")),
    ];
    for (what, p) in &cases {
        // SAFETY: valid strings.
        let rc = unsafe { bd_set_update_lock_path(p.as_ptr()) };
        assert_rejected(
            &sim,
            &format!("bd_set_update_lock_path({what})"),
            rc,
            INVALID,
        );
    }
    // NULL restores the default.
    // SAFETY: NULL is allowed.
    assert_eq!(unsafe { bd_set_update_lock_path(ptr::null()) }, OK);
}

#[test]
fn nothing_configured_is_not_configured_everywhere() {
    let _g = serial();
    let sim = fixture();
    clear_env();
    bd_cleanup();
    let app = 1234;
    let mut flag = false;
    let fp: *mut bool = &mut flag;
    let mut state = std::mem::MaybeUninit::<bd_device_state>::uninit();
    let mut seen = 0usize;
    let ud = (&mut seen as *mut usize).cast::<c_void>();
    let cb: bd_line_cb = Some(stop_at_first_line);
    // SAFETY: valid strings, pointers and callbacks.
    let calls: Vec<(&str, c_int)> = unsafe {
        vec![
            ("bd_ping", bd_ping()),
            ("bd_healthy", bd_healthy()),
            ("bd_blink", bd_blink()),
            ("bd_reboot", bd_reboot(false)),
            ("bd_shutdown", bd_shutdown(false)),
            ("bd_update", bd_update(false)),
            ("bd_purge", bd_purge(app)),
            ("bd_restart", bd_restart(app)),
            (
                "bd_set_host_config_json",
                bd_set_host_config_json(c"{}".as_ptr()),
            ),
            (
                "bd_restart_service",
                bd_restart_service(app, c"main".as_ptr(), false),
            ),
            (
                "bd_stop_service",
                bd_stop_service(app, c"main".as_ptr(), false),
            ),
            (
                "bd_start_service",
                bd_start_service(app, c"main".as_ptr(), false),
            ),
            (
                "bd_restart_service_by_image",
                bd_restart_service_by_image(app, 1, false),
            ),
            (
                "bd_stop_service_by_image",
                bd_stop_service_by_image(app, 1, false),
            ),
            (
                "bd_start_service_by_image",
                bd_start_service_by_image(app, 1, false),
            ),
            ("bd_restart_app", bd_restart_app(app, false)),
            ("bd_purge_app", bd_purge_app(app, false)),
            (
                "bd_set_device_tags_json",
                bd_set_device_tags_json(c"{}".as_ptr()),
            ),
            ("bd_vpn_status", bd_vpn_status(fp, fp)),
            ("bd_cleanup_volumes", bd_cleanup_volumes()),
            (
                "bd_set_local_target_state_json",
                bd_set_local_target_state_json(c"{}".as_ptr()),
            ),
            ("bd_journal_logs", bd_journal_logs(c"{}".as_ptr(), cb, ud)),
            ("bd_local_logs", bd_local_logs(cb, ud)),
            ("bd_state", bd_state(state.as_mut_ptr())),
            ("bd_wait_for_supervisor", bd_wait_for_supervisor(100)),
            ("bd_init_from_env", bd_init_from_env()),
        ]
    };
    for (name, rc) in calls {
        assert_rejected(&sim, name, rc, NOT_CONFIGURED);
        let msg = last_error();
        assert!(
            msg.contains("BALENA_SUPERVISOR_ADDRESS")
                && msg.contains("io.balena.features.supervisor-api"),
            "{name}: {msg}"
        );
    }
    for (name, f) in text_exports(app) {
        let mut buf = filled(8);
        let rc = f(buf.as_mut_ptr(), 8);
        assert_rejected(&sim, name, rc, NOT_CONFIGURED);
        assert_only_nul(name, &buf);
        assert_eq!(f(ptr::null_mut(), 0), NOT_CONFIGURED, "{name} size query");
    }
    assert!(!flag && seen == 0);

    // Only a key known: the message names the missing address variables.
    std::env::set_var("BALENA_SUPERVISOR_API_KEY", "somekey");
    bd_cleanup();
    assert_rejected(&sim, "bd_ping (key only)", bd_ping(), NOT_CONFIGURED);
    assert!(
        last_error().contains("BALENA_SUPERVISOR_HOST"),
        "{}",
        last_error()
    );
    // Only an address known: the message names the key variables.
    clear_env();
    std::env::set_var("BALENA_SUPERVISOR_ADDRESS", sim.address());
    bd_cleanup();
    assert_rejected(&sim, "bd_ping (address only)", bd_ping(), NOT_CONFIGURED);
    assert!(
        last_error().contains("BALENA_SUPERVISOR_API_KEY"),
        "{}",
        last_error()
    );
    clear_env();
    bd_cleanup();
}

#[test]
fn status_texts_and_last_error_are_never_null() {
    let _g = serial();
    for status in [-100, -17, -16, -15, -14, -1, 0, 1, 2, i32::MIN, i32::MAX] {
        let p = bd_strerror(status);
        assert!(!p.is_null());
        // SAFETY: static NUL-terminated text.
        let text = unsafe { CStr::from_ptr(p) }.to_str().unwrap();
        assert!(!text.is_empty(), "{status}");
        if !(-16..=0).contains(&status) {
            assert_eq!(text, "unknown status");
        }
    }
    assert!(!bd_last_error().is_null());
    assert!(!bd_version().is_null());
}

#[test]
fn bad_arguments_are_invalid_even_when_nothing_is_configured() {
    let _g = serial();
    let sim = fixture();
    clear_env();
    bd_cleanup();
    let mut buf = filled(8);
    let mut flag = false;
    let fp: *mut bool = &mut flag;
    // SAFETY: NULL pointers and NULL callbacks must be refused before any use;
    // the buffer is valid for its length.
    let calls: Vec<(&str, c_int)> = unsafe {
        vec![
            (
                "bd_set_host_config_json(NULL)",
                bd_set_host_config_json(ptr::null()),
            ),
            (
                "bd_set_device_tags_json(NULL)",
                bd_set_device_tags_json(ptr::null()),
            ),
            (
                "bd_set_local_target_state_json(NULL)",
                bd_set_local_target_state_json(ptr::null()),
            ),
            (
                "bd_restart_service(NULL)",
                bd_restart_service(1, ptr::null(), false),
            ),
            (
                "bd_stop_service(\"\")",
                bd_stop_service(1, c"".as_ptr(), false),
            ),
            (
                "bd_start_service(CR)",
                bd_start_service(1, c"a\rb".as_ptr(), false),
            ),
            (
                "bd_container_id(NULL)",
                bd_container_id(ptr::null(), buf.as_mut_ptr(), buf.len()),
            ),
            (
                "bd_journal_logs(NULL opts)",
                bd_journal_logs(ptr::null(), None, ptr::null_mut()),
            ),
            (
                "bd_set_host_config_json({)",
                bd_set_host_config_json(c"{".as_ptr()),
            ),
            (
                "bd_set_device_tags_json([1])",
                bd_set_device_tags_json(c"[1]".as_ptr()),
            ),
            (
                "bd_set_local_target_state_json(\"x\")",
                bd_set_local_target_state_json(c"\"x\"".as_ptr()),
            ),
            (
                "bd_journal_logs(options 1)",
                bd_journal_logs(c"1".as_ptr(), Some(stop_at_first_line), ptr::null_mut()),
            ),
            (
                "bd_journal_logs(cb NULL)",
                bd_journal_logs(c"{}".as_ptr(), None, ptr::null_mut()),
            ),
            (
                "bd_local_logs(cb NULL)",
                bd_local_logs(None, ptr::null_mut()),
            ),
            ("bd_wait_for_supervisor(0)", bd_wait_for_supervisor(0)),
            ("bd_vpn_status(NULL)", bd_vpn_status(ptr::null_mut(), fp)),
            ("bd_state(NULL)", bd_state(ptr::null_mut())),
            ("bd_state_json(NULL, 4)", bd_state_json(ptr::null_mut(), 4)),
        ]
    };
    for (what, rc) in calls {
        assert_rejected(&sim, what, rc, INVALID);
    }
    assert_only_nul("bd_container_id(NULL)", &buf);
    assert!(!flag);
}

/// JSON that the supervisor's `JSON.parse` reads is caller JSON like any
/// other: an object nested deeper than 127, a lone surrogate escape and a
/// number beyond f64 are sent exactly as given, not refused.
#[test]
fn json_that_json_parse_accepts_is_sent_as_given() {
    let _g = serial();
    let sim = fixture();
    let deep = format!(
        r#"{{"hostname":"dev","deep":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    for (case, json) in [
        ("nested 200 deep", deep.as_str()),
        ("a lone surrogate", r#"{"hostname":"a\ud800b"}"#),
        ("1e999", r#"{"hostname":"dev","n":1e999}"#),
    ] {
        sim.clear_requests();
        let text = cstr(json);
        // SAFETY: a valid C string.
        let rc = unsafe { bd_set_host_config_json(text.as_ptr()) };
        assert_ne!(rc, INVALID, "{case}: refused: {}", last_error());
        sim::check::assert_sent(
            &sim,
            "PATCH",
            "/v1/device/host-config",
            Some(&sim.api_key()),
            sim::check::Body::Exact(json),
        );
    }
}
