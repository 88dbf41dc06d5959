//! The supervisor's routes (authentication, body parsing, every V1 and V2
//! endpoint) and the simulator's own `/_sim/*` control routes.

use super::http::{self, send_json, send_not_found, send_status, send_text, Request, Response};
use super::{lock, random_key, Shared, SimState, APP_NOT_FOUND};
use serde_json::{json, Map, Value};

const SERVICE_NOT_FOUND: &str =
    "Service not found, a container must exist for this endpoint to work";
const V2_SERVICE_ENDPOINT_ERROR: &str = "serviceName or imageId parameters were not provided or the app is multi-container. Use the v2 service action endpoints.";
const SINGLE_CONTAINER_ONLY: &str = "Some v1 endpoints are only allowed on single-container apps";
const UNKNOWN_APP_CRASH: &str = "Cannot read properties of undefined (reading 'volumes')";

// ---------------------------------------------------------------------------
// JavaScript-compatible value checks (the supervisor's checkTruthy/checkInt).

/// `checkTruthy`: true, 1, "1", "true", "on" (any case).
pub fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() == Some(1.0),
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "1" | "true" | "on"),
        _ => false,
    }
}

/// `String(v)` as far as `parseInt` cares.
fn js_string(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.abs() >= 1e21 {
                    format!("{f:e}").replace('e', "e+")
                } else {
                    f.to_string()
                }
            }
        }
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(js_string).collect::<Vec<_>>().join(","),
        Value::Object(_) => "[object Object]".to_string(),
    }
}

/// `parseInt(s, 10)`: leading white space, sign, then as many digits as there are.
pub fn parse_int_js(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let mut value: i64 = 0;
    let mut any = false;
    for b in digits.bytes() {
        if !b.is_ascii_digit() {
            break;
        }
        any = true;
        value = value.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    if !any {
        return None;
    }
    Some(if neg { -value } else { value })
}

fn js_typeof(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        _ => "object",
    }
}

fn js_falsy(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// The supervisor's checkInt / checkString, and JavaScript number text.

/// `checkInt(v)`: the text `String(v)` must be an optional `-`, digits, and
/// optionally a `.` followed by zeros only, and its value a whole number.
/// So `1234.0` is 1234, but `1234abc`, `1234.5`, ` 1234`, `0x4d2`, `1e3`
/// and `true` are not numbers; `[1234]` is (its text is `1234`).
pub fn check_int(v: Option<&Value>) -> Option<f64> {
    match v {
        None | Some(Value::Null) => None,
        Some(v) => check_int_str(&js_string(v)),
    }
}

/// `checkInt` of a text (a route parameter).
pub fn check_int_str(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i = 1;
    }
    let digits_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i == digits_start {
        return None;
    }
    let int_end = i;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i] == b'0' {
            i += 1;
        }
    }
    if i != b.len() {
        return None;
    }
    let f: f64 = s[..int_end].parse().ok()?;
    if f.is_finite() {
        Some(f)
    } else {
        None
    }
}

/// `checkString(v)`: a string other than ``, `null` and `undefined`.
fn check_string(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !matches!(s.as_str(), "" | "null" | "undefined") => {
            Some(s.clone())
        }
        _ => None,
    }
}

/// A number as JavaScript writes it (`String(n)`) for whole numbers.
pub fn js_number(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    if f.abs() < 9_007_199_254_740_992.0 {
        return format!("{}", f as i64);
    }
    // Shortest round-trip digits, then zeros up to the exponent.
    let e = format!("{:e}", f.abs());
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if exp >= 21 {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        return format!("{sign}{m}e+{exp}");
    }
    let mut out = digits;
    while out.len() < (exp as usize) + 1 {
        out.push('0');
    }
    format!("{sign}{out}")
}

/// `JSON.stringify(v)` as io-ts' reporter prints a value (`undefined` for
/// a missing one).
fn js_show(v: Option<&Value>) -> String {
    match v {
        None => "undefined".into(),
        Some(v) => v.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Authentication and body parsing.

#[derive(Debug, Clone)]
enum Scope {
    All,
    Apps(Vec<u32>),
}

impl Scope {
    fn allows(&self, app_id: f64) -> bool {
        match self {
            Scope::All => true,
            Scope::Apps(apps) => apps.iter().any(|&a| f64::from(a) == app_id),
        }
    }
}

/// The key a request carries: a single non-empty `apikey` query parameter
/// first (even a wrong one), else `Authorization: Bearer|ApiKey <word chars>`.
fn request_key(req: &Request) -> Option<String> {
    let q: Vec<&String> = req
        .query
        .iter()
        .filter(|(k, _)| k == "apikey")
        .map(|(_, v)| v)
        .collect();
    if q.len() == 1 && !q[0].is_empty() {
        return Some(q[0].clone());
    }
    let h = req.header("authorization")?;
    let (scheme, key) = h.split_once(' ')?;
    if !(scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("apikey")) {
        return None;
    }
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some(key.to_string())
}

/// The scope of the key a request carries, and the key; `None`: no valid
/// key (401). In local mode and on an unmanaged device every request passes.
fn authenticate(st: &SimState, req: &Request) -> Option<(Scope, Option<String>)> {
    let key = request_key(req);
    if st.local_mode || st.unmanaged {
        return Some((Scope::All, key));
    }
    let k = key.clone()?;
    if k == st.global_key {
        return Some((Scope::All, key));
    }
    if k == st.api_key {
        let apps = st.apps.first().map(|a| vec![a.app_id]).unwrap_or_default();
        return Some((Scope::Apps(apps), key));
    }
    st.scoped_keys
        .iter()
        .find(|(sk, _)| *sk == k)
        .map(|(_, apps)| (Scope::Apps(apps.clone()), key))
}

/// body-parser: JSON and urlencoded bodies are parsed, anything else is
/// ignored (`{}`). Errors become 503 in the supervisor's error handler.
fn parse_body(req: &Request) -> Result<Value, String> {
    let empty = Value::Object(Map::new());
    let Some(mt) = req.media_type() else {
        return Ok(empty);
    };
    if !req.has_body {
        return Ok(empty);
    }
    match mt.as_str() {
        "application/json" => {
            if let Some(cs) = req.charset() {
                if !cs.starts_with("utf-") {
                    return Err(format!("unsupported charset \"{}\"", cs.to_uppercase()));
                }
            }
            if req.body_too_large {
                return Err("request entity too large".to_string());
            }
            if req.body.is_empty() {
                return Ok(empty);
            }
            // Decoding drops a byte order mark.
            let text = String::from_utf8_lossy(&req.body);
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            if let Some(msg) = super::jsonerr::body_parser_error(text) {
                return Err(msg);
            }
            serde_json::from_str::<Value>(text).map_err(|e| e.to_string())
        }
        "application/x-www-form-urlencoded" => {
            if req.body_too_large {
                return Err("request entity too large".to_string());
            }
            let mut obj = Map::new();
            for (k, v) in http::parse_urlencoded(&String::from_utf8_lossy(&req.body)) {
                match obj.get_mut(&k) {
                    Some(Value::Array(a)) => a.push(Value::String(v)),
                    Some(prev) => {
                        let p = prev.take();
                        *prev = Value::Array(vec![p, Value::String(v)]);
                    }
                    None => {
                        obj.insert(k, Value::String(v));
                    }
                }
            }
            Ok(Value::Object(obj))
        }
        _ => Ok(empty),
    }
}

/// Path segments; a trailing slash is ignored (Express' non-strict routing).
fn segments(path: &str) -> Vec<String> {
    let p = path.strip_prefix('/').unwrap_or(path);
    let p = p.strip_suffix('/').unwrap_or(p);
    if p.is_empty() {
        Vec::new()
    } else {
        p.split('/').map(str::to_string).collect()
    }
}

// ---------------------------------------------------------------------------
// Dispatch.

/// Options of a `POST /v2/journal-logs` stream.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// The last `count` entries (`None`: the whole journal).
    pub count: Option<u64>,
    /// Keep writing new entries until the client leaves.
    pub follow: bool,
    /// journalctl's `-o` format (`short` unless given).
    pub format: String,
    pub unit: Option<String>,
}

/// What the connection has to do for a request.
pub enum Outcome {
    Reply(Response),
    /// Send the answer this many milliseconds later (the state is not locked
    /// meanwhile).
    Delayed(Response, u64),
    /// Close the connection without an answer (the supervisor process died).
    Drop,
    /// Stream `GET /v2/local/logs`: services (name, id) to attribute lines
    /// to; `live`: lines come (local mode), else only the first line.
    LocalLogs {
        services: Vec<(String, u32)>,
        live: bool,
    },
    Journal(JournalOptions),
}

pub fn is_control(path: &str) -> bool {
    path == "/_sim" || path.starts_with("/_sim/")
}

/// `{"status":"failed","message":msg}` with `code`.
fn fail(code: u16, msg: &str) -> Response {
    send_json(code, json!({"status": "failed", "message": msg}))
}

struct Ctx<'a> {
    st: &'a mut SimState,
    scope: Scope,
    body: Value,
    /// Raw path segments (for parameters).
    segs: Vec<String>,
    /// Milliseconds to hold the answer back (an action's duration, or the
    /// wait for busy locks).
    delay: u64,
}

