//! The HTTP client: one request at a time per call, pooled keep-alive
//! connections, a deadline over the whole request, a size cap on answers, and
//! the mapping of transport failures and HTTP statuses to [`ErrorKind`]s.

use std::cell::Cell;
use std::io::{ErrorKind as IoKind, Read};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{check_timeout_ms, Address, Config, DEFAULT_TIMEOUT_MS};
use crate::error::{Error, ErrorKind, Result};
use crate::sync::ForkSafeRwLock;

mod buffers;
mod resolve;
mod tcp;

pub use resolve::lookups_started;

/// Largest response body accepted (4 MiB). A larger one is
/// [`ErrorKind::TooLarge`]; reading stops at the cap, so memory stays bounded.
pub const MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;

/// Largest single line accepted from a log stream (1 MiB).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Most idle connections a client keeps for reuse. A burst of concurrent
/// calls opens more; each extra one is closed as soon as its call returns it.
pub const MAX_IDLE_CONNECTIONS: usize = 4;

/// Largest head (status line and headers) of an answer accepted. A
/// supervisor's is a few hundred bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long a pooled connection may sit idle before it is no longer reused.
/// The supervisor (Node.js) closes idle connections after 5 s; staying well
/// below that means a request never races the server's close.
pub const MAX_IDLE_REUSE: Duration = Duration::from_millis(3_500);

/// Longest silence of a log stream before it fails, in ms; 0: no limit.
static STREAM_TIMEOUT_MS: AtomicU32 = AtomicU32::new(0);
/// Incremented by [`stop_streams`]: a stream that started at an older value
/// ends.
static STOP_STREAMS: AtomicU64 = AtomicU64::new(0);

/// How often a stream waiting for data looks whether it was stopped.
pub(crate) const STREAM_POLL: Duration = Duration::from_millis(100);

/// The longest silence a log stream may have before it ends with
/// [`ErrorKind::Timeout`]; 0 (the default): no limit. Every client, now.
pub fn set_stream_timeout_ms(ms: u32) {
    STREAM_TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

/// The stream timeout set by [`set_stream_timeout_ms`].
pub fn stream_timeout_ms() -> u32 {
    STREAM_TIMEOUT_MS.load(Ordering::Relaxed)
}

/// End every log stream in progress in this process soon (within
/// [`STREAM_POLL`] of waiting): each returns Ok as if its callback had asked
/// to stop. One atomic increment: async-signal-safe.
pub fn stop_streams() {
    STOP_STREAMS.fetch_add(1, Ordering::SeqCst);
}

/// The stream running on this thread, if any: the [`STOP_STREAMS`] value at
/// its start.
pub(crate) fn stream_poll() -> Option<u64> {
    STREAM.try_with(Cell::get).ok().flatten()
}

/// Whether [`stop_streams`] was called since a stream started at `start`.
pub(crate) fn stopped_since(start: u64) -> bool {
    STOP_STREAMS.load(Ordering::SeqCst) != start
}

/// The error the transport gives when a stream was stopped.
#[derive(Debug)]
pub(crate) struct StreamStopped;

impl std::fmt::Display for StreamStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the stream was stopped (bd_stop_streams)")
    }
}

impl std::error::Error for StreamStopped {}

fn is_stopped(e: &std::io::Error) -> bool {
    let Some(inner) = e.get_ref() else {
        return false;
    };
    inner.is::<StreamStopped>()
        || matches!(inner.downcast_ref::<ureq::Error>(), Some(ureq::Error::Io(io)) if is_stopped(io))
}

/// Marks this thread as running a stream while alive.
struct InStream(Option<u64>);

impl InStream {
    fn enter() -> InStream {
        let start = STOP_STREAMS.load(Ordering::SeqCst);
        InStream(STREAM.try_with(|c| c.replace(Some(start))).unwrap_or(None))
    }
}

impl Drop for InStream {
    fn drop(&mut self) {
        let _ = STREAM.try_with(|c| c.set(self.0));
    }
}

