//! Where the client's address points, found once per client.
//!
//! ureq asks its resolver before every request, a pooled connection or not,
//! and its default resolver looks a host name up on a new thread each time a
//! request has a deadline (every request here has one). With a slow resolver
//! those threads pile up. Here an IP address is parsed once, and a host name
//! is looked up by at most one thread per client at a time: its answer is
//! kept for the client's later calls, and forgot when connecting to it fails
//! (the name may point elsewhere by then). A call that finds a lookup under
//! way waits for it, within its own deadline.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

use super::ResourceFailure;
use crate::config::Address;

/// Stack of a lookup thread: `getaddrinfo` with glibc's NSS modules needs
/// well under this.
const LOOKUP_STACK: usize = 256 * 1024;

/// Lookup threads started in this process (for tests and diagnostics).
static LOOKUPS: AtomicUsize = AtomicUsize::new(0);

/// How many name lookups this process has started.
#[doc(hidden)]
pub fn lookups_started() -> usize {
    LOOKUPS.load(Ordering::Relaxed)
}

type LookupFn = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

fn system_lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

#[derive(Default)]
struct State {
    /// The last answer, until a connect to it fails.
    addrs: Option<Vec<SocketAddr>>,
    /// A lookup thread is running.
    running: bool,
    /// How the last finished lookup failed, when it failed for want of a
    /// local resource (no free descriptor, no memory) rather than because
    /// the name does not resolve.
    failed: Option<String>,
    /// Lookups finished so far (a waiter knows when its lookup has ended).
    finished: u64,
}

/// The host name's answer, shared by the client's resolver and connector.
pub(super) struct Lookup {
    host: String,
    port: u16,
    /// The address itself, when it is an IP address.
    literal: Option<SocketAddr>,
    lookup: LookupFn,
    state: Mutex<State>,
    changed: Condvar,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup").field("host", &self.host).finish()
    }
}

impl Lookup {
    pub(super) fn new(address: &Address) -> Arc<Lookup> {
        Lookup::with(address.host(), address.port(), system_lookup)
    }

