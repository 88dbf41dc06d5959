//! fork(): a child never uses a connection of its parent, never blocks on a
//! lock another thread held at the fork, and never releases the parent's
//! update lock. Process state matters here (the child is a copy of the whole
//! test process), so this file holds the fork tests alone, run one at a time.

mod support;

use std::ffi::c_int;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use balena_device::ffi::*;
use support::{cstr, init, serial, text_call, OK};

/// A keep-alive server that answers `GET /v2/containerId?service=NAME` with
/// `NAME` as the container id, after `delay`: each answer names the request
/// it belongs to. Serves until the test process exits.
fn identity_server(delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || serve(stream, delay));
        }
    });
    address
}

fn serve(stream: TcpStream, delay: Duration) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let name = request_line
            .split("service=")
            .nth(1)
            .and_then(|rest| rest.split(['&', ' ']).next())
            .unwrap_or("none")
            .to_string();
        thread::sleep(delay);
        let body = format!(r#"{{"status":"success","containerId":"{name}"}}"#);
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: keep-alive\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Asks for `rounds` container ids named `who-N` and counts the answers that
/// are not its own (or not answers at all).
fn wrong_answers(who: &str, rounds: usize) -> (usize, Vec<String>) {
    let mut wrong = 0;
    let mut seen = Vec::new();
    for i in 0..rounds {
        let want = format!("{who}-{i}");
        let service = cstr(&want);
        let (rc, text) =
            text_call(|buf, len| unsafe { bd_container_id(service.as_ptr(), buf, len) });
        if rc < 0 || text != want {
            wrong += 1;
            if seen.len() < 5 {
                seen.push(format!("asked {want}, got rc {rc} {text:?}"));
            }
        }
    }
    (wrong, seen)
}

#[test]
fn parent_and_child_after_fork_each_get_their_own_answers() {
    let _serial = serial();
    let address = identity_server(Duration::from_millis(15));
    assert_eq!(init(&address, "forkkey"), OK);
    assert_eq!(bd_set_timeout_ms(5_000), OK);
    // One call first, so that the pool holds a connection at the fork.
    let (wrong, seen) = wrong_answers("before", 1);
    assert_eq!(wrong, 0, "{seen:?}");

    let rounds = 40;
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // The child: bounded by an alarm, reports through its exit status only.
        unsafe { libc::alarm(30) };
        let (wrong, _) = wrong_answers("child", rounds);
        unsafe { libc::_exit(if wrong == 0 { 0 } else { 1 }) };
    }
    let (wrong, seen) = wrong_answers("parent", rounds);
    let mut status: c_int = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(
        wrong, 0,
        "the parent got answers that are not its own: {seen:?}"
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child got answers that are not its own (wait status {status})"
    );
}

/// Waits for `pid` and returns its wait status.
fn wait_for(pid: libc::pid_t) -> c_int {
    let mut status: c_int = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

fn exited_ok(status: c_int) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// Forks; the child runs `body` under `alarm(seconds)` and exits with the
/// status it returns (0: all was as expected). Returns the child's wait status.
fn in_child(seconds: u32, body: impl FnOnce() -> c_int) -> c_int {
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe { libc::alarm(seconds) };
        let rc = body();
        unsafe { libc::_exit(rc) };
    }
    wait_for(pid)
}

#[test]
fn a_child_never_blocks_on_a_lock_another_thread_held_at_the_fork() {
    let _serial = serial();
    let address = identity_server(Duration::ZERO);
    let dir = std::env::temp_dir().join(format!("bd-fork-locks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let busy_lock = cstr(dir.join("busy.lock").to_str().unwrap());
    let child_lock = dir.join("child.lock");
    let child_lock_c = cstr(child_lock.to_str().unwrap());
    let addr = cstr(&address);
    let key = cstr("forkkey");

    // Another thread keeps taking every lock of the library: the default
    // client's (bd_init, bd_set_timeout_ms, bd_cleanup), the client's
    // settings (the first call after bd_init) and the update lock's.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        let addr = addr.clone();
        let key = key.clone();
        let busy_lock = busy_lock.clone();
        thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                unsafe { bd_init(addr.as_ptr(), key.as_ptr()) };
                bd_set_timeout_ms(1_000 + n % 7);
                unsafe { bd_set_update_lock_path(busy_lock.as_ptr()) };
                bd_lock_updates();
                bd_updates_locked();
                bd_unlock_updates();
                if n % 5 == 0 {
                    bd_cleanup();
                }
            }
        })
    };

    let forks = 300;
    let mut stuck = Vec::new();
    let started = Instant::now();
    for i in 0..forks {
        let status = in_child(10, || {
            // Every call below must return, and at once: no network call
            // here has to wait for anything but the local server.
            if bd_set_timeout_ms(2_000) != OK
                || unsafe { bd_init(addr.as_ptr(), key.as_ptr()) } != OK
                || unsafe { bd_set_update_lock_path(child_lock_c.as_ptr()) } != OK
                || bd_lock_updates() != OK
                || bd_unlock_updates() != OK
            {
                return 2;
            }
            let (rc, text) =
                text_call(|buf, len| unsafe { bd_container_id(c"in-child".as_ptr(), buf, len) });
            bd_cleanup();
            if rc < 0 || text != "in-child" {
                return 3;
            }
            0
        });
        if !exited_ok(status) {
            stuck.push(format!("fork {i}: wait status {status}"));
            if stuck.len() >= 5 {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    bd_cleanup();
    unsafe { bd_set_update_lock_path(std::ptr::null()) };
    let _ = std::fs::remove_dir_all(&dir);
    // A child killed by its alarm (SIGALRM, 14) was blocked on a lock.
    assert!(
        stuck.is_empty(),
        "children that did not finish their calls ({:?} for {forks} forks): {stuck:?}",
        started.elapsed()
    );
}

extern "C" fn unlock_at_exit() {
    bd_unlock_updates();
}

#[test]
fn a_child_never_releases_the_parents_update_lock() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("bd-fork-owner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("updates.lock");
    let path_c = cstr(path.to_str().unwrap());
    assert_eq!(unsafe { bd_set_update_lock_path(path_c.as_ptr()) }, OK);
    assert_eq!(bd_lock_updates(), OK);
    // The guard a careful app registers; a forked helper that calls exit()
    // runs it too.
    assert_eq!(unsafe { libc::atexit(unlock_at_exit) }, 0);

    // 1. The child unlocks explicitly: the parent's file stays, and the child
    //    does not claim the lock (it cannot take it either).
    let status = in_child(10, || {
        if bd_unlock_updates() != OK {
            return 2;
        }
        if bd_updates_locked() != 1 {
            return 3;
        }
        if bd_lock_updates() != support::LOCKED {
            return 4;
        }
        0
    });
    assert!(exited_ok(status), "child wait status {status}");
    assert!(
        path.exists(),
        "the child's bd_unlock_updates removed the parent's lock file"
    );

    // 2. The child ends with exit(), which runs the inherited atexit guard.
    let status = in_child(10, || unsafe { libc::exit(0) });
    assert!(exited_ok(status), "child wait status {status}");
    assert!(
        path.exists(),
        "the child's atexit(bd_unlock_updates) removed the parent's lock file"
    );

    // The parent still holds it, flock included, and releases it itself.
    let file = std::fs::File::open(&path).unwrap();
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(rc, -1, "the parent's flock was released by the child");
    drop(file);
    assert_eq!(bd_unlock_updates(), OK);
    assert!(!path.exists());
    unsafe { bd_set_update_lock_path(std::ptr::null()) };
    let _ = std::fs::remove_dir_all(&dir);
}
