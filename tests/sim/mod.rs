#![allow(dead_code)]
#![allow(clippy::duplicated_attributes)]
//! A balena Supervisor simulator: a small HTTP/1.1 server on 127.0.0.1 that
//! answers the device API the way the real (Node.js/Express) supervisor does
//! — same statuses, bodies, content types, authentication order and
//! keep-alive behaviour — with switchable faults and a recording of every
//! request, so tests can check both what the client sent and how it copes
//! with every answer.
//!
//! Used by the Rust integration tests (`mod sim;`, with the assertions on
//! the recording in [`check`]), by `examples/simulator.rs` (a standalone
//! server for C / Python tests and for offline development) and, through its
//! `/_sim/*` control routes, by anything that speaks HTTP.
//!
//! Control routes (no key, never recorded, never stalled):
//! - `GET /_sim/requests`: recorded requests, as a JSON array
//! - `GET /_sim/last`: the last recorded request, or `null`
//! - `POST /_sim/reset`: clear the recording and restore the initial state
//! - `GET /_sim/state`: flags, key, apps, counters
//! - `POST /_sim/state`: JSON object of fields to set (see `routes::apply_state`)

pub mod check;
mod http;
mod routes;

#[allow(unused_imports)]
pub use http::{send_json, send_status, send_text, Response};

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Start-up configuration of a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The device's (global) API key.
    pub api_key: String,
    /// Id of the app installed on the device (`BALENA_APP_ID`).
    pub app_id: u32,
    /// An idle keep-alive connection is closed this long after its last
    /// response (Node: `keepAliveTimeout`, 5 s).
    pub idle_timeout: Duration,
    /// Interval between lines of the log streams.
    pub log_interval: Duration,
    /// Initial value of `SimState::multi_container`.
    pub multi_container: bool,
    /// Initial value of `SimState::locked`.
    pub locked: bool,
    /// Initial value of `SimState::local_mode`.
    pub local_mode: bool,
    /// Initial value of `SimState::unmanaged`.
    pub unmanaged: bool,
    /// Initial value of `SimState::instant_updates`.
    pub instant_updates: bool,
    /// Print `METHOD /path` of every request to stderr (never the query,
    /// which may carry the key).
    pub log_requests: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            api_key: "sim-key-0123456789abcdef".to_string(),
            app_id: 1234,
            idle_timeout: Duration::from_secs(5),
            log_interval: Duration::from_millis(200),
            multi_container: false,
            locked: false,
            local_mode: false,
            unmanaged: false,
            instant_updates: false,
            log_requests: false,
        }
    }
}

/// One service (container) of an app.
#[derive(Debug, Clone, PartialEq)]
pub struct SimService {
    pub name: String,
    pub image_id: u32,
    pub service_id: u32,
    /// 64 hex characters.
    pub container_id: String,
    /// Container state: `Running`, `exited`, `Downloading`, ...
    pub status: String,
    /// `None` shows as `null`.
    pub download_progress: Option<u32>,
}

/// One app on the device.
#[derive(Debug, Clone, PartialEq)]
pub struct SimApp {
    pub app_id: u32,
    pub name: String,
    pub uuid: String,
    pub commit: String,
    pub release_id: u32,
    /// false: the app is in the target state but not installed yet (service
    /// actions answer "App not found: ...").
    pub installed: bool,
    /// All services; while `SimState::multi_container` is false only the
    /// first one exists.
    pub services: Vec<SimService>,
}

