//! Configuration: the supervisor's address and API key, from the caller or
//! from the environment balenaOS gives a container.

use crate::error::{Error, ErrorKind, Result};

/// Default deadline of one whole request, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u32 = 30_000;

/// The label that makes balenaOS inject the supervisor variables.
pub const SUPERVISOR_API_LABEL: &str = "io.balena.features.supervisor-api";

/// A validated `http://host:port` supervisor address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    host: String,
    port: u16,
    base: String,
}

impl Address {
    /// Parse and validate `http://host[:port][/]`. Only `http://` is
    /// supported; the host may be a name, an IPv4 address or a bracketed IPv6
    /// address; the port defaults to 80. Anything else (another scheme, a
    /// path, a query, user info, control characters, white space) is rejected.
    pub fn parse(text: &str) -> Result<Address> {
        let bad = |why: &str| Error::invalid(format!("invalid supervisor address {text:?}: {why}"));
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("it contains white space or control characters"));
        }
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "scheme {scheme:?} is not supported, only http://"
                )))
            }
            None => return Err(bad("it must start with http://")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(bad("it must not contain a path, query or fragment"));
        }
        if authority.contains('@') {
            return Err(bad("user information is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (inner, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unterminated IPv6 address"))?;
            if inner.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("invalid IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("junk after IPv6 address"))?,
                ),
            };
            (format!("[{inner}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        if !host.starts_with('[')
            && !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        {
            return Err(bad("the host has characters a host name cannot have"));
        }
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(bad("the port must be a number from 1 to 65535")),
            },
        };
        let base = format!("http://{host}:{port}");
        Ok(Address { host, port, base })
    }

    /// The host (IPv6 addresses keep their brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://host:port`, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }
}

/// A timeout in milliseconds as a duration; 0 is refused.
pub fn check_timeout_ms(ms: u32) -> Result<std::time::Duration> {
    if ms == 0 {
        return Err(Error::invalid("a timeout of 0 ms is not allowed"));
    }
    Ok(std::time::Duration::from_millis(u64::from(ms)))
}

/// Longest API key accepted, in bytes. Supervisors issue 32 characters; a
/// key must fit, percent-encoded, in the request line of every call, and one
/// over this limit could never be sent.
pub const MAX_API_KEY_BYTES: usize = 1024;

/// Check an API key: non-empty, at most [`MAX_API_KEY_BYTES`], no white space
/// or control characters.
pub fn validate_api_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("the API key is empty"));
    }
    if key.len() > MAX_API_KEY_BYTES {
        return Err(Error::invalid(format!(
            "the API key is {} bytes long; at most {MAX_API_KEY_BYTES} can be sent",
            key.len()
        )));
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::invalid(
            "the API key contains white space or control characters",
        ));
    }
    Ok(())
}

/// Where the supervisor is and the key to use.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The supervisor's address.
    pub address: Address,
    /// The API key.
    pub api_key: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("address", &self.address.base)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn not_configured(what: &str) -> Error {
    Error::new(
        ErrorKind::NotConfigured,
        format!(
            "no supervisor {what} known: call bd_init() or set {} (balenaOS sets them in a \
             container whose service has the label {SUPERVISOR_API_LABEL}: '1')",
            match what {
                "API key" => "BALENA_SUPERVISOR_API_KEY (or RESIN_SUPERVISOR_API_KEY)",
                _ =>
                    "BALENA_SUPERVISOR_ADDRESS (or RESIN_SUPERVISOR_ADDRESS, or \
                      BALENA_SUPERVISOR_HOST and BALENA_SUPERVISOR_PORT)",
            },
        ),
    )
}

/// Keys this process replaced with `bd_regenerate_api_key`: old → new. The
/// container's environment keeps the old key until the supervisor recreates
/// the container, so a key read from it later is replaced by the newest one.
static REPLACED: crate::sync::ForkSafeMutex<Vec<(String, String)>> =
    crate::sync::ForkSafeMutex::new(Vec::new());

/// Note that `old` was replaced by `new` (the supervisor rejects `old` now).
pub fn note_replaced_key(old: &str, new: &str) {
    if old != new {
        REPLACED.lock().push((old.to_string(), new.to_string()));
    }
}

/// `key`, or the newest key that replaced it in this process.
pub fn newest_key(mut key: String) -> String {
    let replaced = REPLACED.lock();
    // Each replacement is followed once at most: the chain cannot loop.
    for _ in 0..replaced.len() {
        match replaced.iter().rev().find(|(old, _)| *old == key) {
            Some((_, new)) => key = new.clone(),
            None => break,
        }
    }
    key
}

