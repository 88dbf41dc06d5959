//! The API key stays secret: it never appears in `bd_last_error` text on any
//! error path (servers that echo the URL, the query or the key in bodies,
//! `Location` headers, error JSON; timeouts, refused connections, broken
//! answers) nor in the Debug output of the core types. And what goes on the
//! wire is percent-encoded: a key or service name cannot break the URL.

mod fault_server;
mod sim;
mod support;

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balena_device::client::percent_encode;
use balena_device::ffi::*;
use balena_device::{Client, Config};
use fault_server::{response, Conn, FaultServer, RawRequest};
use sim::{Sim, SimConfig};
use support::{closed_port, last_error, serial, setup, OK};

/// A key like the supervisor issues (32 hex characters).
const HEX_KEY: &str = "9f3c1e7a5b2d4068ac1e9b7d3f5a2c64";
/// A key with every character that means something in a URL.
const ODD_KEY: &str = "k+&=y/%?#sEcReT;@:,$!*'()[]~_-.";

/// `percent_encode(s)` with its hex digits in lower case (`%2f`, not `%2F`).
fn percent_encode_lower(s: &str) -> String {
    percent_encode(s)
        .split('%')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 || part.len() < 2 {
                part.to_string()
            } else {
                format!("{}{}", part[..2].to_ascii_lowercase(), &part[2..])
            }
        })
        .collect::<Vec<_>>()
        .join("%")
}

/// Every way the key could be spelled in a message: as is, percent-encoded
/// (upper- and lower-case hex), and any 12-character piece of those (a key
/// cut short by a clipped message is still a leak).
fn key_spellings(key: &str) -> Vec<String> {
    let upper = percent_encode(key);
    let lower = percent_encode_lower(key);
    let mut out = Vec::new();
    for whole in [key.to_string(), upper, lower] {
        let chars: Vec<char> = whole.chars().collect();
        for w in chars.windows(12.min(chars.len())) {
            out.push(w.iter().collect());
        }
        out.push(whole);
    }
    out.sort();
    out.dedup();
    out
}

fn assert_no_key(msg: &str, key: &str, case: &str) {
    for s in key_spellings(key) {
        assert!(
            !msg.contains(&s),
            "{case}: the key ({s:?}) shows in {msg:?}"
        );
    }
}

unsafe extern "C" fn ignore_line(_: *const c_char, _: usize, _: *mut c_void) -> c_int {
    0
}

/// One call of each request shape: GET, GET with a query, POST with a JSON
/// body, PATCH, a stream. Returns (name, status, message).
fn call_each() -> Vec<(&'static str, c_int, String)> {
    let mut out = Vec::new();
    let mut buf = vec![0 as c_char; 1024];
    let (b, l) = (buf.as_mut_ptr(), buf.len());
    // SAFETY (all): valid buffers, strings and callbacks.
    unsafe {
        let rc = bd_state_json(b, l);
        out.push(("bd_state_json", rc, last_error()));
        let rc = bd_container_id(c"svc&x=1".as_ptr(), b, l);
        out.push(("bd_container_id", rc, last_error()));
        let rc = bd_reboot(false);
        out.push(("bd_reboot", rc, last_error()));
        let rc = bd_set_device_tags_json(c"{\"a\":\"b\"}".as_ptr());
        out.push(("bd_set_device_tags_json", rc, last_error()));
        let rc = bd_journal_logs(c"{}".as_ptr(), Some(ignore_line), std::ptr::null_mut());
        out.push(("bd_journal_logs", rc, last_error()));
    }
    out
}

/// How a hostile or careless server echoes the request in its answers.
#[derive(Clone, Copy, Debug)]
enum Echo {
    /// 401 text with the request target.
    Unauthorized,
    /// Express-style 404 page with the URL.
    NotFoundHtml,
    /// 503 JSON whose message quotes the query, raw and decoded.
    ServerJsonQuery,
    /// 302 whose Location carries the key, raw and decoded.
    Redirect,
    /// 200 with a body that is not what the endpoint documents, quoting the
    /// whole request.
    Invalid,
    /// 423, 400, 409 with the decoded key in the body.
    Locked,
    BadRequest,
    Conflict,
    /// 503 text with the key percent-encoded in lower-case hex.
    LowerHex,
    /// 503 JSON with the key JSON-escaped (`\/`, `\u0026`).
    JsonEscaped,
    /// 503 text padded so that the key straddles the message's clip point.
    Straddle(usize),
}

