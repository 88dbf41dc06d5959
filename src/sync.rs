//! Locks that `fork()` never leaves held.
//!
//! A child of `fork()` has one thread, the one that forked. A lock that any
//! other thread of the parent held at that moment stays held for ever in the
//! child, so the child's first call that needs it would block for good.
//!
//! Every lock of this library is taken inside a *section*, and a
//! `pthread_atfork` handler lets a fork happen only while no thread is inside
//! one: before the fork (`prepare`) it stops new sections from starting and
//! waits until the ones running have ended (they are short: no section ever
//! waits for the network), and after it (`parent`, `child`) it lets them
//! start again. So at the instant of every fork no library lock is held, and
//! a child can call any function at once. Sections nest: a thread already in
//! one enters another without waiting, and a thread that forks from inside a
//! section (never done by the library itself) does not wait for itself.
//!
//! The handlers are registered when the library is loaded (an ELF
//! constructor), before any thread can call it, and at the latest on the
//! first section. The `child` handler only stores to atomics, as code after
//! `fork()` in a multi-threaded process must.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Threads inside a section now.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Forks between their `prepare` and their `parent` handler (several threads
/// may fork at once).
static FORKING: AtomicUsize = AtomicUsize::new(0);
static REGISTERED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// How deep this thread is in sections. `const` and without a
    /// destructor, so it works in a thread's TLS destructors too.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

fn depth() -> usize {
    DEPTH.try_with(Cell::get).unwrap_or(0)
}

fn set_depth(d: usize) {
    let _ = DEPTH.try_with(|c| c.set(d));
}

extern "C" fn prepare() {
    FORKING.fetch_add(1, SeqCst);
    // The forking thread's own section, if it forks from inside one.
    let own = usize::from(depth() > 0);
    while ACTIVE.load(SeqCst) > own {
        std::thread::sleep(Duration::from_micros(20));
    }
}

extern "C" fn parent() {
    FORKING.fetch_sub(1, SeqCst);
}

extern "C" fn child() {
    // Only this thread exists now; no other fork is in progress in this process.
    FORKING.store(0, SeqCst);
    ACTIVE.store(usize::from(depth() > 0), SeqCst);
}

/// Register the fork handlers, once per process.
pub(crate) fn register_fork_handlers() {
    if REGISTERED.swap(true, SeqCst) {
        return;
    }
    // SAFETY: the three handlers are `extern "C"` functions that live as
    // long as the library; glibc unregisters them if the library is unloaded.
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if rc != 0 {
        // ENOMEM: try again at the next section.
        REGISTERED.store(false, SeqCst);
    }
}

extern "C" fn on_load() {
    register_fork_handlers();
}

/// Runs [`on_load`] when the library is loaded, before `main` or `dlopen`
/// returns.
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

/// Being inside a section (see the module documentation). Not `Send`: it
/// belongs to the thread that entered.
pub(crate) struct Section {
    _thread: PhantomData<*const ()>,
}

/// Enter a section; waits only while a fork is being prepared.
pub(crate) fn enter() -> Section {
    if !REGISTERED.load(SeqCst) {
        register_fork_handlers();
    }
    let d = depth();
    if d == 0 {
        loop {
            while FORKING.load(SeqCst) > 0 {
                std::thread::yield_now();
            }
            ACTIVE.fetch_add(1, SeqCst);
            if FORKING.load(SeqCst) == 0 {
                break;
            }
            // A fork started meanwhile: let it go first.
            ACTIVE.fetch_sub(1, SeqCst);
        }
    }
    set_depth(d + 1);
    Section {
        _thread: PhantomData,
    }
}

impl Drop for Section {
    fn drop(&mut self) {
        let d = depth().saturating_sub(1);
        set_depth(d);
        if d == 0 {
            ACTIVE.fetch_sub(1, SeqCst);
        }
    }
}

/// A guard of a lock together with the section it was taken in: the lock is
/// released first, then the section ends.
pub(crate) struct Guarded<G> {
    guard: G,
    _section: Section,
}

impl<G: Deref> Deref for Guarded<G> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for Guarded<G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

/// A `RwLock` taken only inside a section. A panic while it was held does not
/// make it unusable (no poisoning): every writer leaves a consistent value.
pub(crate) struct ForkSafeRwLock<T>(RwLock<T>);

impl<T> ForkSafeRwLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        ForkSafeRwLock(RwLock::new(value))
    }

    pub(crate) fn read(&self) -> Guarded<RwLockReadGuard<'_, T>> {
        let section = enter();
        Guarded {
            guard: self.0.read().unwrap_or_else(|e| e.into_inner()),
            _section: section,
        }
    }

    pub(crate) fn write(&self) -> Guarded<RwLockWriteGuard<'_, T>> {
        let section = enter();
        Guarded {
            guard: self.0.write().unwrap_or_else(|e| e.into_inner()),
            _section: section,
        }
    }
}

/// A `Mutex` taken only inside a section, without poisoning.
pub(crate) struct ForkSafeMutex<T>(Mutex<T>);

impl<T> ForkSafeMutex<T> {
    pub(crate) const fn new(value: T) -> Self {
        ForkSafeMutex(Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> Guarded<MutexGuard<'_, T>> {
        let section = enter();
        Guarded {
            guard: self.0.lock().unwrap_or_else(|e| e.into_inner()),
            _section: section,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_nest_and_end() {
        register_fork_handlers();
        let before = depth();
        {
            let _a = enter();
            assert_eq!(depth(), before + 1);
            let lock = ForkSafeRwLock::new(1);
            {
                let r = lock.read();
                assert_eq!(*r, 1);
                assert_eq!(depth(), before + 2);
            }
            *lock.write() = 2;
            assert_eq!(*lock.read(), 2);
        }
        assert_eq!(depth(), before);
    }
}
