//! Checks the supervisor simulator itself with raw HTTP over TcpStream, so
//! that tests of the library written against it can be trusted.

mod sim;

use serde_json::{json, Value};
use sim::{Sim, SimConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// A tiny raw HTTP client.

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(sim: &Sim) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", sim.port())).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Conn {
            reader: BufReader::new(s),
        }
    }

    fn send_raw(&mut self, data: &[u8]) {
        self.reader.get_mut().write_all(data).expect("write");
    }

    fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let chunked = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
        if !chunked && (!body.is_empty() || method != "GET") {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes);
    }

    fn read_head(&mut self) -> Option<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            self.reader.read_line(&mut l).ok()?;
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':')?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Some(Resp {
            status,
            headers,
            body: Vec::new(),
        })
    }

    /// Reads one chunk of a chunked body; `None` at the terminating chunk.
    fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let mut size = String::new();
        self.reader.read_line(&mut size).ok()?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        let mut data = vec![0u8; n];
        self.reader.read_exact(&mut data).ok()?;
        let mut crlf = [0u8; 2];
        self.reader.read_exact(&mut crlf).ok()?;
        if n == 0 {
            None
        } else {
            Some(data)
        }
    }

    /// Reads a whole response; `None` if the connection closed first.
    fn read(&mut self) -> Option<Resp> {
        let mut r = self.read_head()?;
        if r.status == 204 {
            return Some(r);
        }
        if r.header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            while let Some(c) = self.read_chunk() {
                r.body.extend_from_slice(&c);
            }
        } else if let Some(n) = r.header("content-length") {
            let mut body = vec![0u8; n.parse().unwrap()];
            self.reader.read_exact(&mut body).ok()?;
            r.body = body;
        }
        Some(r)
    }

    fn call(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.send(method, target, headers, body);
        self.read()
            .unwrap_or_else(|| panic!("no response to {method} {target}"))
    }

    /// True when the server has closed the connection (EOF within `within`).
    fn closed_within(&mut self, within: Duration) -> bool {
        self.reader
            .get_ref()
            .set_read_timeout(Some(within))
            .unwrap();
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}

fn call(sim: &Sim, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    Conn::open(sim).call(method, target, headers, body)
}

/// `target` with the sim's key as `apikey` query parameter.
fn k(sim: &Sim, target: &str) -> String {
    let sep = if target.contains('?') { '&' } else { '?' };
    format!("{target}{sep}apikey={}", sim.api_key())
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn post_json(sim: &Sim, path: &str, body: Value) -> Resp {
    call(
        sim,
        "POST",
        &k(sim, path),
        &[JSON],
        body.to_string().as_bytes(),
    )
}

fn get(sim: &Sim, path: &str) -> Resp {
    call(sim, "GET", &k(sim, path), &[], b"")
}

// ---------------------------------------------------------------------------

#[test]
fn open_routes_and_text_content_types() {
    let sim = Sim::start();
    let r = call(&sim, "GET", "/ping", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(r.header("keep-alive"), Some("timeout=5"));

    let r = call(&sim, "GET", "/v1/healthy", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    sim.with_state(|s| s.healthy = false);
    let r = call(&sim, "GET", "/v1/healthy", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (500, "Unhealthy"));
}

#[test]
fn auth_precedence() {
    let sim = Sim::start_with(SimConfig {
        api_key: "0123456789abcdef_ABC".into(),
        ..SimConfig::default()
    });
    let key = sim.api_key();
    let bearer = format!("Bearer {key}");
    let apikey_lc = format!("apikey {key}");

    let r = call(&sim, "GET", "/v1/device", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (401, "Unauthorized"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));

    assert_eq!(get(&sim, "/v1/device").status, 200);
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(call(&sim, "GET", "/v1/device", &auth, b"").status, 200);
    let auth_lc = [("authorization", apikey_lc.as_str())];
    assert_eq!(call(&sim, "GET", "/v1/device", &auth_lc, b"").status, 200);
    // A wrong query key wins over a right header.
    assert_eq!(
        call(&sim, "GET", "/v1/device?apikey=wrong", &auth, b"").status,
        401
    );
    // An empty query key does not.
    assert_eq!(
        call(&sim, "GET", "/v1/device?apikey=", &auth, b"").status,
        200
    );
    let basic = format!("Basic {key}");
    assert_eq!(
        call(&sim, "GET", "/v1/device", &[("Authorization", &basic)], b"").status,
        401
    );
    // The header form takes word characters only: a key with a dash works
    // in the query parameter alone.
    sim.with_state(|s| s.api_key = "with-dash".into());
    let dashed = [("Authorization", "Bearer with-dash")];
    assert_eq!(call(&sim, "GET", "/v1/device", &dashed, b"").status, 401);
    assert_eq!(get(&sim, "/v1/device").status, 200);
    // Local mode: no key checked at all.
    sim.with_state(|s| s.local_mode = true);
    assert_eq!(call(&sim, "GET", "/v1/device", &[], b"").status, 200);
}

#[test]
fn unknown_route_is_404_with_key_401_without() {
    let sim = Sim::start();
    let r = get(&sim, "/v9/x");
    assert_eq!(r.status, 404);
    assert!(r.text().starts_with("<!DOCTYPE html>"), "{}", r.text());
    assert!(r.text().contains("<pre>Cannot GET /v9/x</pre>"));
    assert!(!r.text().contains(&sim.api_key()));
    assert_eq!(call(&sim, "GET", "/v9/x", &[], b"").status, 401);
    let r = call(&sim, "POST", &k(&sim, "/ping"), &[], b"");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("Cannot POST /ping"));
    // Express routing: case-insensitive, trailing slash ignored.
    assert_eq!(get(&sim, "/V1/Device/").status, 200);
}

#[test]
fn body_parsed_only_as_json() {
    let sim = Sim::start_with(SimConfig {
        locked: true,
        ..SimConfig::default()
    });
    let force = br#"{"force":true}"#;
    let url = k(&sim, "/v1/reboot");
    // Not declared JSON: ignored, so force is false and the lock holds.
    for ct in ["text/plain", "application/jsonx"] {
        let r = call(&sim, "POST", &url, &[("Content-Type", ct)], force);
        assert_eq!(r.status, 423, "{ct}");
        assert_eq!(r.json()["Data"], "");
        assert!(r.json()["Error"]
            .as_str()
            .unwrap()
            .contains("Lockfile exists"));
    }
    let r = call(&sim, "POST", &url, &[], force);
    assert_eq!(r.status, 423);
    assert!(sim.state().locked);
    // Declared JSON (with parameters): forced, and the lock is gone after.
    let r = call(
        &sim,
        "POST",
        &url,
        &[("Content-Type", "Application/JSON; charset=utf-8")],
        force,
    );
    assert_eq!(r.status, 202);
    assert_eq!(r.json(), json!({"Data": "OK", "Error": null}));
    assert!(!sim.state().locked);
    assert_eq!(post_json(&sim, "/v1/shutdown", json!({})).status, 202);
    // Like Express, an urlencoded form is parsed too (values are strings,
    // and "1" is truthy).
    sim.with_state(|s| s.locked = true);
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let shutdown = k(&sim, "/v1/shutdown");
    assert_eq!(
        call(&sim, "POST", &shutdown, &[form], b"force=0").status,
        423
    );
    assert_eq!(
        call(&sim, "POST", &shutdown, &[form], b"force=1").status,
        202
    );
    assert_eq!(
        sim.state().actions,
        vec!["reboot(force)", "shutdown", "shutdown(force)"]
    );
}

#[test]
fn bad_json_is_503_after_auth() {
    let sim = Sim::start();
    let url = k(&sim, "/v1/reboot");
    for body in [&b"not json"[..], b"\"force\"", b"5", b"{\"force\":", b" "] {
        let r = call(&sim, "POST", &url, &[JSON], body);
        assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(r.json()["status"], "failed");
        assert!(r.json()["message"].as_str().unwrap().len() > 3);
    }
    // The key check comes first; unknown routes parse bodies too.
    assert_eq!(
        call(&sim, "POST", "/v1/reboot", &[JSON], b"nope").status,
        401
    );
    assert_eq!(
        call(&sim, "POST", &k(&sim, "/v9/x"), &[JSON], b"nope").status,
        503
    );
    // Empty JSON body is fine, and an array is accepted as JSON.
    assert_eq!(call(&sim, "POST", &url, &[JSON], b"").status, 202);
    assert_eq!(call(&sim, "POST", &url, &[JSON], b"[1]").status, 202);
    // Over 10 MB: 503.
    let mut big = b"{\"force\":false,\"pad\":\"".to_vec();
    big.resize(10 * 1024 * 1024 + 10, b'a');
    big.extend_from_slice(b"\"}");
    let r = call(&sim, "POST", &url, &[JSON], &big);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["message"], "request entity too large");
}

#[test]
fn chunked_request_body_and_recording() {
    let sim = Sim::start();
    let mut c = Conn::open(&sim);
    let target = format!("/v2/device/tags?apikey={}&x=a%20b+c&y=%2F", sim.api_key());
    c.send(
        "PATCH",
        &target,
        &[JSON, ("Transfer-Encoding", "chunked"), ("X-Custom", "Yes")],
        b"6\r\n{\"env\"\r\n9;ext=1\r\n:\"prod\"}\r\n0\r\n\r\n",
    );
    let r = c.read().unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), json!({"status": "success"}));
    let tags = get(&sim, "/v2/device/tags").json();
    assert_eq!(
        tags,
        json!({"status": "success", "tags": [{"id": 1, "name": "env", "value": "prod"}]})
    );

    let reqs = sim.requests();
    assert_eq!(reqs.len(), 2);
    let rec = &reqs[0];
    assert_eq!(rec.method, "PATCH");
    assert_eq!(rec.path, "/v2/device/tags");
    assert_eq!(rec.query_param("x"), Some("a b c"));
    assert_eq!(rec.query_param("y"), Some("/"));
    assert!(rec.raw_query.ends_with("&x=a%20b+c&y=%2F"));
    assert_eq!(rec.header("X-CUSTOM"), Some("Yes"));
    assert!(rec.headers.iter().any(|(k, _)| k == "x-custom"));
    assert_eq!(rec.json(), Some(json!({"env": "prod"})));
    assert_ne!(rec.conn_id, reqs[1].conn_id);
    assert_eq!(sim.last_request().unwrap().method, "GET");
    sim.clear_requests();
    assert!(sim.requests().is_empty());
}