/// The supervisor address from the environment: `BALENA_SUPERVISOR_ADDRESS`,
/// else `RESIN_SUPERVISOR_ADDRESS`, else `http://HOST:PORT` from the
/// `BALENA_SUPERVISOR_HOST`/`_PORT` pair, else the `RESIN_` pair.
pub fn address_from_env() -> Result<Address> {
    let from_env = |name: &str, value: String| {
        Address::parse(&value).map_err(|e| {
            Error::new(
                ErrorKind::NotConfigured,
                format!("{name} is set but unusable: {}", e.message()),
            )
        })
    };
    for name in ["BALENA_SUPERVISOR_ADDRESS", "RESIN_SUPERVISOR_ADDRESS"] {
        if let Some(v) = env_nonempty(name) {
            return from_env(name, v);
        }
    }
    for prefix in ["BALENA", "RESIN"] {
        let host = env_nonempty(&format!("{prefix}_SUPERVISOR_HOST"));
        let port = env_nonempty(&format!("{prefix}_SUPERVISOR_PORT"));
        if let (Some(h), Some(p)) = (host, port) {
            return from_env(
                &format!("{prefix}_SUPERVISOR_HOST/{prefix}_SUPERVISOR_PORT"),
                format!("http://{h}:{p}"),
            );
        }
    }
    Err(not_configured("address"))
}

/// The API key from `BALENA_SUPERVISOR_API_KEY`, else `RESIN_SUPERVISOR_API_KEY`.
pub fn api_key_from_env() -> Result<String> {
    for name in ["BALENA_SUPERVISOR_API_KEY", "RESIN_SUPERVISOR_API_KEY"] {
        if let Some(v) = env_nonempty(name) {
            return validate_api_key(&v).map(|_| v).map_err(|e| {
                Error::new(
                    ErrorKind::NotConfigured,
                    format!("{name} is set but unusable: {}", e.message()),
                )
            });
        }
    }
    Err(not_configured("API key"))
}

/// This app's id from `BALENA_APP_ID`, else `RESIN_APP_ID`.
pub fn app_id_from_env() -> Result<u32> {
    for name in ["BALENA_APP_ID", "RESIN_APP_ID"] {
        if let Some(v) = env_nonempty(name) {
            return match v.trim().parse::<u32>() {
                Ok(id) if id > 0 => Ok(id),
                _ => Err(Error::new(
                    ErrorKind::NotConfigured,
                    format!("{name}={v:?} is not an app id (a positive number)"),
                )),
            };
        }
    }
    Err(Error::new(
        ErrorKind::NotConfigured,
        "app id 0 (BD_CURRENT_APP) means this app, but neither BALENA_APP_ID nor RESIN_APP_ID \
         is set",
    ))
}

impl Config {
    /// A configuration from explicit values; `None` takes that value from the
    /// environment. Explicit values that are malformed give
    /// [`ErrorKind::InvalidArgument`]; values missing from the environment
    /// give [`ErrorKind::NotConfigured`].
    pub fn new(address: Option<&str>, api_key: Option<&str>) -> Result<Config> {
        let address = match address {
            Some(a) => Address::parse(a)?,
            None => address_from_env()?,
        };
        let api_key = match api_key {
            Some(k) => {
                validate_api_key(k)?;
                k.to_string()
            }
            None => newest_key(api_key_from_env()?),
        };
        Ok(Config { address, api_key })
    }

    /// A configuration read entirely from the environment.
    pub fn from_env() -> Result<Config> {
        Config::new(None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = Address::parse("http://127.0.0.1:48484/").unwrap();
        assert_eq!(a.base(), "http://127.0.0.1:48484");
        assert_eq!(Address::parse("http://dev").unwrap().port(), 80);
        assert_eq!(
            Address::parse("HTTP://[::1]:5").unwrap().base(),
            "http://[::1]:5"
        );
        for bad in [
            "",
            "127.0.0.1:48484",
            "https://x:1",
            "http://",
            "http://:80",
            "http://x:0",
            "http://x:70000",
            "http://x:+1",
            "http://x:1/v1",
            "http://x:1?a",
            "http://u@x:1",
            "http://x\r\n:1",
            "http://x y:1",
            "http://[zz]:1",
        ] {
            assert_eq!(
                Address::parse(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keys() {
        assert!(validate_api_key("abc_123").is_ok());
        assert!(validate_api_key("").is_err());
        assert!(validate_api_key("a\nb").is_err());
        assert!(validate_api_key("a b").is_err());
        assert!(validate_api_key(&"k".repeat(MAX_API_KEY_BYTES)).is_ok());
        let long = validate_api_key(&"k".repeat(MAX_API_KEY_BYTES + 1)).unwrap_err();
        assert_eq!(long.kind(), ErrorKind::InvalidArgument);
        assert!(long.message().contains("1025 bytes"), "{long:?}");
    }
}
