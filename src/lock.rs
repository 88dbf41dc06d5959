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
    // Twice at most: a stale file that vanishes while it is looked at is
    // created anew.
    for _ in 0..2 {
        // SAFETY: cpath is a valid NUL-terminated string; open returns a new fd or -1.
        let fd = unsafe {
            libc::open(
                cpath.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: fd was just opened and is owned by nobody else.
            let file = unsafe { File::from_raw_fd(fd) };
            let held = match hold_new(file, &path) {
                Ok(held) => held,
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            };
            st.held = Some(held);
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(io_error("cannot create the update lock", &path, e));
        }
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the update lock path {} is a directory, not a lock file: choose another \
                     path with bd_set_update_lock_path",
                    path.display()
                ),
            ));
        }
        match take_over_stale(&cpath, &path)? {
            Existing::TakenOver(held) => {
                st.held = Some(held);
                return Ok(());
            }
            Existing::Gone => continue,
            Existing::Held(holder) => return Err(locked_by(&path, holder)),
        }
    }
    Err(locked_by(&path, Holder::Other))
}

/// Who holds the update lock, as `bd_update_lock_holder` tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// No lock file.
    None,
    /// Taken by [`lock_updates`] in this process.
    ThisProcess,
    /// Anyone else: another process of the container, a shell `lockfile` or
    /// `flock`, a file of unknown origin.
    Other,
    /// The file is owned by uid 65534: the supervisor itself is stopping or
    /// updating services.
    Supervisor,
    /// Left by a [`lock_updates`] of a process that is gone (its `flock` is
    /// free); the next [`lock_updates`] takes it over.
    Stale,
}

/// The uid the supervisor's own lock files belong to.
pub const SUPERVISOR_UID: u32 = 65534;

/// Where old balenaOS releases (resinOS) put the update lock; counted as a
/// lock too while the default path is in use.
pub const LEGACY_LOCK_PATH: &str = "/tmp/resin/resin-updates.lock";

/// The record a lock file made by this library starts with.
const RECORD: &str = "balena_device update lock, pid ";

fn locked_by(path: &Path, holder: Holder) -> Error {
    let who = match holder {
        Holder::Supervisor => "the supervisor holds it (the file belongs to uid 65534): it is \
                               stopping or updating services"
            .to_string(),
        Holder::Other | Holder::None | Holder::Stale | Holder::ThisProcess => {
            "another process of the container (or a shell lockfile/flock) holds it".to_string()
        }
    };
    Error::new(
        ErrorKind::Locked,
        format!("the update lock {} already exists: {who}", path.display()),
    )
}

/// The lock on a newly created `file`: its `flock`, then the record saying
/// this library made it and which process holds it.
fn hold_new(file: File, path: &Path) -> Result<Held> {
    // SAFETY: valid fd.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            Error::new(
                ErrorKind::Locked,
                format!(
                    "the update lock {} is flocked by another process",
                    path.display()
                ),
            )
        } else {
            io_error("cannot flock the update lock", path, e)
        });
    }
    record(&file, path)?;
    let meta = file
        .metadata()
        .map_err(|e| io_error("cannot stat the update lock", path, e))?;
    Ok(Held {
        dev: meta.dev(),
        ino: meta.ino(),
        file,
        pid: std::process::id(),
    })
}

/// Write this process's record into the lock `file` (replacing any).
fn record(file: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let text = format!("{RECORD}{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all_at(text.as_bytes(), 0))
        .map_err(|e| io_error("cannot write the update lock", path, e))
}

/// The pid in a lock file's record, if the file is one this library made.
fn recorded_pid(file: &File) -> Option<u32> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 64];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.strip_prefix(RECORD)?.trim_end().parse().ok()
}

enum Existing {
    /// A stale lock, now this process's.
    TakenOver(Held),
    /// The file went away meanwhile.
    Gone,
    /// Held (or not ours to take).
    Held(Holder),
}