/// The simulated device. Every field may be changed by a test at any time
/// through `Sim::with_state` (or `POST /_sim/state`).
#[derive(Debug, Clone, PartialEq)]
pub struct SimState {
    /// The current global key (changes on `/v1/regenerate-api-key`).
    pub api_key: String,
    /// Extra keys valid only for the listed app ids.
    pub scoped_keys: Vec<(String, Vec<u32>)>,
    /// `/v1/healthy` answers 500 `Unhealthy` when false.
    pub healthy: bool,
    /// An update lock is held: actions without force answer 423. A forced
    /// action clears it (the supervisor deletes the lock files).
    pub locked: bool,
    /// Apps have all their services (default app: `main` and `worker`);
    /// otherwise only their first one.
    pub multi_container: bool,
    /// Local mode: target state may be set, and no key is checked.
    pub local_mode: bool,
    /// Unmanaged device: no key is checked.
    pub unmanaged: bool,
    /// The device applies updates at once (`/v1/update` answers 204).
    pub instant_updates: bool,
    /// No connection to the balena API: `/v2/device/tags` answers 500.
    pub tags_api_down: bool,
    /// Sleep this long before answering any non-control request.
    pub stall_ms: u64,
    /// Drop the connection of the next non-control request without an answer.
    pub crash_next: bool,
    /// The body of `GET /v1/device`; its `status` (when present) follows
    /// stop/start of the first service.
    pub device: Value,
    /// The body of `GET /v1/device/host-config`.
    pub host_config: Value,
    /// Device tags (name, value); ids are positions + 1.
    pub tags: Vec<(String, String)>,
    /// The local target state (`GET /v2/local/target-state`).
    pub target_state: Value,
    pub apps: Vec<SimApp>,
    pub device_name: String,
    pub supervisor_version: String,
    pub vpn_enabled: bool,
    pub vpn_connected: bool,
    /// Actions the device carried out, e.g. `reboot`, `reboot(force)`,
    /// `stop 1234/main`, `purge 1234`, `blink`, `update`.
    pub actions: Vec<String>,
}

pub(crate) const APP_NOT_FOUND: &str = "App not found: an app needs to be installed for this endpoint to work.\n\tIf you've recently moved this device from another app,\n\tplease push an app and wait for it to be installed first.";

impl SimState {
    fn initial(cfg: &SimConfig) -> SimState {
        let commit = "7fc9c5bea8e361acd49886fe6cc1e1cd".to_string();
        let service = |name: &str, image_id: u32, service_id: u32| SimService {
            name: name.to_string(),
            image_id,
            service_id,
            container_id: hex_id(&format!("container:{}:{}", cfg.app_id, name), 64),
            status: "Running".to_string(),
            download_progress: None,
        };
        SimState {
            api_key: cfg.api_key.clone(),
            scoped_keys: Vec::new(),
            healthy: true,
            locked: cfg.locked,
            multi_container: cfg.multi_container,
            local_mode: cfg.local_mode,
            unmanaged: cfg.unmanaged,
            instant_updates: cfg.instant_updates,
            tags_api_down: false,
            stall_ms: 0,
            crash_next: false,
            device: json!({
                "api_port": 48484,
                "ip_address": "10.0.0.2",
                "os_version": "balenaOS 6.0.13",
                "mac_address": "02:42:AC:11:00:02",
                "supervisor_version": "19.0.5",
                "update_pending": false,
                "update_failed": false,
                "update_downloaded": false,
                "commit": commit,
                "status": "Idle",
                "download_progress": null
            }),
            host_config: json!({"network": {"hostname": "device", "proxy": {}}}),
            tags: Vec::new(),
            target_state: json!({
                "local": {"name": "sim-device", "config": {}, "apps": {}},
                "dependent": {"apps": [], "devices": []}
            }),
            apps: vec![SimApp {
                app_id: cfg.app_id,
                name: "myapp".to_string(),
                uuid: hex_id(&format!("app:{}", cfg.app_id), 32),
                commit,
                release_id: 2_345_678,
                installed: true,
                services: vec![service("main", 1001, 201), service("worker", 1002, 202)],
            }],
            device_name: "sim-device".to_string(),
            supervisor_version: "19.0.5".to_string(),
            vpn_enabled: true,
            vpn_connected: true,
            actions: Vec::new(),
        }
    }

    /// The app with this id, if it is on the device.
    pub fn app(&self, app_id: u32) -> Option<&SimApp> {
        self.apps.iter().find(|a| a.app_id == app_id)
    }

    pub fn app_mut(&mut self, app_id: u32) -> Option<&mut SimApp> {
        self.apps.iter_mut().find(|a| a.app_id == app_id)
    }

