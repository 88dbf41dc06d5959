//! Failures and statuses as [`ErrorKind`]s, with words a person can act on:
//! which of the three kinds of 423, that an action which timed out may still
//! happen, which local resource ran out, what the server said.

use std::io::ErrorKind as IoKind;
use std::time::Duration;

use super::redact::scrub_key;
use super::{Client, Request, Response, Settings, MAX_BODY_BYTES};
use crate::error::{Error, ErrorKind};

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

impl Client {
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
    pub(super) fn transport_error(
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
    use crate::config::Config;

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
