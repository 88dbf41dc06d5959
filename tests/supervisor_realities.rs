//! What the real supervisor does that a client must get right: three kinds
//! of 423, actions that finish after the client gave up, silent log streams,
//! key rotation while the environment keeps the old key, update cancel, and
//! update locks that explain who holds them.

mod fault_server;
mod sim;
mod support;

use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use balena_device::ffi::*;
use fault_server::{response, Conn, FaultServer};
use sim::Sim;
use support::{
    clear_env, code, cstr, last_error, serial, setup, text_call, INVALID, LOCKED, OK, TIMEOUT,
    UNAUTHORIZED,
};

const KEY: &str = "realitykey";

fn busy() -> c_int {
    code(bd_status::BD_ERR_BUSY)
}

fn host_update() -> c_int {
    code(bd_status::BD_ERR_HOST_UPDATE)
}

// ------------------------------------------------------------------ 423

/// A server that answers every request 423 with the body the test sets.
fn locked_server() -> (FaultServer, Arc<Mutex<String>>) {
    let body = Arc::new(Mutex::new(String::new()));
    let b = body.clone();
    let srv = FaultServer::answering(move |_| {
        let text = b.lock().unwrap().clone();
        response(
            423,
            &[("Content-Type", "application/json")],
            text.as_bytes(),
        )
    });
    (srv, body)
}

