//! What one request sends and what its answer holds.

/// HTTP methods the supervisor API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PATCH
    Patch,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
        }
    }
}

/// One request to send.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// Method.
    pub method: Method,
    /// Path, with an already percent-encoded query if any (never the key).
    pub path: &'a str,
    /// Whether the API key is sent (`/ping` and `/v1/healthy` need none).
    pub with_key: bool,
    /// JSON body, sent with `Content-Type: application/json`.
    pub json: Option<&'a str>,
    /// An action (reboot, restart, stop, ...): the supervisor answers when
    /// it is done, so a timeout does not mean it did not happen.
    pub action: bool,
}

impl<'a> Request<'a> {
    /// A GET with the key.
    pub fn get(path: &'a str) -> Self {
        Request {
            method: Method::Get,
            path,
            with_key: true,
            json: None,
            action: false,
        }
    }

    /// A POST with the key and no body.
    pub fn post(path: &'a str) -> Self {
        Request {
            method: Method::Post,
            ..Request::get(path)
        }
    }

    /// A PATCH with the key and no body.
    pub fn patch(path: &'a str) -> Self {
        Request {
            method: Method::Patch,
            ..Request::get(path)
        }
    }

    /// The same request with a JSON body.
    pub fn json(self, body: &'a str) -> Self {
        Request {
            json: Some(body),
            ..self
        }
    }

    /// The same request, marked as an action (see [`Request::action`]).
    pub fn action(self) -> Self {
        Request {
            action: true,
            ..self
        }
    }

    /// Whether the body asks for `force` (a top-level `"force": true`).
    pub fn forced(&self) -> bool {
        self.json.is_some_and(|body| {
            matches!(
                serde_json::from_str::<serde_json::Value>(body),
                Ok(serde_json::Value::Object(map)) if map.get("force") == Some(&serde_json::Value::Bool(true))
            )
        })
    }

    /// The same request without the API key.
    pub fn without_key(self) -> Self {
        Request {
            with_key: false,
            ..self
        }
    }

    /// `METHOD /path`, how messages name the request.
    pub fn label(&self) -> String {
        format!("{} {}", self.method.as_str(), self.path)
    }
}

/// A response whose body was read whole (within [`MAX_BODY_BYTES`]).
#[derive(Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
    /// The `Location` header of a redirect (3xx), if any, for its message.
    pub location: Option<String>,
}

impl std::fmt::Debug for Response {
    /// Without the body: it may hold a key (`/v1/regenerate-api-key`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .field("location", &self.location)
            .finish()
    }
}

/// Percent-encode everything but RFC 3986's unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
