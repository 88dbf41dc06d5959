//! The one boundary every export goes through: panics caught, last error and
//! HTTP status kept per thread, C strings checked, text written snprintf-style.

use std::cell::{Cell, UnsafeCell};
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::api::{check_service_name, JsonObject};
use crate::client::{self, Client};
use crate::error::{Error, ErrorKind, Result};
use crate::global;

/// Room for the last error of a thread, its NUL included. Longer messages
/// are cut at a character boundary and end in `...`.
pub const LAST_ERROR_BYTES: usize = 1024;

thread_local! {
    /// This thread's last error, NUL-terminated. A fixed buffer, `const` and
    /// without a destructor: nothing to allocate, nothing to leak at thread
    /// exit, and usable from a thread's TLS destructors (a `pthread_key`
    /// destructor may be a thread's first and last caller).
    static LAST_ERROR: UnsafeCell<[u8; LAST_ERROR_BYTES]> =
        const { UnsafeCell::new([0; LAST_ERROR_BYTES]) };
    /// How many boundaries this thread is inside (a log callback may call the
    /// library again); while it is above 0 a panic prints nothing.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

fn set_last_error(message: &str) {
    let _ = LAST_ERROR.try_with(|cell| {
        // SAFETY: the buffer is this thread's own and no reference to it is
        // alive (only raw pointers are handed out, to C).
        let buf = unsafe { &mut *cell.get() };
        if message.is_empty() {
            buf[0] = 0;
            return;
        }
        let max = LAST_ERROR_BYTES - 1;
        let mut n = 0;
        let cut = message.len() > max;
        let room = if cut { max - 3 } else { max };
        let mut end = message.len().min(room);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        for &b in message.as_bytes()[..end].iter().filter(|&&b| b != 0) {
            buf[n] = b;
            n += 1;
        }
        if cut {
            buf[n..n + 3].copy_from_slice(b"...");
            n += 3;
        }
        buf[n] = 0;
    });
}

/// Pointer to this thread's last error text (valid until the next call that
/// sets or clears it on this thread).
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR
        .try_with(|cell| cell.get().cast::<c_char>().cast_const())
        .unwrap_or(c"".as_ptr())
}

static QUIET_PANICS: AtomicBool = AtomicBool::new(false);

/// Keep panics inside the boundary off the host's stderr: the boundary turns
/// them into `BD_ERR_INTERNAL` with the panic's text as the last error.
/// Panics elsewhere in the process go to the hook that was there before.
fn quiet_panics() {
    if QUIET_PANICS.swap(true, Ordering::SeqCst) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if DEPTH.try_with(Cell::get).unwrap_or(0) == 0 {
            previous(info);
        }
    }));
}

/// Being inside a boundary (see `DEPTH`).
struct Inside;