thread_local! {
    static LAST_HTTP_STATUS: Cell<u16> = const { Cell::new(0) };
    /// See [`stream_poll`].
    static STREAM: Cell<Option<u64>> = const { Cell::new(None) };
    /// When the C call running on this thread started (see [`begin_call`]).
    static CALL_START: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The deadline the transport holds every connect, write and read of
    /// this thread to, on top of ureq's own timeouts (see [`IoDeadline`]).
    static IO_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// A call starts now on this thread: a request's deadline counts from here,
/// so that it covers what the call does before sending (checking a large
/// argument, say). Returns what [`end_call`] restores: a callback may make
/// a call of its own inside another one.
pub fn begin_call() -> Option<Instant> {
    CALL_START
        .try_with(|c| c.replace(Some(Instant::now())))
        .unwrap_or(None)
}

/// The call begun by [`begin_call`] ended; `previous` is what it returned.
pub fn end_call(previous: Option<Instant>) {
    let _ = CALL_START.try_with(|c| c.set(previous));
}

fn call_start() -> Instant {
    CALL_START
        .try_with(Cell::get)
        .ok()
        .flatten()
        .unwrap_or_else(Instant::now)
}

/// The deadline of this thread's request in progress, if any.
pub(crate) fn io_deadline() -> Option<Instant> {
    IO_DEADLINE.try_with(Cell::get).ok().flatten()
}

/// Holds every connect, write and read on this thread to a deadline while
/// alive; restores the one before when dropped.
struct IoDeadline(Option<Instant>);

impl IoDeadline {
    fn until(deadline: Instant) -> IoDeadline {
        IoDeadline(
            IO_DEADLINE
                .try_with(|c| c.replace(Some(deadline)))
                .unwrap_or(None),
        )
    }
}

impl Drop for IoDeadline {
    fn drop(&mut self) {
        let _ = IO_DEADLINE.try_with(|c| c.set(self.0));
    }
}

/// HTTP status of the last response received on this thread, 0 if none.
pub fn last_http_status() -> u16 {
    LAST_HTTP_STATUS.with(|c| c.get())
}

/// Forget the last HTTP status of this thread (start of a new call).
pub fn reset_last_http_status() {
    LAST_HTTP_STATUS.with(|c| c.set(0));
}

/// Record `status` as this thread's last HTTP status.
pub(crate) fn record_status(status: u16) {
    LAST_HTTP_STATUS.with(|c| c.set(status));
}

/// HTTP methods the supervisor API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PATCH
    Patch,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
        }
    }
}

/// One request to send.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// Method.
    pub method: Method,
    /// Path, with an already percent-encoded query if any (never the key).
    pub path: &'a str,
    /// Whether the API key is sent (`/ping` and `/v1/healthy` need none).
    pub with_key: bool,
    /// JSON body, sent with `Content-Type: application/json`.
    pub json: Option<&'a str>,
    /// An action (reboot, restart, stop, ...): the supervisor answers when
    /// it is done, so a timeout does not mean it did not happen.
    pub action: bool,
}

impl<'a> Request<'a> {
    /// A GET with the key.
    pub fn get(path: &'a str) -> Self {
        Request {
            method: Method::Get,
            path,
            with_key: true,
            json: None,
            action: false,
        }
    }

    /// A POST with the key and no body.
    pub fn post(path: &'a str) -> Self {
        Request {
            method: Method::Post,
            ..Request::get(path)
        }
    }

    /// A PATCH with the key and no body.
    pub fn patch(path: &'a str) -> Self {
        Request {
            method: Method::Patch,
            ..Request::get(path)
        }
    }

    /// The same request with a JSON body.
    pub fn json(self, body: &'a str) -> Self {
        Request {
            json: Some(body),
            ..self
        }
    }

    /// The same request, marked as an action (see [`Request::action`]).
    pub fn action(self) -> Self {
        Request {
            action: true,
            ..self
        }
    }

    /// Whether the body asks for `force` (a top-level `"force": true`).
    pub fn forced(&self) -> bool {
        self.json.is_some_and(|body| {
            matches!(
                serde_json::from_str::<serde_json::Value>(body),
                Ok(serde_json::Value::Object(map)) if map.get("force") == Some(&serde_json::Value::Bool(true))
            )
        })
    }

    /// The same request without the API key.
    pub fn without_key(self) -> Self {
        Request {
            with_key: false,
            ..self
        }
    }

    /// `METHOD /path`, how messages name the request.
    pub fn label(&self) -> String {
        format!("{} {}", self.method.as_str(), self.path)
    }
}

/// A response whose body was read whole (within [`MAX_BODY_BYTES`]).
#[derive(Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
    /// The `Location` header of a redirect (3xx), if any, for its message.
    pub location: Option<String>,
}

