//! Minimal HTTP/1.1 server-side plumbing for the simulator: request parsing
//! (Content-Length and chunked bodies), response writing (fixed length and
//! chunked streaming), URL decoding and HTTP dates.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest request body the JSON / urlencoded parsers accept (body-parser's
/// `limit: '10mb'`).
pub const MAX_BODY: usize = 10 * 1024 * 1024;
/// Bodies declared larger than this are not even drained: the connection is
/// closed after the answer.
const MAX_DRAIN: u64 = 64 * 1024 * 1024;
/// Node's default maximum size of the request head.
const MAX_HEAD: usize = 16 * 1024;
/// Node's `headersTimeout`: time allowed to receive a whole request once it
/// has started (and for the first request of a fresh connection).
pub const HEADERS_TIMEOUT: Duration = Duration::from_secs(60);

/// One parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path as sent (not percent-decoded), without the query.
    pub path: String,
    /// Query string as sent, without the `?`.
    pub raw_query: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Header names lowercased, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked), at most `MAX_BODY + 1` bytes kept.
    pub body: Vec<u8>,
    /// The body was longer than `MAX_BODY`.
    pub body_too_large: bool,
    /// A Content-Length or Transfer-Encoding header was present.
    pub has_body: bool,
    /// The body could not be drained; close after answering.
    pub must_close: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection stays open after this request's response.
    pub fn wants_keep_alive(&self) -> bool {
        if self.must_close {
            return false;
        }
        let tokens: Vec<String> = self
            .headers
            .iter()
            .filter(|(k, _)| k == "connection")
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
            .collect();
        if tokens.iter().any(|t| t == "close") {
            return false;
        }
        if self.version == "HTTP/1.0" {
            return tokens.iter().any(|t| t == "keep-alive");
        }
        true
    }

    /// Media type of the Content-Type header, lowercased, without parameters.
    pub fn media_type(&self) -> Option<String> {
        let ct = self.header("content-type")?;
        let mt = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mt.is_empty() {
            None
        } else {
            Some(mt)
        }
    }

    /// The `charset` parameter of the Content-Type header, lowercased.
    pub fn charset(&self) -> Option<String> {
        let ct = self.header("content-type")?;
        ct.split(';').skip(1).find_map(|p| {
            let (k, v) = p.split_once('=')?;
            if k.trim().eq_ignore_ascii_case("charset") {
                Some(v.trim().trim_matches('"').to_ascii_lowercase())
            } else {
                None
            }
        })
    }
}

/// Outcome of waiting for and reading one request.
pub enum ReadOutcome {
    Request(Box<Request>),
    /// The peer closed, the idle time passed, or the socket failed.
    Closed,
    /// Malformed request: answer with this status and close.
    Bad(u16),
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Waits up to `idle` for the first byte of the next request, then reads it.
pub fn read_request(reader: &mut BufReader<TcpStream>, idle: Duration) -> ReadOutcome {
    if reader.buffer().is_empty() {
        let _ = reader
            .get_ref()
            .set_read_timeout(Some(idle.max(Duration::from_millis(1))));
        match reader.fill_buf() {
            Ok([]) => return ReadOutcome::Closed,
            Ok(_) => {}
            Err(_) => return ReadOutcome::Closed,
        }
    }
    let _ = reader.get_ref().set_read_timeout(Some(HEADERS_TIMEOUT));
    match read_request_inner(reader) {
        Ok(o) => o,
        Err(_) => ReadOutcome::Closed,
    }
}

enum ReadLine {
    Line(Vec<u8>),
    Eof,
    TooLong,
}

/// Reads one line (without its CRLF / LF), failing once `budget` is spent.
fn read_line(reader: &mut BufReader<TcpStream>, budget: &mut usize) -> io::Result<ReadLine> {
    let mut out = Vec::new();
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(ReadLine::Eof);
        }
        let (used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if used > *budget {
            return Ok(ReadLine::TooLong);
        }
        *budget -= used;
        out.extend_from_slice(&buf[..used]);
        reader.consume(used);
        if done {
            out.pop();
            if out.last() == Some(&b'\r') {
                out.pop();
            }
            return Ok(ReadLine::Line(out));
        }
    }
}

