//! A connection's buffers, sized for supervisor answers: a few KiB each
//! (ureq's own are 128 KiB each), the input growing only while a large body
//! keeps filling it, and back to its first size when the connection goes
//! idle. Every allocation is fallible: with no memory left a call fails with
//! a message saying so instead of aborting the process.

use std::cell::Cell;
use std::io;

use ureq::unversioned::transport::Buffers;

/// First size of the input buffer: a supervisor answer's head and most
/// bodies (`/v1/device` is about 500 bytes) fit.
pub const INPUT_START: usize = 4 * 1024;
/// The input buffer grows, while reads keep filling it, up to this.
pub const INPUT_MAX: usize = 64 * 1024;
/// First size of the output buffer. It must hold the longest line of a
/// request's head; a longer request line (a long service name) makes it
/// grow to fit (see [`request_line_hint`]).
pub const OUTPUT_START: usize = 4 * 1024;
/// Free input space below which the buffer is compacted or grown.
const MIN_FREE: usize = 1024;

thread_local! {
    /// Length of the request line about to be written on this thread.
    static REQUEST_LINE: Cell<usize> = const { Cell::new(0) };
}

/// The request about to be sent on this thread has a request line of `len`
/// bytes: the output buffer is made that large (plus room for the method and
/// version) before the head is written.
pub fn request_line_hint(len: usize) {
    let _ = REQUEST_LINE.try_with(|c| c.set(len));
}

fn no_memory(what: &str, bytes: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!("not enough memory for {bytes} bytes of {what}"),
    )
}

/// `v` grown to `len` zeroed bytes, if memory allows.
fn try_grow(v: &mut Vec<u8>, len: usize) -> bool {
    if v.len() >= len {
        return true;
    }
    if v.try_reserve_exact(len - v.len()).is_err() {
        return false;
    }
    v.resize(len, 0);
    true
}

/// Input and output buffers of one connection.
#[derive(Debug)]
pub struct ConnBuffers {
    input: Vec<u8>,
    /// `input[consumed..filled]` is received and not yet used.
    consumed: usize,
    filled: usize,
    /// The last read filled all the free space: the next one may want more.
    read_was_full: bool,
    /// Input was consumed since the last read (ureq's `can_use_input`).
    progress: bool,
    output: Vec<u8>,
}

impl ConnBuffers {
    /// Buffers of the first sizes, or the error saying there was no memory.
    pub fn new() -> io::Result<ConnBuffers> {
        let mut input = Vec::new();
        let mut output = Vec::new();
        if !try_grow(&mut input, INPUT_START) {
            return Err(no_memory("a connection's input buffer", INPUT_START));
        }
        if !try_grow(&mut output, OUTPUT_START) {
            return Err(no_memory("a connection's output buffer", OUTPUT_START));
        }
        Ok(ConnBuffers {
            input,
            consumed: 0,
            filled: 0,
            read_was_full: false,
            progress: false,
            output,
        })
    }

    /// Bytes allocated for this connection's buffers now.
    #[cfg(test)]
    pub fn allocated(&self) -> usize {
        self.input.capacity() + self.output.capacity()
    }