impl std::fmt::Debug for Response {
    /// Without the body: it may hold a key (`/v1/regenerate-api-key`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .field("location", &self.location)
            .finish()
    }
}

/// Percent-encode everything but RFC 3986's unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A local resource the call could not get (a thread, memory), carried
/// inside an `io::Error` so that its message reaches the caller as such.
#[derive(Debug)]
pub(crate) struct ResourceFailure(pub(crate) String);

impl std::fmt::Display for ResourceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ResourceFailure {}

/// What a call uses: replaced whole when the key or the timeout changes, so
/// that a call takes one consistent snapshot with one lock.
struct Settings {
    key: Arc<str>,
    /// The key, percent-encoded for the query.
    encoded_key: String,
    timeout_ms: u32,
    /// Its configuration bounds a whole request by `timeout_ms`, so a call
    /// with the client's timeout needs no configuration of its own.
    agent: ureq::Agent,
    /// The process whose connections the agent's pool holds. A child of
    /// `fork()` inherits copies of the parent's pooled sockets; using one
    /// would interleave its requests and answers with the parent's.
    pid: u32,
}

impl Settings {
    fn timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.timeout_ms))
    }

    fn with_key(&self, key: &str) -> Settings {
        Settings {
            key: Arc::from(key),
            encoded_key: percent_encode(key),
            timeout_ms: self.timeout_ms,
            agent: self.agent.clone(),
            pid: self.pid,
        }
    }
}

/// How one request is bounded in time.
#[derive(Clone, Copy)]
enum Limit {
    /// The agent's: the client's timeout over the whole request.
    Agent,
    /// This long over the whole request.
    Within(Duration),
    /// No overall deadline (streams): connecting, sending and the head of
    /// the answer are bounded by the thread's [`IoDeadline`], each read of
    /// the body by this (`None`: no limit).
    Stalls(Option<Duration>),
}

/// An agent for `address` whose every request must be complete within
/// `timeout_ms`. Its idle connections are its own: a new agent starts with an
/// empty pool.
fn agent(address: &Address, timeout_ms: u32) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        // Never the environment's proxy: the supervisor is on the device.
        .proxy(None)
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .max_idle_connections(MAX_IDLE_CONNECTIONS)
        .max_idle_connections_per_host(MAX_IDLE_CONNECTIONS)
        .max_response_header_size(MAX_HEAD_BYTES)
        .max_idle_age(MAX_IDLE_REUSE)
        .timeout_global(Some(Duration::from_millis(u64::from(timeout_ms))))
        .user_agent(concat!("balena_device/", env!("CARGO_PKG_VERSION")))
        .build();
    // Plain TCP only: ureq's default chain adds proxy and TLS connectors,
    // which an http:// address with the proxy off never uses.
    let lookup = resolve::Lookup::new(address);
    ureq::Agent::with_parts(
        config,
        tcp::PlainTcp(lookup.clone()),
        resolve::AddressResolver(lookup),
    )
}

/// `builder` bounded by `limit`.
fn limited<B>(builder: ureq::RequestBuilder<B>, limit: Limit) -> ureq::RequestBuilder<B> {
    match limit {
        Limit::Agent => builder,
        Limit::Within(all) => builder.config().timeout_global(Some(all)).build(),
        Limit::Stalls(each) => builder
            .config()
            .timeout_global(None)
            .timeout_per_read(each)
            .build(),
    }
}

/// A client of one supervisor. Cheap to share between threads (`Arc`).
pub struct Client {
    address: Address,
    settings: ForkSafeRwLock<Arc<Settings>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address.base())
            .field("api_key", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms())
            .finish()
    }
}

impl Client {
    /// A client for `config` with the default timeout.
    pub fn new(config: Config) -> Client {
        let settings = Settings {
            key: Arc::from(config.api_key.as_str()),
            encoded_key: percent_encode(&config.api_key),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            agent: agent(&config.address, DEFAULT_TIMEOUT_MS),
            pid: std::process::id(),
        };
        Client {
            address: config.address,
            settings: ForkSafeRwLock::new(Arc::new(settings)),
        }
    }

    /// The supervisor's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The settings a call uses. In a child of `fork()` the first call
    /// replaces the agent inherited from the parent by a new one with an
    /// empty pool, so the child never touches a connection of the parent.
    fn settings(&self) -> Arc<Settings> {
        let current = self.settings.read().clone();
        if current.pid == std::process::id() {
            current
        } else {
            self.leave_parent_connections()
        }
    }

