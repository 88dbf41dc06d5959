//! The process-wide default client that the C API uses: created from the
//! environment on first use, replaced by `init`, dropped by `cleanup`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use crate::config::{check_timeout_ms, Config, DEFAULT_TIMEOUT_MS};
use crate::error::Result;
use crate::sync::ForkSafeRwLock;

static DEFAULT: ForkSafeRwLock<Option<Arc<Client>>> = ForkSafeRwLock::new(None);
/// The deadline of one C call, in ms: the one place the timeout is held
/// (each call takes it at its start, see `client::begin_call`).
static TIMEOUT_MS: AtomicU32 = AtomicU32::new(DEFAULT_TIMEOUT_MS);

fn install(config: Config) -> Arc<Client> {
    Arc::new(Client::new(config))
}

/// The default client, created from the environment if there is none yet.
pub fn client() -> Result<Arc<Client>> {
    if let Some(c) = DEFAULT.read().as_ref() {
        return Ok(c.clone());
    }
    let mut slot = DEFAULT.write();
    if let Some(c) = slot.as_ref() {
        return Ok(c.clone());
    }
    let client = install(Config::from_env()?);
    *slot = Some(client.clone());
    Ok(client)
}

/// Configure the default client; `None` takes that value from the
/// environment. On error the previous configuration stays.
pub fn init(address: Option<&str>, api_key: Option<&str>) -> Result<()> {
    let config = Config::new(address, api_key)?;
    let mut slot = DEFAULT.write();
    *slot = Some(install(config));
    Ok(())
}

/// Re-read the environment now.
pub fn init_from_env() -> Result<()> {
    init(None, None)
}

/// Deadline of one whole call, for calls that start from now on, also after
/// a later `init`, until `cleanup`.
pub fn set_timeout_ms(ms: u32) -> Result<()> {
    check_timeout_ms(ms)?;
    TIMEOUT_MS.store(ms, Ordering::Relaxed);
    Ok(())
}

/// The deadline of one call.
pub fn timeout() -> Duration {
    Duration::from_millis(u64::from(TIMEOUT_MS.load(Ordering::Relaxed)))
}

/// Drop the default client (its idle connections close once no call still
/// uses it) and restore the default timeout; the next call starts from the
/// environment again.
pub fn cleanup() {
    let mut slot = DEFAULT.write();
    TIMEOUT_MS.store(DEFAULT_TIMEOUT_MS, Ordering::Relaxed);
    crate::client::set_stream_timeout_ms(0);
    *slot = None;
}