    /// Make room to read into: compact, then grow if a read filled the buffer
    /// or too little is free. `Err` only when nothing at all is free and no
    /// memory is left to grow.
    pub fn make_room(&mut self) -> io::Result<()> {
        if self.consumed > 0 && (self.input.len() - self.filled < MIN_FREE || self.read_was_full) {
            self.input.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
        let free = self.input.len() - self.filled;
        if (free < MIN_FREE || self.read_was_full) && self.input.len() < INPUT_MAX {
            let want = (self.input.len() * 2).min(INPUT_MAX);
            // Failing to grow is fine while some space is free.
            if !try_grow(&mut self.input, want) && free == 0 {
                return Err(no_memory("a connection's input buffer", want));
            }
        }
        if self.input.len() == self.filled {
            return Err(if self.input.len() >= INPUT_MAX {
                io::Error::other(format!(
                    "more than {INPUT_MAX} bytes of the answer arrived before any was used"
                ))
            } else {
                no_memory("a connection's input buffer", self.input.len() + 1)
            });
        }
        Ok(())
    }

    /// A read of `n` bytes into [`Buffers::input_append_buf`] happened.
    pub fn read_done(&mut self, n: usize, offered: usize) {
        self.read_was_full = n > 0 && n == offered;
    }

    /// The connection goes idle with nothing unread: back to the first sizes.
    pub fn shrink(&mut self) {
        if self.consumed == self.filled {
            self.consumed = 0;
            self.filled = 0;
            self.read_was_full = false;
            if self.input.len() > INPUT_START {
                self.input.truncate(INPUT_START);
                self.input.shrink_to_fit();
            }
            if self.output.len() > OUTPUT_START {
                self.output.truncate(OUTPUT_START);
                self.output.shrink_to_fit();
            }
        }
    }
}

impl Buffers for ConnBuffers {
    fn output(&mut self) -> &mut [u8] {
        // "GET " ... " HTTP/1.1\r\n" around the request target.
        let want = REQUEST_LINE.try_with(Cell::get).unwrap_or(0) + 32;
        if want > self.output.len() {
            // Without the memory the head does not fit, and ureq reports that
            // the request is too large to write.
            try_grow(&mut self.output, want);
        }
        &mut self.output
    }

    fn input(&self) -> &[u8] {
        &self.input[self.consumed..self.filled]
    }

    fn input_append_buf(&mut self) -> &mut [u8] {
        &mut self.input[self.filled..]
    }

    fn input_appended(&mut self, amount: usize) {
        self.filled = (self.filled + amount).min(self.input.len());
    }

    fn input_consume(&mut self, amount: usize) {
        self.progress = amount > 0;
        self.consumed = (self.consumed + amount).min(self.filled);
        if self.consumed == self.filled {
            self.consumed = 0;
            self.filled = 0;
        }
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        // `tmp` is used for chunked request bodies only, which this library
        // never sends; the free input space is enough.
        (&mut self.input[self.filled..], &mut self.output)
    }

    fn can_use_input(&self) -> bool {
        self.consumed < self.filled && self.progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_small_grows_while_reads_fill_it_and_shrinks_when_idle() {
        let mut b = ConnBuffers::new().unwrap();
        assert_eq!(b.allocated(), INPUT_START + OUTPUT_START);
        // A large body: every read fills the free space.
        for _ in 0..8 {
            b.make_room().unwrap();
            let offered = b.input_append_buf().len();
            b.input_appended(offered);
            b.read_done(offered, offered);
            let n = b.input().len();
            b.input_consume(n);
        }
        assert_eq!(b.input.len(), INPUT_MAX);
        b.shrink();
        assert_eq!(b.allocated(), INPUT_START + OUTPUT_START);
    }

    #[test]
    fn unread_input_is_kept_across_compaction() {
        let mut b = ConnBuffers::new().unwrap();
        b.make_room().unwrap();
        let free = b.input_append_buf();
        free[..6].copy_from_slice(b"abcdef");
        b.input_appended(6);
        b.read_done(6, INPUT_START);
        b.input_consume(2);
        assert_eq!(b.input(), b"cdef");
        b.read_was_full = true;
        b.make_room().unwrap();
        assert_eq!(b.input(), b"cdef");
        // Idle with unread bytes: not shrunk, nothing lost.
        b.shrink();
        assert_eq!(b.input(), b"cdef");
    }

    #[test]
    fn the_output_fits_a_long_request_line() {
        let mut b = ConnBuffers::new().unwrap();
        request_line_hint(10_000);
        assert!(b.output().len() >= 10_032);
        request_line_hint(0);
        b.shrink();
        assert_eq!(b.output().len(), OUTPUT_START);
    }
}
