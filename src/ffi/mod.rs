//! The C ABI: types of the header and one short `extern "C"` function per
//! endpoint, each over [`boundary`]. No endpoint logic lives here.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};

pub mod boundary;
mod exports;

pub use exports::*;

/// Status codes. Every function returning `int` returns `BD_OK` (0) or a
/// negative `bd_status` (some return a count or flag >= 0 on success).
/// Values never change.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum bd_status {
    /// Success.
    BD_OK = 0,
    /// Bad input from the caller (NULL, not UTF-8, control characters,
    /// malformed JSON, bad address); nothing was sent.
    BD_ERR_INVALID_ARGUMENT = -1,
    /// No supervisor address or API key known (environment unset and
    /// `bd_init` not called), or `BD_CURRENT_APP` with no app id in the
    /// environment.
    BD_ERR_NOT_CONFIGURED = -2,
    /// Could not connect (supervisor down, wrong address).
    BD_ERR_CONNECT = -3,
    /// The request's deadline passed (or a stream stalled for the timeout).
    BD_ERR_TIMEOUT = -4,
    /// The connection broke mid-request (or a local I/O error on the lock file).
    BD_ERR_IO = -5,
    /// HTTP 401: key missing, invalid or out of scope.
    BD_ERR_UNAUTHORIZED = -6,
    /// HTTP 423: an app's update lock is held; `force` overrides it. Also:
    /// the update lock file already exists (`bd_lock_updates`). See also
    /// `BD_ERR_BUSY` and `BD_ERR_HOST_UPDATE`, the other two kinds of 423.
    BD_ERR_LOCKED = -7,
    /// HTTP 400 (a v1 app endpoint on a multi-container app, an app that is
    /// not installed, ...).
    BD_ERR_BAD_REQUEST = -8,
    /// HTTP 404 (an endpoint unknown to this supervisor version, or an unknown
    /// service on a v2 service action).
    BD_ERR_NOT_FOUND = -9,
    /// HTTP 5xx.
    BD_ERR_SERVER = -10,
    /// Any other unexpected HTTP status (redirects, 409, ...); see
    /// `bd_last_http_status`.
    BD_ERR_HTTP = -11,
    /// The body is not what the endpoint documents.
    BD_ERR_INVALID_RESPONSE = -12,
    /// The response exceeded the size cap (4 MiB; 1 MiB for one log line).
    BD_ERR_TOO_LARGE = -13,
    /// A bug inside the library (a caught panic).
    BD_ERR_INTERNAL = -14,
    /// HTTP 423 that `force` cannot override: another supervisor operation
    /// holds the app's locks (the supervisor waited about 10 s and gave up),
    /// or any 423 answered although `force` was sent. Retry later.
    BD_ERR_BUSY = -15,
    /// HTTP 423 on reboot/shutdown: a host OS update is finishing. Do not
    /// force: it can leave the device stuck mid-update. Retry later.
    BD_ERR_HOST_UPDATE = -16,
}

/// App id meaning "this app": `BALENA_APP_ID`, else `RESIN_APP_ID`
/// (unset → `BD_ERR_NOT_CONFIGURED`).
pub const BD_CURRENT_APP: u32 = 0;

/// Called once per line of a log stream, as it arrives: `line` is
/// NUL-terminated, without its newline, `len` bytes long, and valid only
/// during the call. Return 0 to go on, non-zero to stop the stream (the
/// function then returns `BD_OK`). Runs on the calling thread.
pub type bd_line_cb =
    Option<unsafe extern "C" fn(line: *const c_char, len: usize, userdata: *mut c_void) -> c_int>;

/// `GET /v1/device` as a fixed-size, caller-owned struct (no allocation).
/// Strings are NUL-terminated, truncated to fit, `""` when absent or null.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct bd_device_state {
    /// Container state of the first service (`Idle`, `Downloading`, ...).
    pub status: [c_char; 32],
    /// Commit of the running release.
    pub commit: [c_char; 72],
    /// balenaOS version.
    pub os_version: [c_char; 64],
    /// Supervisor version.
    pub supervisor_version: [c_char; 32],
    /// Space-separated IP addresses.
    pub ip_address: [c_char; 256],
    /// Space-separated MAC addresses.
    pub mac_address: [c_char; 256],
    /// Download progress in percent; -1 when null or absent.
    pub download_progress: i32,
    /// Supervisor API port; 0 when absent or null.
    pub api_port: u16,
    /// An update is pending (false when absent or null).
    pub update_pending: bool,
    /// An update was downloaded (false when absent or null).
    pub update_downloaded: bool,
    /// The last update failed (false when absent or null).
    pub update_failed: bool,
}