impl Ctx<'_> {
    fn field(&self, k: &str) -> Option<&Value> {
        self.body.get(k)
    }

    fn force(&self) -> bool {
        truthy(self.field("force"))
    }

    /// Route parameter at position `i`, percent-decoded.
    fn param(&self, i: usize) -> String {
        http::percent_decode(&self.segs[i], false)
    }

    /// Index of an app on the device (installed or not).
    fn app_index(&self, id: f64) -> Option<usize> {
        self.st.apps.iter().position(|a| f64::from(a.app_id) == id)
    }

    fn installed_app_index(&self, id: f64) -> Option<usize> {
        self.app_index(id).filter(|&i| self.st.apps[i].installed)
    }

    /// Takes the locks of `apps` (empty: all); on failure the error's wait
    /// becomes the answer's delay.
    fn take_lock(&mut self, apps: &[u32], force: bool) -> Result<(), String> {
        self.st.take_lock(apps, force).map_err(|e| {
            self.delay = e.wait_ms;
            e.message
        })
    }

    /// An action was carried out: its answer comes `action_delay_ms` later.
    fn performed(&mut self, action: String) {
        self.st.actions.push(action);
        self.delay = self.st.action_delay_ms;
    }
}

/// The routes the supervisor defines, as (method, pattern); `:id` matches a
/// non-empty segment. Used for OPTIONS, which Express answers itself.
const ROUTES: &[(&str, &[&str])] = &[
    ("POST", &["v1", "blink"]),
    ("POST", &["v1", "regenerate-api-key"]),
    ("POST", &["v1", "restart"]),
    ("POST", &["v1", "apps", ":id", "stop"]),
    ("POST", &["v1", "apps", ":id", "start"]),
    ("POST", &["v1", "reboot"]),
    ("POST", &["v1", "shutdown"]),
    ("GET", &["v1", "apps", ":id"]),
    ("POST", &["v1", "purge"]),
    ("POST", &["v1", "update"]),
    ("GET", &["v1", "device", "host-config"]),
    ("PATCH", &["v1", "device", "host-config"]),
    ("GET", &["v1", "device"]),
    ("POST", &["v2", "applications", ":id", "restart-service"]),
    ("POST", &["v2", "applications", ":id", "stop-service"]),
    ("POST", &["v2", "applications", ":id", "start-service"]),
    ("POST", &["v2", "applications", ":id", "purge"]),
    ("POST", &["v2", "applications", ":id", "restart"]),
    ("GET", &["v2", "applications", "state"]),
    ("GET", &["v2", "applications", ":id", "state"]),
    ("GET", &["v2", "local", "target-state"]),
    ("POST", &["v2", "local", "target-state"]),
    ("GET", &["v2", "local", "device-info"]),
    ("GET", &["v2", "local", "logs"]),
    ("GET", &["v2", "version"]),
    ("GET", &["v2", "containerid"]),
    ("GET", &["v2", "state", "status"]),
    ("GET", &["v2", "device", "name"]),
    ("GET", &["v2", "device", "tags"]),
    ("PATCH", &["v2", "device", "tags"]),
    ("GET", &["v2", "device", "vpn"]),
    ("GET", &["v2", "cleanup-volumes"]),
    ("POST", &["v2", "journal-logs"]),
];

/// The `Allow` list Express gives for OPTIONS on a path (`None`: no route).
fn allowed_methods(l: &[&str]) -> Option<String> {
    let mut methods: Vec<&str> = Vec::new();
    for (m, pat) in ROUTES {
        let hit = pat.len() == l.len()
            && pat
                .iter()
                .zip(l)
                .all(|(p, s)| if *p == ":id" { !s.is_empty() } else { p == s });
        if hit {
            let add: &[&str] = if *m == "GET" { &["GET", "HEAD"] } else { &[m] };
            for a in add {
                if !methods.contains(a) {
                    methods.push(a);
                }
            }
        }
    }
    if methods.is_empty() {
        None
    } else {
        Some(methods.join(","))
    }
}

