//! The C API as a C or C++ program sees it: compiles `tests/c/test_api.c`,
//! `tests/c/header_cpp.cpp` and the examples under `examples/c` and
//! `examples/cpp` with the system compiler against the committed header and
//! the freshly built `libbalena_device.so`, and runs them against the
//! supervisor simulator.
//!
//! - `c_suite_against_simulator`: the C suite, plain. With `BD_VALGRIND` set
//!   to a valgrind binary (what `.ci/valgrind.sh` does) the same test runs
//!   the suite under valgrind instead and requires no errors and no definite
//!   leaks.
//! - `c_suite_under_asan_ubsan`: the C suite built with AddressSanitizer
//!   (leak checking on) and UndefinedBehaviorSanitizer.
//! - `header_compiles_as_cpp11_and_links`: the header in a C++11 program.
//! - `c_suite_calls_every_header_function`: every function the header
//!   declares is called by the C suite.
//! - `examples_compile_and_run_against_simulator`: the four examples build
//!   warning-free and print real values from the simulator.
//!
//! Compilers: `$CC` / `$CXX` when set, else `cc` / `c++` from `PATH`; a
//! missing compiler fails the test.

mod sim;
mod support;

use support::{built_cdylib, manifest_dir, run, Finished};

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const STRICT_C: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"];
const STRICT_CXX11: &[&str] = &["-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic"];
const STRICT_CXX17: &[&str] = &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"];
/// Time between two log-stream lines of the simulator the C suite runs
/// against, at time scale 1 (test_api.c needs at least 1000 ms).
const SUITE_LOG_INTERVAL_MS: u64 = 1500;

/// A private copy of the cdylib in `work/lib`, so that a concurrent rebuild
/// cannot swap the library under a running program; returns that directory.
fn private_lib_dir(work: &Path) -> PathBuf {
    let dir = work.join("lib");
    let so = dir.join("libbalena_device.so");
    if !so.is_file() {
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let src = built_cdylib();
        std::fs::copy(&src, &so)
            .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", src.display(), so.display()));
    }
    dir
}

/// A fresh per-test directory under `target/tmp/c_api`.
fn work_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("c_api")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// `name` searched in `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let candidate = Path::new(name);
    if candidate.components().count() > 1 {
        return candidate.is_file().then(|| candidate.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The compiler from `$var`, else `default` from `PATH`; panics clearly when
/// there is none.
fn compiler(var: &str, default: &str) -> PathBuf {
    let wanted = std::env::var(var).unwrap_or_else(|_| default.to_string());
    which(&wanted).unwrap_or_else(|| {
        panic!(
            "no C/C++ compiler: `{wanted}` (from ${var} or the default `{default}`) is not in PATH; \
             install one (e.g. `apt-get install -y build-essential`)"
        )
    })
}

fn cc() -> PathBuf {
    compiler("CC", "cc")
}

fn cxx() -> PathBuf {
    compiler("CXX", "c++")
}

/// Compile and link `sources` against the header and (a private copy of) the
/// cdylib into `out`.
fn build(compiler: &Path, std_flags: &[&str], extra: &[&str], sources: &[PathBuf], out: &Path) {
    let lib = private_lib_dir(out.parent().expect("output in a directory"));
    let mut cmd = Command::new(compiler);
    cmd.args(std_flags)
        .args(extra)
        .arg("-I")
        .arg(manifest_dir().join("include"))
        .args(sources)
        .arg("-L")
        .arg(&lib)
        .arg("-lbalena_device")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(out);
    println!("$ {cmd:?}");
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", compiler.display()));
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "compiling {sources:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Remove from `cmd`'s environment everything that could point the program
/// elsewhere: supervisor variables, proxies, and this suite's own knobs.
fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy().to_ascii_uppercase();
        if name.starts_with("BALENA_")
            || name.starts_with("RESIN_")
            || name.starts_with("BD_")
            || name.ends_with("_PROXY")
            || name.contains("SANITIZER")
            || name.starts_with("ASAN_")
            || name.starts_with("UBSAN_")
            || name.starts_with("LSAN_")
        {
            cmd.env_remove(&k);
        }
    }
}

/// Point `cmd` at `sim`.
fn sim_env(cmd: &mut Command, sim: &sim::Sim) {
    scrub_env(cmd);
    cmd.env("BALENA_SUPERVISOR_ADDRESS", sim.address())
        .env("BALENA_SUPERVISOR_API_KEY", sim.api_key())
        .env("BALENA_APP_ID", sim.app_id().to_string());
}

/// Assert the suite's summary line says `N passed, 0 failed` with N > 0.
fn assert_suite_passed(f: &Finished) {
    let summary = f
        .stdout
        .lines()
        .rev()
        .find(|l| l.ends_with(" failed") && l.contains(" passed, "))
        .unwrap_or_else(|| panic!("no summary line in the C suite's output:\n{}", f.stdout));
    let failures: Vec<&str> = f
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL") || l.starts_with("FATAL"))
        .collect();
    assert!(
        summary.ends_with(", 0 failed") && failures.is_empty(),
        "the C suite failed: {summary}\n{}",
        failures.join("\n")
    );
    let passed: u32 = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed > 300, "suspiciously few checks ran: {summary}");
    assert!(
        f.status.success(),
        "the C suite exited with {} although it printed {summary}",
        f.status
    );
}

