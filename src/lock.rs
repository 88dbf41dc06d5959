//! balenaOS update locks, both mechanisms at once: the lock file created with
//! `O_CREAT|O_EXCL` (the supervisor checks it before killing services) and an
//! exclusive `flock` held on it (host-OS update scripts check that).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use once_cell::sync::Lazy;

use crate::error::{Error, ErrorKind, Result};

/// Where balenaOS services keep their update lock.
pub const DEFAULT_LOCK_PATH: &str = "/tmp/balena/updates.lock";

struct Held {
    file: File,
    dev: u64,
    ino: u64,
}

impl Held {
    /// Whether `path` still names the file this process created.
    fn still_at(&self, path: &Path) -> bool {
        matches!(std::fs::symlink_metadata(path), Ok(m) if m.dev() == self.dev && m.ino() == self.ino)
    }
}

struct LockState {
    path: PathBuf,
    held: Option<Held>,
}

impl LockState {
    /// Whether this process still holds the lock. A held lock whose file is
    /// gone or replaced (a forced supervisor action deletes lock files) is
    /// forgot here, which closes its file and so releases its `flock`.
    fn holds(&mut self) -> bool {
        match &self.held {
            Some(held) if held.still_at(&self.path) => true,
            Some(_) => {
                self.held = None;
                false
            }
            None => false,
        }
    }
}

static STATE: Lazy<Mutex<LockState>> = Lazy::new(|| {
    Mutex::new(LockState {
        path: PathBuf::from(DEFAULT_LOCK_PATH),
        held: None,
    })
});

fn state() -> std::sync::MutexGuard<'static, LockState> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_error(what: &str, path: &Path, e: io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what} {}: {e}", path.display()))
}

/// The lock file's path in use now.
pub fn lock_path() -> PathBuf {
    state().path.clone()
}

/// Use `path` for the lock file (`None`: the default). Refused with
/// [`ErrorKind::Locked`] while this process holds the lock (its file still
/// there), and with
/// [`ErrorKind::InvalidArgument`] for an empty or relative path.
pub fn set_lock_path(path: Option<&str>) -> Result<()> {
    let new = match path {
        None => PathBuf::from(DEFAULT_LOCK_PATH),
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
        Some(p) => PathBuf::from(p),
    };
    let mut st = state();
    if st.holds() {
        return Err(Error::new(
            ErrorKind::Locked,
            format!(
                "this process holds the update lock {}: unlock before changing the path",
                st.path.display()
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
    let path = st.path.clone();
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
        std::fs::create_dir_all(parent)
            .map_err(|e| io_error("cannot create the directory of", &path, e))?;
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
        return Err(if e.kind() == io::ErrorKind::AlreadyExists {
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
    });
    Ok(())
}

/// Release the update lock: remove the file if the path still names the file
/// this process created (a forced supervisor action may have deleted it, and a
/// later file there belongs to someone else), then drop the `flock`. Not held:
/// nothing to do, Ok.
pub fn unlock_updates() -> Result<()> {
    let mut st = state();
    let Some(held) = st.held.take() else {
        return Ok(());
    };
    if held.still_at(&st.path) {
        if let Err(e) = std::fs::remove_file(&st.path) {
            let err = io_error("cannot remove the update lock", &st.path, e);
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