fn read_request_inner(reader: &mut BufReader<TcpStream>) -> io::Result<ReadOutcome> {
    let mut budget = MAX_HEAD;
    // Request line (empty lines before it are tolerated, as Node does).
    let request_line = loop {
        match read_line(reader, &mut budget)? {
            ReadLine::Eof => return Ok(ReadOutcome::Closed),
            ReadLine::TooLong => return Ok(ReadOutcome::Bad(431)),
            ReadLine::Line(l) if l.is_empty() => continue,
            ReadLine::Line(l) => break l,
        }
    };
    let request_line = match String::from_utf8(request_line) {
        Ok(s) => s,
        Err(_) => return Ok(ReadOutcome::Bad(400)),
    };
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Ok(ReadOutcome::Bad(400)),
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-')
        || !target.starts_with('/')
        || !(version == "HTTP/1.1" || version == "HTTP/1.0")
    {
        return Ok(ReadOutcome::Bad(400));
    }
    let mut headers = Vec::new();
    loop {
        match read_line(reader, &mut budget)? {
            ReadLine::Eof => return Ok(ReadOutcome::Closed),
            ReadLine::TooLong => return Ok(ReadOutcome::Bad(431)),
            ReadLine::Line(l) if l.is_empty() => break,
            ReadLine::Line(l) => {
                let l = String::from_utf8_lossy(&l).into_owned();
                let Some((name, value)) = l.split_once(':') else {
                    return Ok(ReadOutcome::Bad(400));
                };
                if name.is_empty() || name.contains(|c: char| c.is_whitespace()) {
                    return Ok(ReadOutcome::Bad(400));
                }
                headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    let (path, raw_query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let query = parse_urlencoded(&raw_query);
    let mut req = Request {
        method: method.to_string(),
        path,
        raw_query,
        query,
        version: version.to_string(),
        headers,
        body: Vec::new(),
        body_too_large: false,
        has_body: false,
        must_close: false,
    };

    let chunked = req
        .headers
        .iter()
        .filter(|(k, _)| k == "transfer-encoding")
        .any(|(_, v)| v.to_ascii_lowercase().contains("chunked"));
    let content_length = req.header("content-length").map(|v| v.to_string());
    if (chunked || content_length.is_some())
        && req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        // Node answers the interim response before the body is sent.
        let mut s: &TcpStream = reader.get_ref();
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    if chunked {
        req.has_body = true;
        if let Some(bad) = read_chunked(reader, &mut req)? {
            return Ok(ReadOutcome::Bad(bad));
        }
    } else if let Some(cl) = content_length {
        let Ok(len) = cl.trim().parse::<u64>() else {
            return Ok(ReadOutcome::Bad(400));
        };
        req.has_body = true;
        if len > MAX_DRAIN {
            req.body_too_large = true;
            req.must_close = true;
        } else {
            let keep = len.min(MAX_BODY as u64 + 1);
            let mut body = Vec::with_capacity(keep as usize);
            reader.by_ref().take(keep).read_to_end(&mut body)?;
            if (body.len() as u64) < keep {
                return Ok(ReadOutcome::Closed);
            }
            let rest = len - keep;
            if rest > 0 && io::copy(&mut reader.by_ref().take(rest), &mut io::sink())? < rest {
                return Ok(ReadOutcome::Closed);
            }
            req.body_too_large = len > MAX_BODY as u64;
            req.body = body;
        }
    }
    Ok(ReadOutcome::Request(Box::new(req)))
}

/// Reads a chunked body into `req`. Returns `Some(status)` for a malformed one.
fn read_chunked(reader: &mut BufReader<TcpStream>, req: &mut Request) -> io::Result<Option<u16>> {
    let mut total: u64 = 0;
    loop {
        let mut budget = 4096;
        let line = match read_line(reader, &mut budget)? {
            ReadLine::Line(l) => l,
            ReadLine::Eof => return Err(io::ErrorKind::UnexpectedEof.into()),
            ReadLine::TooLong => return Ok(Some(400)),
        };
        let line = String::from_utf8_lossy(&line);
        let size_txt = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = u64::from_str_radix(size_txt, 16) else {
            return Ok(Some(400));
        };
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut budget = MAX_HEAD;
                match read_line(reader, &mut budget)? {
                    ReadLine::Line(l) if l.is_empty() => return Ok(None),
                    ReadLine::Line(_) => continue,
                    ReadLine::Eof => return Err(io::ErrorKind::UnexpectedEof.into()),
                    ReadLine::TooLong => return Ok(Some(400)),
                }
            }
        }
        total = total.saturating_add(size);
        if total > MAX_DRAIN {
            req.body_too_large = true;
            req.must_close = true;
            return Ok(None);
        }
        let room = (MAX_BODY as u64 + 1).saturating_sub(req.body.len() as u64);
        let keep = size.min(room);
        let before = req.body.len();
        reader.by_ref().take(keep).read_to_end(&mut req.body)?;
        if ((req.body.len() - before) as u64) < keep {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let rest = size - keep;
        if rest > 0 && io::copy(&mut reader.by_ref().take(rest), &mut io::sink())? < rest {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if total > MAX_BODY as u64 {
            req.body_too_large = true;
        }
        let mut budget = 16;
        match read_line(reader, &mut budget)? {
            ReadLine::Line(l) if l.is_empty() => {}
            ReadLine::Eof => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => return Ok(Some(400)),
        }
    }
}

/// Percent-decodes `s`; with `plus` a `+` becomes a space (query strings).
pub fn percent_decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits and decodes `a=b&c=d` (query strings and urlencoded forms).
pub fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k, true), percent_decode(v, true)),
            None => (percent_decode(p, true), String::new()),
        })
        .collect()
}