/// Look at the existing lock file at `path`: take it over if it is stale (made
/// by this library, its `flock` free), race-free: of several processes, the
/// one that gets the `flock` and still finds the same file at the path wins.
fn take_over_stale(cpath: &CString, path: &Path) -> Result<Existing> {
    // SAFETY: valid path; returns a new fd or -1.
    let fd = unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::NotFound => Ok(Existing::Gone),
            // Not ours to open (a symlink, another user's file): someone
            // else's lock.
            _ => Ok(Existing::Held(Holder::Other)),
        };
    }
    // SAFETY: a new fd owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    let meta = file
        .metadata()
        .map_err(|e| io_error("cannot stat the update lock", path, e))?;
    if meta.uid() == SUPERVISOR_UID {
        return Ok(Existing::Held(Holder::Supervisor));
    }
    if recorded_pid(&file).is_none() {
        return Ok(Existing::Held(Holder::Other));
    }
    // SAFETY: valid fd.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(Existing::Held(Holder::Other));
    }
    // Still the file at the path (not removed or replaced meanwhile)?
    match std::fs::symlink_metadata(path) {
        Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {}
        _ => return Ok(Existing::Gone),
    }
    if recorded_pid(&file).is_none() {
        return Ok(Existing::Held(Holder::Other));
    }
    record(&file, path)?;
    Ok(Existing::TakenOver(Held {
        dev: meta.dev(),
        ino: meta.ino(),
        file,
        pid: std::process::id(),
    }))
}

/// Who holds the lock at `path` (not this process).
fn holder_of(path: &Path) -> Result<Holder> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Holder::None),
        Err(e) => return Err(io_error("cannot check the update lock", path, e)),
    };
    if meta.uid() == SUPERVISOR_UID {
        return Ok(Holder::Supervisor);
    }
    if !meta.is_file() {
        return Ok(Holder::Other);
    }
    let Ok(file) = File::open(path) else {
        return Ok(Holder::Other);
    };
    if recorded_pid(&file).is_none() {
        return Ok(Holder::Other);
    }
    // Free flock: its process is gone. (The flock is taken and released at
    // once; a process racing to take the file over meanwhile is told LOCKED.)
    // SAFETY: valid fd.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        // SAFETY: valid fd.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return Ok(Holder::Stale);
    }
    Ok(Holder::Other)
}

/// Who holds the update lock at the current path (with the default path,
/// the legacy path counts too).
pub fn update_lock_holder() -> Result<Holder> {
    let mut st = state();
    if st.holds() {
        return Ok(Holder::ThisProcess);
    }
    let default = st.path.is_none();
    let path = st.path();
    drop(st);
    match holder_of(&path)? {
        Holder::None if default => holder_of(Path::new(LEGACY_LOCK_PATH)),
        holder => Ok(holder),
    }
}

/// [`lock_updates`], retried until it succeeds or `timeout` has passed
/// ([`ErrorKind::Locked`], saying how long it waited). Other errors, and a
/// lock this process already holds, return at once.
pub fn lock_updates_wait(timeout: std::time::Duration) -> Result<()> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        match lock_updates() {
            Err(e) if e.kind() == ErrorKind::Locked && !state().holds() => {
                let waited = start.elapsed();
                if waited >= timeout {
                    return Err(Error::new(
                        ErrorKind::Locked,
                        format!("{} (waited {} ms for it)", e.message(), waited.as_millis()),
                    ));
                }
                std::thread::sleep(pause.min(timeout - waited));
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            other => return other,
        }
    }
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

/// Whether the lock file exists now (whoever made it); with the default
/// path, the legacy [`LEGACY_LOCK_PATH`] counts too.
pub fn updates_locked() -> Result<bool> {
    let (path, default) = {
        let st = state();
        (st.path(), st.path.is_none())
    };
    let exists = |path: &Path| match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("cannot check the update lock", path, e)),
    };
    Ok(exists(&path)? || (default && exists(Path::new(LEGACY_LOCK_PATH))?))
}