    /// A new agent for this process. The inherited one is dropped once no
    /// call of this process uses it: that closes the child's copies of the
    /// parent's sockets (a plain close, never `shutdown()`, which would end
    /// the parent's connections too).
    fn leave_parent_connections(&self) -> Arc<Settings> {
        let pid = std::process::id();
        let mut slot = self.settings.write();
        if slot.pid != pid {
            *slot = Arc::new(Settings {
                key: slot.key.clone(),
                encoded_key: slot.encoded_key.clone(),
                timeout_ms: slot.timeout_ms,
                agent: agent(&self.address, slot.timeout_ms),
                pid,
            });
        }
        slot.clone()
    }

    fn change_settings(&self, change: impl FnOnce(&Settings) -> Option<Settings>) {
        let mut slot = self.settings.write();
        if let Some(new) = change(&slot) {
            *slot = Arc::new(new);
        }
    }

    /// The deadline of one request, in milliseconds.
    pub fn timeout_ms(&self) -> u32 {
        self.settings.read().timeout_ms
    }

    /// Set the deadline of one whole request (connect, send, receive). A
    /// new timeout starts a new pool of connections.
    pub fn set_timeout_ms(&self, ms: u32) -> Result<()> {
        check_timeout_ms(ms)?;
        self.change_settings(|s| {
            (s.timeout_ms != ms).then(|| Settings {
                key: s.key.clone(),
                encoded_key: s.encoded_key.clone(),
                timeout_ms: ms,
                agent: agent(&self.address, ms),
                pid: std::process::id(),
            })
        });
        Ok(())
    }

    pub(crate) fn api_key(&self) -> Arc<str> {
        self.settings.read().key.clone()
    }

    pub(crate) fn set_api_key(&self, key: &str) {
        self.change_settings(|s| Some(s.with_key(key)));
    }

    /// Replace every occurrence of the API key (plain or percent-encoded) in
    /// `text`.
    pub fn scrub(&self, text: &str) -> String {
        scrub_key(text, &self.api_key())
    }

    fn url(&self, req: &Request<'_>, s: &Settings) -> String {
        let base = self.address.base();
        let mut url = String::with_capacity(base.len() + req.path.len() + 9 + s.encoded_key.len());
        url.push_str(base);
        url.push_str(req.path);
        if req.with_key {
            url.push(if req.path.contains('?') { '&' } else { '?' });
            url.push_str("apikey=");
            url.push_str(&s.encoded_key);
        }
        url
    }

    fn start(
        &self,
        s: &Settings,
        req: &Request<'_>,
        limit: Limit,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let url = self.url(req, s);
        buffers::request_line_hint(url.len());
        let agent = &s.agent;
        match (req.method, req.json) {
            (Method::Get, _) => limited(agent.get(&url), limit).call(),
            (Method::Post, None) => limited(agent.post(&url), limit).send_empty(),
            (Method::Patch, None) => limited(agent.patch(&url), limit).send_empty(),
            (Method::Post, Some(body)) => limited(agent.post(&url), limit)
                .header("Content-Type", "application/json")
                .send(body),
            (Method::Patch, Some(body)) => limited(agent.patch(&url), limit)
                .header("Content-Type", "application/json")
                .send(body),
        }
    }

    /// Send `req` and read the whole answer, within the timeout. A GET that
    /// fails because a pooled connection turned out closed is sent once more on
    /// a fresh connection; a POST or PATCH is never sent twice.
    pub fn send(&self, req: &Request<'_>) -> Result<Response> {
        let s = self.settings();
        self.send_in(&s, req, None)
    }

    /// [`Client::send`] with a deadline of `timeout` instead of the client's.
    pub fn send_within(&self, req: &Request<'_>, timeout: Duration) -> Result<Response> {
        let s = self.settings();
        self.send_in(&s, req, Some(timeout))
    }