    /// The services that exist now (all, or the first one unless
    /// `multi_container`).
    pub fn visible_services<'a>(&self, app: &'a SimApp) -> &'a [SimService] {
        if self.multi_container {
            &app.services
        } else {
            &app.services[..app.services.len().min(1)]
        }
    }

    /// An existing service by app and name.
    pub fn service(&self, app_id: u32, name: &str) -> Option<&SimService> {
        let app = self.app(app_id)?;
        self.visible_services(app).iter().find(|s| s.name == name)
    }

    /// Container state of a service, e.g. `Running` or `exited`.
    pub fn service_status(&self, app_id: u32, name: &str) -> Option<String> {
        self.service(app_id, name).map(|s| s.status.clone())
    }

    /// Message of the update-lock error.
    pub fn lock_message(&self) -> String {
        let (app, svc) = self
            .apps
            .first()
            .map(|a| {
                (
                    a.app_id,
                    a.services
                        .first()
                        .map(|s| s.name.clone())
                        .unwrap_or_else(|| "main".into()),
                )
            })
            .unwrap_or((0, "main".into()));
        format!(
            "Updates are locked: EEXIST: file already exists, open '/tmp/balena-supervisor/services/{app}/{svc}/updates.lock'"
        )
    }

    /// Takes the update lock for an action: `Err(message)` when a lock is held
    /// and `force` is false; a forced action deletes the lock.
    pub fn take_lock(&mut self, force: bool) -> Result<(), String> {
        if self.locked {
            if force {
                self.locked = false;
            } else {
                return Err(self.lock_message());
            }
        }
        Ok(())
    }

    /// Sets a service's container state; the first service of the first app
    /// also drives `device.status` (`Running` shows as `Idle`).
    pub fn set_service_status(&mut self, app_id: u32, name: &str, status: &str) {
        let first = self
            .apps
            .first()
            .and_then(|a| a.services.first().map(|s| (a.app_id, s.name.clone())));
        if let Some(app) = self.app_mut(app_id) {
            if let Some(s) = app.services.iter_mut().find(|s| s.name == name) {
                s.status = status.to_string();
            }
        }
        if first == Some((app_id, name.to_string())) {
            if let Some(obj) = self.device.as_object_mut() {
                if obj.contains_key("status") {
                    let shown = if status == "Running" { "Idle" } else { status };
                    obj.insert("status".into(), Value::String(shown.into()));
                }
            }
        }
    }
}

/// One request as the simulator received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub method: String,
    /// Path as sent (not decoded), without the query.
    pub path: String,
    /// Decoded query parameters.
    pub query: Vec<(String, String)>,
    /// Query string as sent, without `?`.
    pub raw_query: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
    /// Which TCP connection carried it (1, 2, ... in accept order).
    pub conn_id: u64,
}

impl Recorded {
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The form used by `GET /_sim/requests`.
    pub fn to_json(&self) -> Value {
        let mut q = serde_json::Map::new();
        for (k, v) in &self.query {
            q.insert(k.clone(), Value::String(v.clone()));
        }
        let mut h = serde_json::Map::new();
        for (k, v) in &self.headers {
            let joined = match h.get(k).and_then(|x| x.as_str()) {
                Some(prev) => format!("{prev}, {v}"),
                None => v.clone(),
            };
            h.insert(k.clone(), Value::String(joined));
        }
        json!({
            "method": self.method,
            "path": self.path,
            "query": q,
            "raw_query": self.raw_query,
            "headers": h,
            "body": self.body_text(),
            "conn_id": self.conn_id,
        })
    }
}

/// State shared by the accept thread and the connection threads.
struct Shared {
    cfg: SimConfig,
    port: u16,
    initial: SimState,
    state: Mutex<SimState>,
    recorded: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
    api_connections: AtomicUsize,
    next_conn: AtomicU64,
    stopping: AtomicBool,
    live: Mutex<HashMap<u64, TcpStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SimState> {
        lock(&self.state)
    }

    fn reset(&self) {
        *self.state() = self.initial.clone();
        lock(&self.recorded).clear();
    }
}

/// A running simulator. Dropping it (or `stop`) closes the listener and every
/// open connection.
pub struct Sim {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Sim {
    /// Default configuration on an ephemeral port.
    pub fn start() -> Sim {
        Sim::start_with(SimConfig::default())
    }

    /// Given configuration on an ephemeral port.
    pub fn start_with(cfg: SimConfig) -> Sim {
        Sim::start_on(0, cfg).expect("cannot start the supervisor simulator")
    }