#[test]
fn keep_alive_then_idle_close() {
    let sim = Sim::start_with(SimConfig {
        idle_timeout: Duration::from_millis(300),
        ..SimConfig::default()
    });
    let mut c = Conn::open(&sim);
    let path = k(&sim, "/v2/version");
    let r1 = c.call("GET", &path, &[], b"");
    let r2 = c.call("GET", &path, &[], b"");
    assert_eq!(r1.json(), json!({"status": "success", "version": "19.0.5"}));
    assert_eq!(r2.status, 200);
    assert_eq!(r2.header("connection"), Some("keep-alive"));
    let ids: Vec<u64> = sim.requests().iter().map(|r| r.conn_id).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1]);
    assert_eq!(sim.connections(), 1);

    // Still open shortly after the last response ...
    let t = Instant::now();
    assert!(!c.closed_within(Duration::from_millis(150)));
    // ... closed (EOF, no response bytes) once idle long enough.
    assert!(c.closed_within(Duration::from_millis(1000)));
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1000),
        "{waited:?}"
    );

    // `Connection: close` is honoured.
    let mut c = Conn::open(&sim);
    let r = c.call("GET", &path, &[("Connection", "close")], b"");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_millis(200)));
    assert_eq!(sim.connections(), 2);
}

#[test]
fn local_logs_stream_line_by_line() {
    let sim = Sim::start_with(SimConfig {
        log_interval: Duration::from_millis(60),
        local_mode: true,
        ..SimConfig::default()
    });
    let mut c = Conn::open(&sim);
    c.send("GET", &k(&sim, "/v2/local/logs"), &[], b"");
    let head = c.read_head().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("content-length"), None);
    let first = c.read_chunk().unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&first).unwrap(),
        json!({"message": "Streaming logs", "isSystem": true})
    );
    assert!(first.ends_with(b"\n"));
    let start = Instant::now();
    let mut arrivals = Vec::new();
    for _ in 0..3 {
        let chunk = c.read_chunk().unwrap();
        arrivals.push(start.elapsed());
        assert!(chunk.ends_with(b"\n"));
        let v: Value = serde_json::from_slice(&chunk).unwrap();
        assert_eq!(v["serviceName"], "main");
        assert!(v["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(v["message"].as_str().is_some());
    }
    // One line per interval, not all at once.
    assert!(arrivals[2] >= Duration::from_millis(120), "{arrivals:?}");
    drop(c);
    // The server survives the client leaving.
    assert_eq!(call(&sim, "GET", "/ping", &[], b"").status, 200);
}

#[test]
fn journal_count_split_lines_and_json() {
    let sim = Sim::start();
    let mut c = Conn::open(&sim);
    c.send(
        "POST",
        &k(&sim, "/v2/journal-logs"),
        &[JSON],
        br#"{"count":3,"follow":false}"#,
    );
    let head = c.read_head().unwrap();
    assert_eq!(head.status, 200);
    let mut chunks = Vec::new();
    while let Some(ch) = c.read_chunk() {
        chunks.push(ch);
    }
    assert!(chunks.len() >= 6, "lines must be split over chunks");
    assert!(chunks.iter().any(|ch| !ch.ends_with(b"\n")));
    let text = String::from_utf8(chunks.concat()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text:?}");
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l.ends_with(&format!("device balena-supervisor[1]: line {}", i + 1)),
            "{l}"
        );
    }
    // The connection stays usable after the finished stream.
    let r = c.call(
        "POST",
        &k(&sim, "/v2/journal-logs"),
        &[JSON],
        br#"{"count":2,"format":"json"}"#,
    );
    let text = r.text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["MESSAGE"], "line 2");
    assert_eq!(
        sim.requests()[1].json(),
        Some(json!({"count": 2, "format": "json"}))
    );
}