fn suite_sim(scale: u64) -> sim::Sim {
    sim::Sim::start_with(sim::SimConfig {
        log_interval: Duration::from_millis(SUITE_LOG_INTERVAL_MS * scale),
        idle_timeout: Duration::from_secs(5),
        ..Default::default()
    })
}

fn suite_command(program: &Path, sim: &sim::Sim, scale: u64) -> Command {
    let mut cmd = Command::new(program);
    suite_cmd_env(&mut cmd, sim, scale);
    cmd
}

fn suite_cmd_env(cmd: &mut Command, sim: &sim::Sim, scale: u64) {
    sim_env(cmd, sim);
    // The suite checks the answers for apps that are not on the device,
    // which a container's key (scoped to its app: 401) never gets: it runs
    // with the device's global key.
    cmd.env("BALENA_SUPERVISOR_API_KEY", sim.global_key());
    cmd.env("BD_TEST_TIME_SCALE", scale.to_string()).env(
        "BD_TEST_LOG_INTERVAL_MS",
        (SUITE_LOG_INTERVAL_MS * scale).to_string(),
    );
}

fn test_api_source() -> PathBuf {
    manifest_dir().join("tests/c/test_api.c")
}

/// The C suite against a simulator. With `BD_VALGRIND=<valgrind binary>` it
/// runs under valgrind (memcheck, full leak check; definite leaks and any
/// memory error fail), otherwise directly. Never skipped.
#[test]
fn c_suite_against_simulator() {
    let dir = work_dir("suite");
    let program = dir.join("test_api");
    build(
        &cc(),
        STRICT_C,
        &["-g", "-pthread"],
        &[test_api_source()],
        &program,
    );

    let valgrind: Option<PathBuf> = std::env::var_os("BD_VALGRIND")
        .filter(|v| !v.is_empty())
        .map(|v| {
            let v = v.to_string_lossy().into_owned();
            which(&v).unwrap_or_else(|| panic!("BD_VALGRIND={v}: no such program"))
        });

    match valgrind {
        None => {
            println!("BD_VALGRIND is not set: running the C suite directly");
            let sim = suite_sim(1);
            let f = run(suite_command(&program, &sim, 1), Duration::from_secs(300));
            assert_suite_passed(&f);
        }
        Some(vg) => {
            // Valgrind slows the program down 10-50x: every time limit of
            // the suite (and the simulator's log interval) is scaled.
            let scale = 8;
            let sim = suite_sim(scale);
            let log = dir.join("valgrind.log");
            let mut cmd = Command::new(&vg);
            suite_cmd_env(&mut cmd, &sim, scale);
            cmd.arg("--tool=memcheck")
                .arg("--error-exitcode=99")
                .arg("--leak-check=full")
                // Possible leaks are listed (with their stacks) but are not
                // errors: only definite leaks fail.
                .arg("--show-leak-kinds=definite,possible")
                .arg("--errors-for-leak-kinds=definite")
                .arg("--track-origins=yes")
                .arg(OsString::from(format!("--log-file={}", log.display())))
                .arg(&program);
            let f = run(cmd, Duration::from_secs(1800));
            let report = std::fs::read_to_string(&log)
                .unwrap_or_else(|e| panic!("no valgrind log at {}: {e}", log.display()));
            println!("---- valgrind log ----\n{report}");
            assert_eq!(
                f.status.code(),
                Some(0),
                "under valgrind the suite exited with {} (99: valgrind found errors)",
                f.status
            );
            assert_suite_passed(&f);
            assert!(
                report.contains("ERROR SUMMARY: 0 errors"),
                "valgrind reported errors:\n{report}"
            );
            assert!(
                report.contains("definitely lost: 0 bytes")
                    || report.contains("All heap blocks were freed"),
                "valgrind reported definite leaks:\n{report}"
            );
        }
    }
}