    /// Listens on 127.0.0.1:`port` (0: ephemeral).
    pub fn start_on(port: u16, cfg: SimConfig) -> io::Result<Sim> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let initial = SimState::initial(&cfg);
        let shared = Arc::new(Shared {
            cfg,
            port,
            state: Mutex::new(initial.clone()),
            initial,
            recorded: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            api_connections: AtomicUsize::new(0),
            next_conn: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
        });
        let sh = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("sim-accept".into())
            .spawn(move || accept_loop(sh, listener))?;
        Ok(Sim {
            shared,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.shared.port)
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// The current global key (changes after a regenerate).
    pub fn api_key(&self) -> String {
        self.shared.state().api_key.clone()
    }

    pub fn app_id(&self) -> u32 {
        self.shared.cfg.app_id
    }

    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// Every recorded request so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.recorded).clone()
    }

    pub fn last_request(&self) -> Option<Recorded> {
        lock(&self.shared.recorded).last().cloned()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.recorded).clear();
    }

    /// TCP connections accepted so far (control-route connections included).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TCP connections that carried at least one non-control request.
    pub fn api_connections(&self) -> usize {
        self.shared.api_connections.load(Ordering::SeqCst)
    }

    /// Runs `f` on the device state, under its lock (do not call other `Sim`
    /// methods from inside `f`: the lock is not re-entrant).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut SimState) -> R) -> R {
        f(&mut self.shared.state())
    }

    /// A copy of the device state.
    pub fn state(&self) -> SimState {
        self.shared.state().clone()
    }

    /// Clears the recording and restores the initial state.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops the simulator (same as dropping it).
    pub fn stop(self) {}

    fn shutdown(&mut self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept loop.
        let addr = SocketAddr::from(([127, 0, 0, 1], self.shared.port));
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for (_, s) in lock(&self.shared.live).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(c) = stream.try_clone() {
            lock(&shared.live).insert(id, c);
        }
        let sh = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("sim-conn-{id}"))
            .spawn(move || serve_connection(sh, stream, id));
        if spawned.is_err() {
            if let Some(s) = lock(&shared.live).remove(&id) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn serve_connection(shared: Arc<Shared>, stream: TcpStream, conn_id: u64) {
    let _ = stream.set_nodelay(true);
    if let Ok(mut writer) = stream.try_clone() {
        let mut reader = BufReader::new(stream);
        serve_requests(&shared, &mut reader, &mut writer, conn_id);
        let _ = writer.shutdown(Shutdown::Both);
    }
    lock(&shared.live).remove(&conn_id);
}

fn serve_requests(
    shared: &Shared,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    conn_id: u64,
) {
    let idle = shared.cfg.idle_timeout;
    let mut wait = http::HEADERS_TIMEOUT;
    let mut counted = false;
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let req = match http::read_request(reader, wait) {
            http::ReadOutcome::Closed => return,
            http::ReadOutcome::Bad(code) => {
                let _ = write!(
                    writer,
                    "HTTP/1.1 {} {}\r\nConnection: close\r\n\r\n",
                    code,
                    http::reason(code)
                );
                return;
            }
            http::ReadOutcome::Request(r) => r,
        };
        wait = idle;
        let keep_alive = req.wants_keep_alive();
        let head_only = req.method == "HEAD";
        if shared.cfg.log_requests {
            eprintln!("{} {}", req.method, req.path);
        }

        if routes::is_control(&req.path) {
            let resp = routes::control(shared, &req);
            if http::write_response(writer, &resp, keep_alive, idle, head_only).is_err()
                || !keep_alive
            {
                return;
            }
            continue;
        }

        if !counted {
            counted = true;
            shared.api_connections.fetch_add(1, Ordering::SeqCst);
        }
        lock(&shared.recorded).push(Recorded {
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            raw_query: req.raw_query.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
            conn_id,
        });
        let (stall, crash) = {
            let mut st = shared.state();
            let crash = std::mem::replace(&mut st.crash_next, false);
            (st.stall_ms, crash)
        };
        if stall > 0 {
            thread::sleep(Duration::from_millis(stall));
        }
        if crash {
            return;
        }

        match routes::dispatch(shared, &req) {
            routes::Outcome::Reply(resp) => {
                if http::write_response(writer, &resp, keep_alive, idle, head_only).is_err()
                    || !keep_alive
                {
                    return;
                }
            }
            routes::Outcome::LocalLogs { service_names } => {
                if http::write_stream_head(writer, keep_alive, idle).is_ok() && !head_only {
                    stream_local_logs(shared, writer, &service_names);
                }
                return;
            }
            routes::Outcome::Journal(opts) => {
                if http::write_stream_head(writer, keep_alive, idle).is_err() {
                    return;
                }
                if head_only {
                    return;
                }
                let finished = stream_journal(shared, writer, &opts);
                if !finished || !keep_alive {
                    return;
                }
            }
        }
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `GET /v2/local/logs`: one NDJSON line per chunk, until the client leaves.
fn stream_local_logs(shared: &Shared, w: &mut TcpStream, services: &[String]) {
    let first = json!({"message": "Streaming logs", "isSystem": true});
    if http::write_chunk(w, format!("{first}\n").as_bytes()).is_err() {
        return;
    }
    let mut n: u64 = 0;
    loop {
        if http::wait_or_closed(w, shared.cfg.log_interval)
            || shared.stopping.load(Ordering::SeqCst)
        {
            return;
        }
        n += 1;
        let service = services
            .get(((n - 1) as usize) % services.len().max(1))
            .cloned()
            .unwrap_or_else(|| "main".into());
        let line = json!({
            "message": format!("log line {n} from {service}"),
            "timestamp": now_millis(),
            "serviceName": service,
        });
        if http::write_chunk(w, format!("{line}\n").as_bytes()).is_err() {
            return;
        }
    }
}

/// `POST /v2/journal-logs`. Each line goes out in two separately flushed
/// chunks, so a client has to reassemble lines. Returns true when the
/// response was completed (terminating chunk written).
fn stream_journal(shared: &Shared, w: &mut TcpStream, opts: &routes::JournalOptions) -> bool {
    let hostname = {
        let st = shared.state();
        st.host_config
            .pointer("/network/hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .unwrap_or("device")
            .to_string()
    };
    let emit = |w: &mut TcpStream, n: u64| -> bool {
        let line = journal_line(n, &hostname, opts);
        let bytes = line.as_bytes();
        let cut = bytes.len() / 2;
        if http::write_chunk(w, &bytes[..cut]).is_err() {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
        http::write_chunk(w, &bytes[cut..]).is_ok()
    };
    let mut n: u64 = 0;
    while n < opts.initial {
        n += 1;
        if !emit(w, n) {
            return false;
        }
    }
    if opts.follow {
        loop {
            if http::wait_or_closed(w, shared.cfg.log_interval)
                || shared.stopping.load(Ordering::SeqCst)
            {
                return false;
            }
            n += 1;
            if !emit(w, n) {
                return false;
            }
        }
    }
    http::write_last_chunk(w).is_ok()
}

fn journal_line(n: u64, hostname: &str, opts: &routes::JournalOptions) -> String {
    let now = SystemTime::now();
    let ident = opts
        .unit
        .as_deref()
        .map(|u| u.trim_end_matches(".service").to_string())
        .unwrap_or_else(|| "balena-supervisor".to_string());
    let message = format!("line {n}");
    if opts.json {
        let micros = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let v = json!({
            "__CURSOR": format!("s=0;i={n:x}"),
            "__REALTIME_TIMESTAMP": micros.to_string(),
            "_HOSTNAME": hostname,
            "SYSLOG_IDENTIFIER": ident,
            "_SYSTEMD_UNIT": format!("{ident}.service"),
            "_PID": "1",
            "PRIORITY": "6",
            "MESSAGE": message,
        });
        format!("{v}\n")
    } else {
        let (_, mo, d, h, mi, s, _) = http::utc_parts(now);
        format!(
            "{} {:02} {:02}:{:02}:{:02} {} {}[1]: {}\n",
            http::MONTHS[mo as usize - 1],
            d,
            h,
            mi,
            s,
            hostname,
            ident,
            message
        )
    }
}

/// Deterministic hex string of `len` characters derived from `seed`.
pub fn hex_id(seed: &str, len: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.push_str(&format!("{z:016x}"));
    }
    out.truncate(len);
    out
}

/// A fresh random key: 32 hex characters, like a uuid4 without dashes.
pub fn random_key() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::SeqCst));
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}
