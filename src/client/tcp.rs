//! The TCP transport under ureq: what ureq's own `TcpConnector` does, with
//! what this library needs on top:
//! - every write is bounded (ureq's connector leaves a socket write that
//!   cannot proceed without a timeout when a request has none: a stream whose
//!   request cannot be sent would hang; `faults::stream_request_that_cannot_
//!   be_sent_times_out` fails without this);
//! - every connect, write and read also keeps the deadline of the call
//!   (`client::io_deadline`), which counts from the start of the C call;
//! - small buffers that grow only for large bodies, allocated fallibly
//!   (`buffers.rs`);
//! - a connection closed by the process that opened it is shut down first,
//!   so the server sees it end even when a forked child still holds a copy
//!   of the socket (a child's copies are only closed: its parent's
//!   connections stay intact);
//! - fewer system calls: a socket timeout that is already close enough is
//!   kept instead of being set before every read and write, and the probe of
//!   a pooled connection is one non-blocking peek.
//!
//! It implements ureq's `unversioned` transport traits, which ureq may change
//! in a minor release (hence `~3.5.2` in Cargo.toml): an upgrade that changes
//! `Transport`, `Buffers`, `Connector` or `NextTimeout` breaks the build here,
//! not the behaviour; `cargo test --lib client::tcp`, `tests/faults.rs` and
//! `tests/fork.rs` show the behaviour. `is_open` probes the socket every time
//! it is asked, so nothing depends on when ureq's pool asks.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, NextTimeout, ShutdownHandle, Transport,
};
use ureq::{Error, Timeout};

use super::buffers::ConnBuffers;
use super::resolve::Lookup;

/// Opens plain TCP connections (no proxy, no TLS) to the client's address;
/// a failure to connect makes the address be looked up again next time.
#[derive(Debug)]
pub(super) struct PlainTcp(pub(super) Arc<Lookup>);

impl Connector for PlainTcp {
    type Out = TcpTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<TcpTransport>, Error> {
        let buffers = ConnBuffers::new()?;
        let stream = connect(&details.addrs, deadline(details.timeout)?, details.timeout)
            .inspect_err(|_| self.0.forget())?;
        if details.config.no_delay() {
            stream.set_nodelay(true)?;
        }
        let transport = TcpTransport::new(stream, buffers);
        // Lets `Agent::shutdown` interrupt a call blocked on this socket.
        let handle = Arc::downgrade(&transport.stream) as Weak<dyn ShutdownHandle>;
        (details.register_shutdown)(handle)?;
        Ok(Some(transport))
    }
}

/// The first address that accepts. Each gets an equal share of the time left
/// for it and the ones after it (at least 10 ms); ureq shares the time the same
/// way, in halving shares.
fn connect(
    addrs: &[SocketAddr],
    deadline: Option<Instant>,
    timeout: NextTimeout,
) -> Result<TcpStream, Error> {
    let mut last = None;
    for (i, addr) in addrs.iter().enumerate() {
        let attempt = match deadline {
            None => TcpStream::connect(addr),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(timeout.reason));
                }
                let share = (left / (addrs.len() - i) as u32).max(Duration::from_millis(10));
                TcpStream::connect_timeout(addr, share.min(left))
            }
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) if is_timeout(&e) => last = Some(Error::Timeout(Timeout::Connect)),
            // These concern this address only: the next one may still work.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::HostUnreachable
                        | io::ErrorKind::NetworkUnreachable
                        | io::ErrorKind::NetworkDown
                        | io::ErrorKind::AddrNotAvailable
                ) =>
            {
                last = Some(Error::Io(e))
            }
            Err(e) => return Err(Error::Io(e)),
        }
    }
    Err(last.unwrap_or_else(|| Error::Io(io::ErrorKind::ConnectionRefused.into())))
}

