//! Benchmark of `libbalena_device.so` against a raw-socket floor, `curl` and
//! Python `requests`, against servers it starts itself on 127.0.0.1: the
//! supervisor simulator of the tests (in-process) and, to separate the
//! client's cost from the simulator's, a minimal keep-alive server.
//!
//! Run: `cargo run --release --example bench` (about 20-30 s).
//!
//! It prints figures and asserts nothing about time. The sequential figures
//! are taken with the whole process (and its child processes) pinned to one
//! CPU, which keeps them steady on a virtual machine where waking an idle CPU
//! costs tens of µs; one block repeats them unpinned. What it measures:
//! - per-call latency (median, p99) and calls/s of sequential `bd_state_json`
//!   through the shared object (loaded with `dlopen`, so the real `.so` is
//!   measured; the rlib is used only when the `.so` is missing), of a raw
//!   HTTP/1.1 keep-alive loop over a plain `TcpStream` (the floor), of `curl`
//!   run once per call and of a Python `requests.Session`, each as a ratio to
//!   the floor;
//! - the same client cost against a minimal keep-alive server, to show how
//!   much of each call the simulator itself takes;
//! - TCP connections opened for 1,000 sequential calls;
//! - calls/s at 1, 2, 4 and 8 threads;
//! - RSS before and after 100,000 calls;
//! - size and `DT_NEEDED` list of the release `.so`.

#[path = "../tests/sim/mod.rs"]
#[allow(dead_code, unused_imports)]
mod sim;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Sequential calls per client: floor and library alternate in rounds of
/// `SEQ_CALLS / ROUNDS`, so a change of machine load or of the scheduler's
/// placement hits both alike (more, shorter rounds when not pinned).
const SEQ_CALLS: usize = 20_000;
const ROUNDS: usize = 5;
const UNPINNED_ROUNDS: usize = 40;
const WARMUP: usize = 2_000;
const CURL_CALLS: usize = 200;
const PYTHON_CALLS: usize = 2_000;
const CONN_CALLS: usize = 1_000;
const RSS_CALLS: usize = 100_000;
const THREAD_SECS: f64 = 1.5;

type InitFn = unsafe extern "C" fn(*const c_char, *const c_char) -> c_int;
type StateJsonFn = unsafe extern "C" fn(*mut c_char, usize) -> c_int;
type LastErrorFn = unsafe extern "C" fn() -> *const c_char;
type CleanupFn = extern "C" fn();

/// The library's entry points, from the `.so` or from the rlib.
#[derive(Clone, Copy)]
struct Lib {
    init: InitFn,
    state_json: StateJsonFn,
    last_error: LastErrorFn,
    cleanup: CleanupFn,
}

impl Lib {
    /// Loads `path` with `dlopen`; `Err(why)` when it cannot be loaded.
    fn open(path: &Path) -> Result<Lib, String> {
        let cpath = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string; RTLD_LOCAL keeps the symbols to the handle.
        let handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns NULL or a C string valid until the next dl call.
            let why = unsafe { libc::dlerror() };
            return Err(if why.is_null() {
                "dlopen failed".to_string()
            } else {
                // SAFETY: non-NULL C string (above).
                unsafe { CStr::from_ptr(why) }
                    .to_string_lossy()
                    .into_owned()
            });
        }
        let sym = |name: &CStr| -> Option<*mut c_void> {
            // SAFETY: a live handle and a C string.
            let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let (Some(init), Some(state_json), Some(last_error), Some(cleanup)) = (
            sym(c"bd_init"),
            sym(c"bd_state_json"),
            sym(c"bd_last_error"),
            sym(c"bd_cleanup"),
        ) else {
            return Err("a bd_ symbol is missing".to_string());
        };
        // SAFETY: the symbols have these signatures (include/balena_device.h);
        // the handle is never closed.
        unsafe {
            Ok(Lib {
                init: std::mem::transmute::<*mut c_void, InitFn>(init),
                state_json: std::mem::transmute::<*mut c_void, StateJsonFn>(state_json),
                last_error: std::mem::transmute::<*mut c_void, LastErrorFn>(last_error),
                cleanup: std::mem::transmute::<*mut c_void, CleanupFn>(cleanup),
            })
        }
    }

