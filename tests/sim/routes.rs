//! The supervisor's routes (authentication, body parsing, every V1 and V2
//! endpoint) and the simulator's own `/_sim/*` control routes.

use super::http::{self, send_json, send_not_found, send_status, send_text, Request, Response};
use super::{lock, random_key, Shared, SimState, APP_NOT_FOUND};
use serde_json::{json, Map, Value};

const SERVICE_NOT_FOUND: &str =
    "Service not found, a container must exist for this endpoint to work";
const V2_SERVICE_ENDPOINT_ERROR: &str = "serviceName or imageId parameters were not provided or the app is multi-container. Use the v2 service action endpoints.";
const V2_SERVICE_INPUT_ERROR: &str = "This endpoint requires one of imageId or serviceName";
const SINGLE_CONTAINER_ONLY: &str = "Some v1 endpoints are only allowed on single-container apps";
const UNKNOWN_APP_CRASH: &str = "Cannot read properties of undefined (reading 'volumes')";

/// Options of a `POST /v2/journal-logs` stream.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// Lines written at once.
    pub initial: u64,
    /// Keep writing a line per log interval until the client leaves.
    pub follow: bool,
    /// JSON lines (`"format":"json"`) instead of journalctl's short format.
    pub json: bool,
    pub unit: Option<String>,
}