/// Answers a non-control request.
pub fn dispatch(shared: &Shared, req: &Request) -> Outcome {
    let method = if req.method == "HEAD" {
        "GET"
    } else {
        req.method.as_str()
    };
    let segs = segments(&req.path);
    let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    let mut st = shared.state();

    // Routes before the key check.
    match (method, l.as_slice()) {
        ("GET", ["v1", "healthy"]) => {
            return Outcome::Reply(if st.healthy {
                send_status(200)
            } else {
                send_text(500, "Unhealthy")
            })
        }
        ("GET", ["ping"]) => return Outcome::Reply(send_text(200, "OK")),
        _ => {}
    }

    let Some((scope, key)) = authenticate(&st, req) else {
        return Outcome::Reply(send_status(401));
    };

    // Routes before the body parsers.
    match (method, l.as_slice()) {
        ("POST", ["v1", "blink"]) => {
            st.actions.push("blink".into());
            return Outcome::Reply(send_status(200));
        }
        ("POST", ["v1", "regenerate-api-key"]) => {
            let new_key = random_key();
            let k = key.unwrap_or_default();
            if k == st.global_key {
                st.global_key = new_key.clone();
            } else if k == st.api_key {
                st.api_key = new_key.clone();
            } else if let Some(i) = st.scoped_keys.iter().position(|(sk, _)| *sk == k) {
                st.scoped_keys[i].0 = new_key.clone();
            }
            // (local mode / unmanaged without a known key: nothing to replace)
            st.actions.push("regenerate-api-key".into());
            return Outcome::Reply(send_text(200, &new_key));
        }
        _ => {}
    }

    let body = match parse_body(req) {
        Ok(b) => b,
        Err(msg) => return Outcome::Reply(fail(503, &msg)),
    };
    let has_param = |i: usize| segs.get(i).is_some_and(|s| !s.is_empty());
    let mut cx = Ctx {
        st: &mut st,
        scope,
        body,
        segs: segs.clone(),
        delay: 0,
    };

    let resp = match (method, l.as_slice()) {
        // ---------------- V1
        ("POST", ["v1", "update"]) => v1_update(&mut cx),
        ("POST", ["v1", "reboot"]) => v1_device_action(&mut cx, "reboot"),
        ("POST", ["v1", "shutdown"]) => v1_device_action(&mut cx, "shutdown"),
        ("POST", ["v1", "purge"]) => v1_restart_or_purge(&mut cx, true),
        ("POST", ["v1", "restart"]) => v1_restart_or_purge(&mut cx, false),
        ("GET", ["v1", "apps", _]) if has_param(2) => v1_app(&mut cx),
        ("POST", ["v1", "apps", _, "stop"]) if has_param(2) => v1_stop_start(&mut cx, true),
        ("POST", ["v1", "apps", _, "start"]) if has_param(2) => v1_stop_start(&mut cx, false),
        ("GET", ["v1", "device"]) => v1_device(&cx),
        ("GET", ["v1", "device", "host-config"]) => v1_host_config(&cx),
        ("PATCH", ["v1", "device", "host-config"]) => v1_patch_host_config(&mut cx),
        // ---------------- V2
        ("POST", ["v2", "applications", _, "restart-service"]) if has_param(2) => {
            v2_service_action(&mut cx, "restart-service")
        }
        ("POST", ["v2", "applications", _, "stop-service"]) if has_param(2) => {
            v2_service_action(&mut cx, "stop-service")
        }
        ("POST", ["v2", "applications", _, "start-service"]) if has_param(2) => {
            v2_service_action(&mut cx, "start-service")
        }
        ("POST", ["v2", "applications", _, "restart"]) if has_param(2) => {
            v2_app_action(&mut cx, "restart")
        }
        ("POST", ["v2", "applications", _, "purge"]) if has_param(2) => {
            v2_app_action(&mut cx, "purge")
        }
        ("GET", ["v2", "applications", "state"]) => v2_applications_state(&cx),
        ("GET", ["v2", "applications", _, "state"]) if has_param(2) => v2_application_state(&cx),
        ("GET", ["v2", "state", "status"]) => v2_state_status(&cx),
        ("GET", ["v2", "version"]) => send_json(
            200,
            json!({"status": "success", "version": cx.st.supervisor_version}),
        ),
        ("GET", ["v2", "containerid"]) => v2_container_id(&cx, req),
        ("GET", ["v2", "device", "name"]) => send_json(
            200,
            json!({"status": "success", "deviceName": cx.st.device_name}),
        ),
        ("GET", ["v2", "device", "tags"]) => v2_get_tags(&cx),
        ("PATCH", ["v2", "device", "tags"]) => v2_patch_tags(&mut cx),
        ("GET", ["v2", "device", "vpn"]) => send_json(
            200,
            json!({"status": "success", "vpn": {"enabled": cx.st.vpn_enabled, "connected": cx.st.vpn_connected}}),
        ),
        ("GET", ["v2", "cleanup-volumes"]) => {
            cx.st.actions.push("cleanup-volumes".into());
            send_json(200, json!({"status": "success"}))
        }
        ("GET", ["v2", "local", "target-state"]) => send_json(
            200,
            json!({"status": "success", "state": cx.st.target_state}),
        ),
        ("POST", ["v2", "local", "target-state"]) => match v2_set_target_state(&mut cx) {
            Some(r) => r,
            None => return Outcome::Drop,
        },
        ("GET", ["v2", "local", "device-info"]) => send_json(
            200,
            json!({"status": "success", "info": {"arch": "aarch64", "deviceType": "raspberrypi4-64"}}),
        ),
        ("GET", ["v2", "local", "logs"]) => {
            let services = cx
                .st
                .apps
                .first()
                .map(|a| {
                    cx.st
                        .visible_services(a)
                        .iter()
                        .map(|s| (s.name.clone(), s.service_id))
                        .collect()
                })
                .unwrap_or_default();
            return Outcome::LocalLogs {
                services,
                live: cx.st.local_mode,
            };
        }
        ("POST", ["v2", "journal-logs"]) => {
            let count = check_int(cx.field("count"))
                .filter(|&c| c > 0.0)
                .map(|c| c as u64);
            let format = match cx.field("format") {
                None | Some(Value::Null) => "short".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => js_string(other),
            };
            return Outcome::Journal(JournalOptions {
                count,
                follow: truthy(cx.field("follow")),
                format,
                unit: cx.field("unit").and_then(Value::as_str).map(str::to_string),
            });
        }
        ("OPTIONS", _) => match allowed_methods(&l) {
            Some(allow) => {
                let mut r = send_text(200, &allow);
                r.headers.push(("Allow".into(), allow));
                r
            }
            None => send_not_found(&req.method, &req.path),
        },
        _ => send_not_found(&req.method, &req.path),
    };
    if cx.delay > 0 {
        Outcome::Delayed(resp, cx.delay)
    } else {
        Outcome::Reply(resp)
    }
}

// ---------------------------------------------------------------------------
// V1 handlers.

fn v1_update(cx: &mut Ctx) -> Response {
    let force = cx.force();
    let cancel = truthy(cx.field("cancel"));
    let action = match (force, cancel) {
        (false, false) => "update",
        (true, false) => "update(force)",
        (false, true) => "update(cancel)",
        (true, true) => "update(force,cancel)",
    };
    cx.performed(action.to_string());
    if force || cx.st.instant_updates {
        send_status(204)
    } else {
        send_status(202)
    }
}