    fn with(host: &str, port: u16, lookup: LookupFn) -> Arc<Lookup> {
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>();
        Arc::new(Lookup {
            host: host.to_string(),
            port,
            literal: ip.ok().map(|ip| SocketAddr::new(ip, port)),
            lookup,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connecting to the last answer failed: look the name up again next
    /// time.
    pub(super) fn forget(&self) {
        if self.literal.is_none() {
            self.state().addrs = None;
        }
    }

    /// The addresses of the host, by `deadline` (`None`: no limit).
    pub(super) fn addrs(
        self: &Arc<Self>,
        deadline: Option<Instant>,
    ) -> Result<Vec<SocketAddr>, ureq::Error> {
        if let Some(addr) = self.literal {
            return Ok(vec![addr]);
        }
        let mut st = self.state();
        if let Some(addrs) = &st.addrs {
            return Ok(addrs.clone());
        }
        if !st.running {
            self.start(&mut st)?;
        }
        let waiting_for = st.finished + 1;
        loop {
            if st.finished >= waiting_for {
                return match (&st.addrs, &st.failed) {
                    (Some(addrs), _) => Ok(addrs.clone()),
                    (None, Some(why)) => Err(ureq::Error::Io(io::Error::other(ResourceFailure(
                        format!("looking up {}: {why}", self.host),
                    )))),
                    (None, None) => Err(ureq::Error::HostNotFound),
                };
            }
            st = match deadline {
                None => self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ureq::Error::Timeout(ureq::Timeout::Resolve));
                    }
                    self.changed
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    fn start(self: &Arc<Self>, st: &mut State) -> Result<(), ureq::Error> {
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("bd-lookup".into())
            .stack_size(LOOKUP_STACK)
            .spawn(move || {
                let answer = (me.lookup)(&me.host, me.port);
                let mut st = me.state();
                match answer {
                    Ok(addrs) if !addrs.is_empty() => {
                        st.addrs = Some(addrs);
                        st.failed = None;
                    }
                    Ok(_) => st.failed = None,
                    Err(e) => st.failed = super::local_resource(&e),
                }
                st.running = false;
                st.finished += 1;
                drop(st);
                me.changed.notify_all();
            });
        match spawned {
            Ok(_) => {
                LOOKUPS.fetch_add(1, Ordering::Relaxed);
                st.running = true;
                Ok(())
            }
            Err(e) => Err(ureq::Error::Io(io::Error::other(ResourceFailure(format!(
                "no thread could be started to look up {} ({e})",
                self.host
            ))))),
        }
    }
}

/// ureq's resolver for one client: the client's [`Lookup`].
#[derive(Debug)]
pub(super) struct AddressResolver(pub(super) Arc<Lookup>);

impl Resolver for AddressResolver {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let deadline = super::tcp::deadline(timeout)?;
        let found = self.0.addrs(deadline)?;
        let mut addrs = ResolvedSocketAddrs::from_fn(|_| found[0]);
        for addr in found.into_iter().take(16) {
            addrs.push(addr);
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    static FAST: AtomicUsize = AtomicUsize::new(0);
    fn fast(_: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        FAST.fetch_add(1, Ordering::SeqCst);
        Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
    }

    static SLOW: AtomicUsize = AtomicUsize::new(0);
    fn slow(_: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        SLOW.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(600));
        Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
    }

    fn failing(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
        Err(io::Error::other("Name or service not known"))
    }

    fn no_descriptor(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
        Err(io::Error::from_raw_os_error(libc::EMFILE))
    }

    #[test]
    fn a_lookup_without_a_free_descriptor_says_so() {
        let lookup = Lookup::with("device.local", 80, no_descriptor);
        let err = lookup.addrs(soon(2_000)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no free file descriptor"), "{msg}");
    }

    fn soon(ms: u64) -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(ms))
    }

    #[test]
    fn a_name_is_looked_up_once_until_connecting_to_it_fails() {
        let lookup = Lookup::with("device.local", 48484, fast);
        for _ in 0..50 {
            let addrs = lookup.addrs(soon(2_000)).unwrap();
            assert_eq!(addrs, vec![SocketAddr::from(([127, 0, 0, 1], 48484))]);
        }
        assert_eq!(FAST.load(Ordering::SeqCst), 1);
        lookup.forget();
        lookup.addrs(soon(2_000)).unwrap();
        assert_eq!(FAST.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_ip_address_needs_no_lookup() {
        let lookup = Lookup::with("[::1]", 80, failing);
        assert_eq!(
            lookup.addrs(None).unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
    }

    #[test]
    fn a_failed_lookup_is_host_not_found_and_is_not_kept() {
        let lookup = Lookup::with("nowhere.invalid", 80, failing);
        let err = lookup.addrs(soon(2_000)).unwrap_err();
        assert!(matches!(err, ureq::Error::HostNotFound), "{err:?}");
        let err = lookup.addrs(soon(2_000)).unwrap_err();
        assert!(matches!(err, ureq::Error::HostNotFound), "{err:?}");
    }

    #[test]
    fn a_slow_resolver_gets_one_thread_and_callers_keep_their_deadlines() {
        let lookup = Lookup::with("slow.local", 80, slow);
        let started = Instant::now();
        let callers: Vec<_> = (0..30)
            .map(|_| {
                let lookup = lookup.clone();
                std::thread::spawn(move || lookup.addrs(soon(100)))
            })
            .collect();
        for c in callers {
            let err = c.join().unwrap().unwrap_err();
            assert!(matches!(err, ureq::Error::Timeout(_)), "{err:?}");
        }
        assert!(started.elapsed() < Duration::from_millis(550));
        assert_eq!(
            SLOW.load(Ordering::SeqCst),
            1,
            "more than one lookup thread"
        );
        // A caller with time enough gets the answer of the same lookup.
        assert!(lookup.addrs(soon(2_000)).is_ok());
        assert_eq!(SLOW.load(Ordering::SeqCst), 1);
    }
}