#[test]
fn journal_follow_runs_until_client_leaves() {
    let sim = Sim::start_with(SimConfig {
        log_interval: Duration::from_millis(40),
        ..SimConfig::default()
    });
    let mut c = Conn::open(&sim);
    c.send(
        "POST",
        &k(&sim, "/v2/journal-logs"),
        &[JSON],
        br#"{"count":1,"follow":true}"#,
    );
    assert_eq!(c.read_head().unwrap().status, 200);
    let mut text = Vec::new();
    while text.iter().filter(|&&b| b == b'\n').count() < 4 {
        text.extend(c.read_chunk().expect("stream ended early"));
    }
    assert!(String::from_utf8(text).unwrap().contains("line 4"));
}

#[test]
fn control_api() {
    let sim = Sim::start();
    let r = call(
        &sim,
        "POST",
        "/_sim/state",
        &[],
        br#"{"locked":true,"stall_ms":0}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["locked"], true);
    assert!(sim.state().locked);
    assert_eq!(
        post_json(&sim, "/v1/reboot", json!({"force": false})).status,
        423
    );

    let st = call(&sim, "GET", "/_sim/state", &[], b"").json();
    assert_eq!(st["api_key"], sim.api_key());
    assert!(st["connections"].as_u64().unwrap() >= 3);
    assert_eq!(st["api_connections"], 1);

    let list = call(&sim, "GET", "/_sim/requests", &[], b"").json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "control requests are not recorded");
    assert_eq!(list[0]["method"], "POST");
    assert_eq!(list[0]["path"], "/v1/reboot");
    assert_eq!(list[0]["query"]["apikey"], sim.api_key());
    assert_eq!(list[0]["headers"]["content-type"], "application/json");
    assert_eq!(list[0]["body"], r#"{"force":false}"#);
    let last = call(&sim, "GET", "/_sim/last", &[], b"").json();
    assert_eq!(&last, &list[0]);

    let r = call(&sim, "POST", "/_sim/state", &[], br#"{"lockd":true}"#);
    assert_eq!(r.status, 400);
    let r = call(
        &sim,
        "POST",
        "/_sim/state",
        &[],
        br#"{"scoped_keys":[{"key":"scopedkey","apps":[99]}],"api_key":"newkey","device":{"status":"Downloading"}}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(sim.api_key(), "newkey");
    assert_eq!(
        get(&sim, "/v1/device").json(),
        json!({"status": "Downloading"})
    );

    let r = call(&sim, "POST", "/_sim/reset", &[], b"");
    assert_eq!(r.json()["locked"], false);
    assert_eq!(sim.api_key(), "sim-key-0123456789abcdef");
    assert_eq!(
        call(&sim, "GET", "/_sim/last", &[], b"").json(),
        Value::Null
    );
    assert_eq!(call(&sim, "GET", "/_sim/nope", &[], b"").status, 404);
}

#[test]
fn regenerate_api_key() {
    let sim = Sim::start();
    let old = sim.api_key();
    let r = call(&sim, "POST", &k(&sim, "/v1/regenerate-api-key"), &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let new = r.text();
    assert_eq!(new.len(), 32);
    assert!(new.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(sim.api_key(), new);
    let old_url = format!("/v1/device?apikey={old}");
    assert_eq!(call(&sim, "GET", &old_url, &[], b"").status, 401);
    assert_eq!(get(&sim, "/v1/device").status, 200);
}

#[test]
fn v1_update_restart_purge() {
    let sim = Sim::start();
    let r = post_json(&sim, "/v1/update", json!({"force": false}));
    assert_eq!((r.status, r.text().as_str()), (202, "Accepted"));
    let r = post_json(&sim, "/v1/update", json!({"force": true}));
    assert_eq!((r.status, r.body.len()), (204, 0));
    sim.with_state(|s| {
        s.instant_updates = true;
        s.locked = true;
    });
    assert_eq!(post_json(&sim, "/v1/update", json!({})).status, 204);

    let r = post_json(&sim, "/v1/restart", json!({}));
    assert_eq!((r.status, r.text().as_str()), (400, "Missing app id"));
    let r = post_json(&sim, "/v1/purge", json!({"appId": "abc"}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "Invalid or missing appId")
    );
    let r = call_key(
        &sim,
        &sim.global_key(),
        "POST",
        "/v1/restart",
        json!({"appId": 999}),
    );
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json()["message"],
        "Application with ID 999 is not in the current state"
    );
    let r = post_json(&sim, "/v1/restart", json!({"appId": 1234}));
    assert_eq!(r.status, 423);
    assert_eq!(r.json()["status"], "failed");
    let r = post_json(
        &sim,
        "/v1/restart",
        json!({"appId": "1234", "force": "true"}),
    );
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
    let r = post_json(&sim, "/v1/purge", json!({"appId": 1234}));
    assert_eq!(r.json(), json!({"Data": "OK", "Error": ""}));

    // Scoped key outside its apps.
    sim.with_state(|s| s.scoped_keys = vec![("scoped".into(), vec![77])]);
    let r = call(
        &sim,
        "POST",
        "/v1/restart?apikey=scoped",
        &[JSON],
        br#"{"appId":1234}"#,
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"status": "failed", "message": "Unauthorized"})
    );
    let r = call(&sim, "GET", "/v1/apps/1234?apikey=scoped", &[], b"");
    assert_eq!(r.json()["message"], "Application is not available");
    let r = call(&sim, "POST", "/v1/apps/1234/stop?apikey=scoped", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (401, "Unauthorized"));
    let r = call(
        &sim,
        "GET",
        "/v2/applications/1234/state?apikey=scoped",
        &[],
        b"",
    );
    assert_eq!(r.status, 409);
    assert_eq!(
        call(&sim, "GET", "/v1/device?apikey=scoped", &[], b"").status,
        200
    );
}

#[test]
fn v1_apps_stop_start_and_device_status() {
    let sim = Sim::start();
    let r = get(&sim, "/v1/apps/1234");
    assert_eq!(r.status, 200);
    let app = r.json();
    assert_eq!(app["appId"], 1234);
    assert_eq!(app["containerId"].as_str().unwrap().len(), 64);
    assert_eq!(
        app["env"],
        json!({"GREETING": "hello", "BALENA_APP_ID": "1234"})
    );
    assert_eq!(get(&sim, "/v1/apps/xyz").text(), "Missing app id");
    let global = sim.global_key();
    assert_eq!(
        call_key(&sim, &global, "GET", "/v1/apps/55", json!({})).text(),
        "App not found"
    );

    sim.with_state(|s| s.locked = true);
    let r = post_json(&sim, "/v1/apps/1234/stop", json!({}));
    assert_eq!(r.status, 423);
    let r = post_json(&sim, "/v1/apps/1234/stop", json!({"force": 1}));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["containerId"], app["containerId"]);
    assert_eq!(get(&sim, "/v1/device").json()["status"], "exited");
    sim.with_state(|s| s.locked = true);
    assert_eq!(
        post_json(&sim, "/v1/apps/1234/start", json!({})).status,
        200
    );
    let dev = get(&sim, "/v1/device").json();
    assert_eq!(dev["status"], "Idle");
    assert_eq!(dev["download_progress"], Value::Null);
    assert_eq!(dev["api_port"], 48484);

    let r = post_json(&sim, "/v1/apps/x1/stop", json!({}));
    assert_eq!((r.status, r.text().as_str()), (400, "Invalid app id"));
    let r = call_key(&sim, &global, "POST", "/v1/apps/4321/stop", json!({}));
    assert_eq!(r.status, 503);

    sim.with_state(|s| s.multi_container = true);
    let r = get(&sim, "/v1/apps/1234");
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            400,
            "Some v1 endpoints are only allowed on single-container apps"
        )
    );
    let r = post_json(&sim, "/v1/apps/1234/start", json!({}));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Use the v2 service action endpoints"));
}