fn v1_device_action(cx: &mut Ctx, action: &str) -> Response {
    let force = cx.force();
    if cx.st.host_update && !force {
        return send_json(
            423,
            json!({"Data": "", "Error": "Waiting for Host OS update to finish"}),
        );
    }
    if let Err(msg) = cx.take_lock(&[], force) {
        return send_json(423, json!({"Data": "", "Error": msg}));
    }
    cx.performed(if force {
        format!("{action}(force)")
    } else {
        action.to_string()
    });
    send_json(202, json!({"Data": "OK", "Error": null}))
}

fn v1_restart_or_purge(cx: &mut Ctx, purge: bool) -> Response {
    let force = cx.force();
    let Some(id) = check_int(cx.field("appId")) else {
        return send_text(
            400,
            if purge {
                "Invalid or missing appId"
            } else {
                "Missing app id"
            },
        );
    };
    if !cx.scope.allows(id) {
        return fail(401, "Unauthorized");
    }
    app_restart_or_purge(cx, id, purge, force).map_or_else(
        |r| r,
        |()| {
            if purge {
                send_json(200, json!({"Data": "OK", "Error": ""}))
            } else {
                send_text(200, "OK")
            }
        },
    )
}

/// The shared part of the v1 and v2 app restart and purge: `Err` is the
/// error answer.
fn app_restart_or_purge(cx: &mut Ctx, id: f64, purge: bool, force: bool) -> Result<(), Response> {
    let Some(idx) = cx.installed_app_index(id) else {
        return Err(fail(
            503,
            &format!(
                "Application with ID {} is not in the current state",
                js_number(id)
            ),
        ));
    };
    let app_id = cx.st.apps[idx].app_id;
    if let Err(msg) = cx.take_lock(&[app_id], force) {
        return Err(fail(423, &msg));
    }
    restart_all(cx.st, idx);
    let what = if purge { "purge" } else { "restart" };
    cx.performed(format!("{what} {app_id}"));
    Ok(())
}

/// After an app restart or purge every service runs again.
fn restart_all(st: &mut SimState, idx: usize) {
    let app_id = st.apps[idx].app_id;
    let names: Vec<String> = st
        .visible_services(&st.apps[idx])
        .iter()
        .map(|s| s.name.clone())
        .collect();
    for n in names {
        st.set_service_status(app_id, &n, "Running");
    }
}