#[test]
fn three_kinds_of_423_get_three_statuses_and_the_right_advice() {
    let _g = serial();
    let (srv, body) = locked_server();
    setup(&srv.address(), KEY, 5_000);
    let set = |text: &str| *body.lock().unwrap() = text.to_string();

    // 1. An app's lock, without force: LOCKED, and force is the advice.
    set(r#"{"Data":"","Error":"Lockfile exists for { appId: 1234, service: main }"}"#);
    assert_eq!(bd_reboot(false), LOCKED, "{}", last_error());
    assert_eq!(bd_last_http_status(), 423);
    let msg = last_error();
    assert!(msg.contains("retry with force"), "{msg}");
    assert!(msg.contains("Lockfile exists"), "{msg}");

    // The same answer although force was sent: BUSY, and no force advice.
    assert_eq!(bd_reboot(true), busy(), "{}", last_error());
    assert_eq!(bd_last_http_status(), 423);
    let msg = last_error();
    assert!(msg.contains("force cannot"), "{msg}");
    assert!(!msg.contains("retry with force"), "{msg}");

    // 2. A host OS update: HOST_UPDATE, never advise forcing.
    set(r#"{"Data":"","Error":"Waiting for Host OS update to finish"}"#);
    assert_eq!(bd_shutdown(false), host_update(), "{}", last_error());
    assert_eq!(bd_last_http_status(), 423);
    let msg = last_error();
    assert!(msg.contains("do not force"), "{msg}");
    assert!(!msg.contains("retry with force"), "{msg}");

    // 3. Another supervisor operation holds the locks: BUSY, with or without force.
    set(
        r#"{"status":"failed","message":"Locks for app 1234 are being held by another supervisor operation"}"#,
    );
    let svc = cstr("main");
    for force in [false, true] {
        let rc = unsafe { bd_restart_service(1234, svc.as_ptr(), force) };
        assert_eq!(rc, busy(), "force {force}: {}", last_error());
        assert!(last_error().contains("retry later"), "{}", last_error());
        assert!(
            !last_error().contains("retry with force"),
            "{}",
            last_error()
        );
    }
    // Host config with its own force in the body.
    set(r#"{"status":"failed","message":"Lockfile exists for { appId: 1234, service: main }"}"#);
    let json = cstr(r#"{"network":{"hostname":"x"},"force":true}"#);
    assert_eq!(unsafe { bd_set_host_config_json(json.as_ptr()) }, busy());
    let json = cstr(r#"{"network":{"hostname":"x"}}"#);
    assert_eq!(unsafe { bd_set_host_config_json(json.as_ptr()) }, LOCKED);

    // The texts of the statuses differ.
    let text = |rc: c_int| {
        unsafe { std::ffi::CStr::from_ptr(bd_strerror(rc)) }
            .to_string_lossy()
            .into_owned()
    };
    assert!(text(busy()).contains("force cannot help"));
    assert!(text(host_update()).contains("do not force"));
    bd_cleanup();
}

// ------------------------------------------------------------------ late actions

#[test]
fn an_action_that_times_out_says_it_may_still_happen_and_is_sent_once() {
    let _g = serial();
    let srv = FaultServer::start(|c: &mut Conn| {
        while c.read_request().is_some() {
            // The supervisor answers when the container has stopped.
            if !c.pause(Duration::from_millis(900)) {
                return;
            }
            c.respond_json(r#"{"status":"success"}"#);
        }
    });
    setup(&srv.address(), KEY, 300);
    let svc = cstr("main");
    let rc = unsafe { bd_stop_service(1234, svc.as_ptr(), false) };
    assert_eq!(rc, TIMEOUT, "{}", last_error());
    let msg = last_error();
    assert!(msg.contains("may still carry it out"), "{msg}");
    assert!(msg.contains("never re-sends"), "{msg}");
    // A read that times out says nothing of the kind.
    let (rc, _) = text_call(|b, l| unsafe { bd_state_json(b, l) });
    assert_eq!(rc, TIMEOUT);
    assert!(!last_error().contains("may still"), "{}", last_error());
    thread::sleep(Duration::from_millis(1_200));
    let stops = srv
        .requests()
        .iter()
        .filter(|r| r.path().ends_with("/stop-service"))
        .count();
    assert_eq!(stops, 1, "the action was sent again");
    bd_cleanup();
}

#[test]
fn update_cancel_sends_cancel_with_force() {
    let _g = serial();
    let srv = FaultServer::answering(|_| response(202, &[], b""));
    setup(&srv.address(), KEY, 5_000);
    assert_eq!(bd_update_cancel(true), OK, "{}", last_error());
    assert_eq!(bd_update_cancel(false), OK, "{}", last_error());
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    for (r, body) in reqs.iter().zip([
        r#"{"force":true,"cancel":true}"#,
        r#"{"force":false,"cancel":true}"#,
    ]) {
        assert_eq!((r.method.as_str(), r.path()), ("POST", "/v1/update"));
        assert_eq!(r.body_text(), body);
        assert_eq!(r.query_param("apikey").as_deref(), Some(KEY));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    bd_cleanup();
}

// ------------------------------------------------------------------ streams

/// A journal that sends its head and `lines` lines, then stays silent for
/// `silence`, then (when `close`) ends the stream properly.
fn quiet_journal(lines: usize, silence: Duration, close: bool) -> FaultServer {
    FaultServer::start(move |c: &mut Conn| {
        if c.read_request().is_none() {
            return;
        }
        let mut out =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for _ in 0..lines {
            out.extend_from_slice(b"5\r\nline\n\r\n");
        }
        if !c.write(&out) {
            return;
        }
        c.hold(silence);
        if close {
            c.write(b"0\r\n\r\n");
        }
    })
}

unsafe extern "C" fn count(_: *const c_char, _: usize, userdata: *mut c_void) -> c_int {
    unsafe { *userdata.cast::<usize>() += 1 };
    0
}

fn follow(lines: &mut usize) -> c_int {
    let opts = cstr(r#"{"follow":true}"#);
    unsafe { bd_journal_logs(opts.as_ptr(), Some(count), (lines as *mut usize).cast()) }
}

#[test]
fn a_quiet_followed_journal_waits_and_stops_from_another_thread() {
    let _g = serial();
    let srv = quiet_journal(2, Duration::from_secs(20), false);
    // A short request timeout: silence after the head is not bounded by it.
    setup(&srv.address(), KEY, 300);
    let stopper = thread::spawn(|| {
        thread::sleep(Duration::from_millis(1_000));
        bd_stop_streams();
    });
    let started = Instant::now();
    let mut lines = 0;
    let rc = follow(&mut lines);
    let took = started.elapsed();
    stopper.join().unwrap();
    assert_eq!(rc, OK, "{}", last_error());
    assert_eq!(lines, 2);
    assert!(
        took >= Duration::from_millis(950),
        "ended before the stop: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1_600),
        "stopped late: {took:?}"
    );
    // A stream started after the stop is not affected by it.
    let srv = quiet_journal(1, Duration::ZERO, true);
    setup(&srv.address(), KEY, 300);
    let mut lines = 0;
    assert_eq!(follow(&mut lines), OK, "{}", last_error());
    assert_eq!(lines, 1);
    bd_cleanup();
}

#[test]
fn a_stream_timeout_ends_a_silent_stream_and_a_closed_stream_ends_at_once() {
    let _g = serial();
    let srv = quiet_journal(1, Duration::from_secs(20), false);
    setup(&srv.address(), KEY, 5_000);
    assert_eq!(bd_set_stream_timeout_ms(400), OK);
    let started = Instant::now();
    let mut lines = 0;
    let rc = follow(&mut lines);
    let took = started.elapsed();
    assert_eq!(rc, TIMEOUT, "{}", last_error());
    assert!(
        last_error().contains("sent nothing for 400 ms"),
        "{}",
        last_error()
    );
    assert_eq!(bd_last_http_status(), 200);
    assert_eq!(lines, 1);
    assert!(
        took >= Duration::from_millis(390) && took < Duration::from_millis(1_500),
        "{took:?}"
    );

    // The supervisor closes the stream: the call ends at once.
    let srv = quiet_journal(3, Duration::ZERO, true);
    setup(&srv.address(), KEY, 5_000);
    let started = Instant::now();
    let mut lines = 0;
    assert_eq!(follow(&mut lines), OK, "{}", last_error());
    assert_eq!(lines, 3);
    assert!(started.elapsed() < Duration::from_millis(300));
    // bd_cleanup restores "no limit".
    bd_cleanup();
    let srv = quiet_journal(1, Duration::from_millis(900), true);
    setup(&srv.address(), KEY, 5_000);
    let mut lines = 0;
    assert_eq!(follow(&mut lines), OK, "{}", last_error());
    bd_cleanup();
}

// ------------------------------------------------------------------ key rotation

#[test]
fn a_regenerated_key_survives_re_reading_the_environment() {
    let _g = serial();
    let sim = Sim::start();
    clear_env();
    std::env::set_var("BALENA_SUPERVISOR_ADDRESS", sim.address());
    std::env::set_var("BALENA_SUPERVISOR_API_KEY", sim.api_key());
    bd_cleanup();
    let old = sim.api_key();
    let (rc, new) = text_call(|b, l| unsafe { bd_regenerate_api_key(b, l) });
    assert!(rc > 0, "{}", last_error());
    assert_ne!(new, old);
    let calls_with = |what: &str| {
        let (rc, _) = text_call(|b, l| unsafe { bd_state_json(b, l) });
        assert!(rc > 0, "{what}: {}", last_error());
        let last = sim.requests().pop().unwrap();
        assert_eq!(last.query_param("apikey"), Some(new.as_str()), "{what}");
    };
    // The environment still holds the old key.
    bd_cleanup();
    calls_with("after bd_cleanup");
    assert_eq!(bd_init_from_env(), OK);
    calls_with("after bd_init_from_env");
    let addr = cstr(&sim.address());
    assert_eq!(unsafe { bd_init(addr.as_ptr(), std::ptr::null()) }, OK);
    calls_with("after bd_init(addr, NULL)");
    // An explicit key is used as given (and the old one is refused now).
    let old_c = cstr(&old);
    assert_eq!(unsafe { bd_init(addr.as_ptr(), old_c.as_ptr()) }, OK);
    let (rc, _) = text_call(|b, l| unsafe { bd_state_json(b, l) });
    assert_eq!(rc, UNAUTHORIZED, "{}", last_error());
    clear_env();
    bd_cleanup();
}

// ------------------------------------------------------------------ update locks

fn holder() -> c_int {
    bd_update_lock_holder()
}

fn lock_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bd-real-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn use_path(path: &Path) {
    let p = cstr(path.to_str().unwrap());
    assert_eq!(unsafe { bd_set_update_lock_path(p.as_ptr()) }, OK);
}

/// Forks a child that takes the lock at the current path and exits (leaving
/// a stale file) or holds it for `hold` first. Returns its pid.
fn child_locks(hold: Duration, exit_without_unlock: bool) -> libc::pid_t {
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        unsafe { libc::alarm(20) };
        let rc = bd_lock_updates();
        thread::sleep(hold);
        if !exit_without_unlock {
            bd_unlock_updates();
        }
        unsafe { libc::_exit(if rc == OK { 0 } else { 1 }) };
    }
    pid
}

fn wait_ok(pid: libc::pid_t) -> bool {
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

#[test]
fn the_lock_holder_is_told_apart_and_a_stale_lock_is_taken_over() {
    let _g = serial();
    let dir = lock_dir("holder");
    let path = dir.join("updates.lock");
    use_path(&path);
    let none = bd_lock_holder::BD_LOCK_NONE as c_int;
    let this = bd_lock_holder::BD_LOCK_THIS_PROCESS as c_int;
    let other = bd_lock_holder::BD_LOCK_OTHER as c_int;
    let supervisor = bd_lock_holder::BD_LOCK_SUPERVISOR as c_int;
    let stale = bd_lock_holder::BD_LOCK_STALE as c_int;

    assert_eq!(holder(), none);
    assert_eq!(bd_lock_updates(), OK);
    assert_eq!(holder(), this);
    let record = std::fs::read_to_string(&path).unwrap();
    assert!(
        record.contains(&std::process::id().to_string()),
        "{record:?}"
    );
    assert_eq!(bd_unlock_updates(), OK);

    // A file of unknown origin (touch, lockfile): never taken.
    std::fs::write(&path, b"").unwrap();
    assert_eq!(holder(), other);
    assert_eq!(bd_lock_updates(), LOCKED);
    assert!(path.exists());
    std::fs::remove_file(&path).unwrap();

    // Held by another live process: never taken.
    let pid = child_locks(Duration::from_millis(1_500), false);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(holder(), other);
    assert_eq!(bd_lock_updates(), LOCKED);
    assert!(wait_ok(pid));
    assert_eq!(holder(), none);

    // Left by a process that is gone: stale, and taken over.
    let pid = child_locks(Duration::ZERO, true);
    assert!(wait_ok(pid));
    assert!(path.exists());
    assert_eq!(holder(), stale);
    assert_eq!(bd_lock_updates(), OK, "{}", last_error());
    assert_eq!(holder(), this);
    let record = std::fs::read_to_string(&path).unwrap();
    assert!(
        record.contains(&std::process::id().to_string()),
        "{record:?}"
    );
    assert_eq!(bd_unlock_updates(), OK);
    assert!(!path.exists());

    // The supervisor's own file (uid 65534), even with a record: never taken.
    let pid = child_locks(Duration::ZERO, true);
    assert!(wait_ok(pid));
    let c = cstr(path.to_str().unwrap());
    assert_eq!(
        unsafe { libc::chown(c.as_ptr(), 65534, 65534) },
        0,
        "tests run as root"
    );
    assert_eq!(holder(), supervisor);
    assert_eq!(bd_lock_updates(), LOCKED);
    assert!(last_error().contains("supervisor"), "{}", last_error());
    std::fs::remove_file(&path).unwrap();

    unsafe { bd_set_update_lock_path(std::ptr::null()) };
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn of_several_processes_racing_for_a_stale_lock_exactly_one_wins() {
    let _g = serial();
    let dir = lock_dir("race");
    let path = dir.join("updates.lock");
    use_path(&path);
    for round in 0..5 {
        let pid = child_locks(Duration::ZERO, true);
        assert!(wait_ok(pid));
        assert_eq!(holder(), bd_lock_holder::BD_LOCK_STALE as c_int);
        let mut go = [0 as c_int; 2];
        assert_eq!(unsafe { libc::pipe(go.as_mut_ptr()) }, 0);
        let racers: Vec<libc::pid_t> = (0..6)
            .map(|_| {
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    unsafe { libc::alarm(20) };
                    let mut b = 0u8;
                    unsafe { libc::read(go[0], (&mut b as *mut u8).cast(), 1) };
                    let rc = bd_lock_updates();
                    // Keep a won lock while the others try.
                    thread::sleep(Duration::from_millis(500));
                    unsafe { libc::_exit(if rc == OK { 0 } else { 1 }) };
                }
                pid
            })
            .collect();
        unsafe {
            libc::close(go[0]);
            libc::write(go[1], b"gggggg".as_ptr().cast(), 6);
            libc::close(go[1]);
        }
        let winners = racers.into_iter().filter(|&p| wait_ok(p)).count();
        assert_eq!(
            winners, 1,
            "round {round}: {winners} processes took the same stale lock"
        );
        let _ = std::fs::remove_file(&path);
    }
    unsafe { bd_set_update_lock_path(std::ptr::null()) };
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lock_updates_wait_waits_for_the_lock_or_says_how_long_it_waited() {
    let _g = serial();
    let dir = lock_dir("wait");
    let path = dir.join("updates.lock");
    use_path(&path);
    let pid = child_locks(Duration::from_millis(600), false);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(bd_lock_updates_wait(100), LOCKED);
    assert!(last_error().contains("waited"), "{}", last_error());
    let started = Instant::now();
    assert_eq!(bd_lock_updates_wait(5_000), OK, "{}", last_error());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        bd_update_lock_holder(),
        bd_lock_holder::BD_LOCK_THIS_PROCESS as c_int
    );
    // Held by this process: at once, no waiting.
    let started = Instant::now();
    assert_eq!(bd_lock_updates_wait(2_000), LOCKED);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(bd_unlock_updates(), OK);
    assert!(wait_ok(pid));
    unsafe { bd_set_update_lock_path(std::ptr::null()) };
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_legacy_lock_path_counts_with_the_default_path() {
    let _g = serial();
    unsafe { bd_set_update_lock_path(std::ptr::null()) };
    let legacy = Path::new("/tmp/resin/resin-updates.lock");
    if Path::new("/tmp/balena/updates.lock").exists() || legacy.exists() {
        panic!("a real update lock exists on this machine; remove it to run this test");
    }
    std::fs::create_dir_all("/tmp/resin").unwrap();
    std::fs::write(legacy, b"").unwrap();
    let locked = bd_updates_locked();
    let who = bd_update_lock_holder();
    // Another path: the legacy file does not count.
    let dir = lock_dir("legacy");
    use_path(&dir.join("updates.lock"));
    let elsewhere = bd_updates_locked();
    unsafe { bd_set_update_lock_path(std::ptr::null()) };
    std::fs::remove_file(legacy).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(locked, 1);
    assert_eq!(who, bd_lock_holder::BD_LOCK_OTHER as c_int);
    assert_eq!(elsewhere, 0);
    assert_eq!(bd_updates_locked(), 0);
    let _ = INVALID;
}
