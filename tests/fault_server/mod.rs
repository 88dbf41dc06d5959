#![allow(dead_code)]
//! A fault-injecting HTTP/1.1 server over raw TCP, for the faults the
//! supervisor simulator cannot produce: answers that never come or trickle,
//! connections reset mid-body, garbage, huge bodies, redirects, closes at the
//! worst moment.
//!
//! Each accepted connection runs a scripted handler on its own thread. The
//! handler reads requests with [`Conn::read_request`] (every request is
//! recorded, raw bytes included) and writes whatever bytes it likes. The
//! server counts accepted connections and requests received. Dropping the
//! server closes the listener and every open connection.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a handler waits for (the rest of) a request by default.
pub const READ_WAIT: Duration = Duration::from_secs(10);

/// One request as received.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Every byte received for this request (head and body).
    pub raw: Vec<u8>,
    pub method: String,
    /// Request target as sent (path and query).
    pub target: String,
    /// Header names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which connection carried it (1, 2, ... in accept order).
    pub conn: usize,
    /// Its position on that connection (1 for the first request).
    pub seq_on_conn: usize,
}

impl RawRequest {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query as sent, without `?` ("" when none).
    pub fn raw_query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    /// A query parameter, percent-decoded (`+` stays `+`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.raw_query().split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }

    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Decode `%XX` escapes; anything malformed is kept as is.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Shared {
    port: u16,
    connections: AtomicUsize,
    request_count: AtomicUsize,
    requests: Mutex<Vec<RawRequest>>,
    stopping: AtomicBool,
    live: Mutex<HashMap<usize, TcpStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One accepted connection, handed to the handler.
pub struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
    id: usize,
    served: usize,
    shared: Arc<Shared>,
}

/// Outcome of looking for the end of a request head.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

impl Conn {
    /// 1 for the first connection the server accepted, then 2, ...
    pub fn id(&self) -> usize {
        self.id
    }

    /// Requests read on this connection so far.
    pub fn served(&self) -> usize {
        self.served
    }

    /// Whether the server is shutting down.
    pub fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Read more bytes into `pending`; false on EOF, error or timeout.
    fn fill(&mut self, until: Instant) -> bool {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || self.stopping() {
            return false;
        }
        let _ = self.stream.set_read_timeout(Some(left));
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }

    /// Wait up to [`READ_WAIT`] for the next request and read it whole
    /// (Content-Length or chunked body). `None` when the peer closed, the time
    /// passed or the request is malformed. Every request read is recorded.
    pub fn read_request(&mut self) -> Option<RawRequest> {
        self.read_request_within(READ_WAIT)
    }

