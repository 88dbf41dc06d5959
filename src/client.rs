//! The HTTP client: one request at a time per call, pooled keep-alive
//! connections, a deadline over the whole request, a size cap on answers.
//! Beside it: `request` (what is sent and received), `call` (what one call
//! carries on its thread: its start, deadline, last HTTP status), `streams`
//! (log streams, their stall limit and stop), `messages` (failures and
//! statuses as [`ErrorKind`]s with their words), `redact` (the key kept out
//! of every message), `resolve` and `tcp` (the transport under ureq) and
//! `buffers` (a connection's memory).

use std::io::{ErrorKind as IoKind, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Address, Config};
use crate::error::Result;
use crate::sync::ForkSafeRwLock;

mod buffers;
mod call;
mod messages;
mod redact;
mod request;
mod resolve;
mod streams;
mod tcp;

pub use call::{begin_call, end_call, last_http_status, reset_last_http_status};
use call::{call_budget, IoDeadline};
pub(crate) use call::{io_deadline, record_status};
pub use messages::{body_detail, body_detail_without};
pub(crate) use messages::{local_resource, ResourceFailure};
pub use redact::scrub_key;
pub use request::{percent_encode, Method, Request, Response};
pub use resolve::lookups_started;
pub use streams::{set_stream_timeout_ms, stop_streams, stream_timeout_ms};
pub(crate) use streams::{stopped_since, stream_poll, StreamStopped, STREAM_POLL};

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

/// What a call uses: replaced whole when the key changes (or in a child of
/// `fork()`), so that a call takes one consistent snapshot with one lock.
/// The timeout is not here: it is the call's (see [`call::begin_call`]).
struct Settings {
    key: Arc<str>,
    /// The key, percent-encoded for the query.
    encoded_key: String,
    agent: ureq::Agent,
    /// The process whose connections the agent's pool holds. A child of
    /// `fork()` inherits copies of the parent's pooled sockets; using one
    /// would interleave its requests and answers with the parent's.
    pid: u32,
}

impl Settings {
    fn with_key(&self, key: &str) -> Settings {
        Settings {
            key: Arc::from(key),
            encoded_key: percent_encode(key),
            agent: self.agent.clone(),
            pid: self.pid,
        }
    }
}

/// How one request is bounded in time.
#[derive(Clone, Copy)]
enum Limit {
    /// This long over the whole request.
    Within(Duration),
    /// No overall deadline (streams): connecting, sending and the head of
    /// the answer are bounded by the thread's [`IoDeadline`], each read of
    /// the body by this (`None`: no limit).
    Stalls(Option<Duration>),
}

/// An agent for `address`; each request sets its own time limit. Its idle
/// connections are its own: a new agent starts with an empty pool.
fn agent(address: &Address) -> ureq::Agent {
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
            .finish()
    }
}

impl Client {
    /// A client for `config`. Each call's time limit is the one its C call
    /// began with (see [`begin_call`]); the default timeout outside one.
    pub fn new(config: Config) -> Client {
        let settings = Settings {
            key: Arc::from(config.api_key.as_str()),
            encoded_key: percent_encode(&config.api_key),
            agent: agent(&config.address),
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
                agent: agent(&self.address),
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
        // The call's timeout counts from the start of the call; an explicit
        // one (a step of bd_wait_for_supervisor) from now.
        let (budget, deadline) = match timeout {
            None => {
                let (start, budget) = call_budget();
                (budget, start + budget)
            }
            Some(t) => (t, Instant::now() + t),
        };
        let _io = IoDeadline::until(deadline);
        let mut limit = Limit::Within(deadline.saturating_duration_since(Instant::now()));
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
}

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