/// Reason phrase for a status code (also the body of `sendStatus`).
pub fn reason(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        423 => "Locked",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A complete (non-streaming) response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// `res.sendStatus(code)`: the reason phrase as text/plain (204: no body).
pub fn send_status(code: u16) -> Response {
    if code == 204 || code == 304 {
        return Response {
            status: code,
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
        };
    }
    Response {
        status: code,
        content_type: Some("text/plain; charset=utf-8".into()),
        headers: Vec::new(),
        body: reason(code).as_bytes().to_vec(),
    }
}

/// `res.status(code).send('string')`: text/html.
pub fn send_text(code: u16, s: &str) -> Response {
    Response {
        status: code,
        content_type: Some("text/html; charset=utf-8".into()),
        headers: Vec::new(),
        body: s.as_bytes().to_vec(),
    }
}

/// `res.status(code).json(value)`.
pub fn send_json(code: u16, v: serde_json::Value) -> Response {
    Response {
        status: code,
        content_type: Some("application/json; charset=utf-8".into()),
        headers: Vec::new(),
        body: serde_json::to_vec(&v).unwrap_or_default(),
    }
}

/// Express' final handler page for an unknown route.
pub fn send_not_found(method: &str, path: &str) -> Response {
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Error</title>\n</head>\n<body>\n<pre>Cannot {} {}</pre>\n</body>\n</html>\n",
        method,
        escape_html(&encode_url(path))
    );
    let mut r = send_text(404, &page);
    r.headers.push((
        "Content-Security-Policy".into(),
        "default-src 'none'".into(),
    ));
    r.headers
        .push(("X-Content-Type-Options".into(), "nosniff".into()));
    r
}

/// Percent-encodes what may not appear in a URL, leaving `%XX` escapes
/// and the reserved characters as they are (how Express quotes a path).
fn encode_url(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let keep = c.is_ascii_alphanumeric()
            || b"!#$&'()*+,-./:;=?@[]_~".contains(&c)
            || (c == b'%'
                && i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit));
        if keep {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
        i += 1;
    }
    out
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Connection headers for a response.
fn connection_headers(keep_alive: bool, idle: Duration) -> String {
    if keep_alive {
        let secs = idle.as_secs();
        if secs > 0 {
            format!("Connection: keep-alive\r\nKeep-Alive: timeout={secs}\r\n")
        } else {
            "Connection: keep-alive\r\n".to_string()
        }
    } else {
        "Connection: close\r\n".to_string()
    }
}

/// Writes a full response. With `head_only` the body is left out (HEAD).
pub fn write_response(
    w: &mut TcpStream,
    resp: &Response,
    keep_alive: bool,
    idle: Duration,
    head_only: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(ct) = &resp.content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if resp.status != 204 && resp.status != 304 {
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    head.push_str(&format!("Date: {}\r\n", http_date(SystemTime::now())));
    head.push_str(&connection_headers(keep_alive, idle));
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
    w.write_all(&out)?;
    w.flush()
}

/// Writes the head of a chunked streaming response (200, no content type,
/// as Node does when a handler pipes into `res`).
pub fn write_stream_head(w: &mut TcpStream, keep_alive: bool, idle: Duration) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nDate: {}\r\n{}Transfer-Encoding: chunked\r\n\r\n",
        http_date(SystemTime::now()),
        connection_headers(keep_alive, idle)
    );
    w.write_all(head.as_bytes())?;
    w.flush()
}

/// Writes one chunk and flushes it.
pub fn write_chunk(w: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out)?;
    w.flush()
}

/// Writes the terminating chunk.
pub fn write_last_chunk(w: &mut TcpStream) -> io::Result<()> {
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}

/// Waits up to `dur`, watching the socket: returns true as soon as the peer
/// has closed its side (or the socket failed).
pub fn wait_or_closed(stream: &TcpStream, dur: Duration) -> bool {
    let start = std::time::Instant::now();
    loop {
        let left = match dur.checked_sub(start.elapsed()) {
            Some(d) if !d.is_zero() => d,
            _ => return false,
        };
        let _ = stream.set_read_timeout(Some(left));
        let mut b = [0u8; 1];
        match stream.peek(&mut b) {
            Ok(0) => return true,
            Ok(_) => {
                // The client sent more data (e.g. a pipelined request); it is
                // not read while streaming, so just wait out the interval.
                std::thread::sleep(left);
                return false;
            }
            Err(e) if is_timeout(&e) => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Broken-down UTC time: (year, month 1-12, day, hour, minute, second, weekday 0=Sunday).
pub fn utc_parts(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let wd = (days + 4).rem_euclid(7) as u32;
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
        wd,
    )
}

/// RFC 7231 date, e.g. `Thu, 27 Nov 2025 14:00:00 GMT`.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    let (y, mo, d, h, mi, s, wd) = utc_parts(t);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[wd as usize],
        d,
        MONTHS[mo as usize - 1],
        y,
        h,
        mi,
        s
    )
}