#[test]
fn v1_host_config() {
    let sim = Sim::start();
    let cfg = get(&sim, "/v1/device/host-config").json();
    assert_eq!(
        cfg,
        json!({"network": {"hostname": "device"}}),
        "no proxy: no key"
    );
    let path = k(&sim, "/v1/device/host-config");
    let patch = |body: Value| call(&sim, "PATCH", &path, &[JSON], body.to_string().as_bytes());
    assert_eq!(patch(json!({"hostname": "x"})).status, 400);
    sim.with_state(|s| s.locked = true);
    let r = patch(json!({"network": {"hostname": "newname"}}));
    assert_eq!(r.status, 423);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    // An unchanged hostname takes the lock too.
    let host = cfg["network"]["hostname"].clone();
    assert_eq!(patch(json!({"network": {"hostname": host}})).status, 423);
    let r = patch(json!({"network": {"hostname": "newname"}, "force": true}));
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
    assert!(!sim.state().locked);
    assert_eq!(
        get(&sim, "/v1/device/host-config").json()["network"]["hostname"],
        "newname"
    );
}

#[test]
fn v2_service_actions() {
    let sim = Sim::start();
    let stop = "/v2/applications/1234/stop-service";
    // Single container: any name acts on the one service.
    let r = post_json(&sim, stop, json!({"serviceName": "whatever"}));
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
    assert_eq!(
        sim.state().service_status(1234, "main").as_deref(),
        Some("exited")
    );
    assert_eq!(
        post_json(
            &sim,
            "/v2/applications/1234/start-service",
            json!({"imageId": 1001})
        )
        .status,
        200
    );
    assert_eq!(
        sim.state().service_status(1234, "main").as_deref(),
        Some("Running")
    );

    sim.with_state(|s| s.multi_container = true);
    let r = post_json(&sim, stop, json!({"serviceName": "nope"}));
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            404,
            "Service not found, a container must exist for this endpoint to work"
        )
    );
    assert_eq!(post_json(&sim, stop, json!({"force": true})).status, 400);
    let r = post_json(&sim, "/v2/applications/abc/stop-service", json!({}));
    assert_eq!(
        r.json(),
        json!({"status": "failed", "message": "Invalid app id"})
    );
    let r = call_key(
        &sim,
        &sim.global_key(),
        "POST",
        "/v2/applications/999/stop-service",
        json!({"serviceName": "main"}),
    );
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json()["message"],
        "Cannot read properties of undefined (reading 'volumes')"
    );
    sim.with_state(|s| s.locked = true);
    assert_eq!(post_json(&sim, stop, json!({"imageId": 1002})).status, 423);
    assert_eq!(
        post_json(
            &sim,
            "/v2/applications/1234/start-service",
            json!({"serviceName": "worker"})
        )
        .status,
        200
    );
    assert_eq!(
        post_json(&sim, stop, json!({"imageId": 1002, "force": true})).status,
        200
    );
    let st = sim.state();
    assert_eq!(st.service_status(1234, "worker").as_deref(), Some("exited"));
    assert_eq!(st.service_status(1234, "main").as_deref(), Some("Running"));
    assert!(!st.locked);

    let r = post_json(&sim, "/v2/applications/0/restart", json!({}));
    assert_eq!(r.json()["message"], "Missing app id");
    sim.with_state(|s| s.locked = true);
    assert_eq!(
        post_json(&sim, "/v2/applications/1234/purge", json!({})).status,
        423
    );
    let r = post_json(
        &sim,
        "/v2/applications/1234/restart",
        json!({"force": true}),
    );
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
}

#[test]
fn v2_state_and_device_endpoints() {
    let sim = Sim::start();
    let apps = get(&sim, "/v2/applications/state").json();
    assert_eq!(apps["myapp"]["appId"], 1234);
    assert_eq!(apps["myapp"]["services"]["main"]["status"], "Running");
    let r = get(&sim, "/v2/applications/77/state");
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["message"], "Application ID does not exist: 77");
    assert_eq!(get(&sim, "/v2/applications/x/state").status, 400);
    assert!(get(&sim, "/v2/applications/1234/state").json()["local"]["1234"].is_object());
    let st = get(&sim, "/v2/state/status").json();
    assert_eq!(st["appState"], "applied");
    assert_eq!(st["containers"][0]["serviceName"], "main");

    let ids = get(&sim, "/v2/containerId").json();
    assert_eq!(ids["services"]["main"].as_str().unwrap().len(), 64);
    let one = get(&sim, "/v2/containerId?service=main").json();
    assert_eq!(one["containerId"], ids["services"]["main"]);
    let r = get(&sim, "/v2/containerId?service=nope");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["message"], "Could not find service with that name");

    assert_eq!(
        get(&sim, "/v2/device/name").json()["deviceName"],
        "sim-device"
    );
    assert_eq!(get(&sim, "/v2/device/vpn").json()["vpn"]["enabled"], true);
    assert_eq!(get(&sim, "/v2/cleanup-volumes").json()["status"], "success");
    assert_eq!(
        get(&sim, "/v2/local/device-info").json()["info"]["deviceType"],
        "raspberrypi4-64"
    );

    let tags = k(&sim, "/v2/device/tags");
    for bad in [json!({"a": 1}), json!({"a b": "x"})] {
        let r = call(&sim, "PATCH", &tags, &[JSON], bad.to_string().as_bytes());
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["status"], "failed");
    }
    sim.with_state(|s| s.tags_api_down = true);
    assert_eq!(get(&sim, "/v2/device/tags").status, 500);
    let r = call(&sim, "PATCH", &tags, &[JSON], br#"{"a":"b"}"#);
    assert_eq!(r.status, 500);

    let target = json!({"local": {"name": "x", "config": {}, "apps": {}}});
    let r = post_json(&sim, "/v2/local/target-state", target.clone());
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["message"],
        "Target state can only set when device is in local mode"
    );
    sim.with_state(|s| s.local_mode = true);
    // A `local` that is not an object counts as missing (the real route
    // reads `local?.name` and the like).
    assert_eq!(
        post_json(&sim, "/v2/local/target-state", json!({"local": 1})).status,
        200
    );
    let r = post_json(&sim, "/v2/local/target-state", target.clone());
    assert_eq!(r.json(), json!({"status": "success", "message": "OK"}));
    assert_eq!(
        get(&sim, "/v2/local/target-state").json(),
        json!({"status": "success", "state": target})
    );
}