    fn send_in(
        &self,
        s: &Settings,
        req: &Request<'_>,
        timeout: Option<Duration>,
    ) -> Result<Response> {
        let budget = timeout.unwrap_or_else(|| s.timeout());
        // The client's timeout counts from the start of the call; an explicit
        // one (a step of bd_wait_for_supervisor) from now.
        let deadline = match timeout {
            None => call_start() + budget,
            Some(t) => Instant::now() + t,
        };
        let _io = IoDeadline::until(deadline);
        let mut limit = match timeout {
            Some(t) if t != s.timeout() => Limit::Within(t),
            _ => Limit::Agent,
        };
        let mut attempt = 0;
        let mut response = loop {
            attempt += 1;
            match self.start(s, req, limit) {
                Ok(r) => break r,
                Err(e)
                    if attempt == 1
                        && req.method == Method::Get
                        && is_stale_connection(&e)
                        && Instant::now() < deadline =>
                {
                    // The second attempt gets only what is left of the deadline.
                    limit = Limit::Within(deadline.saturating_duration_since(Instant::now()));
                }
                Err(e) => return Err(self.transport_error(s, req, e, budget)),
            }
        };
        let status = response.status().as_u16();
        record_status(status);
        let body = read_capped(&mut response).map_err(|e| {
            self.transport_error(s, req, e, budget)
                .with_http_status(status)
        })?;
        Ok(answer(&response, body))
    }