    fn rlib() -> Lib {
        use balena_device::ffi;
        Lib {
            init: ffi::bd_init,
            state_json: ffi::bd_state_json,
            last_error: ffi::bd_last_error,
            cleanup: ffi::bd_cleanup,
        }
    }

    fn init(&self, address: &str, key: &str) {
        let a = CString::new(address).expect("address");
        let k = CString::new(key).expect("key");
        // SAFETY: two valid C strings.
        let rc = unsafe { (self.init)(a.as_ptr(), k.as_ptr()) };
        if rc != 0 {
            panic!("bd_init failed ({rc}): {}", self.last_error());
        }
    }

    fn last_error(&self) -> String {
        // SAFETY: bd_last_error never returns NULL.
        unsafe { CStr::from_ptr((self.last_error)()) }
            .to_string_lossy()
            .into_owned()
    }

    /// One `bd_state_json` into `buf`; true when it returned the whole text.
    fn call(&self, buf: &mut [u8]) -> bool {
        // SAFETY: `buf` has `buf.len()` writable bytes.
        let n = unsafe { (self.state_json)(buf.as_mut_ptr().cast(), buf.len()) };
        n > 0 && (n as usize) < buf.len()
    }
}

/// A plain HTTP/1.1 keep-alive client: one `write`, then read the head,
/// parse Content-Length and read the body. The floor.
struct RawClient {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl RawClient {
    fn connect(port: u16, key: &str) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let request = format!(
            "GET /v1/device?apikey={key} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n"
        )
        .into_bytes();
        RawClient {
            stream,
            request,
            buf: vec![0; 16 * 1024],
        }
    }

    /// One request; the body length, or `None` on a non-200 answer.
    fn call(&mut self) -> Option<usize> {
        self.stream.write_all(&self.request).ok()?;
        let mut have = 0;
        let head_end = loop {
            let n = self.stream.read(&mut self.buf[have..]).ok()?;
            if n == 0 {
                return None;
            }
            have += n;
            if let Some(p) = find(&self.buf[..have], b"\r\n\r\n") {
                break p + 4;
            }
            if have == self.buf.len() {
                return None;
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).ok()?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        let length: usize = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })?;
        let total = head_end + length;
        if self.buf.len() < total {
            self.buf.resize(total, 0);
        }
        while have < total {
            let n = self.stream.read(&mut self.buf[have..total]).ok()?;
            if n == 0 {
                return None;
            }
            have += n;
        }
        Some(length)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A minimal keep-alive server answering every request with `body`: no
/// parsing beyond the end of the head, one write per answer.
struct MinimalServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl MinimalServer {
    fn start(body: Vec<u8>) -> MinimalServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: keep-alive\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(&body);
        let answer = Arc::new(answer);
        let flag = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut s) = conn else { continue };
                let answer = answer.clone();
                thread::spawn(move || {
                    let _ = s.set_nodelay(true);
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut have = 0;
                    loop {
                        match s.read(&mut buf[have..]) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => have += n,
                        }
                        while let Some(p) = find(&buf[..have], b"\r\n\r\n") {
                            if s.write_all(&answer).is_err() {
                                return;
                            }
                            buf.copy_within(p + 4..have, 0);
                            have -= p + 4;
                        }
                        if have == buf.len() {
                            return;
                        }
                    }
                });
            }
        });
        MinimalServer { port, stop }
    }
}

impl Drop for MinimalServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Latency figures of one client, from per-call nanoseconds.
struct Figures {
    calls: usize,
    failures: usize,
    median_us: f64,
    p99_us: f64,
    mean_us: f64,
}

impl Figures {
    fn from(mut ns: Vec<u64>, failures: usize) -> Figures {
        ns.sort_unstable();
        let pick = |q: f64| ns[((ns.len() as f64 - 1.0) * q).round() as usize] as f64 / 1e3;
        let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e3;
        Figures {
            calls: ns.len(),
            failures,
            median_us: pick(0.5),
            p99_us: pick(0.99),
            mean_us: mean,
        }
    }