fn json_escape_hard(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '/' => "\\/".to_string(),
            '&' => "\\u0026".to_string(),
            '"' => "\\\"".to_string(),
            '\\' => "\\\\".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn echo_answer(echo: Echo, req: &RawRequest) -> Vec<u8> {
    let key = req.query_param("apikey").unwrap_or_default();
    let target = req.target.clone();
    let raw = String::from_utf8_lossy(&req.raw).into_owned();
    let text = |status: u16, body: String| {
        response(
            status,
            &[("Content-Type", "text/html; charset=utf-8")],
            body.as_bytes(),
        )
    };
    let json = |status: u16, body: String| {
        response(
            status,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    match echo {
        Echo::Unauthorized => text(401, format!("Unauthorized {target} (key {key})")),
        Echo::NotFoundHtml => text(
            404,
            format!(
                "<!DOCTYPE html><html><body><pre>Cannot {} {target}</pre><p>{key}</p></body></html>",
                req.method
            ),
        ),
        Echo::ServerJsonQuery => json(
            503,
            serde_json::json!({
                "status": "failed",
                "message": format!("bad query {} (apikey={key})", req.raw_query()),
            })
            .to_string(),
        ),
        Echo::Redirect => {
            let loc = format!("http://127.0.0.1:1{target}&again={key}");
            response(302, &[("Location", &loc)], format!("Found. Redirecting to {loc}").as_bytes())
        }
        Echo::Invalid => json(200, format!("you sent: {raw} with key {key}")),
        Echo::Locked => json(
            423,
            serde_json::json!({"Data": "", "Error": format!("locked for {key}")}).to_string(),
        ),
        Echo::BadRequest => text(400, format!("Missing app id for key {key} at {target}")),
        Echo::Conflict => json(
            409,
            serde_json::json!({"status": "failed", "message": format!("no app for {key}")})
                .to_string(),
        ),
        Echo::LowerHex => text(503, format!("apikey={}", percent_encode_lower(&key))),
        Echo::JsonEscaped => json(
            503,
            format!(
                r#"{{"status":"failed","message":"rejected {}"}}"#,
                json_escape_hard(&key)
            ),
        ),
        Echo::Straddle(cut) => {
            // The readable excerpt of a body is clipped to 300 bytes: put the
            // key across that point.
            let pad = "x".repeat(300usize.saturating_sub(cut));
            text(503, format!("{pad}{key} and more text after it"))
        }
    }
}

#[test]
fn the_key_never_shows_in_last_error_when_servers_echo_it() {
    let _g = serial();
    let mut echoes = vec![
        Echo::Unauthorized,
        Echo::NotFoundHtml,
        Echo::ServerJsonQuery,
        Echo::Redirect,
        Echo::Invalid,
        Echo::Locked,
        Echo::BadRequest,
        Echo::Conflict,
        Echo::LowerHex,
        Echo::JsonEscaped,
    ];
    echoes.extend((1..40).step_by(3).map(Echo::Straddle));
    let current = Arc::new(Mutex::new(Echo::Unauthorized));
    let serving = Arc::clone(&current);
    let srv = FaultServer::answering(move |req| {
        let echo = *serving.lock().unwrap_or_else(|e| e.into_inner());
        echo_answer(echo, req)
    });
    for key in [HEX_KEY, ODD_KEY] {
        setup(&srv.address(), key, 2000);
        for &echo in &echoes {
            *current.lock().unwrap_or_else(|e| e.into_inner()) = echo;
            for (name, rc, msg) in call_each() {
                let case = format!("{name} / {echo:?} / key {key:?}");
                if rc >= 0 {
                    // Only a 200 can succeed (endpoints that ignore the body).
                    assert!(matches!(echo, Echo::Invalid), "{case}: got {rc}");
                    assert_eq!(msg, "", "{case}");
                } else {
                    assert!(!msg.is_empty(), "{case}");
                }
                assert_no_key(&msg, key, &case);
            }
        }
    }
    // The echoes really carried the key: the server received it every time.
    for r in srv.requests() {
        let k = r.query_param("apikey").unwrap_or_default();
        assert!(k == HEX_KEY || k == ODD_KEY, "{:?}", r.target);
    }
    bd_cleanup();
}

#[test]
fn the_key_never_shows_in_last_error_on_transport_failures() {
    let _g = serial();
    // Refused connection.
    setup(
        &format!("http://127.0.0.1:{}", closed_port()),
        ODD_KEY,
        1000,
    );
    for (name, rc, msg) in call_each() {
        assert_eq!(rc, bd_status::BD_ERR_CONNECT as c_int, "{name}: {msg}");
        assert_no_key(&msg, ODD_KEY, name);
    }
    // No answer (timeout), a reset mid-body (I/O), a huge body (too large),
    // garbage that is not HTTP (invalid response).
    type Script = fn(&mut Conn);
    let scripts: [(&str, Script); 4] = [
        ("timeout", |c| {
            if c.read_request().is_some() {
                c.hold(Duration::from_secs(10));
            }
        }),
        ("reset", |c| {
            if c.read_request().is_some() {
                c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"a\":");
                c.pause(Duration::from_millis(100));
                c.reset_on_close();
            }
        }),
        ("too large", |c| {
            if let Some(req) = c.read_request() {
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\n\r\n";
                let mut body = String::new();
                while body.len() < 64 * 1024 {
                    body.push_str(&req.target);
                }
                if c.write(head.as_bytes()) {
                    for _ in 0..128 {
                        if !c.write(body.as_bytes()) {
                            break;
                        }
                    }
                }
            }
        }),
        ("not http", |c| {
            if let Some(req) = c.read_request() {
                c.write(format!("SSH-2.0 {}\r\n\r\n", req.target).as_bytes());
            }
        }),
    ];
    for (what, script) in scripts {
        let srv = FaultServer::start(script);
        setup(&srv.address(), ODD_KEY, 500);
        for (name, rc, msg) in call_each() {
            let case = format!("{name} / {what}");
            assert!(rc < 0, "{case}: {rc}");
            assert_no_key(&msg, ODD_KEY, &case);
        }
    }
    bd_cleanup();
}

#[test]
fn the_key_never_shows_in_debug_output() {
    let _g = serial();
    for key in [HEX_KEY, ODD_KEY] {
        let config = Config::new(Some("http://127.0.0.1:48484"), Some(key)).unwrap();
        let shown = format!("{config:?} {config:#?}");
        assert_no_key(&shown, key, "Config");
        assert!(shown.contains("127.0.0.1:48484"), "{shown}");

        let client = Client::new(config);
        let shown = format!("{client:?} {client:#?}");
        assert_no_key(&shown, key, "Client");

        // Errors from a supervisor that rejects the key, and one that is down.
        let sim = Sim::start();
        let client = Client::new(Config::new(Some(&sim.address()), Some(key)).unwrap());
        let err = client.state_json().expect_err("the key is wrong");
        assert_eq!(err.http_status(), 401);
        let shown = format!("{err:?} {err:#?} {err} {}", err.message());
        assert_no_key(&shown, key, "Error (401)");
        let down = Client::new(
            Config::new(
                Some(&format!("http://127.0.0.1:{}", closed_port())),
                Some(key),
            )
            .unwrap(),
        );
        let err = down.reboot(true).expect_err("nothing listens");
        assert_no_key(&format!("{err:?} {err}"), key, "Error (connect)");
    }
}

#[test]
fn the_key_is_percent_encoded_on_the_wire_and_sent_once() {
    let _g = serial();
    let sim = Sim::start_with(SimConfig {
        api_key: ODD_KEY.to_string(),
        ..SimConfig::default()
    });
    setup(&sim.address(), ODD_KEY, 2000);
    let mut buf = vec![0 as c_char; 4096];
    // SAFETY: a valid buffer.
    let rc = unsafe { bd_state_json(buf.as_mut_ptr(), buf.len()) };
    assert!(
        rc > 0,
        "the simulator accepted the decoded key: {}",
        last_error()
    );
    assert_eq!(bd_reboot(false), OK, "{}", last_error());

    let encoded = "k%2B%26%3Dy%2F%25%3F%23sEcReT%3B%40%3A%2C%24%21%2A%27%28%29%5B%5D~_-.";
    assert_eq!(percent_encode(ODD_KEY), encoded);
    for r in sim.requests() {
        assert_eq!(
            r.raw_query,
            format!("apikey={encoded}"),
            "{} {}",
            r.method,
            r.path
        );
        assert_eq!(r.query_param("apikey"), Some(ODD_KEY));
        assert_eq!(r.query.len(), 1, "{:?}", r.query);
        // Only in the query: no header carries it.
        for (name, value) in &r.headers {
            assert!(!value.contains("sEcReT"), "header {name}: {value}");
        }
        assert!(!r.body_text().contains("sEcReT"));
    }

    // The raw bytes: the key appears exactly once, encoded, in the request line.
    let srv =
        FaultServer::answering(|_| response(200, &[("Content-Type", "application/json")], b"{}"));
    setup(&srv.address(), ODD_KEY, 2000);
    // SAFETY: a valid buffer.
    unsafe { bd_state_json(buf.as_mut_ptr(), buf.len()) };
    let raw = String::from_utf8_lossy(&srv.requests()[0].raw).into_owned();
    assert_eq!(raw.matches(encoded).count(), 1, "{raw}");
    assert_eq!(raw.matches("sEcReT").count(), 1, "{raw}");
    assert!(
        raw.starts_with(&format!("GET /v1/device?apikey={encoded} HTTP/1.1\r\n")),
        "{raw}"
    );
    bd_cleanup();
}

#[test]
fn service_names_are_encoded_in_queries_and_escaped_in_bodies() {
    let _g = serial();
    let sim = Sim::start_with(SimConfig {
        multi_container: true,
        ..SimConfig::default()
    });
    setup(&sim.address(), &sim.api_key(), 2000);
    let name = "my svc&apikey=stolen+1/é?#\"q\\";
    let cname = CString::new(name).unwrap();
    let mut buf = vec![0 as c_char; 256];
    // SAFETY: valid strings and buffer.
    let rc = unsafe { bd_container_id(cname.as_ptr(), buf.as_mut_ptr(), buf.len()) };
    assert_eq!(
        rc,
        bd_status::BD_ERR_SERVER as c_int,
        "unknown service: {}",
        last_error()
    );
    let r = sim.last_request().unwrap();
    assert_eq!(r.path, "/v2/containerId");
    assert_eq!(
        r.raw_query,
        format!(
            "service=my%20svc%26apikey%3Dstolen%2B1%2F%C3%A9%3F%23%22q%5C&apikey={}",
            percent_encode(&sim.api_key())
        )
    );
    assert_eq!(r.query_param("service"), Some(name));
    // The name could not inject a second apikey: exactly one, the real one.
    let keys: Vec<&str> = r
        .query
        .iter()
        .filter(|(k, _)| k == "apikey")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(keys, [sim.api_key().as_str()]);
    assert!(!last_error().contains(&sim.api_key()), "{}", last_error());

    // In a service action the name travels in the JSON body, escaped.
    // SAFETY: a valid string.
    let rc = unsafe { bd_restart_service(sim.app_id(), cname.as_ptr(), false) };
    assert!(rc < 0, "no such service");
    let r = sim.last_request().unwrap();
    assert_eq!(
        r.path,
        format!("/v2/applications/{}/restart-service", sim.app_id())
    );
    assert_eq!(r.query.len(), 1);
    let body = r.json().expect("the body is JSON");
    assert_eq!(body["serviceName"], name);
    assert_eq!(body["force"], false);
    assert_eq!(body.as_object().unwrap().len(), 2);
    bd_cleanup();
}