/// When the step that `timeout` bounds must be done; `None` for never. The
/// request's own deadline on this thread (see `client::io_deadline`) is
/// kept too, whichever comes first.
pub(super) fn deadline(timeout: NextTimeout) -> Result<Option<Instant>, Error> {
    let ureqs = if timeout.after.is_not_happening() {
        None
    } else if timeout.after.is_zero() {
        return Err(Error::Timeout(timeout.reason));
    } else {
        Some(Instant::now() + *timeout.after)
    };
    let at = match (ureqs, super::io_deadline()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match at {
        Some(at) if at <= Instant::now() => Err(Error::Timeout(timeout.reason)),
        at => Ok(at),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A connected socket with its buffers.
#[derive(Debug)]
pub(super) struct TcpTransport {
    /// Shared (weakly) with the shutdown handle.
    stream: Arc<TcpStream>,
    buffers: ConnBuffers,
    /// The socket's receive and send timeouts as last set (`None`: none).
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// The process that opened the connection.
    pid: u32,
}

impl TcpTransport {
    fn new(stream: TcpStream, buffers: ConnBuffers) -> TcpTransport {
        TcpTransport {
            stream: Arc::new(stream),
            buffers,
            read_timeout: None,
            write_timeout: None,
            pid: std::process::id(),
        }
    }
}

impl Drop for TcpTransport {
    /// In the process that opened it, end the connection for the server
    /// too (a forked child may hold a copy of the socket, which would keep it
    /// open). In a forked child, only close this copy: `shutdown()` would end
    /// the parent's connection.
    fn drop(&mut self) {
        if self.pid == std::process::id() {
            // SAFETY: a valid socket; failure (already shut down) is harmless.
            unsafe { libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

/// Runs `op`, one read or one write on `stream`, so that it returns by
/// `deadline`, and maps a timeout to `Error::Timeout(reason)`. `armed` is the
/// socket's timeout for that direction, set with `set`.
///
/// The socket's timeout is kept when it is at most the time left and at
/// least 7/8 of it, and else set to 15/16 of it: a request's time left
/// shrinks by microseconds from one to the next, so the timeout is set once
/// rather than on every request. When it runs out before the deadline, `op`
/// runs again with the exact time left.
fn io_until<T>(
    stream: &TcpStream,
    armed: &mut Option<Duration>,
    set: fn(&TcpStream, Option<Duration>) -> io::Result<()>,
    deadline: Option<Instant>,
    reason: Timeout,
    mut op: impl FnMut() -> io::Result<T>,
) -> Result<T, Error> {
    // In a log stream, waits are cut into slices of STREAM_POLL, after each
    // of which the stream looks whether `bd_stop_streams` was called.
    let stream_start = super::stream_poll();
    let mut exact = false;
    loop {
        if let Some(start) = stream_start {
            if super::stopped_since(start) {
                return Err(Error::Io(io::Error::other(super::StreamStopped)));
            }
        }
        let left = match deadline {
            None => None,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(reason));
                }
                Some(left)
            }
        };
        let (want, keep) = match (left, stream_start) {
            (Some(left), Some(_)) if left <= super::STREAM_POLL => (Some(left), false),
            (_, Some(_)) => (Some(super::STREAM_POLL), *armed == Some(super::STREAM_POLL)),
            (None, None) => (None, armed.is_none()),
            (Some(left), None) => {
                let keep =
                    matches!(*armed, Some(now) if !exact && now <= left && now >= left - left / 8);
                (Some(if exact { left } else { left - left / 16 }), keep)
            }
        };
        if !keep {
            set(stream, want)?;
            *armed = want;
        }
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A slice of a stream's wait ended: look again.
            Err(e) if stream_start.is_some() && is_timeout(&e) => {}
            Err(e) if deadline.is_some() && is_timeout(&e) => exact = true,
            result => return result.map_err(Error::Io),
        }
    }
}

impl Transport for TcpTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        let deadline = deadline(timeout)?;
        let stream = &*self.stream;
        let mut out = &self.buffers.output()[..amount];
        while !out.is_empty() {
            let sent = io_until(
                stream,
                &mut self.write_timeout,
                TcpStream::set_write_timeout,
                deadline,
                timeout.reason,
                || (&*stream).write(out),
            )?;
            if sent == 0 {
                return Err(Error::Io(io::ErrorKind::WriteZero.into()));
            }
            out = &out[sent..];
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let timeout = timeout.for_read();
        let deadline = deadline(timeout)?;
        self.buffers.make_room()?;
        let stream = &*self.stream;
        let input = self.buffers.input_append_buf();
        let offered = input.len();
        let got = io_until(
            stream,
            &mut self.read_timeout,
            TcpStream::set_read_timeout,
            deadline,
            timeout.reason,
            || (&*stream).read(input),
        )?;
        self.buffers.input_appended(got);
        self.buffers.read_done(got, offered);
        Ok(got > 0)
    }

    /// Open when nothing is waiting to be read: bytes nobody asked for, the
    /// peer's close (end of stream) or an error all mean it is not reusable.
    /// ureq asks when the connection goes back to the pool and when the pool
    /// hands it out again; each time costs one non-blocking peek. Going back
    /// to the pool, the buffers return to their first sizes.
    fn is_open(&mut self) -> bool {
        self.buffers.shrink();
        let mut byte = 0u8;
        loop {
            // SAFETY: a valid socket and a writable 1-byte buffer.
            let n = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    (&mut byte as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return false;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => {}
                kind => return kind == io::ErrorKind::WouldBlock,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A transport connected to the returned server side.
    fn pair() -> (TcpTransport, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (
            TcpTransport::new(client, ConnBuffers::new().unwrap()),
            server,
        )
    }

    fn within(ms: u64) -> NextTimeout {
        NextTimeout {
            after: Duration::from_millis(ms).into(),
            ..NextTimeout::default()
        }
    }

    #[test]
    fn a_kept_shorter_socket_timeout_still_waits_until_the_deadline() {
        let (mut t, mut server) = pair();
        // At least 7/8 of the 1000 ms left, so it is kept; it runs out first.
        let short = Duration::from_millis(900);
        t.stream.set_read_timeout(Some(short)).unwrap();
        t.read_timeout = Some(short);
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(920));
            server.write_all(b"x").unwrap();
            server
        });
        let started = Instant::now();
        assert!(t.await_input(within(1000)).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(910));
        assert_eq!(t.buffers.input(), b"x");
        drop(writer.join());
    }

    #[test]
    fn no_byte_before_the_deadline_is_a_timeout_at_the_deadline() {
        let (mut t, _server) = pair();
        for ms in [150, 300] {
            let started = Instant::now();
            let err = t.await_input(within(ms)).unwrap_err();
            let took = started.elapsed();
            assert!(matches!(err, Error::Timeout(Timeout::Global)), "{err:?}");
            assert!(took >= Duration::from_millis(ms), "{took:?} < {ms} ms");
            assert!(took < Duration::from_millis(ms + 500), "{took:?}");
        }
    }

    #[test]
    fn the_socket_timeout_is_set_again_only_when_it_no_longer_fits() {
        let (mut t, mut server) = pair();
        let mut read = |ms: u64| {
            server.write_all(b"x").unwrap();
            assert!(t.await_input(within(ms)).unwrap());
            t.buffers.input_consume(1);
            t.read_timeout
        };
        // 15/16 of the time left, which is a little under 1000 ms by then.
        let first = read(1000).unwrap();
        let near = |d: Duration, ms: u64| {
            let full = Duration::from_millis(ms) * 15 / 16;
            d <= full && d > full - Duration::from_millis(50)
        };
        assert!(near(first, 1000), "{first:?}");
        assert_eq!(read(990), Some(first));
        assert_eq!(read(1060), Some(first));
        let reset = read(500).unwrap();
        assert!(near(reset, 500), "{reset:?}");
    }

    #[test]
    fn probe_sees_unasked_bytes_and_the_peer_closing() {
        let (mut idle, _server) = pair();
        assert!(idle.is_open());
        assert!(idle.is_open());

        let (mut garbage, mut server) = pair();
        server.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        thread::sleep(Duration::from_millis(50));
        assert!(!garbage.is_open());

        let (mut closed, server) = pair();
        drop(server);
        thread::sleep(Duration::from_millis(50));
        assert!(!closed.is_open());
    }

    #[test]
    fn bytes_after_the_answer_make_the_connection_unusable() {
        let (mut t, mut server) = pair();
        server.write_all(b"x").unwrap();
        assert!(t.await_input(within(1000)).unwrap());
        t.buffers.input_consume(1);
        // Extra bytes after the answer: the probe when it goes back to the
        // pool sees them.
        server.write_all(b"junk").unwrap();
        thread::sleep(Duration::from_millis(50));
        assert!(!t.is_open());
    }

    #[test]
    fn dropping_a_connection_ends_it_for_the_server_despite_another_copy() {
        let (t, mut server) = pair();
        // A second descriptor of the same socket, as a forked child has.
        let copy = t.stream.try_clone().unwrap();
        drop(t);
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).unwrap(), 0, "the server saw no end");
        drop(copy);
    }
}