    fn calls_per_s(&self) -> f64 {
        1e6 / self.mean_us
    }
}

fn header() {
    println!(
        "  {:<34} {:>6} {:>5} {:>10} {:>10} {:>10} {:>11} {:>10}",
        "client", "calls", "fail", "median µs", "p99 µs", "calls/s", "×floor med", "×floor mean"
    );
}

/// A row; `floor` None prints the floor's own row, `ratios` false prints
/// no ratios (figures that depend on where the scheduler put each thread).
fn row(name: &str, f: &Figures, floor: Option<&Figures>) {
    row_with(name, f, floor, true)
}

fn row_with(name: &str, f: &Figures, floor: Option<&Figures>, ratios: bool) {
    let (rm, ra) = match floor {
        _ if !ratios => ("-".into(), "-".into()),
        Some(fl) => (
            format!("{:.2}", f.median_us / fl.median_us),
            format!("{:.2}", f.mean_us / fl.mean_us),
        ),
        None => ("1.00".into(), "1.00".into()),
    };
    println!(
        "  {:<34} {:>6} {:>5} {:>10.1} {:>10.1} {:>10.0} {:>11} {:>10}",
        name,
        f.calls,
        f.failures,
        f.median_us,
        f.p99_us,
        f.calls_per_s(),
        rm,
        ra
    );
}

/// Times `n` calls of `f` (true = success) one by one.
fn time_calls(n: usize, mut f: impl FnMut() -> bool, ns: &mut Vec<u64>) -> usize {
    let mut failures = 0;
    for _ in 0..n {
        let t = Instant::now();
        let ok = f();
        ns.push(t.elapsed().as_nanos() as u64);
        failures += usize::from(!ok);
    }
    failures
}

/// Floor and library, alternating in rounds, against the server on `port`.
fn floor_and_lib(lib: &Lib, port: u16, key: &str, rounds: usize) -> (Figures, Figures) {
    lib.init(&format!("http://127.0.0.1:{port}"), key);
    let mut raw = RawClient::connect(port, key);
    let mut buf = vec![0u8; 8192];
    for _ in 0..WARMUP {
        raw.call();
        lib.call(&mut buf);
    }
    let (mut raw_ns, mut lib_ns) = (Vec::new(), Vec::new());
    let (mut raw_fail, mut lib_fail) = (0, 0);
    for _ in 0..rounds {
        raw_fail += time_calls(SEQ_CALLS / rounds, || raw.call().is_some(), &mut raw_ns);
        lib_fail += time_calls(SEQ_CALLS / rounds, || lib.call(&mut buf), &mut lib_ns);
    }
    if lib_fail > 0 {
        println!("  (library failures; last error: {})", lib.last_error());
    }
    (
        Figures::from(raw_ns, raw_fail),
        Figures::from(lib_ns, lib_fail),
    )
}

fn curl(url: &str) -> Option<Figures> {
    let run = || {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", url])
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY")
            .stdin(Stdio::null())
            .status()
            .map(|s| s.success())
    };
    match run() {
        Ok(true) => {}
        _ => return None,
    }
    for _ in 0..10 {
        run().ok()?;
    }
    let mut ns = Vec::with_capacity(CURL_CALLS);
    let failures = time_calls(CURL_CALLS, || matches!(run(), Ok(true)), &mut ns);
    Some(Figures::from(ns, failures))
}

const PYTHON_SCRIPT: &str = r#"
import sys, time
try:
    import requests
except ImportError:
    print("NOREQUESTS"); sys.exit(0)
url, n = sys.argv[1], int(sys.argv[2])
s = requests.Session()
s.trust_env = False
for _ in range(200):
    s.get(url).content
out, fail = [], 0
for _ in range(n):
    t = time.perf_counter_ns()
    r = s.get(url)
    r.content
    out.append(time.perf_counter_ns() - t)
    fail += r.status_code != 200
print("OK", fail, " ".join(map(str, out)))
"#;