    /// [`Conn::read_request`] waiting at most `wait`.
    pub fn read_request_within(&mut self, wait: Duration) -> Option<RawRequest> {
        let until = Instant::now() + wait;
        let head_len = loop {
            if let Some(n) = head_end(&self.pending) {
                break n;
            }
            if self.pending.len() > 64 * 1024 || !self.fill(until) {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.pending[..head_len - 4]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let mut body = Vec::new();
        let total = if chunked {
            let mut pos = head_len;
            loop {
                let line_end = loop {
                    if let Some(p) = self.pending[pos..].windows(2).position(|w| w == b"\r\n") {
                        break pos + p;
                    }
                    if !self.fill(until) {
                        return None;
                    }
                };
                let size_txt = String::from_utf8_lossy(&self.pending[pos..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
                        .ok()?;
                let data_start = line_end + 2;
                while self.pending.len() < data_start + size + 2 {
                    if !self.fill(until) {
                        return None;
                    }
                }
                body.extend_from_slice(&self.pending[data_start..data_start + size]);
                pos = data_start + size + 2;
                if size == 0 {
                    break pos;
                }
            }
        } else {
            let len: usize = match get("content-length") {
                Some(v) => v.parse().ok()?,
                None => 0,
            };
            while self.pending.len() < head_len + len {
                if !self.fill(until) {
                    return None;
                }
            }
            body.extend_from_slice(&self.pending[head_len..head_len + len]);
            head_len + len
        };
        let raw: Vec<u8> = self.pending.drain(..total).collect();
        self.served += 1;
        let req = RawRequest {
            raw,
            method,
            target,
            headers,
            body,
            conn: self.id,
            seq_on_conn: self.served,
        };
        self.shared.request_count.fetch_add(1, Ordering::SeqCst);
        lock(&self.shared.requests).push(req.clone());
        Some(req)
    }

    /// Write raw bytes; false when the peer is gone.
    pub fn write(&mut self, bytes: &[u8]) -> bool {
        self.stream
            .write_all(bytes)
            .and_then(|_| self.stream.flush())
            .is_ok()
    }

    /// Write a complete response with `Content-Length` (keep-alive).
    pub fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
        self.write(&response(status, headers, body))
    }

    /// Write a 200 JSON answer.
    pub fn respond_json(&mut self, body: &str) -> bool {
        self.respond(
            200,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// Make the close of this connection a TCP reset (SO_LINGER 0) instead of
    /// a FIN. The connection closes when the handler returns, so return
    /// right after calling this.
    pub fn reset_on_close(&mut self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket descriptor and a properly sized option value.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt(SO_LINGER) failed");
    }

    /// Keep the connection open without writing until the peer closes it, the
    /// server stops, or `max` has passed.
    pub fn hold(&mut self, max: Duration) {
        let until = Instant::now() + max;
        while Instant::now() < until && !self.stopping() {
            let _ = self
                .stream
                .set_read_timeout(Some(Duration::from_millis(50)));
            let mut b = [0u8; 1024];
            match self.stream.read(&mut b) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return,
            }
        }
    }

    /// Sleep `dur` unless the server stops first; false when it stopped.
    pub fn pause(&self, dur: Duration) -> bool {
        let until = Instant::now() + dur;
        while Instant::now() < until {
            if self.stopping() {
                return false;
            }
            thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
        }
        !self.stopping()
    }
}

/// Reason phrase for the status line.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        423 => "Locked",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A complete keep-alive response with `Content-Length`.
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

type Handler = dyn Fn(&mut Conn) + Send + Sync + 'static;

/// A running fault server on 127.0.0.1.
pub struct FaultServer {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultServer {
    /// Listen on an ephemeral port; run `handler` once per accepted
    /// connection, on its own thread. The connection is closed (FIN) when the
    /// handler returns, unless it called [`Conn::reset_on_close`] (then a reset).
    pub fn start(handler: impl Fn(&mut Conn) + Send + Sync + 'static) -> FaultServer {
        FaultServer::start_on(0, handler).expect("cannot start the fault server")
    }

    /// As [`FaultServer::start`] on a chosen port.
    pub fn start_on(
        port: u16,
        handler: impl Fn(&mut Conn) + Send + Sync + 'static,
    ) -> io::Result<FaultServer> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            port,
            connections: AtomicUsize::new(0),
            request_count: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
        });
        let handler: Arc<Handler> = Arc::new(handler);
        let sh = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("fault-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if sh.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let id = sh.connections.fetch_add(1, Ordering::SeqCst) + 1;
                    if let Ok(c) = stream.try_clone() {
                        lock(&sh.live).insert(id, c);
                    }
                    let _ = stream.set_nodelay(true);
                    let mut conn = Conn {
                        stream,
                        pending: Vec::new(),
                        id,
                        served: 0,
                        shared: Arc::clone(&sh),
                    };
                    let h = Arc::clone(&handler);
                    let _ = thread::Builder::new()
                        .name(format!("fault-conn-{id}"))
                        .spawn(move || {
                            h(&mut conn);
                            let sh = Arc::clone(&conn.shared);
                            lock(&sh.live).remove(&id);
                            drop(conn);
                        });
                }
            })?;
        Ok(FaultServer {
            shared,
            accept: Some(accept),
        })
    }

    /// A server that answers every request on every connection with the
    /// bytes `answer` returns, keeping connections alive.
    pub fn answering(
        answer: impl Fn(&RawRequest) -> Vec<u8> + Send + Sync + 'static,
    ) -> FaultServer {
        FaultServer::start(move |conn| {
            while let Some(req) = conn.read_request() {
                if !conn.write(&answer(&req)) {
                    return;
                }
            }
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.shared.port)
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far (complete ones).
    pub fn request_count(&self) -> usize {
        self.shared.request_count.load(Ordering::SeqCst)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RawRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn last_request(&self) -> Option<RawRequest> {
        lock(&self.shared.requests).last().cloned()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
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

/// `(VmRSS, VmHWM)` of this process in KiB, from /proc/self/status.
pub fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reset this process's peak RSS (VmHWM) to its current RSS, where the
/// kernel allows it (`/proc/self/clear_refs`, value 5). Returns whether it did.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
