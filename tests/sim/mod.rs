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
//! - `GET /_sim/state`: flags, keys, apps, counters
//! - `POST /_sim/state`: JSON object of fields to set (see `routes::apply_state`)
//!
//! Keys: `api_key` is the key a container of the app gets
//! (`BALENA_SUPERVISOR_API_KEY`, printed by `examples/simulator.rs`), valid
//! only for the app `app_id` (other apps: 401, as on a device); `global_key`
//! is the cloud's key, valid for every app; `scoped_keys` are extra keys
//! scoped to the listed apps. `POST /v1/regenerate-api-key` replaces the key
//! it was called with (the old one gets 401 at once, the new one keeps its
//! scope).
//!
//! Fields of `POST /_sim/state` (booleans unless said otherwise; default in
//! brackets):
//! - `healthy` [true]; `locked` [false]: an app update lock is held (a lock
//!   file for the first app's first service): actions without force answer
//!   423 `Lockfile exists for { appId: 1234, service: main }`, a forced one
//!   deletes the lock; `lock_override` [false]: the device's
//!   `SUPERVISOR_OVERRIDE_LOCK`: every locking action acts as if forced.
//! - `host_update` [false]: a host OS update is finishing: reboot and
//!   shutdown without force answer 423 `Waiting for Host OS update to finish`
//!   (force passes).
//! - `locks_busy` [false]: another supervisor operation holds the apps'
//!   locks: every action that takes locks (reboot, shutdown, restart, purge,
//!   stop, service restart/stop, host-config hostname/proxy changes) waits
//!   `busy_wait_ms` [200; the real supervisor waits 10000] and answers 423
//!   `Locks for app 1234 are being held by another supervisor operation`,
//!   also when force is sent.
//! - `action_delay_ms` [0]: a performed action (reboot, shutdown, update,
//!   restart, stop, start, purge, service actions) is carried out and
//!   recorded at once, and its answer is sent this much later, whether or not
//!   the client is still there (the real routes answer when the work is
//!   done).
//! - `multi_container` [false], `local_mode` [false], `unmanaged` [false],
//!   `instant_updates` [false], `tags_api_down` [false], `vpn_enabled`
//!   [true], `vpn_connected` [true], `apply_in_progress` [false]: an apply
//!   is running (`appState` `applying`, no `commit` in `GET /v1/device`);
//!   `no_services` [false]: the app is installed with no containers.
//! - `journal_entries` [50]: the journal holds this many entries
//!   (`POST /v2/journal-logs` without `count` sends them all);
//!   `journal_quiet` [false]: a followed journal gets no new entries (the
//!   stream stays open, silent); `close_streams` [false]: log streams in
//!   progress, and new ones after their first lines, are ended by the
//!   server (last chunk, then the connection is closed).
//! - `stall_ms` [0] (every answer late), `crash_next` [false] (drop the next
//!   request's connection unanswered, the server keeps serving);
//!   `restart_ms` [1000]: when the simulated supervisor process dies (a
//!   local target state whose app key is not a number), its port refuses
//!   connections and its open connections close, for this long; 0: it
//!   keeps serving.
//! - `api_key`, `global_key`, `device_name`, `device_uuid`,
//!   `supervisor_version` (strings); `scoped_keys` (`[{"key","apps":[ids]}]`);
//!   `device`, `host_config`, `target_state` (JSON, replaced whole); `tags`
//!   (object of strings); `service_status` (`{"<service>":"<status>"}`);
//!   `actions` (array, usually `[]` to clear).