/// `Ok(figures)`, or `Err(why it was skipped)`.
fn python(url: &str) -> Result<Figures, String> {
    let out = Command::new("python3")
        .args(["-c", PYTHON_SCRIPT, url, &PYTHON_CALLS.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("python3 not runnable ({e})"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    match words.next() {
        Some("OK") => {}
        Some("NOREQUESTS") => return Err("python3 has no `requests` module".into()),
        _ => {
            return Err(format!(
                "python3 failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
    let failures = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let ns: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
    if ns.is_empty() {
        return Err("python3 printed no timings".into());
    }
    Ok(Figures::from(ns, failures))
}

/// Calls/s with `threads` threads calling for `THREAD_SECS` each.
fn threaded(lib: &Lib, threads: usize) -> (f64, u64) {
    let calls = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    let start = Instant::now();
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = vec![0u8; 8192];
                let (mut n, mut bad) = (0u64, 0u64);
                let end = Instant::now() + Duration::from_secs_f64(THREAD_SECS);
                while Instant::now() < end {
                    for _ in 0..50 {
                        bad += u64::from(!lib.call(&mut buf));
                        n += 1;
                    }
                }
                calls.fetch_add(n, Ordering::Relaxed);
                failures.fetch_add(bad, Ordering::Relaxed);
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    (
        calls.load(Ordering::Relaxed) as f64 / secs,
        failures.load(Ordering::Relaxed),
    )
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `DT_NEEDED` entries of an ELF64 little-endian shared object, read from its
/// dynamic section.
fn dt_needed(path: &Path) -> Result<Vec<String>, String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if data.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err("not an ELF64 little-endian file".into());
    }
    let bad = || "truncated ELF file".to_string();
    let shoff = u64_at(0x28).ok_or_else(bad)? as usize;
    let shentsize = u16_at(0x3a).ok_or_else(bad)? as usize;
    let shnum = u16_at(0x3c).ok_or_else(bad)? as usize;
    let section = |i: usize| -> Option<(u32, usize, usize, u32)> {
        let b = shoff + i * shentsize;
        Some((
            u32_at(b + 4)?,             // sh_type
            u64_at(b + 0x18)? as usize, // sh_offset
            u64_at(b + 0x20)? as usize, // sh_size
            u32_at(b + 0x28)?,          // sh_link
        ))
    };
    const SHT_DYNAMIC: u32 = 6;
    const DT_NEEDED: u64 = 1;
    for i in 0..shnum {
        let (kind, off, size, link) = section(i).ok_or_else(bad)?;
        if kind != SHT_DYNAMIC {
            continue;
        }
        let (_, str_off, str_size, _) = section(link as usize).ok_or_else(bad)?;
        let strtab = data.get(str_off..str_off + str_size).ok_or_else(bad)?;
        let mut out = Vec::new();
        for e in (off..off + size).step_by(16) {
            let tag = u64_at(e).ok_or_else(bad)?;
            if tag == 0 {
                break;
            }
            if tag == DT_NEEDED {
                let s = u64_at(e + 8).ok_or_else(bad)? as usize;
                let name = strtab.get(s..).ok_or_else(bad)?;
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                out.push(String::from_utf8_lossy(&name[..end]).into_owned());
            }
        }
        return Ok(out);
    }
    Err("no dynamic section".into())
}

/// Sets the CPU affinity of every thread of this process (threads started
/// later, and child processes, inherit it from the thread that starts them).
fn set_affinity(set: &libc::cpu_set_t) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
            // SAFETY: a valid cpu_set_t of the size passed.
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(set), set) };
        }
    }
}

/// This process's CPU affinity, and a set holding only one CPU of it.
fn affinity_sets() -> Option<(libc::cpu_set_t, libc::cpu_set_t)> {
    // SAFETY: cpu_set_t is plain data; the libc calls get its real size.
    unsafe {
        let mut all: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of_val(&all), &mut all) != 0 {
            return None;
        }
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&c| libc::CPU_ISSET(c, &all))?;
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        Some((all, one))
    }
}

/// `target/release`, found from this executable (`target/release/examples/bench`).
fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