    /// Send `req` and hand each line of the answer to `on_line` as it arrives
    /// (without its `\n` or a trailing `\r`). `on_line` returns `false` to stop
    /// early, which closes the connection. There is no overall deadline, but no
    /// byte for the timeout is [`ErrorKind::Timeout`]. A status other than 200
    /// is mapped like any other answer.
    pub fn stream_lines(
        &self,
        req: &Request<'_>,
        on_line: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        let s = self.settings();
        let _stream = InStream::enter();
        let stopped_at = stream_poll().unwrap_or_default();
        // Connecting, sending and the head of the answer are bounded by the
        // timeout from the start of the call; then each read by the stream
        // timeout, if one is set.
        let stall = match stream_timeout_ms() {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        };
        let head = IoDeadline::until(call_start() + s.timeout());
        let mut response = match self.start(&s, req, Limit::Stalls(stall)) {
            Ok(r) => r,
            Err(ureq::Error::Io(e)) if is_stopped(&e) => return Ok(()),
            Err(e) => return Err(self.transport_error(&s, req, e, s.timeout())),
        };
        drop(head);
        let status = response.status().as_u16();
        record_status(status);
        if status != 200 {
            let _body_deadline = IoDeadline::until(Instant::now() + s.timeout());
            let body = read_capped(&mut response).unwrap_or_default();
            return Err(self.status_error(req, &answer(&response, body)));
        }
        // A callback may call the library again, which records its own
        // status; this call's status is recorded again when it ends.
        let _status_again = RecordOnDrop(status);
        let too_long = || {
            Error::new(
                ErrorKind::TooLarge,
                format!(
                    "{}: a line of the stream is longer than {} bytes",
                    req.label(),
                    MAX_LINE_BYTES
                ),
            )
            .with_http_status(status)
        };
        let mut reader = response.into_body().into_reader();
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            if stopped_since(stopped_at) {
                return Ok(());
            }
            let n = match reader.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(e) if is_stopped(&e) => return Ok(()),
                Err(e) => {
                    let e = ureq::Error::from(e);
                    if matches!(e, ureq::Error::Timeout(_)) {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "{}: the stream sent nothing for {} ms (the stream timeout, \
                                 bd_set_stream_timeout_ms)",
                                req.label(),
                                stream_timeout_ms()
                            ),
                        )
                        .with_http_status(status));
                    }
                    return Err(self
                        .transport_error(&s, req, e, s.timeout())
                        .with_http_status(status));
                }
            };
            if n == 0 {
                if !pending.is_empty() {
                    let line = trim_cr(&pending);
                    if line.len() > MAX_LINE_BYTES {
                        return Err(too_long());
                    }
                    on_line(line);
                }
                return Ok(());
            }
            let mut data = &chunk[..n];
            while let Some(pos) = data.iter().position(|&b| b == b'\n') {
                let keep_going = if pending.is_empty() {
                    let line = trim_cr(&data[..pos]);
                    if line.len() > MAX_LINE_BYTES {
                        return Err(too_long());
                    }
                    on_line(line)
                } else {
                    pending.extend_from_slice(&data[..pos]);
                    let line = trim_cr(&pending);
                    if line.len() > MAX_LINE_BYTES {
                        return Err(too_long());
                    }
                    let go = on_line(line);
                    pending.clear();
                    go
                };
                if !keep_going {
                    return Ok(());
                }
                data = &data[pos + 1..];
            }
            // Unterminated so far: a `\r` of its `\r\n` may come last.
            if pending.len() + data.len() > MAX_LINE_BYTES + 1 {
                return Err(too_long());
            }
            pending.extend_from_slice(data);
        }
    }

    /// The error for a response whose status is not a success of the endpoint.
    pub fn status_error(&self, req: &Request<'_>, resp: &Response) -> Error {
        let mut kind = ErrorKind::from_http_status(resp.status);
        let what = match resp.status {
            423 => {
                let (k, what) = locked_kind(req, &resp.body);
                kind = k;
                what.to_string()
            }
            401 => "unauthorized: the API key is missing, invalid (it may have been regenerated) \
                    or not allowed for this app"
                .to_string(),
            400 => "bad request".to_string(),
            404 => {
                "not found: this supervisor does not know the endpoint or the service".to_string()
            }
            409 => {
                "conflict: the app is unknown to this device or out of the key's scope".to_string()
            }
            300..=399 => format!(
                "redirect not followed (Location: {})",
                resp.location.as_deref().unwrap_or("none")
            ),
            500..=599 => "supervisor error".to_string(),
            _ => "unexpected HTTP status".to_string(),
        };
        let detail = body_detail_without(&resp.body, &self.api_key());
        let msg = if detail.is_empty() {
            format!("{}: {} (HTTP {})", req.label(), what, resp.status)
        } else {
            format!(
                "{}: {} (HTTP {}): {}",
                req.label(),
                what,
                resp.status,
                detail
            )
        };
        Error::new(kind, self.scrub(&msg)).with_http_status(resp.status)
    }

    /// The error for a request that got no (complete) answer; `budget` is the
    /// time it was allowed, for the message.
    fn transport_error(
        &self,
        s: &Settings,
        req: &Request<'_>,
        err: ureq::Error,
        budget: Duration,
    ) -> Error {
        let target = self.address.base();
        let (kind, what) = match &err {
            ureq::Error::Timeout(_) => (
                ErrorKind::Timeout,
                format!(
                    "no complete answer from {target} within the {} ms timeout{}",
                    budget.as_millis(),
                    late_action(req)
                ),
            ),
            ureq::Error::HostNotFound => (
                ErrorKind::Connect,
                format!("could not resolve the supervisor host of {target}"),
            ),
            ureq::Error::ConnectionFailed => (
                ErrorKind::Connect,
                format!("could not connect to {target}: is the supervisor running?"),
            ),
            ureq::Error::BodyExceedsLimit(_) | ureq::Error::LargeResponseHeader(..) => (
                ErrorKind::TooLarge,
                format!("the answer is larger than the {MAX_BODY_BYTES}-byte cap"),
            ),
            ureq::Error::Io(io) if local_resource(io).is_some() => (
                ErrorKind::Io,
                format!(
                    "{} (the request to {target} was not completed)",
                    local_resource(io).unwrap_or_default()
                ),
            ),
            ureq::Error::Io(io) => match io.kind() {
                IoKind::ConnectionRefused
                | IoKind::AddrNotAvailable
                | IoKind::HostUnreachable
                | IoKind::NetworkUnreachable
                | IoKind::NotFound => (
                    ErrorKind::Connect,
                    format!("could not connect to {target} ({io}): is the supervisor running?"),
                ),
                IoKind::TimedOut | IoKind::WouldBlock => (
                    ErrorKind::Timeout,
                    format!(
                        "no complete answer from {target} within the {} ms timeout{}",
                        budget.as_millis(),
                        late_action(req)
                    ),
                ),
                _ => (
                    ErrorKind::Io,
                    format!("the connection to {target} broke mid-request ({io})"),
                ),
            },
            ureq::Error::Protocol(p) => (
                ErrorKind::InvalidResponse,
                format!("the answer from {target} is not valid HTTP/1.1 ({p})"),
            ),
            other => (
                ErrorKind::Io,
                format!("the request to {target} failed ({other})"),
            ),
        };
        Error::new(
            kind,
            scrub_key(&format!("{}: {}", req.label(), what), &s.key),
        )
    }
}