pub mod check;
mod http;
mod jsonerr;
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
    /// The key of the app's containers (`BALENA_SUPERVISOR_API_KEY`),
    /// scoped to `app_id`.
    pub api_key: String,
    /// The cloud's global key (valid for every app); `None`: derived from
    /// `api_key`.
    pub global_key: Option<String>,
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
            global_key: None,
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
    /// The container's environment as `GET /v1/apps/:id` shows it.
    pub env: Vec<(String, String)>,
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
    /// The app containers' key, valid only for the first app (changes on
    /// `/v1/regenerate-api-key` called with it).
    pub api_key: String,
    /// The global key, valid for every app.
    pub global_key: String,
    /// Extra keys valid only for the listed app ids.
    pub scoped_keys: Vec<(String, Vec<u32>)>,
    /// `/v1/healthy` answers 500 `Unhealthy` when false.
    pub healthy: bool,
    /// An update lock is held: actions without force answer 423. A forced
    /// action clears it (the supervisor deletes the lock files).
    pub locked: bool,
    /// Locks are overridden by the device configuration (every locking
    /// action acts as if forced).
    pub lock_override: bool,
    /// A host OS update is finishing: reboot/shutdown without force are 423.
    pub host_update: bool,
    /// Another supervisor operation holds the locks: locking actions wait
    /// `busy_wait_ms` and answer 423, also with force.
    pub locks_busy: bool,
    pub busy_wait_ms: u64,
    /// Answers of performed actions are sent this long after the action.
    pub action_delay_ms: u64,
    /// An apply is in progress.
    pub apply_in_progress: bool,
    /// The app is installed but has no containers.
    pub no_services: bool,
    /// Entries in the journal.
    pub journal_entries: u64,
    /// A followed journal gets no new entries.
    pub journal_quiet: bool,
    /// The server ends log streams.
    pub close_streams: bool,
    /// When the simulated process dies (a local target state that kills the
    /// real supervisor), the port refuses connections for this long (0: it
    /// keeps serving).
    pub restart_ms: u64,
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
    /// The device's uuid (in target-state validation messages).
    pub device_uuid: String,
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
            env: vec![
                ("GREETING".to_string(), "hello".to_string()),
                ("BALENA_APP_ID".to_string(), cfg.app_id.to_string()),
            ],
        };
        SimState {
            api_key: cfg.api_key.clone(),
            global_key: cfg
                .global_key
                .clone()
                .unwrap_or_else(|| hex_id(&format!("global:{}", cfg.api_key), 32)),
            scoped_keys: Vec::new(),
            healthy: true,
            locked: cfg.locked,
            lock_override: false,
            host_update: false,
            locks_busy: false,
            busy_wait_ms: 200,
            action_delay_ms: 0,
            apply_in_progress: false,
            no_services: false,
            journal_entries: 50,
            journal_quiet: false,
            close_streams: false,
            restart_ms: 1000,
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
            host_config: json!({"network": {"hostname": "device"}}),
            tags: Vec::new(),
            target_state: json!({
                "local": {"name": "sim-device", "config": {}, "apps": {}}
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
            device_uuid: "8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a".to_string(),
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
        if self.no_services && self.apps.first().map(|a| a.app_id) == Some(app.app_id) {
            &app.services[..0]
        } else if self.multi_container {
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

    /// The app whose services the `locked` lock file belongs to, and the
    /// service: the first app's first service.
    fn lock_owner(&self) -> (u32, String) {
        self.apps
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
            .unwrap_or((0, "main".into()))
    }

    /// Message of the update-lock error (the real text).
    pub fn lock_message(&self) -> String {
        let (app, svc) = self.lock_owner();
        format!("Lockfile exists for {{ appId: {app}, service: {svc} }}")
    }

    /// Message of the "another operation holds the locks" error.
    pub fn busy_message(&self, app_id: u32) -> String {
        format!("Locks for app {app_id} are being held by another supervisor operation")
    }

    /// Takes the update locks of `apps` (empty: every app on the device) for
    /// an action, as the supervisor's `withLock` does: `Err` when another
    /// operation holds them (after `busy_wait_ms`, whatever `force` says) or
    /// when a lock file exists and neither `force` nor `lock_override` is
    /// set; a forced action deletes the lock file.
    pub fn take_lock(&mut self, apps: &[u32], force: bool) -> Result<(), LockError> {
        let all: Vec<u32> = self.apps.iter().map(|a| a.app_id).collect();
        let apps: Vec<u32> = if apps.is_empty() { all } else { apps.to_vec() };
        if apps.is_empty() {
            return Ok(());
        }
        if self.locks_busy {
            let mut sorted = apps.clone();
            sorted.sort_unstable();
            return Err(LockError {
                message: self.busy_message(sorted[0]),
                wait_ms: self.busy_wait_ms,
            });
        }
        let (owner, _) = self.lock_owner();
        if self.locked && apps.contains(&owner) {
            if force || self.lock_override {
                self.locked = false;
            } else {
                return Err(LockError {
                    message: self.lock_message(),
                    wait_ms: 0,
                });
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

/// Why locks could not be taken: the 423 message, and how long the
/// supervisor waited before answering.
#[derive(Debug, Clone, PartialEq)]
pub struct LockError {
    pub message: String,
    pub wait_ms: u64,
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
    /// The simulated supervisor process died: the accept loop closes the
    /// port for `restart_ms`.
    restart_pending: AtomicBool,
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
            restart_pending: AtomicBool::new(false),
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

    /// The current key of the app's containers, scoped to the app (changes
    /// after a regenerate with it).
    pub fn api_key(&self) -> String {
        self.shared.state().api_key.clone()
    }

    /// The current global key (valid for every app).
    pub fn global_key(&self) -> String {
        self.shared.state().global_key.clone()
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

fn accept_loop(shared: Arc<Shared>, mut listener: TcpListener) {
    loop {
        let conn = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        if shared.restart_pending.swap(false, Ordering::SeqCst) {
            // The process is gone: its port refuses connections and its
            // connections die, until it has restarted.
            drop(conn);
            drop(listener);
            for (_, s) in lock(&shared.live).drain() {
                let _ = s.shutdown(Shutdown::Both);
            }
            let down = Duration::from_millis(shared.state().restart_ms);
            let start = std::time::Instant::now();
            while start.elapsed() < down {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep(Duration::from_millis(10));
            }
            listener = loop {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                match TcpListener::bind(("127.0.0.1", shared.port)) {
                    Ok(l) => break l,
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            };
            continue;
        }
        let stream = match conn {
            Ok((s, _)) => s,
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

/// The simulated supervisor process dies (its connection is dropped by the
/// caller): the port is closed for `restart_ms` (0: it keeps serving).
fn process_died(shared: &Shared) {
    if shared.state().restart_ms == 0 {
        return;
    }
    shared.restart_pending.store(true, Ordering::SeqCst);
    // Wake the accept loop.
    let addr = SocketAddr::from(([127, 0, 0, 1], shared.port));
    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
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
            routes::Outcome::Delayed(resp, ms) => {
                // The action is done and recorded; only the answer is late,
                // and it is sent whether or not the client is still there.
                thread::sleep(Duration::from_millis(ms));
                if http::write_response(writer, &resp, keep_alive, idle, head_only).is_err()
                    || !keep_alive
                {
                    return;
                }
            }
            routes::Outcome::Drop => {
                process_died(shared);
                return;
            }
            routes::Outcome::LocalLogs { services, live } => {
                if http::write_stream_head(writer, keep_alive, idle).is_ok() && !head_only {
                    stream_local_logs(shared, writer, &services, live);
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

/// How a wait inside a log stream ended.
#[derive(Debug, PartialEq)]
enum StreamWait {
    /// The time passed: send the next line.
    Elapsed,
    /// The client left (or the socket failed).
    ClientGone,
    /// `close_streams` is set or the simulator stops: the server ends it.
    ServerEnds,
}

/// Waits `dur` (forever with `None`) inside a stream, watching the client
/// and the `close_streams` switch every 50 ms.
fn stream_wait(shared: &Shared, w: &TcpStream, dur: Option<Duration>) -> StreamWait {
    let start = std::time::Instant::now();
    loop {
        if shared.stopping.load(Ordering::SeqCst) || shared.state().close_streams {
            return StreamWait::ServerEnds;
        }
        let slice = match dur {
            Some(d) => match d.checked_sub(start.elapsed()) {
                Some(left) if !left.is_zero() => left.min(Duration::from_millis(50)),
                _ => return StreamWait::Elapsed,
            },
            None => Duration::from_millis(50),
        };
        if http::wait_or_closed(w, slice) {
            return StreamWait::ClientGone;
        }
    }
}

/// The server ends a stream: the last chunk, then the connection closes.
fn end_stream(w: &mut TcpStream) {
    let _ = http::write_last_chunk(w);
}

/// `GET /v2/local/logs`: the `Streaming logs` line, then (in local mode,
/// `live`) one NDJSON line per log interval, until the client leaves; on a
/// managed device nothing more.
fn stream_local_logs(shared: &Shared, w: &mut TcpStream, services: &[(String, u32)], live: bool) {
    let first = json!({"message": "Streaming logs", "isSystem": true});
    if http::write_chunk(w, format!("{first}\n").as_bytes()).is_err() {
        return;
    }
    let mut n: u64 = 0;
    loop {
        let wait = if live && !services.is_empty() {
            Some(shared.cfg.log_interval)
        } else {
            None
        };
        match stream_wait(shared, w, wait) {
            StreamWait::ClientGone => return,
            StreamWait::ServerEnds => return end_stream(w),
            StreamWait::Elapsed => {}
        }
        n += 1;
        let (service, service_id) = services[((n - 1) as usize) % services.len()].clone();
        let line = json!({
            "serviceName": service,
            "message": format!("log line {n} from {service}"),
            "timestamp": now_millis(),
            "serviceId": service_id,
            "isStdErr": false,
        });
        if http::write_chunk(w, format!("{line}\n").as_bytes()).is_err() {
            return;
        }
    }
}

/// `POST /v2/journal-logs`: what `journalctl` prints for the options. Each
/// entry goes out in two separately flushed chunks, so a client has to
/// reassemble lines. Returns true when the response was completed
/// (terminating chunk written) and the connection may be reused.
fn stream_journal(shared: &Shared, w: &mut TcpStream, opts: &routes::JournalOptions) -> bool {
    let (hostname, entries) = {
        let st = shared.state();
        let h = st
            .host_config
            .pointer("/network/hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .unwrap_or("device")
            .to_string();
        (h, st.journal_entries)
    };
    let Some(format) = JournalFormat::parse(&opts.format) else {
        // journalctl refuses the format and exits: an empty body.
        return http::write_last_chunk(w).is_ok();
    };
    // The journal's entries are one second apart, the last one a second ago.
    let now = now_millis() * 1000;
    let first_us = now.saturating_sub(entries * 1_000_000);
    let emit = |w: &mut TcpStream, i: u64, at_us: u64| -> bool {
        // i: the entry's number in this answer
        let text = journal_entry(i, at_us, &hostname, opts, format);
        let bytes = text.as_bytes();
        let cut = bytes.len() / 2;
        if http::write_chunk(w, &bytes[..cut]).is_err() {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
        http::write_chunk(w, &bytes[cut..]).is_ok()
    };
    let start = match opts.count {
        Some(c) => entries.saturating_sub(c),
        None => 0,
    };
    // Entries are numbered from 1 within each answer ("line 1", ...).
    let mut n = 0;
    for i in start..entries {
        n += 1;
        if !emit(w, n, first_us + i * 1_000_000) {
            return false;
        }
    }
    if opts.follow {
        let mut i = n + 1;
        loop {
            match stream_wait(shared, w, Some(shared.cfg.log_interval)) {
                StreamWait::ClientGone => return false,
                StreamWait::ServerEnds => {
                    end_stream(w);
                    return false;
                }
                StreamWait::Elapsed => {}
            }
            if shared.state().journal_quiet {
                continue;
            }
            if !emit(w, i, now_millis() * 1000) {
                return false;
            }
            i += 1;
        }
    }
    http::write_last_chunk(w).is_ok()
}

/// The `-o` formats the simulated `journalctl` knows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum JournalFormat {
    Short,
    ShortIso,
    ShortPrecise,
    Cat,
    Json,
    JsonPretty,
    Export,
}

impl JournalFormat {
    fn parse(s: &str) -> Option<JournalFormat> {
        Some(match s {
            "short" => JournalFormat::Short,
            "short-iso" => JournalFormat::ShortIso,
            "short-precise" => JournalFormat::ShortPrecise,
            "cat" => JournalFormat::Cat,
            "json" => JournalFormat::Json,
            "json-pretty" => JournalFormat::JsonPretty,
            "export" => JournalFormat::Export,
            _ => return None,
        })
    }
}

/// One journal entry in `format`, with its final newline(s).
fn journal_entry(
    i: u64,
    at_us: u64,
    hostname: &str,
    opts: &routes::JournalOptions,
    format: JournalFormat,
) -> String {
    let ident = opts
        .unit
        .as_deref()
        .map(|u| u.trim_end_matches(".service").to_string())
        .unwrap_or_else(|| "balena-supervisor".to_string());
    let message = format!("line {i}");
    let fields = json!({
        "__CURSOR": format!("s=0;i={i:x}"),
        "__REALTIME_TIMESTAMP": at_us.to_string(),
        "_HOSTNAME": hostname,
        "SYSLOG_IDENTIFIER": ident,
        "_SYSTEMD_UNIT": format!("{ident}.service"),
        "_PID": "1",
        "PRIORITY": "6",
        "MESSAGE": message,
    });
    let t = UNIX_EPOCH + Duration::from_micros(at_us);
    let (y, mo, d, h, mi, s, _) = http::utc_parts(t);
    let month = http::MONTHS[mo as usize - 1];
    match format {
        JournalFormat::Short => {
            format!("{month} {d:02} {h:02}:{mi:02}:{s:02} {hostname} {ident}[1]: {message}\n")
        }
        JournalFormat::ShortPrecise => format!(
            "{month} {d:02} {h:02}:{mi:02}:{s:02}.{:06} {hostname} {ident}[1]: {message}\n",
            at_us % 1_000_000
        ),
        JournalFormat::ShortIso => format!(
            "{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+0000 {hostname} {ident}[1]: {message}\n"
        ),
        JournalFormat::Cat => format!("{message}\n"),
        JournalFormat::Json => format!("{fields}\n"),
        JournalFormat::JsonPretty => {
            format!(
                "{}\n",
                serde_json::to_string_pretty(&fields).unwrap_or_default()
            )
        }
        JournalFormat::Export => {
            let mut out = String::new();
            if let Some(o) = fields.as_object() {
                for (k, v) in o {
                    out.push_str(&format!("{k}={}\n", v.as_str().unwrap_or_default()));
                }
            }
            out.push('\n');
            out
        }
    }
}

/// The name of a service's image (what `GET /v1/apps/:id` shows as
/// `imageId`, and `image` in the v2 state).
pub fn image_name(app_id: u32, service: &str) -> String {
    format!(
        "registry2.balena-cloud.com/v2/{}@sha256:{}",
        hex_id(&format!("image:{app_id}:{service}"), 32),
        hex_id(&format!("digest:{app_id}:{service}"), 64)
    )
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