fn main() {
    let started = Instant::now();
    // `cargo run --example` builds the cdylib into `deps/` without copying
    // it to `target/release/`: take whichever of the two is newer.
    let dir = release_dir();
    let newest = [
        dir.join("libbalena_device.so"),
        dir.join("deps/libbalena_device.so"),
    ]
    .into_iter()
    .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
    .max_by_key(|(t, _)| *t);
    let so_path = newest.map_or_else(|| dir.join("libbalena_device.so"), |(_, p)| p);
    let (lib, via) = match Lib::open(&so_path) {
        Ok(lib) => (lib, format!("{} (dlopen)", so_path.display())),
        Err(why) => (
            Lib::rlib(),
            format!(
                "the rlib's balena_device::ffi, linked in, because {} could not be loaded \
                 ({why}; `cargo build --release` builds it)",
                so_path.display()
            ),
        ),
    };

    let sim = sim::Sim::start();
    let key = sim.api_key();
    let port = sim.port();
    let url = format!("http://127.0.0.1:{port}/v1/device?apikey={key}");

    // The simulator records every request; keep that record short so its
    // memory does not count as the library's.
    let stop_clearing = AtomicBool::new(false);
    thread::scope(|scope| {
        scope.spawn(|| {
            while !stop_clearing.load(Ordering::Relaxed) {
                sim.clear_requests();
                thread::sleep(Duration::from_millis(20));
            }
        });
        run(&lib, &via, &sim, &key, port, &url, &so_path);
        stop_clearing.store(true, Ordering::Relaxed);
    });
    println!(
        "\ntotal benchmark time: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn run(lib: &Lib, via: &str, sim: &sim::Sim, key: &str, port: u16, url: &str, so: &Path) {
    let mut probe = RawClient::connect(port, key);
    let body_len = probe.call().expect("the simulator answers GET /v1/device");
    drop(probe);

    println!("balena_device benchmark");
    println!("  library: {via}");
    println!(
        "  server:  the supervisor simulator (tests/sim), in-process on 127.0.0.1:{port}, \
         unless a block says otherwise; GET /v1/device answers {body_len} bytes of JSON"
    );
    println!(
        "  {} logical CPUs; each figure is one call after the previous one returned",
        thread::available_parallelism().map_or(0, |n| n.get())
    );

    // --- sequential latency -------------------------------------------------
    // Pinned to one CPU: every thread of the benchmark, the servers' threads
    // and the child processes run there, so the figures are the work of a call
    // (client, kernel, server) without the cost of waking an idle CPU, which on
    // a virtual machine is tens of µs and comes and goes with the scheduler's
    // placement. Block [1c] shows the unpinned figures.
    let sets = affinity_sets();
    if let Some((_, one)) = &sets {
        set_affinity(one);
    }
    let pinned = if sets.is_some() {
        "pinned to one CPU"
    } else {
        "not pinned: affinity not available"
    };
    println!(
        "\n[1] sequential GET /v1/device against the simulator, {pinned} \
         ({SEQ_CALLS} calls each for floor and library in {ROUNDS} alternating rounds, \
         after {WARMUP} warm-up calls each)"
    );
    header();
    let (floor, libf) = floor_and_lib(lib, port, key, ROUNDS);
    row("raw TcpStream keep-alive (floor)", &floor, None);
    row("bd_state_json (libbalena_device)", &libf, Some(&floor));
    match curl(url) {
        Some(f) => row("curl, one process per call", &f, Some(&floor)),
        None => println!("  curl: skipped (curl missing or failing)"),
    }
    match python(url) {
        Ok(f) => row("python3 requests.Session", &f, Some(&floor)),
        Err(why) => println!("  python3 requests.Session: skipped ({why})"),
    }

    // --- the simulator's own share --------------------------------------------
    let mut body = vec![0u8; 8192];
    let n = {
        lib.init(&format!("http://127.0.0.1:{port}"), key);
        // SAFETY: `body` has `body.len()` writable bytes.
        unsafe { (lib.state_json)(body.as_mut_ptr().cast(), body.len()) }
    };
    body.truncate(n.max(0) as usize);
    let minimal = MinimalServer::start(body);
    println!(
        "\n[1b] the same against a minimal keep-alive server (a fixed answer with the same \
         body, no parsing), {pinned}: the client's cost without the simulator's"
    );
    header();
    let (mfloor, mlib) = floor_and_lib(lib, minimal.port, key, ROUNDS);
    row("raw TcpStream keep-alive (floor)", &mfloor, None);
    row("bd_state_json (libbalena_device)", &mlib, Some(&mfloor));
    println!(
        "  the simulator's own cost per request ≈ {:.1} µs (floor in [1] minus floor here); \
         the library's over the floor: {:.1} µs in [1], {:.1} µs here",
        floor.median_us - mfloor.median_us,
        libf.median_us - floor.median_us,
        mlib.median_us - mfloor.median_us
    );

    if let Some((all, _)) = &sets {
        set_affinity(all);
        println!(
            "\n[1c] the same as [1] for floor and library, not pinned, in {UNPINNED_ROUNDS} \
             alternating rounds (threads free to run on any CPU: a call whose two sides land on \
             different CPUs waits for the other CPU to wake, which moves these figures from run \
             to run)"
        );
        header();
        let (ufloor, ulib) = floor_and_lib(lib, port, key, UNPINNED_ROUNDS);
        row_with("raw TcpStream keep-alive (floor)", &ufloor, None, false);
        row_with(
            "bd_state_json (libbalena_device)",
            &ulib,
            Some(&ufloor),
            false,
        );
        println!(
            "  (no ratios: each client has its own connection and server thread, and either \
             pair may be the one split across CPUs)"
        );
    }

    // --- connections --------------------------------------------------------
    lib.init(&format!("http://127.0.0.1:{port}"), key);
    let before = sim.connections();
    let mut buf = vec![0u8; 8192];
    let mut failures = 0;
    for _ in 0..CONN_CALLS {
        failures += usize::from(!lib.call(&mut buf));
    }
    let opened = sim.connections() - before;
    println!(
        "\n[2] TCP connections opened for {CONN_CALLS} sequential calls (fresh bd_init): \
         {opened} (goal 1; {failures} failures)"
    );

    // --- threads --------------------------------------------------------------
    println!(
        "\n[3] calls/s by threads ({THREAD_SECS} s each, one shared default client, against \
         the simulator, not pinned: the 1-thread figure moves with CPU placement as in [1c])"
    );
    println!("  {:>7} {:>10} {:>9}", "threads", "calls/s", "failures");
    for threads in [1, 2, 4, 8] {
        let (rate, fails) = threaded(lib, threads);
        println!("  {threads:>7} {rate:>10.0} {fails:>9}");
    }

    // --- memory ---------------------------------------------------------------
    // Against the minimal server, which keeps nothing per request (the
    // simulator records every request), so what grows is the client's.
    lib.init(&format!("http://127.0.0.1:{}", minimal.port), key);
    for _ in 0..10_000 {
        lib.call(&mut buf);
    }
    let rss_before = vm_rss_kib();
    let mut rss_mid = 0;
    let mut failures = 0;
    let t = Instant::now();
    for i in 1..=RSS_CALLS {
        failures += usize::from(!lib.call(&mut buf));
        if i == RSS_CALLS / 2 {
            rss_mid = vm_rss_kib();
        }
    }
    let rss_after = vm_rss_kib();
    println!(
        "\n[4] VmRSS of the whole process over {RSS_CALLS} sequential calls against the minimal \
         server (after 10000 warm-up calls; {failures} failures; {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    println!(
        "  {rss_before} KiB before, {rss_mid} KiB after {}, {rss_after} KiB after {RSS_CALLS} \
         ({:+} KiB)",
        RSS_CALLS / 2,
        rss_after as i64 - rss_before as i64
    );
    (lib.cleanup)();
    drop(minimal);

    // --- the shared object ----------------------------------------------------
    println!("\n[5] {}", so.display());
    match std::fs::metadata(so) {
        Ok(m) => println!(
            "  size: {} bytes ({:.1} KiB; the release profile strips it)",
            m.len(),
            m.len() as f64 / 1024.0
        ),
        Err(e) => println!("  size: not available ({e})"),
    }
    match dt_needed(so) {
        Ok(list) => println!("  DT_NEEDED: {}", list.join(", ")),
        Err(e) => println!("  DT_NEEDED: not available ({e})"),
    }
}