/// The C suite built with `-fsanitize=address,undefined`: any memory error,
/// leak (LeakSanitizer runs at exit) or undefined behaviour aborts it.
#[test]
fn c_suite_under_asan_ubsan() {
    let dir = work_dir("asan");
    let program = dir.join("test_api_asan");
    build(
        &cc(),
        STRICT_C,
        &[
            "-g",
            "-pthread",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
        ],
        &[test_api_source()],
        &program,
    );
    let bytes = std::fs::read(&program).expect("reading the sanitizer build");
    assert!(
        bytes
            .windows(b"__asan_init".len())
            .any(|w| w == b"__asan_init"),
        "{} does not reference __asan_init: the sanitizer flags had no effect",
        program.display()
    );

    // LeakSanitizer must be live here (it refuses to run under ptrace, for
    // one): a leaking canary built the same way has to be reported, or a
    // clean run of the suite would prove nothing.
    let canary_src = dir.join("lsan_canary.c");
    std::fs::write(
        &canary_src,
        "#include <stdlib.h>\n#include <string.h>\n#include \"balena_device.h\"\n\
         int main(void) { char *p = malloc(77); if (!p) return 2; \
         strcpy(p, bd_version()); p = NULL; return p != NULL; }\n",
    )
    .expect("writing the canary");
    let canary = dir.join("lsan_canary");
    build(
        &cc(),
        STRICT_C,
        &[
            "-g",
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
        ],
        &[canary_src],
        &canary,
    );
    let mut cmd = Command::new(&canary);
    scrub_env(&mut cmd);
    cmd.env("ASAN_OPTIONS", "detect_leaks=1");
    let f = run(cmd, Duration::from_secs(60));
    assert!(
        !f.status.success() && f.stderr.contains("LeakSanitizer: detected memory leaks"),
        "LeakSanitizer did not report the canary's leak ({}): leak checking is not working here",
        f.status
    );

    let scale = 2;
    let sim = suite_sim(scale);
    let mut cmd = suite_command(&program, &sim, scale);
    cmd.env(
        "ASAN_OPTIONS",
        "detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1",
    )
    .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1");
    let f = run(cmd, Duration::from_secs(600));
    for marker in [
        "ERROR: AddressSanitizer",
        "ERROR: LeakSanitizer",
        "runtime error:",
    ] {
        assert!(
            !f.stderr.contains(marker) && !f.stdout.contains(marker),
            "sanitizer report ({marker}):\n{}",
            f.stderr
        );
    }
    assert_suite_passed(&f);
}

