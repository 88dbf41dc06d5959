//! The TCP transport under ureq: what ureq's own `TcpConnector` does, with
//! fewer system calls on the path every request takes. ureq sets a socket
//! timeout before each read and write whenever the time left has changed,
//! which with a deadline over the whole request is every time, and probes a
//! pooled connection by switching the socket to non-blocking mode and back
//! around a read. Here a socket timeout that is already close enough is kept,
//! and the probe is one non-blocking peek.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, ShutdownHandle, Transport,
};
use ureq::{Error, Timeout};

/// Opens plain TCP connections (no proxy, no TLS).
#[derive(Debug)]
pub(super) struct PlainTcp;

impl Connector for PlainTcp {
    type Out = TcpTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<TcpTransport>, Error> {
        let stream = connect(&details.addrs, deadline(details.timeout)?, details.timeout)?;
        if details.config.no_delay() {
            stream.set_nodelay(true)?;
        }
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
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
fn deadline(timeout: NextTimeout) -> Result<Option<Instant>, Error> {
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

/// A connected socket with ureq's buffers.
#[derive(Debug)]
pub(super) struct TcpTransport {
    /// Shared (weakly) with the shutdown handle.
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    /// The socket's receive and send timeouts as last set (`None`: none).
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// Used since the last probe (see `is_open`).
    used: bool,
}

impl TcpTransport {
    fn new(stream: TcpStream, buffers: LazyBuffers) -> TcpTransport {
        TcpTransport {
            stream: Arc::new(stream),
            buffers,
            read_timeout: None,
            write_timeout: None,
            used: false,
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
    let mut exact = false;
    loop {
        let want = match deadline {
            None => None,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(reason));
                }
                Some(left)
            }
        };
        let keep = match (want, *armed) {
            (None, None) => true,
            (Some(left), Some(now)) => !exact && now <= left && now >= left - left / 8,
            _ => false,
        };
        if !keep {
            let new = want.map(|left| if exact { left } else { left - left / 16 });
            set(stream, new)?;
            *armed = new;
        }
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
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
        self.used = true;
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
        self.used = true;
        let timeout = timeout.for_read();
        let deadline = deadline(timeout)?;
        let stream = &*self.stream;
        let input = self.buffers.input_append_buf();
        let got = io_until(
            stream,
            &mut self.read_timeout,
            TcpStream::set_read_timeout,
            deadline,
            timeout.reason,
            || (&*stream).read(input),
        )?;
        self.buffers.input_appended(got);
        Ok(got > 0)
    }

    /// Open when nothing is waiting to be read: bytes nobody asked for, the
    /// peer's close (end of stream) or an error all mean it is not reusable.
    ///
    /// ureq asks twice per request: when the connection goes back to the pool
    /// right after the answer, and when the pool hands it out again. Only the
    /// second probe looks: it sees everything the first would have seen, and
    /// whatever happened while the connection was idle; a connection that
    /// fails it is dropped and the request goes out on a new one.
    fn is_open(&mut self) -> bool {
        if std::mem::take(&mut self.used) {
            return true;
        }
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
            TcpTransport::new(client, LazyBuffers::new(1024, 1024)),
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
    fn only_the_probe_after_an_idle_time_looks() {
        let (mut t, mut server) = pair();
        server.write_all(b"x").unwrap();
        assert!(t.await_input(within(1000)).unwrap());
        t.buffers.input_consume(1);
        // Extra bytes after the answer: returning to the pool does not look,
        // handing it out again does.
        server.write_all(b"junk").unwrap();
        thread::sleep(Duration::from_millis(50));
        assert!(t.is_open());
        assert!(!t.is_open());
    }
}
