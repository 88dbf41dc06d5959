//! fork(): a child never uses a connection of its parent. One test per binary
//! process state matters here (the child is a copy of the whole test process),
//! so this file holds the fork tests alone.

mod support;

use std::ffi::c_int;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use balena_device::ffi::*;
use support::{cstr, init, text_call, OK};

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
