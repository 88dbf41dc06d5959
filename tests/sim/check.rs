//! Assertions on what the simulator recorded, for the tests that drive a
//! client against it: which requests arrived, and what each one carried.

use super::{Recorded, Sim};
use serde_json::Value;

/// What a request must carry as its body.
pub enum Body<'a> {
    /// No body and no Content-Type.
    Empty,
    /// These exact bytes, as `application/json`.
    Exact(&'a str),
    /// JSON equal to this value (key order free), as `application/json`.
    Json(Value),
}

/// `r` is `method path`, with `key` as its `apikey` query parameter (`None`:
/// no key) and `body`.
#[track_caller]
pub fn assert_request(r: &Recorded, method: &str, path: &str, key: Option<&str>, body: Body<'_>) {
    assert_eq!(r.method, method, "method of {r:?}");
    assert_eq!(r.path, path, "path of {r:?}");
    assert_eq!(r.query_param("apikey"), key, "apikey of {r:?}");
    match body {
        Body::Empty => {
            assert!(r.body.is_empty(), "unexpected body {:?}", r.body_text());
            assert_eq!(
                r.header("content-type"),
                None,
                "Content-Type without a body"
            );
        }
        Body::Exact(text) => {
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.body_text(), text, "body");
        }
        Body::Json(v) => {
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.json(), Some(v), "body {:?}", r.body_text());
        }
    }
}

/// The one request the simulator received since the recording was cleared
/// (clears it again).
#[track_caller]
pub fn only_request(sim: &Sim) -> Recorded {
    let mut reqs = sim.requests();
    assert_eq!(reqs.len(), 1, "expected exactly one request: {reqs:#?}");
    sim.clear_requests();
    reqs.remove(0)
}

/// The one request received since the recording was cleared is `method
/// path` with `key` and `body` (see [`assert_request`]); clears the
/// recording.
#[track_caller]
pub fn assert_sent(sim: &Sim, method: &str, path: &str, key: Option<&str>, body: Body<'_>) {
    assert_request(&only_request(sim), method, path, key, body);
}

/// The simulator received no request since the recording was cleared.
#[track_caller]
pub fn assert_nothing_sent(sim: &Sim) {
    let reqs = sim.requests();
    assert!(reqs.is_empty(), "nothing should have been sent: {reqs:#?}");
}