#[test]
fn faults_crash_and_stall() {
    let sim = Sim::start();
    sim.with_state(|s| s.crash_next = true);
    let mut c = Conn::open(&sim);
    c.send("GET", &k(&sim, "/v2/state/status"), &[], b"");
    assert!(c.read().is_none(), "expected a dropped connection");
    assert_eq!(sim.requests().len(), 1);
    assert_eq!(get(&sim, "/v2/state/status").status, 200);

    sim.with_state(|s| s.stall_ms = 200);
    let t = Instant::now();
    assert_eq!(call(&sim, "GET", "/ping", &[], b"").status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
    let t = Instant::now();
    assert_eq!(call(&sim, "GET", "/_sim/state", &[], b"").status, 200);
    assert!(t.elapsed() < Duration::from_millis(200));
}

#[test]
fn stop_closes_listener_and_connections() {
    let sim = Sim::start();
    let port = sim.port();
    let mut c = Conn::open(&sim);
    assert_eq!(c.call("GET", "/ping", &[], b"").status, 200);
    sim.stop();
    assert!(c.closed_within(Duration::from_millis(500)));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

// ---------------------------------------------------------------------------
// Behaviours matched to the real supervisor routes (issue 8).

fn call_key(sim: &Sim, key: &str, method: &str, path: &str, body: Value) -> Resp {
    let sep = if path.contains('?') { '&' } else { '?' };
    call(
        sim,
        method,
        &format!("{path}{sep}apikey={key}"),
        &[JSON],
        body.to_string().as_bytes(),
    )
}

fn set_state(sim: &Sim, doc: Value) {
    let r = call(sim, "POST", "/_sim/state", &[], doc.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn container_key_is_scoped_to_its_app_global_key_is_not() {
    let sim = Sim::start();
    let app_key = sim.api_key();
    let global = sim.global_key();
    assert_ne!(app_key, global);
    // Own app: fine with both.
    let r = call_key(
        &sim,
        &app_key,
        "POST",
        "/v1/restart",
        json!({"appId": 1234}),
    );
    assert_eq!(r.status, 200);
    // Another app: 401 with the container's key, the app's absence with the global one.
    let r = call_key(
        &sim,
        &app_key,
        "POST",
        "/v1/restart",
        json!({"appId": 9999}),
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"status": "failed", "message": "Unauthorized"})
    );
    let r = call_key(&sim, &app_key, "GET", "/v1/apps/9999", json!({}));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Application is not available");
    let r = call_key(&sim, &app_key, "POST", "/v1/apps/9999/stop", json!({}));
    assert_eq!((r.status, r.text().as_str()), (401, "Unauthorized"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let r = call_key(&sim, &global, "POST", "/v1/restart", json!({"appId": 9999}));
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json()["message"],
        "Application with ID 9999 is not in the current state"
    );
    // The state routes show only the key's apps.
    sim.with_state(|s| {
        let mut other = s.apps[0].clone();
        other.app_id = 4321;
        other.name = "other".into();
        s.apps.push(other);
    });
    let r = call_key(&sim, &app_key, "GET", "/v2/applications/state", json!({}));
    assert_eq!(r.json().as_object().unwrap().len(), 1);
    let r = call_key(&sim, &global, "GET", "/v2/applications/state", json!({}));
    assert_eq!(r.json().as_object().unwrap().len(), 2);
}

#[test]
fn regenerated_keys_keep_their_scope_and_the_old_one_dies() {
    let sim = Sim::start();
    for which in ["app", "global"] {
        let old = if which == "app" {
            sim.api_key()
        } else {
            sim.global_key()
        };
        let r = call_key(&sim, &old, "POST", "/v1/regenerate-api-key", json!({}));
        assert_eq!(r.status, 200);
        let new = r.text();
        assert_eq!(new.len(), 32, "{which}");
        assert_eq!(
            call_key(&sim, &old, "GET", "/v2/version", json!({})).status,
            401,
            "old {which} key"
        );
        assert_eq!(
            call_key(&sim, &new, "GET", "/v2/version", json!({})).status,
            200
        );
        let other = call_key(&sim, &new, "POST", "/v1/restart", json!({"appId": 9999})).status;
        assert_eq!(other, if which == "app" { 401 } else { 503 }, "{which}");
        let st = call(&sim, "GET", "/_sim/state", &[], b"").json();
        let field = if which == "app" {
            "api_key"
        } else {
            "global_key"
        };
        assert_eq!(st[field], new.as_str());
    }
    assert_eq!(
        sim.state().actions,
        vec!["regenerate-api-key", "regenerate-api-key"]
    );
}

#[test]
fn app_ids_must_be_whole_numbers() {
    let sim = Sim::start();
    for bad in [
        "1234abc", "1234.5", "%201234", "0x4d2", "1e3", "12ab", "1234%2Fx",
    ] {
        let r = get(&sim, &format!("/v1/apps/{bad}"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (400, "Missing app id"),
            "{bad}"
        );
        let r = post_json(&sim, &format!("/v1/apps/{bad}/stop"), json!({}));
        assert_eq!(
            (r.status, r.text().as_str()),
            (400, "Invalid app id"),
            "{bad}"
        );
    }
    assert_eq!(get(&sim, "/v1/apps/1234.0").status, 200);
    let r = get(&sim, "/v2/applications/12ab/state");
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (400, json!("Invalid application ID: 12ab"))
    );
    let r = post_json(&sim, "/v2/applications/12ab/restart", json!({}));
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (400, json!("Missing app id"))
    );
    for bad in [
        json!("1234abc"),
        json!(1234.5),
        json!(" 1234"),
        json!(true),
        json!(""),
    ] {
        let r = post_json(&sim, "/v1/restart", json!({ "appId": bad }));
        assert_eq!(
            (r.status, r.text().as_str()),
            (400, "Missing app id"),
            "{bad}"
        );
    }
    for good in [json!(1234), json!("1234"), json!("1234.0"), json!([1234])] {
        let r = post_json(&sim, "/v1/restart", json!({ "appId": good }));
        assert_eq!(r.status, 200, "{good}");
    }
}

#[test]
fn service_actions_need_a_name_or_image_id_even_on_one_container() {
    let sim = Sim::start();
    for body in [
        json!({}),
        json!({"serviceName": "null"}),
        json!({"imageId": "abc"}),
    ] {
        let r = post_json(&sim, "/v2/applications/1234/restart-service", body.clone());
        assert_eq!(r.status, 400, "{body}");
        assert!(
            r.text().starts_with("serviceName or imageId parameters"),
            "{}",
            r.text()
        );
    }
    let r = call(
        &sim,
        "POST",
        &k(&sim, "/v2/applications/1234/stop-service"),
        &[],
        b"",
    );
    assert_eq!(r.status, 400);
    assert!(sim.state().actions.is_empty(), "nothing was done");
    // Any name acts on the one service.
    let r = post_json(
        &sim,
        "/v2/applications/1234/stop-service",
        json!({"serviceName": "nope"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(sim.state().actions, vec!["stop-service 1234/main"]);
    // Several services: the first that matches the name or the image id.
    sim.with_state(|s| s.multi_container = true);
    let r = post_json(
        &sim,
        "/v2/applications/1234/restart-service",
        json!({"serviceName": "main", "imageId": 1002}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        sim.state().actions.last().unwrap(),
        "restart-service 1234/main"
    );
}

#[test]
fn three_kinds_of_423_with_the_real_texts() {
    let sim = Sim::start();
    // 1. An app's update lock: force overrides it and deletes it.
    set_state(&sim, json!({"locked": true}));
    let r = post_json(&sim, "/v1/reboot", json!({}));
    assert_eq!(r.status, 423);
    assert_eq!(
        r.json(),
        json!({"Data": "", "Error": "Lockfile exists for { appId: 1234, service: main }"})
    );
    let r = post_json(&sim, "/v2/applications/1234/restart", json!({}));
    assert_eq!(
        (r.status, r.json()),
        (
            423,
            json!({"status": "failed", "message": "Lockfile exists for { appId: 1234, service: main }"})
        )
    );
    assert_eq!(
        post_json(
            &sim,
            "/v2/applications/1234/start-service",
            json!({"serviceName": "main"})
        )
        .status,
        200,
        "start takes no lock"
    );
    assert_eq!(
        post_json(&sim, "/v1/restart", json!({"appId": 1234, "force": true})).status,
        200
    );
    assert!(!sim.state().locked, "the forced action deleted the lock");

    // 2. A host OS update finishing: reboot and shutdown only; force passes.
    sim.reset();
    set_state(&sim, json!({"host_update": true, "locked": true}));
    for route in ["/v1/reboot", "/v1/shutdown"] {
        let r = post_json(&sim, route, json!({"force": false}));
        assert_eq!(
            (r.status, r.json()),
            (
                423,
                json!({"Data": "", "Error": "Waiting for Host OS update to finish"})
            )
        );
    }
    assert_eq!(
        post_json(&sim, "/v1/restart", json!({"appId": 1234})).json()["message"],
        "Lockfile exists for { appId: 1234, service: main }"
    );
    assert_eq!(
        post_json(&sim, "/v1/reboot", json!({"force": true})).status,
        202
    );
    assert_eq!(sim.state().actions, vec!["reboot(force)"]);

    // 3. Another operation holds the locks: a wait, then 423 also with force.
    sim.reset();
    set_state(&sim, json!({"locks_busy": true, "busy_wait_ms": 300}));
    let busy = "Locks for app 1234 are being held by another supervisor operation";
    let t = Instant::now();
    let r = post_json(&sim, "/v1/reboot", json!({"force": true}));
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        (r.status, r.json()),
        (423, json!({"Data": "", "Error": busy}))
    );
    set_state(&sim, json!({"busy_wait_ms": 0}));
    for (route, body) in [
        ("/v1/restart", json!({"appId": 1234, "force": true})),
        ("/v1/purge", json!({"appId": 1234, "force": true})),
        ("/v1/apps/1234/stop", json!({"force": true})),
        (
            "/v2/applications/1234/stop-service",
            json!({"serviceName": "main", "force": true}),
        ),
        ("/v2/applications/1234/purge", json!({"force": true})),
    ] {
        let r = post_json(&sim, route, body);
        assert_eq!(
            (r.status, r.json()["message"].clone()),
            (423, json!(busy)),
            "{route}"
        );
    }
    let r = call(
        &sim,
        "PATCH",
        &k(&sim, "/v1/device/host-config"),
        &[JSON],
        br#"{"network":{"hostname":"x"},"force":true}"#,
    );
    assert_eq!((r.status, r.text()), (423, busy.to_string()));
    assert_eq!(
        post_json(&sim, "/v1/apps/1234/start", json!({})).status,
        200
    );
    assert_eq!(sim.state().actions, vec!["start 1234/main"]);

    // The lock override acts as force for update locks.
    sim.reset();
    set_state(&sim, json!({"locked": true, "lock_override": true}));
    assert_eq!(post_json(&sim, "/v1/reboot", json!({})).status, 202);
}

#[test]
fn actions_answer_late_and_happen_even_when_the_client_left() {
    let sim = Sim::start();
    set_state(&sim, json!({"action_delay_ms": 600}));
    // A client that gives up after 100 ms.
    let mut c = Conn::open(&sim);
    c.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    c.send("POST", &k(&sim, "/v1/apps/1234/stop"), &[JSON], b"{}");
    assert!(c.read_head().is_none(), "no answer within 100 ms");
    drop(c);
    assert_eq!(sim.state().actions, vec!["stop 1234/main"], "done at once");
    assert_eq!(sim.state().service_status(1234, "main").unwrap(), "exited");
    // The answer comes after the delay; other requests are not held up.
    let t = Instant::now();
    let slow = std::thread::spawn({
        let addr = sim.port();
        let key = sim.api_key();
        move || {
            let mut s = TcpStream::connect(("127.0.0.1", addr)).unwrap();
            let body = r#"{"appId":1234,"force":true}"#;
            write!(
                s,
                "POST /v1/purge?apikey={key} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(&sim, "/v2/version").status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let out = slow.join().unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    // Errors are not delayed; reads are not actions.
    set_state(&sim, json!({"locked": true}));
    let t = Instant::now();
    assert_eq!(post_json(&sim, "/v1/reboot", json!({})).status, 423);
    assert_eq!(get(&sim, "/v1/device").status, 200);
    assert!(t.elapsed() < Duration::from_millis(500));
}

#[test]
fn update_cancel_and_force_are_recorded() {
    let sim = Sim::start();
    let r = post_json(&sim, "/v1/update", json!({"force": true, "cancel": true}));
    assert_eq!(r.status, 204);
    let r = post_json(&sim, "/v1/update", json!({"cancel": true}));
    assert_eq!(r.status, 202);
    set_state(&sim, json!({"locked": true}));
    let r = post_json(&sim, "/v1/update", json!({"force": false, "cancel": "1"}));
    assert_eq!(r.status, 202, "never 423");
    assert_eq!(
        sim.state().actions,
        vec!["update(force,cancel)", "update(cancel)", "update(cancel)"]
    );
}

#[test]
fn host_config_codec_locks_and_proxy() {
    let sim = Sim::start();
    let patch = |body: &str| {
        call(
            &sim,
            "PATCH",
            &k(&sim, "/v1/device/host-config"),
            &[JSON],
            body.as_bytes(),
        )
    };
    let r = patch(r#"{"network":{"hostname":5}}"#);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "Could not parse host config input to a valid format:\nExpecting string at network.hostname but instead got: 5"
    );
    let r = patch(r#"{"foo":1}"#);
    assert_eq!(r.status, 400);
    assert!(
        r.text().ends_with("at network but instead got: undefined"),
        "{}",
        r.text()
    );
    // dns outside the proxy is ignored.
    assert_eq!(patch(r#"{"network":{"dns":5}}"#).status, 200);
    // The same hostname still takes the lock; force passes and deletes it.
    set_state(&sim, json!({"locked": true}));
    let r = patch(r#"{"network":{"hostname":"device"}}"#);
    assert_eq!(
        (r.status, r.text().as_str()),
        (423, "Lockfile exists for { appId: 1234, service: main }")
    );
    assert_eq!(
        patch(r#"{"network":{"hostname":"h2"},"force":true}"#).status,
        200
    );
    assert!(!sim.state().locked);
    // A proxy is merged into the current one; an empty one removes it.
    assert_eq!(
        patch(r#"{"network":{"proxy":{"type":"socks5","ip":"10.0.0.9","port":1080}}}"#).status,
        200
    );
    assert_eq!(patch(r#"{"network":{"proxy":{"port":1081}}}"#).status, 200);
    assert_eq!(
        get(&sim, "/v1/device/host-config").json(),
        json!({"network": {"hostname": "h2", "proxy": {"type": "socks5", "ip": "10.0.0.9", "port": 1081}}})
    );
    assert_eq!(patch(r#"{"network":{"proxy":{}}}"#).status, 200);
    assert_eq!(
        get(&sim, "/v1/device/host-config").json(),
        json!({"network": {"hostname": "h2"}})
    );
}

#[test]
fn tags_are_checked_before_the_tags_api() {
    let sim = Sim::start();
    let patch = |body: &str| {
        call(
            &sim,
            "PATCH",
            &k(&sim, "/v2/device/tags"),
            &[JSON],
            body.as_bytes(),
        )
    };
    set_state(&sim, json!({"tags_api_down": true}));
    let r = patch(r#"{"bad key":"x"}"#);
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (400, json!("Tag keys cannot contain whitespace"))
    );
    let r = patch(r#"{"k":1}"#);
    assert_eq!(r.status, 400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("Invalid tags body"));
    let r = patch(r#"{"k":"v"}"#);
    assert_eq!(r.status, 500);
    set_state(&sim, json!({"tags_api_down": false}));
    assert_eq!(
        patch(r#"{"":"x"}"#).status,
        202,
        "an empty name is accepted"
    );
    assert_eq!(
        patch(r#"["a"]"#).status,
        202,
        "an array is an object of strings"
    );
    assert_eq!(patch("[]").status, 202);
    let tags = get(&sim, "/v2/device/tags").json();
    assert_eq!(
        tags["tags"],
        json!([{"id": 1, "name": "", "value": "x"}, {"id": 2, "name": "0", "value": "a"}])
    );
}

#[test]
fn local_target_state_is_converted_and_checked() {
    let sim = Sim::start();
    set_state(&sim, json!({"local_mode": true}));
    assert_eq!(
        post_json(&sim, "/v2/local/target-state", json!({})).status,
        200
    );
    assert_eq!(
        get(&sim, "/v2/local/target-state").json()["state"],
        json!({"local": {"name": "sim-device", "config": {}, "apps": {}}})
    );
    let r = post_json(
        &sim,
        "/v2/local/target-state",
        json!({"local": {"name": "x", "config": {"A": 1}, "apps": {}}}),
    );
    assert_eq!(r.status, 400);
    let uuid = sim.state().device_uuid;
    assert_eq!(
        r.json()["message"],
        format!("Invalid target state.\nExpecting string at {uuid}.config.A but instead got: 1")
    );
    let app = json!({"name": "myapp", "commit": "abc", "releaseId": 7,
        "services": {"11": {"serviceName": "main", "imageId": 12, "image": "alpine"}}});
    let r = post_json(
        &sim,
        "/v2/local/target-state",
        json!({"local": {"name": "x", "config": {}, "apps": {"1234": app.clone()}}}),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("services.main.0.environment but instead got: undefined"));
    let mut ok = app.clone();
    ok["services"]["11"]["environment"] = json!({"A": "1"});
    ok["services"]["11"]["labels"] = json!({});
    ok["services"]["11"]["restart"] = json!("always");
    let r = post_json(
        &sim,
        "/v2/local/target-state",
        json!({"local": {"name": "x", "config": {}, "apps": {"1234": ok}}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        get(&sim, "/v2/local/target-state").json()["state"]["local"]["apps"]["1234"],
        json!({"id": 1234, "name": "myapp", "class": "fleet", "releases": {"abc": {
            "id": 7, "volumes": {}, "networks": {}, "services": {"main": {
                "id": "11", "image_id": 12, "image": "alpine", "environment": {"A": "1"},
                "labels": {}, "composition": {"restart": "always"}}}}}})
    );
    // An app key that is not a number kills the supervisor: no answer.
    let mut c = Conn::open(&sim);
    c.send(
        "POST",
        &k(&sim, "/v2/local/target-state"),
        &[JSON],
        br#"{"local":{"apps":{"x":{}}}}"#,
    );
    assert!(c.read_head().is_none());
}

#[test]
fn v1_app_and_v2_app_state_shapes() {
    let sim = Sim::start();
    let app = get(&sim, "/v1/apps/1234").json();
    assert!(app["imageId"]
        .as_str()
        .unwrap()
        .starts_with("registry2.balena-cloud.com/v2/"));
    assert_eq!(
        app["env"],
        json!({"GREETING": "hello", "BALENA_APP_ID": "1234"})
    );
    let st = get(&sim, "/v2/applications/1234/state").json();
    assert!(st.get("dependent").is_none());
    assert!(st["local"]["1234"]["services"]["1001"].is_object());
    let r = get(&sim, "/v2/containerId?serviceName=");
    assert_eq!(r.status, 503);
}

#[test]
fn device_states_apply_in_progress_and_no_services() {
    let sim = Sim::start();
    set_state(&sim, json!({"apply_in_progress": true}));
    assert_eq!(get(&sim, "/v2/state/status").json()["appState"], "applying");
    assert!(get(&sim, "/v1/device").json().get("commit").is_none());
    sim.reset();
    set_state(&sim, json!({"no_services": true}));
    assert_eq!(get(&sim, "/v1/apps/1234").text(), "App not found");
    assert_eq!(get(&sim, "/v2/containerId").json()["services"], json!({}));
    let r = post_json(
        &sim,
        "/v2/applications/1234/restart-service",
        json!({"serviceName": "main"}),
    );
    assert_eq!(r.status, 404);
    let dev = get(&sim, "/v1/device").json();
    assert!(dev.get("status").is_none() && dev.get("download_progress").is_none());
}

#[test]
fn journal_without_count_is_whole_and_formats_are_honoured() {
    let sim = Sim::start();
    set_state(&sim, json!({"journal_entries": 7}));
    let lines = |body: &str| -> Vec<String> {
        let r = call(
            &sim,
            "POST",
            &k(&sim, "/v2/journal-logs"),
            &[JSON],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200);
        r.text().lines().map(str::to_string).collect()
    };
    assert_eq!(lines("{}").len(), 7);
    assert_eq!(lines(r#"{"count":0}"#).len(), 7);
    assert_eq!(lines(r#"{"count":"2"}"#).len(), 2);
    assert_eq!(
        lines(r#"{"count":3,"format":"cat"}"#),
        vec!["line 1", "line 2", "line 3"]
    );
    assert!(lines(r#"{"count":2,"format":"bogus"}"#).is_empty());
    let iso = lines(r#"{"count":1,"format":"short-iso"}"#);
    assert!(
        iso[0].contains("T") && iso[0].ends_with("balena-supervisor[1]: line 1"),
        "{iso:?}"
    );
    let js = lines(r#"{"count":1,"format":"json"}"#);
    let v: Value = serde_json::from_str(&js[0]).unwrap();
    assert!(v["__REALTIME_TIMESTAMP"].is_string() && v["MESSAGE"] == "line 1");
}

#[test]
fn quiet_journal_stays_open_and_close_streams_ends_it() {
    let sim = Sim::start_with(SimConfig {
        log_interval: Duration::from_millis(30),
        ..SimConfig::default()
    });
    set_state(&sim, json!({"journal_quiet": true, "journal_entries": 0}));
    let mut c = Conn::open(&sim);
    c.send(
        "POST",
        &k(&sim, "/v2/journal-logs"),
        &[JSON],
        br#"{"follow":true}"#,
    );
    assert_eq!(c.read_head().unwrap().status, 200);
    c.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut b = [0u8; 1];
    let quiet = c.reader.read(&mut b);
    assert!(
        quiet.is_err(),
        "nothing is sent, the stream stays open: {quiet:?}"
    );
    // The server ends the stream: last chunk, then close, well under a second.
    let t = Instant::now();
    set_state(&sim, json!({"close_streams": true}));
    c.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(c.read_chunk().is_none(), "terminating chunk");
    assert!(c.closed_within(Duration::from_secs(1)));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // While set, a new stream ends after its first lines.
    let r = call(&sim, "GET", &k(&sim, "/v2/local/logs"), &[], b"");
    assert_eq!(
        r.text(),
        "{\"isSystem\":true,\"message\":\"Streaming logs\"}\n"
    );
}

#[test]
fn local_logs_on_a_managed_device_send_one_line_then_nothing() {
    let sim = Sim::start_with(SimConfig {
        log_interval: Duration::from_millis(30),
        ..SimConfig::default()
    });
    let mut c = Conn::open(&sim);
    c.send("GET", &k(&sim, "/v2/local/logs"), &[], b"");
    assert_eq!(c.read_head().unwrap().status, 200);
    let first: Value = serde_json::from_slice(&c.read_chunk().unwrap()).unwrap();
    assert_eq!(first["message"], "Streaming logs");
    c.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(c.reader.read(&mut b).is_err(), "silent and open");
    // In local mode the app's lines come.
    set_state(&sim, json!({"local_mode": true}));
    let mut c = Conn::open(&sim);
    c.send("GET", "/v2/local/logs", &[], b"");
    assert_eq!(c.read_head().unwrap().status, 200);
    c.read_chunk().unwrap();
    let line: Value = serde_json::from_slice(&c.read_chunk().unwrap()).unwrap();
    assert_eq!(line["serviceName"], "main");
    assert_eq!(line["serviceId"], 201);
    assert_eq!(line["isStdErr"], false);
}

#[test]
fn json_errors_read_like_node_and_a_bom_is_dropped() {
    let sim = Sim::start();
    let send = |body: &str| {
        call(
            &sim,
            "POST",
            &k(&sim, "/v1/restart"),
            &[JSON],
            body.as_bytes(),
        )
    };
    for (body, msg) in [
        (
            r#"{"appId":1234"#,
            "Expected ',' or '}' after property value in JSON at position 13",
        ),
        (
            r#"{"appId":1234,}"#,
            "Expected double-quoted property name in JSON at position 14",
        ),
        (
            "{appId:1234}",
            "Expected property name or '}' in JSON at position 1",
        ),
        (
            r#"{"appId":1234}{"x":1}"#,
            "Unexpected non-whitespace character after JSON at position 14",
        ),
        (
            "{\"appId\":\"12\u{1}34\"}",
            "Bad control character in string literal in JSON at position 12",
        ),
        (
            "not json",
            "Unexpected token 'n', \"not json\" is not valid JSON",
        ),
        ("[1,]", "Unexpected token ']', \"[1,]\" is not valid JSON"),
        ("   ", "Unexpected end of JSON input"),
    ] {
        let r = send(body);
        assert_eq!(
            (r.status, r.json()["message"].clone()),
            (503, json!(msg)),
            "{body:?}"
        );
    }
    assert_eq!(send("\u{feff}{\"appId\":1234}").status, 200);
}

#[test]
fn options_and_quoted_paths_like_express() {
    let sim = Sim::start();
    let r = call(&sim, "OPTIONS", &k(&sim, "/v2/version"), &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "GET,HEAD"));
    assert_eq!(r.header("allow"), Some("GET,HEAD"));
    let r = call(
        &sim,
        "OPTIONS",
        &k(&sim, "/v1/device/host-config"),
        &[],
        b"",
    );
    assert_eq!(r.text(), "GET,HEAD,PATCH");
    assert_eq!(
        call(&sim, "OPTIONS", &k(&sim, "/v2/nope"), &[], b"").status,
        404
    );
    let r = get(&sim, "/v2/<b>x</b>");
    assert!(
        r.text()
            .contains("<pre>Cannot GET /v2/%3Cb%3Ex%3C/b%3E</pre>"),
        "{}",
        r.text()
    );
}

#[test]
fn a_dead_process_refuses_connections_until_it_restarts() {
    let sim = Sim::start();
    set_state(&sim, json!({"local_mode": true, "restart_ms": 600}));
    let mut idle = Conn::open(&sim);
    assert_eq!(idle.call("GET", "/ping", &[], b"").status, 200);
    let t = Instant::now();
    let mut c = Conn::open(&sim);
    c.send(
        "POST",
        "/v2/local/target-state",
        &[JSON],
        br#"{"local":{"apps":{"x":{}}}}"#,
    );
    assert!(c.read_head().is_none(), "no answer");
    assert!(
        idle.closed_within(Duration::from_secs(1)),
        "open connections die"
    );
    std::thread::sleep(Duration::from_millis(100));
    let refused = TcpStream::connect(("127.0.0.1", sim.port()));
    assert!(refused.is_err(), "the port refuses connections while down");
    // Back after restart_ms, state kept.
    let mut up = false;
    while t.elapsed() < Duration::from_secs(3) {
        if TcpStream::connect(("127.0.0.1", sim.port())).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(up, "listening again");
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(call(&sim, "GET", "/ping", &[], b"").status, 200);
    // crash_next only drops a connection: the server keeps serving.
    set_state(&sim, json!({"crash_next": true}));
    let mut c = Conn::open(&sim);
    c.send("GET", "/v2/version", &[], b"");
    assert!(c.read_head().is_none());
    assert_eq!(call(&sim, "GET", "/ping", &[], b"").status, 200);
    // Stopping while down does not hang.
    let mut c = Conn::open(&sim);
    c.send(
        "POST",
        "/v2/local/target-state",
        &[JSON],
        br#"{"local":{"apps":{"x":{}}}}"#,
    );
    assert!(c.read_head().is_none());
    drop(sim); // stopping while down must not hang
}