/// What the connection has to do for a request.
pub enum Outcome {
    Reply(Response),
    /// Stream `GET /v2/local/logs` (service names to attribute lines to).
    LocalLogs {
        service_names: Vec<String>,
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

/// `checkInt(v)`: `None` for null/undefined or anything `parseInt` rejects.
pub fn check_int(v: Option<&Value>) -> Option<i64> {
    match v {
        None | Some(Value::Null) => None,
        Some(v) => parse_int_js(&js_string(v)),
    }
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
// Authentication and body parsing.

#[derive(Debug, Clone)]
enum Scope {
    All,
    Apps(Vec<u32>),
}

impl Scope {
    fn allows(&self, app_id: i64) -> bool {
        match self {
            Scope::All => true,
            Scope::Apps(apps) => apps.iter().any(|&a| i64::from(a) == app_id),
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

fn authenticate(st: &SimState, req: &Request) -> Option<(Scope, Option<String>)> {
    let key = request_key(req);
    if st.local_mode || st.unmanaged {
        return Some((Scope::All, key));
    }
    let k = key.clone()?;
    if k == st.api_key {
        return Some((Scope::All, key));
    }
    st.scoped_keys
        .iter()
        .find(|(sk, _)| *sk == k)
        .map(|(_, apps)| (Scope::Apps(apps.clone()), key))
}

/// A JSON.parse-like error message for a body that is not valid JSON.
fn json_error_message(body: &[u8], err: &serde_json::Error) -> String {
    let text = String::from_utf8_lossy(body);
    if err.is_eof() {
        return "Unexpected end of JSON input".to_string();
    }
    // serde's column is 1-based and counts bytes of the line.
    let offset: usize = text
        .split('\n')
        .take(err.line().saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum::<usize>()
        + err.column().saturating_sub(1);
    let bad = text
        .get(offset.min(text.len())..)
        .and_then(|s| s.chars().next())
        .unwrap_or(' ');
    let snippet: String = text.chars().take(30).collect();
    format!("Unexpected token '{bad}', \"{snippet}\" is not valid JSON")
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
            let first = req
                .body
                .iter()
                .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
            match first {
                Some(b'{') | Some(b'[') => {}
                Some(&c) => {
                    let snippet: String = String::from_utf8_lossy(&req.body)
                        .trim()
                        .chars()
                        .take(30)
                        .collect();
                    return Err(format!(
                        "Unexpected token '{}', \"{}\" is not valid JSON",
                        c as char, snippet
                    ));
                }
                None => return Err("Unexpected end of JSON input".to_string()),
            }
            serde_json::from_slice::<Value>(&req.body)
                .map_err(|e| json_error_message(&req.body, &e))
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

struct Ctx<'a> {
    st: &'a mut SimState,
    scope: Scope,
    body: Value,
    /// Raw path segments (for parameters).
    segs: Vec<String>,
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
    fn app_index(&self, id: i64) -> Option<usize> {
        self.st.apps.iter().position(|a| i64::from(a.app_id) == id)
    }

    fn installed_app_index(&self, id: i64) -> Option<usize> {
        self.app_index(id).filter(|&i| self.st.apps[i].installed)
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
            let scoped = key
                .as_ref()
                .filter(|k| **k != st.api_key)
                .and_then(|k| st.scoped_keys.iter().position(|(sk, _)| sk == k));
            match scoped {
                Some(i) => st.scoped_keys[i].0 = new_key.clone(),
                None => st.api_key = new_key.clone(),
            }
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
        ("GET", ["v1", "device"]) => send_json(200, cx.st.device.clone()),
        ("GET", ["v1", "device", "host-config"]) => send_json(200, cx.st.host_config.clone()),
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
        ("POST", ["v2", "local", "target-state"]) => v2_set_target_state(&mut cx),
        ("GET", ["v2", "local", "device-info"]) => send_json(
            200,
            json!({"status": "success", "info": {"arch": "aarch64", "deviceType": "raspberrypi4-64"}}),
        ),
        ("GET", ["v2", "local", "logs"]) => {
            let service_names = cx
                .st
                .apps
                .first()
                .map(|a| {
                    cx.st
                        .visible_services(a)
                        .iter()
                        .map(|s| s.name.clone())
                        .collect()
                })
                .unwrap_or_default();
            return Outcome::LocalLogs { service_names };
        }
        ("POST", ["v2", "journal-logs"]) => {
            let count = check_int(cx.field("count")).filter(|&c| c > 0);
            return Outcome::Journal(JournalOptions {
                initial: count.map(|c| c as u64).unwrap_or(10),
                follow: truthy(cx.field("follow")),
                json: cx.field("format").and_then(Value::as_str) == Some("json"),
                unit: cx.field("unit").and_then(Value::as_str).map(str::to_string),
            });
        }
        _ => send_not_found(&req.method, &req.path),
    };
    Outcome::Reply(resp)
}

// ---------------------------------------------------------------------------
// V1 handlers.

fn v1_update(cx: &mut Ctx) -> Response {
    let force = cx.force();
    cx.st
        .actions
        .push(if force { "update(force)" } else { "update" }.into());
    if force || cx.st.instant_updates {
        send_status(204)
    } else {
        send_status(202)
    }
}

fn v1_device_action(cx: &mut Ctx, action: &str) -> Response {
    let force = cx.force();
    if let Err(msg) = cx.st.take_lock(force) {
        return send_json(423, json!({"Data": "", "Error": msg}));
    }
    cx.st.actions.push(if force {
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
    let Some(idx) = cx.installed_app_index(id) else {
        return fail(
            503,
            &format!("Application with ID {id} is not in the current state"),
        );
    };
    if let Err(msg) = cx.st.take_lock(force) {
        return fail(423, &msg);
    }
    restart_all(cx.st, idx);
    cx.st
        .actions
        .push(format!("{} {id}", if purge { "purge" } else { "restart" }));
    if purge {
        send_json(200, json!({"Data": "OK", "Error": ""}))
    } else {
        send_text(200, "OK")
    }
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
    let Some(id) = parse_int_js(&cx.param(2)) else {
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
    if services.len() > 1 {
        return send_text(400, SINGLE_CONTAINER_ONLY);
    }
    let Some(svc) = services.first() else {
        return send_text(400, "App not found");
    };
    send_json(
        200,
        json!({
            "appId": app.app_id,
            "commit": app.commit,
            "containerId": svc.container_id,
            "env": {},
            "imageId": svc.image_id,
            "releaseId": app.release_id,
        }),
    )
}

fn v1_stop_start(cx: &mut Ctx, stop: bool) -> Response {
    let force = cx.force();
    let Some(id) = parse_int_js(&cx.param(2)) else {
        return send_text(400, "Invalid app id");
    };
    if !cx.scope.allows(id) {
        return send_status(401);
    }
    let Some(idx) = cx.app_index(id) else {
        return fail(503, UNKNOWN_APP_CRASH);
    };
    if !cx.st.apps[idx].installed {
        return send_text(400, APP_NOT_FOUND);
    }
    let app = &cx.st.apps[idx];
    let services = cx.st.visible_services(app);
    if services.len() != 1 {
        return send_text(400, V2_SERVICE_ENDPOINT_ERROR);
    }
    let (app_id, name, cid) = (
        app.app_id,
        services[0].name.clone(),
        services[0].container_id.clone(),
    );
    if stop {
        if let Err(msg) = cx.st.take_lock(force) {
            return fail(423, &msg);
        }
    }
    cx.st
        .set_service_status(app_id, &name, if stop { "exited" } else { "Running" });
    cx.st.actions.push(format!(
        "{} {app_id}/{name}",
        if stop { "stop" } else { "start" }
    ));
    send_json(200, json!({ "containerId": cid }))
}

fn v1_patch_host_config(cx: &mut Ctx) -> Response {
    let Some(net) = cx.field("network").filter(|n| n.is_object()).cloned() else {
        return send_text(400, "Key 'network' must exist in PATCH body");
    };
    if let Some(dns) = net.get("dns") {
        if !js_falsy(dns) && !dns.is_boolean() && !dns.is_string() {
            return send_text(
                400,
                &format!(
                    "Expected dns to be a boolean or string, received: {}",
                    js_typeof(dns)
                ),
            );
        }
    }
    if !cx.st.host_config.is_object() {
        cx.st.host_config = json!({});
    }
    let current = cx
        .st
        .host_config
        .get("network")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let hostname_change = net
        .get("hostname")
        .is_some_and(|h| Some(h) != current.get("hostname"));
    let proxy_change = net
        .get("proxy")
        .is_some_and(|p| Some(p) != current.get("proxy"));
    if hostname_change || proxy_change {
        let force = cx.force();
        if let Err(msg) = cx.st.take_lock(force) {
            return send_text(423, &msg);
        }
    }
    let obj = cx.st.host_config.as_object_mut().expect("object");
    let stored = obj.entry("network").or_insert_with(|| json!({}));
    if !stored.is_object() {
        *stored = json!({});
    }
    let stored = stored.as_object_mut().expect("object");
    for key in ["hostname", "proxy"] {
        if let Some(v) = net.get(key) {
            stored.insert(key.to_string(), v.clone());
        }
    }
    cx.st.actions.push("host-config".into());
    send_text(200, "OK")
}

// ---------------------------------------------------------------------------
// V2 handlers.

fn v2_service_action(cx: &mut Ctx, action: &str) -> Response {
    let force = cx.force();
    let Some(id) = parse_int_js(&cx.param(2)).filter(|&i| i != 0) else {
        return fail(400, "Invalid app id");
    };
    if !cx.scope.allows(id) {
        return fail(401, "Unauthorized");
    }
    let Some(idx) = cx.app_index(id) else {
        return fail(503, UNKNOWN_APP_CRASH);
    };
    if !cx.st.apps[idx].installed {
        return send_text(404, APP_NOT_FOUND);
    }
    let image_id = check_int(cx.field("imageId"));
    let service_name = cx
        .field("serviceName")
        .and_then(Value::as_str)
        .map(str::to_string);
    let app = &cx.st.apps[idx];
    let services = cx.st.visible_services(app);
    let found = if services.len() == 1 {
        services.first()
    } else if let Some(img) = image_id {
        services.iter().find(|s| i64::from(s.image_id) == img)
    } else if let Some(name) = &service_name {
        services.iter().find(|s| s.name == *name)
    } else {
        return send_text(400, V2_SERVICE_INPUT_ERROR);
    };
    let Some(svc) = found else {
        return send_text(404, SERVICE_NOT_FOUND);
    };
    let (app_id, name) = (app.app_id, svc.name.clone());
    if action != "start-service" {
        if let Err(msg) = cx.st.take_lock(force) {
            return fail(423, &msg);
        }
    }
    let status = if action == "stop-service" {
        "exited"
    } else {
        "Running"
    };
    cx.st.set_service_status(app_id, &name, status);
    cx.st.actions.push(format!("{action} {app_id}/{name}"));
    send_text(200, "OK")
}

fn v2_app_action(cx: &mut Ctx, action: &str) -> Response {
    let force = cx.force();
    let Some(id) = parse_int_js(&cx.param(2)).filter(|&i| i != 0) else {
        return fail(400, "Missing app id");
    };
    if !cx.scope.allows(id) {
        return fail(401, "Unauthorized");
    }
    let Some(idx) = cx.installed_app_index(id) else {
        return fail(
            503,
            &format!("Application with ID {id} is not in the current state"),
        );
    };
    if let Err(msg) = cx.st.take_lock(force) {
        return fail(423, &msg);
    }
    restart_all(cx.st, idx);
    cx.st.actions.push(format!("{action} {id}"));
    send_text(200, "OK")
}

fn image_name(app_id: u32, svc: &super::SimService) -> String {
    format!(
        "registry2.balena-cloud.com/v2/{}@sha256:{}",
        super::hex_id(&format!("image:{app_id}:{}", svc.name), 32),
        super::hex_id(&format!("digest:{app_id}:{}", svc.name), 64)
    )
}

fn v2_applications_state(cx: &Ctx) -> Response {
    let mut out = Map::new();
    for app in cx.st.apps.iter().filter(|a| a.installed) {
        if !cx.scope.allows(i64::from(app.app_id)) {
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
    let Some(id) = parse_int_js(&cx.param(2)) else {
        return fail(400, "Invalid app id");
    };
    let idx = cx.installed_app_index(id).filter(|_| cx.scope.allows(id));
    let Some(idx) = idx else {
        return fail(409, &format!("Application ID does not exist: {id}"));
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
    send_json(
        200,
        json!({"local": local, "dependent": {}, "commit": app.commit}),
    )
}

fn v2_state_status(cx: &Ctx) -> Response {
    let mut containers = Vec::new();
    let mut images = Vec::new();
    let mut progress = Vec::new();
    for app in cx.st.apps.iter().filter(|a| a.installed) {
        if !cx.scope.allows(i64::from(app.app_id)) {
            continue;
        }
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
        json!(progress.iter().sum::<u32>() / progress.len() as u32)
    };
    let release = cx
        .st
        .apps
        .first()
        .map(|a| a.commit.clone())
        .unwrap_or_default();
    send_json(
        200,
        json!({
            "status": "success",
            "appState": if progress.is_empty() { "applied" } else { "applying" },
            "overallDownloadProgress": overall,
            "containers": containers,
            "images": images,
            "release": release,
        }),
    )
}

fn v2_container_id(cx: &Ctx, req: &Request) -> Response {
    let wanted = req
        .query_param("serviceName")
        .filter(|s| !s.is_empty())
        .or_else(|| req.query_param("service").filter(|s| !s.is_empty()));
    let mut all = Map::new();
    for app in cx.st.apps.iter().filter(|a| a.installed) {
        if !cx.scope.allows(i64::from(app.app_id)) {
            continue;
        }
        for s in cx.st.visible_services(app) {
            all.insert(s.name.clone(), Value::String(s.container_id.clone()));
        }
    }
    match wanted {
        Some(name) => match all.get(name) {
            Some(id) => send_json(200, json!({"status": "success", "containerId": id})),
            None => fail(503, "Could not find service with that name"),
        },
        None => send_json(200, json!({"status": "success", "services": all})),
    }
}

const TAGS_DOWN: &str =
    "Could not connect to the balena API: getaddrinfo EAI_AGAIN api.balena-cloud.com";

fn v2_get_tags(cx: &Ctx) -> Response {
    if cx.st.tags_api_down {
        return fail(500, TAGS_DOWN);
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
    if cx.st.tags_api_down {
        return fail(500, TAGS_DOWN);
    }
    let Some(obj) = cx.body.as_object() else {
        return fail(400, "Tags must be an object of name/value strings");
    };
    let mut updates = Vec::new();
    for (k, v) in obj {
        if k.is_empty() || k.chars().any(char::is_whitespace) {
            return fail(400, &format!("Tag name '{k}' must not contain white space"));
        }
        let Some(v) = v.as_str() else {
            return fail(400, &format!("Tag value for '{k}' must be a string"));
        };
        updates.push((k.clone(), v.to_string()));
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

fn v2_set_target_state(cx: &mut Ctx) -> Response {
    if !cx.st.local_mode {
        return fail(
            400,
            "Target state can only set when device is in local mode",
        );
    }
    if !cx.field("local").is_some_and(Value::is_object) {
        return fail(
            400,
            "Invalid target state: 'local' must be an object describing the device",
        );
    }
    cx.st.target_state = cx.body.clone();
    cx.st.actions.push("target-state".into());
    send_json(200, json!({"status": "success", "message": "OK"}))
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
        "scoped_keys": scoped,
        "healthy": st.healthy,
        "locked": st.locked,
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

/// Applies a `POST /_sim/state` document. Fields: healthy, locked,
/// multi_container, local_mode, unmanaged, instant_updates, tags_api_down,
/// crash_next, vpn_enabled, vpn_connected (booleans); stall_ms (number);
/// api_key, device_name, supervisor_version (strings); scoped_keys
/// (`[{"key","apps":[ids]}]`); device, host_config, target_state (any JSON,
/// replaced whole); tags (object of strings, replaces all); service_status
/// (`{"<service>":"<status>"}` for the first app); actions (array, usually
/// `[]` to clear).
pub fn apply_state(st: &mut SimState, v: &Value) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "state must be a JSON object".to_string())?;
    for (k, v) in obj {
        match k.as_str() {
            "healthy" => st.healthy = want_bool(k, v)?,
            "locked" => st.locked = want_bool(k, v)?,
            "multi_container" => st.multi_container = want_bool(k, v)?,
            "local_mode" => st.local_mode = want_bool(k, v)?,
            "unmanaged" => st.unmanaged = want_bool(k, v)?,
            "instant_updates" => st.instant_updates = want_bool(k, v)?,
            "tags_api_down" => st.tags_api_down = want_bool(k, v)?,
            "crash_next" => st.crash_next = want_bool(k, v)?,
            "vpn_enabled" => st.vpn_enabled = want_bool(k, v)?,
            "vpn_connected" => st.vpn_connected = want_bool(k, v)?,
            "stall_ms" => {
                st.stall_ms = v
                    .as_u64()
                    .ok_or_else(|| "stall_ms must be a non-negative integer".to_string())?
            }
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
