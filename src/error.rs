//! Errors of the core: what went wrong as a kind, a message a person can act
//! on and the HTTP status of the response, if one arrived. No C numbers here:
//! `ffi` maps each kind to its `bd_status` once.

use std::fmt;

/// What went wrong, in the categories of the C contract's `bd_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Bad input from the caller; nothing was sent.
    InvalidArgument,
    /// No supervisor address or API key known.
    NotConfigured,
    /// Could not connect to the supervisor.
    Connect,
    /// The request's deadline passed (or a stream stalled for the timeout).
    Timeout,
    /// The connection broke mid-request, or a local I/O operation failed.
    Io,
    /// HTTP 401.
    Unauthorized,
    /// HTTP 423, or an update lock file is already present.
    Locked,
    /// HTTP 400.
    BadRequest,
    /// HTTP 404.
    NotFound,
    /// HTTP 5xx.
    Server,
    /// Any other unexpected HTTP status (3xx, 409, ...).
    Http,
    /// The body is not what the endpoint documents.
    InvalidResponse,
    /// The response exceeded the size cap.
    TooLarge,
    /// A bug inside the library.
    Internal,
    /// HTTP 423 that `force` cannot override: another supervisor operation
    /// holds the app's locks, or a 423 although `force` was sent.
    Busy,
    /// HTTP 423 on reboot/shutdown: a host OS update is finishing.
    HostUpdate,
}

impl ErrorKind {
    /// The kind for an HTTP status that is not a success of the endpoint.
    pub fn from_http_status(status: u16) -> ErrorKind {
        match status {
            400 => ErrorKind::BadRequest,
            401 => ErrorKind::Unauthorized,
            404 => ErrorKind::NotFound,
            423 => ErrorKind::Locked,
            500..=599 => ErrorKind::Server,
            _ => ErrorKind::Http,
        }
    }
}

/// An error of the core: its kind, a message saying what failed and why (never
/// containing the API key), and the HTTP status of the response, 0 if none arrived.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    http_status: u16,
}

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            http_status: 0,
        }
    }

    /// Shorthand for an [`ErrorKind::InvalidArgument`] error.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// Attach the HTTP status of the response that caused the error.
    pub fn with_http_status(mut self, status: u16) -> Error {
        self.http_status = status;
        self
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// HTTP status of the response that caused the error, 0 if none arrived.
    pub fn http_status(&self) -> u16 {
        self.http_status
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("http_status", &self.http_status)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Result type of the core.
pub type Result<T> = std::result::Result<T, Error>;
