//! What one C call carries on its thread: when it started and how long it
//! may take (its deadline counts from the start of the call), the deadline
//! the transport keeps, and the HTTP status of the last answer.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::config::DEFAULT_TIMEOUT_MS;

thread_local! {
    static LAST_HTTP_STATUS: Cell<u16> = const { Cell::new(0) };
    /// When the C call running on this thread started, and its budget (see
    /// [`begin_call`]).
    static CALL: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
    /// The deadline the transport holds every connect, write and read of
    /// this thread to, on top of ureq's own timeouts (see [`IoDeadline`]).
    static IO_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// A call starts now on this thread and may take `timeout`: a request's
/// deadline counts from here, so that it covers what the call does before
/// sending (checking a large argument, say). Returns what [`end_call`]
/// restores: a callback may make a call of its own inside another one.
pub fn begin_call(timeout: Duration) -> Option<(Instant, Duration)> {
    CALL.try_with(|c| c.replace(Some((Instant::now(), timeout))))
        .unwrap_or(None)
}

/// The call begun by [`begin_call`] ended; `previous` is what it returned.
pub fn end_call(previous: Option<(Instant, Duration)>) {
    let _ = CALL.try_with(|c| c.set(previous));
}

/// When the call on this thread started and how long it may take; outside
/// a call (the core used directly): now, and the default timeout.
pub(super) fn call_budget() -> (Instant, Duration) {
    CALL.try_with(Cell::get).ok().flatten().unwrap_or_else(|| {
        (
            Instant::now(),
            Duration::from_millis(u64::from(DEFAULT_TIMEOUT_MS)),
        )
    })
}

/// The deadline of this thread's request in progress, if any.
pub(crate) fn io_deadline() -> Option<Instant> {
    IO_DEADLINE.try_with(Cell::get).ok().flatten()
}

/// Holds every connect, write and read on this thread to a deadline while
/// alive; restores the one before when dropped.
pub(super) struct IoDeadline(Option<Instant>);

impl IoDeadline {
    pub(super) fn until(deadline: Instant) -> IoDeadline {
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