impl Inside {
    fn enter() -> Inside {
        let _ = DEPTH.try_with(|d| d.set(d.get() + 1));
        Inside
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let _ = DEPTH.try_with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Run the body of an export: clear this thread's last error and HTTP status,
/// run `body` catching any panic, and turn its result into the C return value
/// (`Ok(v)` → `v`; `Err(e)` → `e`'s status, with its message kept as the last
/// error; a panic → `BD_ERR_INTERNAL`).
///
/// Generic only in name: the work is done once, in [`run_boundary`], so each
/// export adds only its own body to the library, not a copy of the boundary.
pub fn boundary(body: impl FnOnce() -> Result<c_int>) -> c_int {
    let mut body = Some(body);
    run_boundary(&mut || body.take().map_or_else(|| Err(ran_twice()), |f| f()))
}

/// The boundary helpers run their body exactly once; this is what a second
/// run would return.
fn ran_twice() -> Error {
    Error::new(ErrorKind::Internal, "an export body ran twice")
}

#[inline(never)]
fn run_boundary(body: &mut dyn FnMut() -> Result<c_int>) -> c_int {
    quiet_panics();
    set_last_error("");
    client::reset_last_http_status();
    let inside = Inside::enter();
    let started = client::begin_call(crate::global::timeout());
    let result = catch_unwind(AssertUnwindSafe(body));
    client::end_call(started);
    drop(inside);
    // What a nested call (from a log callback) left is replaced by what
    // describes this call.
    match result {
        Ok(Ok(v)) => {
            set_last_error("");
            v
        }
        Ok(Err(e)) => {
            set_last_error(e.message());
            if e.http_status() != 0 {
                client::record_status(e.http_status());
            }
            super::status_of(e.kind())
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            set_last_error(&format!(
                "internal error in balena_device (please report it): {what}"
            ));
            super::status_of(ErrorKind::Internal)
        }
    }
}

/// The body of an export that returns a status (or a count or flag >= 0):
/// arguments are checked inside it, in the order of its lines, so "bad
/// input" wins over "not configured" when the argument checks come before
/// [`client`]. Same as [`boundary`].
pub fn status(body: impl FnOnce() -> Result<c_int>) -> c_int {
    boundary(body)
}

/// The default client (created from the environment on first use).
pub fn client() -> Result<std::sync::Arc<Client>> {
    global::client()
}

/// What an action that returns nothing gives C: `BD_OK`.
pub fn done(_: ()) -> c_int {
    0
}

/// The body of an export that writes text into `(buf, len)` snprintf-style
/// and returns its full length. The buffer is checked first, before the
/// body checks its own arguments and sends anything; when `len > 0` it holds
/// `""` until the text is written, so it is NUL-terminated after a failure
/// too.
///
/// # Safety
/// `buf` must be NULL or point to `len` writable bytes.
pub unsafe fn text_out(
    buf: *mut c_char,
    len: usize,
    body: impl FnOnce() -> Result<String>,
) -> c_int {
    let mut body = Some(body);
    // SAFETY: forwarded.
    unsafe {
        run_text(buf, len, &mut || {
            body.take().map_or_else(|| Err(ran_twice()), |f| f())
        })
    }
}

/// # Safety
/// As [`text_out`].
#[inline(never)]
unsafe fn run_text(
    buf: *mut c_char,
    len: usize,
    body: &mut dyn FnMut() -> Result<String>,
) -> c_int {
    boundary(|| {
        check_out_buf(buf, len)?;
        if len > 0 {
            // Always NUL-terminated, also when the call fails below.
            // SAFETY: non-NULL (checked above) with at least one writable byte.
            unsafe { *buf = 0 };
        }
        let text = body()?;
        // SAFETY: checked above; the caller promises `len` writable bytes.
        unsafe { write_text(buf, len, &text) }
    })
}

/// A text buffer argument: NULL is allowed only with `len == 0`.
pub fn check_out_buf(buf: *mut c_char, len: usize) -> Result<()> {
    if buf.is_null() && len > 0 {
        return Err(Error::invalid("buf is NULL but len is not 0"));
    }
    Ok(())
}

/// Write `text` snprintf-style: at most `len - 1` bytes and a NUL when
/// `len > 0`; returns the full length. Text with a NUL byte inside is
/// refused, since C would see it cut short.
///
/// # Safety
/// `buf` must be NULL with `len == 0`, or point to `len` writable bytes.
pub unsafe fn write_text(buf: *mut c_char, len: usize, text: &str) -> Result<c_int> {
    if text.as_bytes().contains(&0) {
        return Err(Error::new(
            ErrorKind::InvalidResponse,
            "the answer contains a NUL byte and cannot be returned as C text",
        ));
    }
    if len > 0 && !buf.is_null() {
        let n = text.len().min(len - 1);
        // SAFETY: n < len bytes fit; the regions cannot overlap (ours is a Rust String).
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    Ok(c_int::try_from(text.len()).unwrap_or(c_int::MAX))
}

/// A required C string argument as `&str`: NULL or non-UTF-8 is
/// `BD_ERR_INVALID_ARGUMENT`, naming `what`.
///
/// # Safety
/// `ptr` must be NULL or a NUL-terminated string that outlives `'a`.
pub unsafe fn arg_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's promise.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Error::invalid(format!("{what} is not valid UTF-8")))
}

/// A JSON object argument: as [`arg_str`], and a JSON object (checked here,
/// so that bad JSON is `BD_ERR_INVALID_ARGUMENT` before the client is looked
/// up).
///
/// # Safety
/// As [`arg_str`].
pub unsafe fn arg_json_object<'a>(ptr: *const c_char, what: &str) -> Result<JsonObject<'a>> {
    // SAFETY: forwarded.
    JsonObject::new(unsafe { arg_str(ptr, what) }?, what)
}

/// An optional C string argument (NULL → `None`), else as [`arg_str`].
///
/// # Safety
/// As [`arg_str`].
pub unsafe fn opt_str<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded.
        unsafe { arg_str(ptr, what) }.map(Some)
    }
}

/// A service name argument: as [`arg_str`], and not empty, without control
/// characters.
///
/// # Safety
/// As [`arg_str`].
pub unsafe fn arg_service<'a>(ptr: *const c_char) -> Result<&'a str> {
    // SAFETY: forwarded.
    let name = unsafe { arg_str(ptr, "service") }?;
    check_service_name(name, "service")?;
    Ok(name)
}

/// A bool for C's `int` results: 1 or 0.
pub fn flag(b: bool) -> c_int {
    c_int::from(b)
}