/// The header compiles as C++11 with the strictest warnings, links, and the
/// `extern "C"` guard makes `bd_version()` resolve.
#[test]
fn header_compiles_as_cpp11_and_links() {
    let dir = work_dir("cpp");
    let program = dir.join("header_cpp");
    build(
        &cxx(),
        STRICT_CXX11,
        &[],
        &[manifest_dir().join("tests/c/header_cpp.cpp")],
        &program,
    );
    let mut cmd = Command::new(&program);
    scrub_env(&mut cmd);
    let f = run(cmd, Duration::from_secs(60));
    assert!(f.status.success(), "header_cpp exited with {}", f.status);
    let want = format!("bd_version() = {}", env!("CARGO_PKG_VERSION"));
    assert!(
        f.stdout.contains(&want),
        "expected `{want}` in:\n{}",
        f.stdout
    );
    assert!(f.stdout.contains("header_cpp: ok"), "{}", f.stdout);
}

/// C or C++ source without its comments, string literals and character
/// literals (each replaced by a space).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'/', Some(b'*')) => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
                out.push(' ');
            }
            (b'/', Some(b'/')) => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                out.push(' ');
            }
            (q @ (b'"' | b'\''), _) => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push(' ');
            }
            (c, _) => {
                out.push(char::from(c));
                i += 1;
            }
        }
    }
    out
}

/// The `bd_*` identifiers in `code` that are followed by `(` (calls and
/// declarations).
fn called_names(code: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let b = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while let Some(off) = code[i..].find("bd_") {
        let start = i + off;
        let mut end = start;
        while end < b.len() && ident(b[end]) {
            end += 1;
        }
        let at_word_start = start == 0 || !ident(b[start - 1]);
        if at_word_start && code[end..].trim_start().starts_with('(') {
            names.insert(code[start..end].to_string());
        }
        i = end.max(start + 3);
    }
    names
}

/// Every `bd_*` function declared in the committed header is called by the
/// C suite (in code: comments and the check descriptions do not count), or
/// passed by name to a helper that calls it.
#[test]
fn c_suite_calls_every_header_function() {
    let header = std::fs::read_to_string(manifest_dir().join("include/balena_device.h"))
        .expect("reading include/balena_device.h");
    let suite = std::fs::read_to_string(test_api_source()).expect("reading test_api.c");
    let declared = called_names(&code_only(&header));
    assert!(
        declared.len() >= 50 && declared.contains("bd_version") && declared.contains("bd_state"),
        "only {} functions found in the header: {declared:?}",
        declared.len()
    );
    let code = code_only(&suite);
    let called = called_names(&code);
    let missing: Vec<&String> = declared
        .iter()
        .filter(|name| !called.contains(*name) && !code.contains(&format!("{name},")))
        .collect();
    assert!(
        missing.is_empty(),
        "tests/c/test_api.c never calls: {missing:?}"
    );
    println!(
        "the C suite calls all {} functions of the header",
        declared.len()
    );
}

/// The README's tables name every function and status of the header.
#[test]
fn readme_names_every_header_function_and_status() {
    let header = std::fs::read_to_string(manifest_dir().join("include/balena_device.h"))
        .expect("reading include/balena_device.h");
    let readme =
        std::fs::read_to_string(manifest_dir().join("README.md")).expect("reading README.md");
    let declared = called_names(&code_only(&header));
    assert!(
        declared.len() >= 50,
        "only {} functions found",
        declared.len()
    );
    let missing: Vec<&String> = declared
        .iter()
        .filter(|name| {
            !readme.contains(&format!("`{name}(")) && !readme.contains(&format!("`{name}`"))
        })
        .collect();
    assert!(missing.is_empty(), "README.md never names: {missing:?}");
    let statuses: Vec<&str> = header
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("BD_ERR_"))
        .collect();
    assert!(statuses.len() >= 16, "{statuses:?}");
    for status in statuses {
        assert!(
            readme.contains(&format!("| `{status}` |")),
            "README.md's status table lacks {status}"
        );
    }
}

