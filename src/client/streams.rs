//! Log streams: lines handed over as they arrive, an optional limit on
//! silence, and a process-wide stop.

use std::cell::Cell;
use std::io::{ErrorKind as IoKind, Read};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::call::{call_budget, record_status, IoDeadline};
use super::{answer, read_capped, Client, Limit, Request, MAX_LINE_BYTES};
use crate::error::{Error, ErrorKind, Result};

thread_local! {
    /// See [`stream_poll`].
    static STREAM: Cell<Option<u64>> = const { Cell::new(None) };
}

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

impl Client {
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
        let (start, budget) = call_budget();
        let head = IoDeadline::until(start + budget);
        let mut response = match self.start(&s, req, Limit::Stalls(stall)) {
            Ok(r) => r,
            Err(ureq::Error::Io(e)) if is_stopped(&e) => return Ok(()),
            Err(e) => return Err(self.transport_error(&s, req, e, budget)),
        };
        drop(head);
        let status = response.status().as_u16();
        record_status(status);
        if status != 200 {
            let _body_deadline = IoDeadline::until(Instant::now() + budget);
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
                        .transport_error(&s, req, e, budget)
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