fn v1_app(cx: &mut Ctx) -> Response {
    let Some(id) = check_int_str(&cx.param(2)) else {
        return send_text(400, "Missing app id");
    };
    if !cx.scope.allows(id) {
        return fail(401, "Application is not available");
    }
    let Some(idx) = cx.installed_app_index(id) else {
        return send_text(400, "App not found");
    };
    let app = &cx.st.apps[idx];
    let services = cx.st.visible_services(app);
    let Some(svc) = services.first() else {
        return send_text(400, "App not found");
    };
    if services.len() > 1 {
        return send_text(400, SINGLE_CONTAINER_ONLY);
    }
    let env: Map<String, Value> = svc
        .env
        .iter()
        .filter(|(k, _)| !PRIVATE_ENV.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    send_json(
        200,
        json!({
            "appId": app.app_id,
            "commit": app.commit,
            "containerId": svc.container_id,
            "env": env,
            "imageId": image_name(app.app_id, svc),
            "releaseId": app.release_id,
        }),
    )
}

/// Variables `GET /v1/apps/:id` never shows.
const PRIVATE_ENV: &[&str] = &["RESIN_SUPERVISOR_API_KEY", "BALENA_SUPERVISOR_API_KEY"];

fn v1_device(cx: &Ctx) -> Response {
    let mut dev = cx.st.device.clone();
    if let Some(o) = dev.as_object_mut() {
        let has_service = cx
            .st
            .apps
            .first()
            .is_some_and(|a| !cx.st.visible_services(a).is_empty());
        // The commit the device is on is not known while an apply runs,
        // nor without containers.
        if cx.st.apply_in_progress || !has_service {
            o.remove("commit");
        }
        if !has_service {
            o.remove("status");
            o.remove("download_progress");
        }
    }
    send_json(200, dev)
}

/// Finds the service an action is for. `legacy`: the v1 form (400 instead
/// of 404, and no name or image id is given).
fn find_service(
    cx: &Ctx,
    id: f64,
    name: Option<&str>,
    image_id: Option<f64>,
    legacy: bool,
) -> Result<(u32, String, String), Response> {
    let not_found = |msg: &str| {
        if legacy {
            send_text(400, msg)
        } else {
            send_text(404, msg)
        }
    };
    let Some(idx) = cx.app_index(id) else {
        // The target-state lookup of an unknown app throws in the real code.
        return Err(fail(503, UNKNOWN_APP_CRASH));
    };
    let app = &cx.st.apps[idx];
    let services = cx.st.visible_services(app);
    if !app.installed || services.is_empty() {
        return Err(not_found(APP_NOT_FOUND));
    }
    let svc = if services.len() == 1 {
        &services[0]
    } else {
        if name.is_none() && image_id.is_none() {
            return Err(send_text(400, V2_SERVICE_ENDPOINT_ERROR));
        }
        match services
            .iter()
            .find(|s| Some(f64::from(s.image_id)) == image_id || Some(s.name.as_str()) == name)
        {
            Some(s) => s,
            None => return Err(not_found(SERVICE_NOT_FOUND)),
        }
    };
    Ok((app.app_id, svc.name.clone(), svc.container_id.clone()))
}

fn v1_stop_start(cx: &mut Ctx, stop: bool) -> Response {
    let force = cx.force();
    let Some(id) = check_int_str(&cx.param(2)) else {
        return send_text(400, "Invalid app id");
    };
    if !cx.scope.allows(id) {
        return send_text(401, "Unauthorized");
    }
    let (app_id, name, cid) = match find_service(cx, id, None, None, true) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if stop {
        if let Err(msg) = cx.take_lock(&[app_id], force) {
            return fail(423, &msg);
        }
    }
    cx.st
        .set_service_status(app_id, &name, if stop { "exited" } else { "Running" });
    cx.performed(format!(
        "{} {app_id}/{name}",
        if stop { "stop" } else { "start" }
    ));
    send_json(200, json!({ "containerId": cid }))
}

fn v1_host_config(cx: &Ctx) -> Response {
    let mut hc = cx.st.host_config.clone();
    // No proxy configured: no `proxy` key.
    if let Some(net) = hc.get_mut("network").and_then(Value::as_object_mut) {
        if net
            .get("proxy")
            .is_some_and(|p| p.as_object().is_some_and(Map::is_empty) || p.is_null())
        {
            net.remove("proxy");
        }
    }
    send_json(200, hc)
}

const HOST_CONFIG_SHAPE: &str = "Partial<{| proxy: ({ [K in string]: any } & Partial<{ dns: (AddressString | boolean) }>), hostname: string |}>";

/// Checks a host-config PATCH body the way the supervisor's (lenient)
/// codec does: `network` an object, `hostname` a string, `proxy` an object
/// whose `dns` is an `ADDRESS:PORT` string or a boolean. `Err`: the lines of
/// the report.
fn check_host_config(body: &Value) -> Result<(), Vec<String>> {
    let net = body.get("network");
    let Some(n) = net.and_then(Value::as_object) else {
        return Err(vec![format!(
            "Expecting {HOST_CONFIG_SHAPE} at network but instead got: {}",
            js_show(net)
        )]);
    };
    let mut errs = Vec::new();
    if let Some(p) = n.get("proxy") {
        match p.as_object() {
            None => errs.push(format!(
                "Expecting {{ [K in string]: any }} at network.proxy.0 but instead got: {p}"
            )),
            Some(po) => {
                if let Some(d) = po.get("dns") {
                    let ok = d.is_boolean()
                        || d.as_str().is_some_and(|s| {
                            s.rsplit_once(':').is_some_and(|(a, port)| {
                                !a.is_empty()
                                    && !port.is_empty()
                                    && port.bytes().all(|b| b.is_ascii_digit())
                            })
                        });
                    if !ok {
                        errs.push(format!(
                            "Expecting (AddressString | boolean) at network.proxy.1.dns but instead got: {d}"
                        ));
                    }
                }
            }
        }
    }
    if let Some(h) = n.get("hostname") {
        if !h.is_string() {
            errs.push(format!(
                "Expecting string at network.hostname but instead got: {h}"
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

fn v1_patch_host_config(cx: &mut Ctx) -> Response {
    if let Err(lines) = check_host_config(&cx.body) {
        return send_text(
            400,
            &format!(
                "Could not parse host config input to a valid format:\n{}",
                lines.join("\n")
            ),
        );
    }
    let net = cx.body["network"].clone();
    let hostname = net
        .get("hostname")
        .and_then(Value::as_str)
        .map(str::to_string);
    let proxy = net.get("proxy").filter(|p| !p.is_null()).cloned();
    if hostname.is_none() && proxy.is_none() {
        return send_text(200, "OK");
    }
    // Any hostname or proxy in the body takes the locks of every app.
    let force = cx.force();
    if let Err(msg) = cx.take_lock(&[], force) {
        return send_text(423, &msg);
    }
    if !cx.st.host_config.is_object() {
        cx.st.host_config = json!({});
    }
    let uuid = cx.st.device_uuid.clone();
    let obj = cx.st.host_config.as_object_mut().expect("object");
    let stored = obj.entry("network").or_insert_with(|| json!({}));
    if !stored.is_object() {
        *stored = json!({});
    }
    let stored = stored.as_object_mut().expect("object");
    if let Some(h) = hostname {
        // An empty hostname means the default: the uuid's first 7 characters.
        let h = if h.is_empty() {
            uuid.chars().take(7).collect()
        } else {
            h
        };
        stored.insert("hostname".into(), Value::String(h));
    }
    if let Some(p) = proxy {
        let mut input = p.as_object().cloned().unwrap_or_default();
        let no_proxy = input.remove("noProxy");
        if input.is_empty() {
            // An empty proxy (or one with only noProxy) removes the proxy.
            stored.remove("proxy");
        } else {
            let mut merged = stored
                .get("proxy")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            merged.remove("noProxy");
            for (k, v) in input {
                merged.insert(k, v);
            }
            if let Some(np) = no_proxy {
                merged.insert("noProxy".into(), np);
            }
            stored.insert("proxy".into(), Value::Object(merged));
        }
    }
    cx.st.actions.push("host-config".into());
    send_text(200, "OK")
}

// ---------------------------------------------------------------------------
// V2 handlers.

fn v2_service_action(cx: &mut Ctx, action: &str) -> Response {
    let force = cx.force();
    let id = check_int_str(&cx.param(2)).filter(|&i| i != 0.0);
    let image_id = check_int(cx.field("imageId")).filter(|&i| i != 0.0);
    let service_name = check_string(cx.field("serviceName"));
    let Some(id) = id else {
        return fail(400, "Invalid app id");
    };
    if !cx.scope.allows(id) {
        return fail(401, "Unauthorized");
    }
    if service_name.is_none() && image_id.is_none() {
        return send_text(400, V2_SERVICE_ENDPOINT_ERROR);
    }
    let (app_id, name, _) = match find_service(cx, id, service_name.as_deref(), image_id, false) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if action != "start-service" {
        if let Err(msg) = cx.take_lock(&[app_id], force) {
            return fail(423, &msg);
        }
    }
    let status = if action == "stop-service" {
        "exited"
    } else {
        "Running"
    };
    cx.st.set_service_status(app_id, &name, status);
    cx.performed(format!("{action} {app_id}/{name}"));
    send_text(200, "OK")
}

fn v2_app_action(cx: &mut Ctx, action: &str) -> Response {
    let force = cx.force();
    let Some(id) = check_int_str(&cx.param(2)).filter(|&i| i != 0.0) else {
        return fail(400, "Missing app id");
    };
    if !cx.scope.allows(id) {
        return fail(401, "Unauthorized");
    }
    match app_restart_or_purge(cx, id, action == "purge", force) {
        Ok(()) => send_text(200, "OK"),
        Err(r) => r,
    }
}

fn image_name(app_id: u32, svc: &super::SimService) -> String {
    super::image_name(app_id, &svc.name)
}

fn v2_applications_state(cx: &Ctx) -> Response {
    let mut out = Map::new();
    for app in cx.st.apps.iter().filter(|a| a.installed) {
        if !cx.scope.allows(f64::from(app.app_id)) {
            continue;
        }
        let mut services = Map::new();
        for s in cx.st.visible_services(app) {
            services.insert(
                s.name.clone(),
                json!({
                    "status": s.status,
                    "image": image_name(app.app_id, s),
                    "releaseId": app.release_id,
                    "downloadProgress": s.download_progress,
                }),
            );
        }
        out.insert(
            app.name.clone(),
            json!({
                "appId": app.app_id,
                "appUuid": app.uuid,
                "commit": app.commit,
                "updateStatus": "done",
                "services": services,
            }),
        );
    }
    send_json(200, Value::Object(out))
}

fn v2_application_state(cx: &Ctx) -> Response {
    let raw = cx.param(2);
    let Some(id) = check_int_str(&raw).filter(|&i| i != 0.0) else {
        return fail(400, &format!("Invalid application ID: {raw}"));
    };
    let idx = cx.installed_app_index(id).filter(|_| cx.scope.allows(id));
    let Some(idx) = idx else {
        return fail(
            409,
            &format!("Application ID does not exist: {}", js_number(id)),
        );
    };
    let app = &cx.st.apps[idx];
    let mut services = Map::new();
    for s in cx.st.visible_services(app) {
        services.insert(
            s.image_id.to_string(),
            json!({
                "status": s.status,
                "releaseId": app.release_id,
                "download_progress": s.download_progress,
            }),
        );
    }
    let mut local = Map::new();
    local.insert(app.app_id.to_string(), json!({ "services": services }));
    send_json(200, json!({"local": local, "commit": app.commit}))
}

fn v2_state_status(cx: &Ctx) -> Response {
    let mut containers = Vec::new();
    let mut images = Vec::new();
    let mut progress = Vec::new();
    // Only the first app in scope is reported.
    let app = cx
        .st
        .apps
        .iter()
        .filter(|a| a.installed && cx.scope.allows(f64::from(a.app_id)))
        .find(|a| !cx.st.visible_services(a).is_empty());
    if let Some(app) = app {
        for s in cx.st.visible_services(app) {
            if let Some(p) = s.download_progress {
                progress.push(p);
            }
            containers.push(json!({
                "status": s.status,
                "serviceName": s.name,
                "appId": app.app_id,
                "imageId": s.image_id,
                "serviceId": s.service_id,
                "containerId": s.container_id,
                "createdAt": "2025-01-01T00:00:00.000Z",
            }));
            images.push(json!({
                "name": image_name(app.app_id, s),
                "appId": app.app_id,
                "serviceName": s.name,
                "imageId": s.image_id,
                "dockerImageId": format!("sha256:{}", super::hex_id(&format!("docker:{}:{}", app.app_id, s.name), 64)),
                "status": if s.download_progress.is_some() { "Downloading" } else { "Downloaded" },
                "downloadProgress": s.download_progress,
            }));
        }
    }
    let overall = if progress.is_empty() {
        Value::Null
    } else {
        json!(f64::from(progress.iter().sum::<u32>()) / progress.len() as f64)
    };
    let release = app
        .map(|a| Value::String(a.commit.clone()))
        .unwrap_or(Value::Null);
    let applying = cx.st.apply_in_progress;
    send_json(
        200,
        json!({
            "status": "success",
            "appState": if applying { "applying" } else { "applied" },
            "overallDownloadProgress": overall,
            "containers": containers,
            "images": images,
            "release": release,
        }),
    )
}

fn v2_container_id(cx: &Ctx, req: &Request) -> Response {
    // `serviceName` first, else `service`; present (even empty) means "one".
    let wanted: Vec<&str> = {
        let by = |k: &str| -> Vec<&str> {
            req.query
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let a = by("serviceName");
        if a.is_empty() {
            by("service")
        } else {
            a
        }
    };
    let mut all = Map::new();
    for app in cx.st.apps.iter().filter(|a| a.installed) {
        if !cx.scope.allows(f64::from(app.app_id)) {
            continue;
        }
        for s in cx.st.visible_services(app) {
            all.insert(s.name.clone(), Value::String(s.container_id.clone()));
        }
    }
    match wanted.as_slice() {
        [] => send_json(200, json!({"status": "success", "services": all})),
        // Repeated: an array, which names no service.
        [name] => match all.get(*name) {
            Some(id) => send_json(200, json!({"status": "success", "containerId": id})),
            None => fail(503, "Could not find service with that name"),
        },
        _ => fail(503, "Could not find service with that name"),
    }
}

const TAGS_FETCH_DOWN: &str =
    "Device tags could not be fetched: getaddrinfo ENOTFOUND api.balena-cloud.com";
const TAGS_SET_DOWN: &str =
    "Device tags could not be set: getaddrinfo ENOTFOUND api.balena-cloud.com";
const TAGS_BAD_BODY: &str =
    "Invalid tags body, must be an object like `{[tagKey: string]: string}`";

fn v2_get_tags(cx: &Ctx) -> Response {
    if cx.st.tags_api_down {
        return fail(500, TAGS_FETCH_DOWN);
    }
    let tags: Vec<Value> = cx
        .st
        .tags
        .iter()
        .enumerate()
        .map(|(i, (n, v))| json!({"id": i + 1, "name": n, "value": v}))
        .collect();
    send_json(200, json!({"status": "success", "tags": tags}))
}

fn v2_patch_tags(cx: &mut Ctx) -> Response {
    // Checked before the balena API is reached. An array is an object too:
    // its entries are (index, element).
    let entries: Vec<(String, &Value)> = match &cx.body {
        Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return fail(400, TAGS_BAD_BODY),
    };
    let mut updates = Vec::new();
    for (k, v) in entries {
        let Some(v) = v.as_str() else {
            return fail(400, TAGS_BAD_BODY);
        };
        if k.chars().any(char::is_whitespace) {
            return fail(400, "Tag keys cannot contain whitespace");
        }
        updates.push((k, v.to_string()));
    }
    if cx.st.tags_api_down {
        return fail(500, TAGS_SET_DOWN);
    }
    for (k, v) in updates {
        match cx.st.tags.iter_mut().find(|(n, _)| *n == k) {
            Some(t) => t.1 = v,
            None => cx.st.tags.push((k, v)),
        }
    }
    cx.st.actions.push("tags".into());
    send_json(202, json!({"status": "success"}))
}

/// `POST /v2/local/target-state`: converts the v2 body to the device's
/// target (as the supervisor does) and checks it. `None`: the conversion
/// throws outside the route's error handling and the supervisor process
/// dies (an app key that is not a number).
fn v2_set_target_state(cx: &mut Ctx) -> Option<Response> {
    if !cx.st.local_mode {
        return Some(fail(
            400,
            "Target state can only set when device is in local mode",
        ));
    }
    let local = cx.body.get("local").filter(|l| l.is_object());
    let name = local
        .and_then(|l| l.get("name"))
        .filter(|n| !n.is_null())
        .cloned()
        .unwrap_or_else(|| Value::String(cx.st.device_name.clone()));
    let config = local
        .and_then(|l| l.get("config"))
        .filter(|c| !c.is_null())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let apps_v2 = local
        .and_then(|l| l.get("apps"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut apps = Map::new();
    for id in apps_v2.keys() {
        let numeric = parse_int_js(id).map(|n| n.to_string());
        // apps[parseInt(id)]: NaN, or a number that names no key, is undefined.
        let app = match numeric.as_deref().and_then(|n| apps_v2.get(n)) {
            Some(a) if !a.is_null() => a,
            _ => return None,
        };
        apps.insert(id.clone(), v3_app(numeric.as_deref().unwrap_or(id), app));
    }
    let uuid = cx.st.device_uuid.clone();
    let errors = check_target(&uuid, &name, &config, &apps);
    if !errors.is_empty() {
        return Some(fail(
            400,
            &format!("Invalid target state.\n{}", errors.join("\n")),
        ));
    }
    cx.st.target_state = json!({"local": {"name": name, "config": config, "apps": apps}});
    cx.st.actions.push("target-state".into());
    Some(send_json(
        200,
        json!({"status": "success", "message": "OK"}),
    ))
}

/// One app of a v2 target in the device's (v3) form.
fn v3_app(id: &str, app: &Value) -> Value {
    let mut releases = Map::new();
    let commit = app.get("commit").filter(|c| !js_falsy(c));
    if let Some(commit) = commit {
        let mut services = Map::new();
        if let Some(svcs) = app.get("services").and_then(Value::as_object) {
            for (service_id, svc) in svcs {
                let mut out = Map::new();
                let mut composition = svc.as_object().cloned().unwrap_or_default();
                for k in [
                    "imageId",
                    "serviceName",
                    "image",
                    "environment",
                    "labels",
                    "running",
                    "serviceId",
                    "contract",
                ] {
                    composition.remove(k);
                }
                out.insert("id".into(), Value::String(service_id.clone()));
                for (from, to) in [
                    ("imageId", "image_id"),
                    ("image", "image"),
                    ("environment", "environment"),
                    ("labels", "labels"),
                    ("running", "running"),
                    ("contract", "contract"),
                ] {
                    if let Some(v) = svc.get(from) {
                        out.insert(to.into(), v.clone());
                    }
                }
                out.insert("composition".into(), Value::Object(composition));
                let key = match svc.get("serviceName") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => js_string(v),
                    None => "undefined".into(),
                };
                services.insert(key, Value::Object(out));
            }
        }
        let mut release = Map::new();
        if let Some(r) = app.get("releaseId") {
            release.insert("id".into(), r.clone());
        }
        release.insert("services".into(), Value::Object(services));
        release.insert(
            "volumes".into(),
            app.get("volumes").cloned().unwrap_or_else(|| json!({})),
        );
        release.insert(
            "networks".into(),
            app.get("networks").cloned().unwrap_or_else(|| json!({})),
        );
        let commit = match commit {
            Value::String(s) => s.clone(),
            v => js_string(v),
        };
        releases.insert(commit, Value::Object(release));
    }
    let mut out = Map::new();
    if let Ok(n) = id.parse::<i64>() {
        out.insert("id".into(), json!(n));
    }
    if let Some(n) = app.get("name") {
        out.insert("name".into(), n.clone());
    }
    out.insert("class".into(), json!("fleet"));
    out.insert("releases".into(), Value::Object(releases));
    Value::Object(out)
}

/// Whether `v` is a whole number >= 0, or a string of digits.
fn numeric_id(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Number(n)) => n.as_u64().is_some(),
        Some(Value::String(s)) => !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

/// The checks of the supervisor's target-state codec that a client can
/// meet, as lines of its report (empty: valid).
fn check_target(
    uuid: &str,
    name: &Value,
    config: &Value,
    apps: &Map<String, Value>,
) -> Vec<String> {
    let mut errs = Vec::new();
    let at = |path: String, what: &str, v: Option<&Value>| {
        format!(
            "Expecting {what} at {uuid}.{path} but instead got: {}",
            js_show(v)
        )
    };
    if !name
        .as_str()
        .is_some_and(|n| !n.is_empty() && n.len() <= 255)
    {
        errs.push(at("name".into(), "DeviceName", Some(name)));
    }
    match config.as_object() {
        None => errs.push(at(
            "config".into(),
            "{ [K in string]: string }",
            Some(config),
        )),
        Some(c) => {
            for (k, v) in c {
                if !v.is_string() {
                    errs.push(at(format!("config.{k}"), "string", Some(v)));
                }
            }
        }
    }
    for (app_uuid, app) in apps {
        let base = format!("apps.{app_uuid}.0");
        if !app.get("name").is_some_and(Value::is_string) {
            errs.push(at(format!("{base}.name"), "ShortString", app.get("name")));
        }
        let Some(releases) = app.get("releases").and_then(Value::as_object) else {
            continue;
        };
        for (commit, rel) in releases {
            let rbase = format!("{base}.releases.{commit}");
            if !numeric_id(rel.get("id")) {
                errs.push(at(
                    format!("{rbase}.id"),
                    "NumericIdentifier",
                    rel.get("id"),
                ));
            }
            let Some(svcs) = rel.get("services").and_then(Value::as_object) else {
                continue;
            };
            for (svc_name, svc) in svcs {
                let sbase = format!("{rbase}.services.{svc_name}.0");
                if !numeric_id(svc.get("image_id")) {
                    errs.push(at(
                        format!("{sbase}.image_id"),
                        "NumericIdentifier",
                        svc.get("image_id"),
                    ));
                }
                if !svc.get("image").is_some_and(Value::is_string) {
                    errs.push(at(
                        format!("{sbase}.image"),
                        "ShortString",
                        svc.get("image"),
                    ));
                }
                for (field, kind) in [
                    ("environment", "{ [K in EnvVarName]: string }"),
                    ("labels", "{ [K in LabelName]: string }"),
                ] {
                    let v = svc.get(field);
                    let ok = v
                        .and_then(Value::as_object)
                        .is_some_and(|o| o.values().all(Value::is_string));
                    if !ok {
                        errs.push(at(format!("{sbase}.{field}"), kind, v));
                    }
                }
            }
        }
    }
    errs
}

// ---------------------------------------------------------------------------
// Control routes.

/// Answers `/_sim/*`.
pub fn control(shared: &Shared, req: &Request) -> Response {
    let segs = segments(&req.path);
    let rest: Vec<&str> = segs.iter().skip(1).map(String::as_str).collect();
    match (req.method.as_str(), rest.as_slice()) {
        ("GET", ["requests"]) => {
            let list: Vec<Value> = lock(&shared.recorded).iter().map(|r| r.to_json()).collect();
            send_json(200, Value::Array(list))
        }
        ("GET", ["last"]) => {
            let last = lock(&shared.recorded).last().map(|r| r.to_json());
            send_json(200, last.unwrap_or(Value::Null))
        }
        ("POST", ["reset"]) => {
            shared.reset();
            send_json(200, state_json(shared))
        }
        ("GET", ["state"]) => send_json(200, state_json(shared)),
        ("POST", ["state"]) => {
            // The body is JSON whatever its Content-Type says (curl -d).
            let v: Value = if req.body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice(&req.body) {
                    Ok(v) => v,
                    Err(e) => return fail(400, &format!("body is not JSON: {e}")),
                }
            };
            {
                let mut st = shared.state();
                let mut next = st.clone();
                if let Err(msg) = apply_state(&mut next, &v) {
                    return fail(400, &msg);
                }
                *st = next;
            }
            send_json(200, state_json(shared))
        }
        _ => fail(
            404,
            &format!("unknown control route {} {}", req.method, req.path),
        ),
    }
}

/// The `GET /_sim/state` document.
pub fn state_json(shared: &Shared) -> Value {
    use std::sync::atomic::Ordering;
    let st = shared.state();
    let apps: Vec<Value> = st
        .apps
        .iter()
        .map(|a| {
            let services: Vec<Value> = st
                .visible_services(a)
                .iter()
                .map(|s| {
                    json!({
                        "name": s.name,
                        "imageId": s.image_id,
                        "serviceId": s.service_id,
                        "containerId": s.container_id,
                        "status": s.status,
                        "downloadProgress": s.download_progress,
                    })
                })
                .collect();
            json!({"appId": a.app_id, "name": a.name, "installed": a.installed, "commit": a.commit, "services": services})
        })
        .collect();
    let tags: Map<String, Value> = st
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let scoped: Vec<Value> = st
        .scoped_keys
        .iter()
        .map(|(k, apps)| json!({"key": k, "apps": apps}))
        .collect();
    json!({
        "address": format!("http://127.0.0.1:{}", shared.port),
        "app_id": shared.cfg.app_id,
        "api_key": st.api_key,
        "global_key": st.global_key,
        "scoped_keys": scoped,
        "healthy": st.healthy,
        "locked": st.locked,
        "lock_override": st.lock_override,
        "host_update": st.host_update,
        "locks_busy": st.locks_busy,
        "busy_wait_ms": st.busy_wait_ms,
        "action_delay_ms": st.action_delay_ms,
        "apply_in_progress": st.apply_in_progress,
        "no_services": st.no_services,
        "journal_entries": st.journal_entries,
        "journal_quiet": st.journal_quiet,
        "close_streams": st.close_streams,
        "restart_ms": st.restart_ms,
        "multi_container": st.multi_container,
        "local_mode": st.local_mode,
        "unmanaged": st.unmanaged,
        "instant_updates": st.instant_updates,
        "tags_api_down": st.tags_api_down,
        "stall_ms": st.stall_ms,
        "crash_next": st.crash_next,
        "device": st.device,
        "host_config": st.host_config,
        "tags": tags,
        "target_state": st.target_state,
        "device_name": st.device_name,
        "device_uuid": st.device_uuid,
        "supervisor_version": st.supervisor_version,
        "vpn_enabled": st.vpn_enabled,
        "vpn_connected": st.vpn_connected,
        "apps": apps,
        "actions": st.actions,
        "connections": shared.connections.load(Ordering::SeqCst),
        "api_connections": shared.api_connections.load(Ordering::SeqCst),
        "requests": lock(&shared.recorded).len(),
    })
}

fn want_bool(k: &str, v: &Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("{k} must be a boolean"))
}

fn want_u64(k: &str, v: &Value) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("{k} must be a non-negative integer"))
}

fn want_str(k: &str, v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{k} must be a string"))
}

fn want_app_ids(k: &str, v: &Value) -> Result<Vec<u32>, String> {
    v.as_array()
        .ok_or_else(|| format!("{k} must be an array of app ids"))?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("{k} must be an array of app ids"))
        })
        .collect()
}

/// Applies a `POST /_sim/state` document (every field is described in the
/// doc comment of `tests/sim/mod.rs` and in `tests/sim/README.md`). Fields
/// not named are left as they are; an unknown field or a wrong type refuses
/// the whole document.
pub fn apply_state(st: &mut SimState, v: &Value) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "state must be a JSON object".to_string())?;
    for (k, v) in obj {
        match k.as_str() {
            "healthy" => st.healthy = want_bool(k, v)?,
            "locked" => st.locked = want_bool(k, v)?,
            "lock_override" => st.lock_override = want_bool(k, v)?,
            "host_update" => st.host_update = want_bool(k, v)?,
            "locks_busy" => st.locks_busy = want_bool(k, v)?,
            "apply_in_progress" => st.apply_in_progress = want_bool(k, v)?,
            "no_services" => st.no_services = want_bool(k, v)?,
            "journal_quiet" => st.journal_quiet = want_bool(k, v)?,
            "close_streams" => st.close_streams = want_bool(k, v)?,
            "busy_wait_ms" => st.busy_wait_ms = want_u64(k, v)?,
            "action_delay_ms" => st.action_delay_ms = want_u64(k, v)?,
            "journal_entries" => st.journal_entries = want_u64(k, v)?,
            "restart_ms" => st.restart_ms = want_u64(k, v)?,
            "global_key" => st.global_key = want_str(k, v)?,
            "device_uuid" => st.device_uuid = want_str(k, v)?,
            "multi_container" => st.multi_container = want_bool(k, v)?,
            "local_mode" => st.local_mode = want_bool(k, v)?,
            "unmanaged" => st.unmanaged = want_bool(k, v)?,
            "instant_updates" => st.instant_updates = want_bool(k, v)?,
            "tags_api_down" => st.tags_api_down = want_bool(k, v)?,
            "crash_next" => st.crash_next = want_bool(k, v)?,
            "vpn_enabled" => st.vpn_enabled = want_bool(k, v)?,
            "vpn_connected" => st.vpn_connected = want_bool(k, v)?,
            "stall_ms" => st.stall_ms = want_u64(k, v)?,
            "api_key" => st.api_key = want_str(k, v)?,
            "device_name" => st.device_name = want_str(k, v)?,
            "supervisor_version" => st.supervisor_version = want_str(k, v)?,
            "device" => st.device = v.clone(),
            "host_config" => st.host_config = v.clone(),
            "target_state" => st.target_state = v.clone(),
            "scoped_keys" => {
                let arr = v
                    .as_array()
                    .ok_or_else(|| "scoped_keys must be an array".to_string())?;
                let mut keys = Vec::new();
                for item in arr {
                    let key = item
                        .get("key")
                        .map(|x| want_str("scoped_keys[].key", x))
                        .transpose()?
                        .ok_or_else(|| "scoped_keys[].key is missing".to_string())?;
                    let apps = match item.get("apps") {
                        Some(a) => want_app_ids("scoped_keys[].apps", a)?,
                        None => Vec::new(),
                    };
                    keys.push((key, apps));
                }
                st.scoped_keys = keys;
            }
            "tags" => {
                let o = v
                    .as_object()
                    .ok_or_else(|| "tags must be an object of strings".to_string())?;
                let mut tags = Vec::new();
                for (n, val) in o {
                    tags.push((n.clone(), want_str("tags values", val)?));
                }
                st.tags = tags;
            }
            "service_status" => {
                let o = v
                    .as_object()
                    .ok_or_else(|| "service_status must be an object".to_string())?;
                let app_id = st
                    .apps
                    .first()
                    .map(|a| a.app_id)
                    .ok_or_else(|| "no app on the device".to_string())?;
                for (n, val) in o {
                    let status = want_str("service_status values", val)?;
                    if !st.apps[0].services.iter().any(|s| s.name == *n) {
                        return Err(format!("no service named {n}"));
                    }
                    st.set_service_status(app_id, n, &status);
                }
            }
            "actions" => {
                st.actions = v
                    .as_array()
                    .ok_or_else(|| "actions must be an array".to_string())?
                    .iter()
                    .map(|x| want_str("actions[]", x))
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown state field: {other}")),
        }
    }
    Ok(())
}