/// The examples compile with `-Wall -Wextra -Werror -pedantic` and, run
/// against the simulator, print what the simulator holds.
#[test]
fn examples_compile_and_run_against_simulator() {
    let dir = work_dir("examples");
    let ex = manifest_dir().join("examples");
    let device_status = dir.join("device_status");
    let critical_section = dir.join("critical_section");
    let tail_logs = dir.join("tail_logs");
    let device_status_cpp = dir.join("device_status_cpp");
    build(
        &cc(),
        STRICT_C,
        &[],
        &[ex.join("c/device_status.c")],
        &device_status,
    );
    build(
        &cc(),
        STRICT_C,
        &[],
        &[ex.join("c/critical_section.c")],
        &critical_section,
    );
    build(
        &cc(),
        STRICT_C,
        &[],
        &[ex.join("c/tail_logs.c")],
        &tail_logs,
    );
    build(
        &cxx(),
        STRICT_CXX17,
        &[],
        &[ex.join("cpp/device_status.cpp")],
        &device_status_cpp,
    );

    let sim = sim::Sim::start();
    let limit = Duration::from_secs(60);
    let program = |path: &Path, args: &[&str]| {
        let mut cmd = Command::new(path);
        sim_env(&mut cmd, &sim);
        cmd.args(args);
        cmd
    };

    // device_status: real values from GET /v1/device and GET /v1/apps/:id.
    let f = run(program(&device_status, &[]), limit);
    assert_eq!(f.status.code(), Some(0), "device_status: {}", f.stderr);
    let cid = sim.with_state(|s| s.apps[0].services[0].container_id.clone());
    for want in [
        "status:             Idle",
        "commit:             7fc9c5bea8e361acd49886fe6cc1e1cd",
        "os_version:         balenaOS 6.0.13",
        "supervisor_version: 19.0.5",
        "ip_address:         10.0.0.2",
        "api_port:           48484",
        "download_progress:  none",
        "\"os_version\":\"balenaOS 6.0.13\"",
        &format!("\"containerId\":\"{cid}\""),
    ] {
        assert!(
            f.stdout.contains(want),
            "device_status lacks `{want}`:\n{}",
            f.stdout
        );
    }
    assert!(
        sim.state().actions.is_empty(),
        "device_status without --reboot must not act: {:?}",
        sim.state().actions
    );

    // --reboot refused while the supervisor sees a lock; --force overrides.
    sim.with_state(|s| s.locked = true);
    let f = run(program(&device_status, &["--reboot"]), limit);
    assert_eq!(
        f.status.code(),
        Some(3),
        "device_status --reboot while locked"
    );
    assert!(
        f.stderr.contains("reboot refused") && f.stderr.contains("HTTP 423"),
        "device_status --reboot while locked: {}",
        f.stderr
    );
    assert!(sim.state().actions.is_empty());
    let last = sim.last_request().expect("a reboot request");
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("POST", "/v1/reboot")
    );
    assert_eq!(last.body_text(), r#"{"force":false}"#);
    let f = run(program(&device_status, &["--reboot", "--force"]), limit);
    assert_eq!(
        f.status.code(),
        Some(0),
        "device_status --reboot --force: {}",
        f.stderr
    );
    assert!(f.stdout.contains("reboot requested"), "{}", f.stdout);
    assert_eq!(sim.state().actions, vec!["reboot(force)".to_string()]);
    // Force cannot help a busy supervisor (exit 4) and must not be used
    // during a host OS update (exit 5); neither acts.
    for (what, code, text) in [
        ("busy", 4, "supervisor is busy"),
        ("host update", 5, "host OS update is finishing"),
    ] {
        sim.reset();
        sim.with_state(|s| {
            if code == 4 {
                s.locks_busy = true;
                s.busy_wait_ms = 50;
            } else {
                s.host_update = true;
            }
        });
        let f = run(program(&device_status, &["--reboot"]), limit);
        assert_eq!(
            f.status.code(),
            Some(code),
            "device_status --reboot, {what}: {}",
            f.stderr
        );
        assert!(
            f.stderr.contains(text) && f.stderr.contains("HTTP 423"),
            "{what}: {}",
            f.stderr
        );
        assert!(
            sim.state().actions.is_empty(),
            "{what}: {:?}",
            sim.state().actions
        );
    }
    let f = run(program(&device_status, &["--bogus"]), limit);
    assert_eq!(
        f.status.code(),
        Some(2),
        "device_status --bogus is a usage error"
    );

    // tail_logs: the first lines of the local log stream, then stops (the
    // app's lines come only in local mode).
    sim.reset();
    sim.with_state(|s| s.local_mode = true);
    let f = run(program(&tail_logs, &["--local", "3"]), limit);
    assert_eq!(f.status.code(), Some(0), "tail_logs: {}", f.stderr);
    for want in [
        "\"message\":\"Streaming logs\"",
        "\"message\":\"log line 1 from main\"",
        "\"message\":\"log line 2 from main\"",
        "stopped after 3 lines",
    ] {
        assert!(
            f.stdout.contains(want),
            "tail_logs lacks `{want}`:\n{}",
            f.stdout
        );
    }
    assert!(
        !f.stdout.contains("log line 3"),
        "tail_logs did not stop:\n{}",
        f.stdout
    );
    let last = sim.last_request().expect("a log request");
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("GET", "/v2/local/logs")
    );

    // tail_logs on a managed device: the followed journal.
    sim.reset();
    let f = run(program(&tail_logs, &["2"]), limit);
    assert_eq!(
        f.status.code(),
        Some(0),
        "tail_logs (journal): {}",
        f.stderr
    );
    assert!(f.stdout.contains("stopped after 2 lines"), "{}", f.stdout);
    let last = sim.last_request().expect("a journal request");
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("POST", "/v2/journal-logs")
    );
    assert_eq!(last.body_text(), r#"{"follow":true,"format":"short"}"#);

    // A quiet journal: tail_logs waits, and SIGTERM stops it cleanly through
    // bd_stop_streams.
    sim.reset();
    sim.with_state(|s| s.journal_quiet = true);
    let child = program(&tail_logs, &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        sim.requests().iter().any(|r| r.path == "/v2/journal-logs"),
        "tail_logs did not start the journal"
    );
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "tail_logs after SIGTERM: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stopped by signal 15"), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // critical_section: while the lock is held the program refuses to ask for
    // a reboot (nothing reaches the simulator); after the release, --reboot
    // asks for one without force.
    let lock_dir = dir.join("lock");
    let lock_path = lock_dir.join("updates.lock");
    let lock_arg = lock_path.to_string_lossy().into_owned();
    for reboot in [false, true] {
        sim.reset();
        let mut args = vec!["--lock-path", lock_arg.as_str()];
        if reboot {
            args.push("--reboot");
        }
        let f = run(program(&critical_section, &args), limit);
        assert_eq!(f.status.code(), Some(0), "critical_section: {}", f.stderr);
        for want in [
            "update lock taken",
            "bd_updates_locked() = 1",
            "refusing to reboot: the update lock is held",
            "update lock released",
            "bd_updates_locked() = 0",
        ] {
            assert!(
                f.stdout.contains(want),
                "critical_section lacks `{want}`:\n{}",
                f.stdout
            );
        }
        assert!(
            !lock_path.exists(),
            "critical_section left {}",
            lock_path.display()
        );
        let reboots: Vec<_> = sim
            .requests()
            .into_iter()
            .filter(|r| r.path == "/v1/reboot")
            .collect();
        if reboot {
            assert!(
                f.stdout.contains("reboot requested (HTTP 202)"),
                "{}",
                f.stdout
            );
            assert_eq!(reboots.len(), 1, "one reboot request after the release");
            assert_eq!(reboots[0].body_text(), r#"{"force":false}"#);
            assert_eq!(sim.state().actions, vec!["reboot".to_string()]);
        } else {
            assert!(reboots.is_empty(), "a reboot was requested: {reboots:?}");
            assert!(sim.state().actions.is_empty(), "{:?}", sim.state().actions);
        }
    }

    // The three kinds of 423, each with its own reaction.
    type Set = fn(&mut sim::SimState);
    let kinds: [(&str, Set, &str); 3] = [
        (
            "locked",
            |s| s.locked = true,
            "another update lock is held (HTTP 423): not forcing",
        ),
        (
            "locks_busy",
            |s| {
                s.locks_busy = true;
                s.busy_wait_ms = 50;
            },
            "the supervisor is busy (HTTP 423): retry later",
        ),
        (
            "host_update",
            |s| s.host_update = true,
            "a host OS update is finishing (HTTP 423): never forcing",
        ),
    ];
    for (state, set, want) in kinds {
        sim.reset();
        sim.with_state(set);
        let f = run(
            program(&critical_section, &["--lock-path", &lock_arg, "--reboot"]),
            limit,
        );
        assert_eq!(
            f.status.code(),
            Some(0),
            "critical_section {state}: {}",
            f.stderr
        );
        assert!(
            f.stdout.contains(want),
            "critical_section {state} lacks `{want}`:\n{}",
            f.stdout
        );
        assert!(sim.state().actions.is_empty(), "{:?}", sim.state().actions);
    }

    // The C++ wrapper: the same values, the RAII lock, an exception on error.
    sim.reset();
    let f = run(
        program(&device_status_cpp, &["--lock-path", &lock_arg]),
        limit,
    );
    assert_eq!(
        f.status.code(),
        Some(0),
        "device_status (C++): {}",
        f.stderr
    );
    for want in [
        "device: sim-device",
        "supervisor: 19.0.5",
        "status: Idle",
        "commit: 7fc9c5bea8e361acd49886fe6cc1e1cd",
        "lock held: 1",
        "lock held: 0",
    ] {
        assert!(
            f.stdout.contains(want),
            "device_status.cpp lacks `{want}`:\n{}",
            f.stdout
        );
    }
    assert!(!lock_path.exists());
    let mut cmd = program(&device_status_cpp, &["--lock-path", &lock_arg]);
    cmd.env("BALENA_SUPERVISOR_API_KEY", "WrongKey123");
    let f = run(cmd, limit);
    assert_eq!(
        f.status.code(),
        Some(1),
        "device_status (C++) with a wrong key"
    );
    assert!(
        f.stderr.contains("error: bd_device_name") && f.stderr.contains("HTTP 401"),
        "the C++ wrapper throws with bd_last_error: {}",
        f.stderr
    );
    assert!(!f.stderr.contains("WrongKey123"));
}

