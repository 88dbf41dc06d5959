//! The C ABI: types of the header and one short `extern "C"` function per
//! endpoint, each over [`boundary`]. No endpoint logic lives here.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void, CStr};

use crate::api::DeviceState;
use crate::error::ErrorKind;

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

impl From<ErrorKind> for bd_status {
    /// The one place where a core error kind becomes a C status.
    fn from(kind: ErrorKind) -> bd_status {
        use bd_status::*;
        match kind {
            ErrorKind::InvalidArgument => BD_ERR_INVALID_ARGUMENT,
            ErrorKind::NotConfigured => BD_ERR_NOT_CONFIGURED,
            ErrorKind::Connect => BD_ERR_CONNECT,
            ErrorKind::Timeout => BD_ERR_TIMEOUT,
            ErrorKind::Io => BD_ERR_IO,
            ErrorKind::Unauthorized => BD_ERR_UNAUTHORIZED,
            ErrorKind::Locked => BD_ERR_LOCKED,
            ErrorKind::BadRequest => BD_ERR_BAD_REQUEST,
            ErrorKind::NotFound => BD_ERR_NOT_FOUND,
            ErrorKind::Server => BD_ERR_SERVER,
            ErrorKind::Http => BD_ERR_HTTP,
            ErrorKind::InvalidResponse => BD_ERR_INVALID_RESPONSE,
            ErrorKind::TooLarge => BD_ERR_TOO_LARGE,
            ErrorKind::Internal => BD_ERR_INTERNAL,
            ErrorKind::Busy => BD_ERR_BUSY,
            ErrorKind::HostUpdate => BD_ERR_HOST_UPDATE,
        }
    }
}

impl bd_status {
    /// Every status, in value order (`BD_OK` first).
    const ALL: [bd_status; 17] = {
        use bd_status::*;
        [
            BD_OK,
            BD_ERR_INVALID_ARGUMENT,
            BD_ERR_NOT_CONFIGURED,
            BD_ERR_CONNECT,
            BD_ERR_TIMEOUT,
            BD_ERR_IO,
            BD_ERR_UNAUTHORIZED,
            BD_ERR_LOCKED,
            BD_ERR_BAD_REQUEST,
            BD_ERR_NOT_FOUND,
            BD_ERR_SERVER,
            BD_ERR_HTTP,
            BD_ERR_INVALID_RESPONSE,
            BD_ERR_TOO_LARGE,
            BD_ERR_INTERNAL,
            BD_ERR_BUSY,
            BD_ERR_HOST_UPDATE,
        ]
    };

    /// The status with this value, if there is one.
    fn from_value(value: c_int) -> Option<bd_status> {
        Self::ALL.into_iter().find(|s| *s as c_int == value)
    }

    /// The static text `bd_strerror` gives.
    fn describe(self) -> &'static CStr {
        use bd_status::*;
        match self {
            BD_OK => c"success",
            BD_ERR_INVALID_ARGUMENT => {
                c"invalid argument: bad input from the caller, nothing was sent"
            }
            BD_ERR_NOT_CONFIGURED => c"not configured: no supervisor address or API key known",
            BD_ERR_CONNECT => c"could not connect to the supervisor",
            BD_ERR_TIMEOUT => c"the request's deadline passed",
            BD_ERR_IO => c"the connection broke mid-request (or a local I/O error)",
            BD_ERR_UNAUTHORIZED => {
                c"unauthorized (HTTP 401): API key missing, invalid or out of scope"
            }
            BD_ERR_LOCKED => c"an app's update lock is held (HTTP 423); force overrides it",
            BD_ERR_BAD_REQUEST => c"bad request (HTTP 400)",
            BD_ERR_NOT_FOUND => c"not found (HTTP 404)",
            BD_ERR_SERVER => c"supervisor error (HTTP 5xx)",
            BD_ERR_HTTP => c"unexpected HTTP status",
            BD_ERR_INVALID_RESPONSE => c"the response body is not what the endpoint documents",
            BD_ERR_TOO_LARGE => c"the response exceeded the size cap",
            BD_ERR_INTERNAL => c"internal error in balena_device (a bug)",
            BD_ERR_BUSY => {
                c"the supervisor is busy: its own operation holds the app's locks (HTTP 423); \
                  force cannot help, retry later"
            }
            BD_ERR_HOST_UPDATE => {
                c"a host OS update is finishing (HTTP 423); do not force, retry after it"
            }
        }
    }
}

/// The C value of a core error kind.
pub(crate) fn status_of(kind: ErrorKind) -> c_int {
    bd_status::from(kind) as c_int
}

/// The static text for a status value; "unknown status" for any other.
pub(crate) fn describe_status(value: c_int) -> &'static CStr {
    bd_status::from_value(value).map_or(c"unknown status", bd_status::describe)
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

impl From<&DeviceState> for bd_device_state {
    /// The typed `GET /v1/device` as the C struct: strings truncated to
    /// their field at a character boundary, `""` when absent;
    /// `download_progress` -1, `api_port` 0 and booleans false when absent.
    fn from(s: &DeviceState) -> bd_device_state {
        let mut v = bd_device_state {
            status: [0; 32],
            commit: [0; 72],
            os_version: [0; 64],
            supervisor_version: [0; 32],
            ip_address: [0; 256],
            mac_address: [0; 256],
            download_progress: s.download_progress.unwrap_or(-1),
            api_port: s.api_port.unwrap_or(0),
            update_pending: s.update_pending.unwrap_or(false),
            update_downloaded: s.update_downloaded.unwrap_or(false),
            update_failed: s.update_failed.unwrap_or(false),
        };
        fill_field(&mut v.status, s.status.as_deref());
        fill_field(&mut v.commit, s.commit.as_deref());
        fill_field(&mut v.os_version, s.os_version.as_deref());
        fill_field(&mut v.supervisor_version, s.supervisor_version.as_deref());
        fill_field(&mut v.ip_address, s.ip_address.as_deref());
        fill_field(&mut v.mac_address, s.mac_address.as_deref());
        v
    }
}

/// Copy `text` into a fixed C char array, truncated at a character boundary
/// so it always ends with a NUL inside the array. Absent → `""`.
pub fn fill_field<const N: usize>(field: &mut [c_char; N], text: Option<&str>) {
    let text = text.unwrap_or("");
    let mut n = text.len().min(N.saturating_sub(1));
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    for (dst, &src) in field.iter_mut().zip(&text.as_bytes()[..n]) {
        *dst = src as c_char;
    }
    for dst in field.iter_mut().skip(n) {
        *dst = 0;
    }
}
