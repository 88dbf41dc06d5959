//! balenaOS update locks, both mechanisms at once: the lock file created with
//! `O_CREAT|O_EXCL` (the supervisor checks it before killing services) and an
//! exclusive `flock` held on it (host-OS update scripts check that).

use crate::error::{Error, ErrorKind, Result};
use crate::sync::{ForkSafeMutex, Guarded};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where balenaOS services keep their update lock.
pub const DEFAULT_LOCK_PATH: &str = "/tmp/balena/updates.lock";

struct Held {
    file: File,
    dev: u64,
    ino: u64,
    /// The process that took the lock. A child of `fork()` inherits the
    /// record (and a copy of the file descriptor) but not the lock.
    pid: u32,
}

impl Held {
    /// Whether `path` still names the file this process created.
    fn still_at(&self, path: &Path) -> bool {
        matches!(std::fs::symlink_metadata(path), Ok(m) if m.dev() == self.dev && m.ino() == self.ino)
    }
}

struct LockState {
    /// `None`: [`DEFAULT_LOCK_PATH`].
    path: Option<PathBuf>,
    held: Option<Held>,
}

impl LockState {
    fn path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LOCK_PATH))
    }

    /// The lock this process holds, if any. A held lock whose file is gone
    /// or replaced (a forced supervisor action deletes lock files) is forgot
    /// here, which closes its file and so releases its `flock`. In a child of
    /// `fork()` the parent's lock is forgot too, by closing only the child's
    /// copy of its descriptor: the parent's `flock` and file stay.
    fn held(&mut self) -> Option<&Held> {
        let path = self.path();
        let keep = match &self.held {
            Some(held) => held.pid == std::process::id() && held.still_at(&path),
            None => false,
        };
        if !keep {
            self.held = None;
        }
        self.held.as_ref()
    }

    fn holds(&mut self) -> bool {
        self.held().is_some()
    }
}

static STATE: ForkSafeMutex<LockState> = ForkSafeMutex::new(LockState {
    path: None,
    held: None,
});

fn state() -> Guarded<std::sync::MutexGuard<'static, LockState>> {
    STATE.lock()
}

fn io_error(what: &str, path: &Path, e: io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what} {}: {e}", path.display()))
}

/// The lock file's path in use now.
pub fn lock_path() -> PathBuf {
    state().path()
}

/// Use `path` for the lock file (`None`: the default). Refused with
/// [`ErrorKind::Locked`] while this process holds the lock (its file still
/// there), and with
/// [`ErrorKind::InvalidArgument`] for an empty or relative path.
pub fn set_lock_path(path: Option<&str>) -> Result<()> {
    let new = match path {
        None => None,
        Some("") => return Err(Error::invalid("the lock path is empty")),
        Some(p) if !p.starts_with('/') => {
            return Err(Error::invalid(format!(
                "the lock path {p:?} is not absolute"
            )))
        }
        Some(p) if p.ends_with('/') => {
            return Err(Error::invalid(format!(
                "the lock path {p:?} names a directory"
            )))
        }
        Some(p) => Some(PathBuf::from(p)),
    };
    let mut st = state();
    if st.holds() {
        return Err(Error::new(
            ErrorKind::Locked,
            format!(
                "this process holds the update lock {}: unlock before changing the path",
                st.path().display()
            ),
        ));
    }
    st.path = new;
    Ok(())
}

/// Take the update lock: create the file exclusively (parent directories as
/// needed) and hold an exclusive `flock` on it. A file already present (also
/// one this process holds) is [`ErrorKind::Locked`]. A lock this process held
/// whose file was deleted meanwhile (by a forced supervisor action) no longer
/// counts: the file is created anew.
pub fn lock_updates() -> Result<()> {
    let mut st = state();
    let path = st.path();
    if st.holds() {
        return Err(Error::new(
            ErrorKind::Locked,
            format!(
                "the update lock {} is already held by this process",
                path.display()
            ),
        ));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| match not_a_directory(parent) {
            Some(file) => Error::new(
                ErrorKind::Io,
                format!(
                    "cannot create the directory of the update lock {}: {} is not a directory \
                     (ENOTDIR)",
                    path.display(),
                    file.display()
                ),
            ),
            None => io_error("cannot create the directory of", &path, e),
        })?;
    }
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid("the lock path contains a NUL byte"))?;
    // SAFETY: cpath is a valid NUL-terminated string; open returns a new fd or -1.
    let fd = unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        return Err(if e.kind() == io::ErrorKind::AlreadyExists && is_dir {
            Error::new(
                ErrorKind::Io,
                format!(
                    "the update lock path {} is a directory, not a lock file: choose another \
                     path with bd_set_update_lock_path",
                    path.display()
                ),
            )
        } else if e.kind() == io::ErrorKind::AlreadyExists {
            Error::new(
                ErrorKind::Locked,
                format!(
                    "the update lock {} already exists: another process (or the supervisor) \
                     holds it",
                    path.display()
                ),
            )
        } else {
            io_error("cannot create the update lock", &path, e)
        });
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: valid fd.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(&path);
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            Error::new(
                ErrorKind::Locked,
                format!(
                    "the update lock {} is flocked by another process",
                    path.display()
                ),
            )
        } else {
            io_error("cannot flock the update lock", &path, e)
        });
    }
    let meta = match file.metadata() {
        Ok(meta) => meta,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(io_error("cannot stat the update lock", &path, e));
        }
    };
    st.held = Some(Held {
        dev: meta.dev(),
        ino: meta.ino(),
        file,
        pid: std::process::id(),
    });
    Ok(())
}

/// The first existing component of `dir` (or `dir` itself) that is not a
/// directory, if any.
fn not_a_directory(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .filter_map(|p| std::fs::metadata(p).ok().map(|m| (p, m)))
        .find(|(_, m)| !m.is_dir())
        .map(|(p, _)| p.to_path_buf())
}

/// Release the update lock: remove the file if the path still names the file
/// this process created (a forced supervisor action may have deleted it, and a
/// later file there belongs to someone else), then drop the `flock`. Not held
/// by this process (also: held by the parent of a forked child): nothing to
/// do, Ok.
pub fn unlock_updates() -> Result<()> {
    let mut st = state();
    let path = st.path();
    if !st.holds() {
        return Ok(());
    }
    let Some(held) = st.held.take() else {
        return Ok(());
    };
    if held.still_at(&path) {
        if let Err(e) = std::fs::remove_file(&path) {
            let err = io_error("cannot remove the update lock", &path, e);
            // The file stays, so the lock stays held, flock included.
            st.held = Some(held);
            return Err(err);
        }
    }
    drop(held.file); // closes the fd, which releases the flock
    Ok(())
}

/// Whether the lock file exists now (whoever made it).
pub fn updates_locked() -> Result<bool> {
    let path = lock_path();
    match std::fs::symlink_metadata(&path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("cannot check the update lock", &path, e)),
    }
}