/// The static library, linked the way a firmware build would link it: the
/// archive plus the system libraries Rust's standard library needs (what
/// `rustc --print native-static-libs` lists). The program must not need the
/// shared library at run time.
#[test]
fn c_example_links_statically() {
    let dir = work_dir("static");
    let archive = built_cdylib().with_file_name("libbalena_device.a");
    assert!(archive.is_file(), "{} missing", archive.display());
    let out = dir.join("device_status_static");
    let mut cmd = Command::new(cc());
    cmd.args(STRICT_C)
        .arg("-I")
        .arg(manifest_dir().join("include"))
        .arg(manifest_dir().join("examples/c/device_status.c"))
        .arg(&archive)
        .args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ])
        .arg("-o")
        .arg(&out);
    let output = cmd.output().expect("cannot run the C compiler");
    assert!(
        output.status.success(),
        "static link failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let binary = std::fs::read(&out).expect("read the program");
    assert!(
        !binary
            .windows(b"libbalena_device.so".len())
            .any(|w| w == b"libbalena_device.so"),
        "the statically linked program still refers to libbalena_device.so"
    );

    let sim = sim::Sim::start();
    let mut run_it = Command::new(&out);
    sim_env(&mut run_it, &sim);
    let f = run(run_it, Duration::from_secs(60));
    assert_eq!(f.status.code(), Some(0), "{}", f.stderr);
    let commit = sim.state().device["commit"]
        .as_str()
        .expect("the simulator has a commit")
        .to_string();
    assert!(f.stdout.contains(&commit), "{}", f.stdout);
    assert_eq!(
        sim.requests().first().map(|r| r.path.clone()),
        Some("/v1/device".to_string())
    );
}