/// What a timeout of `req` adds to its message: an action may still happen.
fn late_action(req: &Request<'_>) -> &'static str {
    if req.action {
        "; the supervisor answers an action only when it is done, so it may still carry \
         it out: check before sending it again (this library never re-sends one)"
    } else {
        ""
    }
}

/// Which of the three kinds of 423 `body` (the answer to `req`) is, and what
/// to say about it (see supervisor-behavior.md).
fn locked_kind(req: &Request<'_>, body: &[u8]) -> (ErrorKind, &'static str) {
    let text = String::from_utf8_lossy(body);
    if text.contains("Host OS update") {
        (
            ErrorKind::HostUpdate,
            "a host OS update is finishing: do not force (that can leave the device stuck \
             mid-update); retry after it ends",
        )
    } else if text.contains("held by another supervisor operation") {
        (
            ErrorKind::Busy,
            "the supervisor's own operation holds the app's locks (force cannot override \
             this): retry later",
        )
    } else if req.forced() {
        (
            ErrorKind::Busy,
            "locked although force was sent (force cannot override this): retry later",
        )
    } else {
        (
            ErrorKind::Locked,
            "an app holds an update lock: retry with force to override it",
        )
    }
}

/// The `Location` of a redirect (no other answer needs it).
/// The body of `response`, read whole within [`MAX_BODY_BYTES`]. The buffer
/// is sized from Content-Length (within the cap), so the body is read in one
/// go instead of through a growing buffer.
fn read_capped(
    response: &mut ureq::http::Response<ureq::Body>,
) -> std::result::Result<Vec<u8>, ureq::Error> {
    let expected = response.body().content_length().unwrap_or(0);
    // `body[..filled]` is the answer; the rest is zeroed room to read into,
    // grown by doubling (within the cap), and every growth is fallible.
    let mut body = Vec::new();
    grow(&mut body, expected.clamp(1024, MAX_BODY_BYTES) as usize)?;
    let mut filled = 0;
    let mut reader = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .reader();
    loop {
        if filled == body.len() {
            grow(&mut body, (filled * 2).min(MAX_BODY_BYTES as usize + 1))?;
        }
        match reader.read(&mut body[filled..]) {
            Ok(0) => {
                body.truncate(filled);
                return Ok(body);
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == IoKind::Interrupted => {}
            Err(e) => return Err(ureq::Error::from(e)),
        }
    }
}

/// `body` grown to `len` zeroed bytes, or an error saying there is no memory
/// (never an abort).
fn grow(body: &mut Vec<u8>, len: usize) -> std::result::Result<(), ureq::Error> {
    let more = len.saturating_sub(body.len());
    body.try_reserve_exact(more).map_err(|_| {
        ureq::Error::Io(std::io::Error::new(
            IoKind::OutOfMemory,
            format!("not enough memory for {len} bytes of the answer"),
        ))
    })?;
    body.resize(len, 0);
    Ok(())
}

/// `response`'s status and `Location` with its `body`.
fn answer(response: &ureq::http::Response<ureq::Body>, body: Vec<u8>) -> Response {
    Response {
        status: response.status().as_u16(),
        body,
        location: location(response),
    }
}

fn location(response: &ureq::http::Response<ureq::Body>) -> Option<String> {
    if !response.status().is_redirection() {
        return None;
    }
    let value = response.headers().get(ureq::http::header::LOCATION)?;
    value.to_str().ok().map(str::to_string)
}

/// Records its status as the thread's last HTTP status when dropped.
struct RecordOnDrop(u16);

impl Drop for RecordOnDrop {
    fn drop(&mut self) {
        record_status(self.0);
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What a local resource failure is, in words, or `None` for any other
/// error: no memory, no free file descriptor, no thread.
pub(crate) fn local_resource(io: &std::io::Error) -> Option<String> {
    match io.raw_os_error() {
        Some(libc::EMFILE) => {
            return Some(format!(
                "no free file descriptor in this process (EMFILE: {io})"
            ))
        }
        Some(libc::ENFILE) => {
            return Some(format!(
                "no free file descriptor in the system (ENFILE: {io})"
            ))
        }
        Some(libc::ENOMEM) | Some(libc::ENOBUFS) => {
            return Some(format!("not enough memory in the kernel ({io})"))
        }
        _ => {}
    }
    if io.kind() == IoKind::OutOfMemory {
        return Some(io.to_string());
    }
    io.get_ref()
        .and_then(|e| e.downcast_ref::<ResourceFailure>())
        .map(|r| r.0.clone())
}

fn is_stale_connection(err: &ureq::Error) -> bool {
    match err {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            IoKind::ConnectionReset
                | IoKind::ConnectionAborted
                | IoKind::BrokenPipe
                | IoKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Replace `key` (plain, or percent-encoded with upper- or lower-case hex)
/// in `text` by `<api key>`.
pub fn scrub_key(text: &str, key: &str) -> String {
    if key.is_empty() {
        return text.to_string();
    }
    let mut out = text.replace(key, "<api key>");
    let encoded = percent_encode(key);
    if encoded != key {
        out = out.replace(&encoded, "<api key>");
        // Only the hex digits after each `%` change case.
        let mut lower = String::with_capacity(encoded.len());
        let mut hex_left = 0;
        for c in encoded.chars() {
            if hex_left > 0 {
                lower.push(c.to_ascii_lowercase());
                hex_left -= 1;
            } else {
                hex_left = if c == '%' { 2 } else { 0 };
                lower.push(c);
            }
        }
        if lower != encoded {
            out = out.replace(&lower, "<api key>");
        }
    }
    out
}

/// A short readable excerpt of an error body: the `message` (or `Error`) of a
/// JSON body, else the text with HTML tags removed and white space folded.
pub fn body_detail(body: &[u8]) -> String {
    body_detail_without(body, "")
}

/// [`body_detail`] with `key` scrubbed before the excerpt is cut, so that not
/// even a part of the key is left at the cut.
pub fn body_detail_without(body: &[u8], key: &str) -> String {
    const MAX: usize = 300;
    let text = scrub_key(&String::from_utf8_lossy(body), key);
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(&text) {
        for field in ["message", "Error", "error"] {
            match map.get(field) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => {
                    return clip(&scrub_key(s, key), MAX)
                }
                _ => {}
            }
        }
    }
    let mut plain = String::with_capacity(text.len().min(4 * MAX));
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                plain.push(' ');
            }
            _ if in_tag => {}
            _ => plain.push(if c.is_control() { ' ' } else { c }),
        }
        if plain.len() > 4 * MAX {
            break;
        }
    }
    let folded = plain.split_whitespace().collect::<Vec<_>>().join(" ");
    let folded = folded
        .strip_prefix("Error ")
        .map(str::to_string)
        .unwrap_or(folded);
    clip(&folded, MAX)
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_and_scrubbing() {
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(scrub_key("x k+y x k%2By", "k+y"), "x <api key> x <api key>");
    }

    #[test]
    fn a_name_that_does_not_resolve_is_a_connect_error() {
        let config = Config::new(Some("http://device.local:48484"), Some("k")).unwrap();
        let client = Client::new(config);
        let err = client.transport_error(
            &client.settings(),
            &Request::get("/ping"),
            ureq::Error::HostNotFound,
            Duration::from_secs(1),
        );
        assert_eq!(err.kind(), ErrorKind::Connect, "{err:?}");
        assert!(err.message().contains("resolve"), "{err:?}");
    }

    #[test]
    fn local_resource_failures_are_named() {
        let client = Client::new(Config::new(Some("http://127.0.0.1:1"), Some("k")).unwrap());
        for (io, want) in [
            (
                std::io::Error::from_raw_os_error(libc::EMFILE),
                "no free file descriptor",
            ),
            (
                std::io::Error::other(ResourceFailure("no thread could be started".into())),
                "no thread",
            ),
            (
                std::io::Error::new(IoKind::OutOfMemory, "not enough memory for 9 bytes"),
                "not enough memory",
            ),
        ] {
            let err = client.transport_error(
                &client.settings(),
                &Request::get("/ping"),
                ureq::Error::Io(io),
                Duration::from_secs(1),
            );
            assert_eq!(err.kind(), ErrorKind::Io, "{err:?}");
            assert!(err.message().contains(want), "{err:?}");
            assert!(!err.message().contains("broke"), "{err:?}");
        }
    }

    #[test]
    fn details() {
        assert_eq!(
            body_detail(br#"{"status":"failed","message":"Unauthorized"}"#),
            "Unauthorized"
        );
        assert_eq!(
            body_detail(br#"{"Data":"","Error":"Updates are locked"}"#),
            "Updates are locked"
        );
        assert_eq!(
            body_detail(b"<!DOCTYPE html><html><body><pre>Cannot GET /v9/x</pre></body></html>"),
            "Cannot GET /v9/x"
        );
        assert_eq!(body_detail(&[b'a'; 1000]).len(), 303);
    }
}
