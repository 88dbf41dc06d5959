//! The library through Python's ctypes: runs `tests/python/test_ctypes.py`
//! (unittest, standard library only) and `examples/python/device_status.py`
//! against the supervisor simulator, with the freshly built
//! `libbalena_device.so`.
//!
//! Each test starts its own simulator and its own Python process, and this
//! process never calls the library itself, so the tests need no lock.

mod sim;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{built_cdylib, manifest_dir, run, Finished, CONFIG_VARS};

/// Longest a Python run may take before it is killed and the test fails.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(180);

/// Proxy variables that must not reach Python's urllib (nor the library).
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// `python3` (or `$PYTHON3`), checked to run and to be Python 3.
fn python3() -> PathBuf {
    let python = std::env::var_os("PYTHON3")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let out = Command::new(&python)
        .args(["-c", "import sys; print(sys.version_info[0])"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): these tests need Python 3 on PATH \
                 (or its path in $PYTHON3)",
                python.display()
            )
        });
    let major = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && major == "3",
        "{} is not a working Python 3 (status {}, version {major:?}, stderr {})",
        python.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

/// A Python command in the crate directory whose environment points at `sim`
/// and the built library, with proxies and outer supervisor settings removed.
fn python_command(sim: &sim::Sim, args: &[&str]) -> Command {
    let mut cmd = Command::new(python3());
    cmd.args(args).current_dir(manifest_dir());
    // Outer supervisor settings could change which supervisor the library
    // talks to.
    for var in PROXY_VARS.iter().chain(&CONFIG_VARS) {
        cmd.env_remove(var);
    }
    cmd.env("BD_LIB", built_cdylib())
        .env("BD_HEADER", manifest_dir().join("include/balena_device.h"))
        .env("BALENA_SUPERVISOR_ADDRESS", sim.address())
        .env("BALENA_SUPERVISOR_API_KEY", sim.api_key())
        .env("BALENA_APP_ID", sim.app_id().to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONIOENCODING", "utf-8")
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONSTARTUP");
    cmd
}

/// Where to look when an assertion on a run fails.
const SEE_OUTPUT: &str = "(the Python output is printed above)";

/// Number of `def test_` methods in a Python test file.
fn count_test_methods(path: &Path) -> usize {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| l.trim_start().starts_with("def test_"))
        .count()
}

#[test]
fn python_ctypes_unittest_suite_passes_against_the_simulator() {
    let sim = sim::Sim::start();
    let run = run(
        python_command(
            &sim,
            &[
                "-m",
                "unittest",
                "discover",
                "-v",
                "-s",
                "tests/python",
                "-t",
                "tests/python",
                "-p",
                "test_*.py",
            ],
        ),
        PYTHON_TIMEOUT,
    );
    let transcript = SEE_OUTPUT;
    assert!(
        run.status.success(),
        "the Python tests failed\n{transcript}"
    );

    // unittest reports on stderr: "Ran N tests in 1.234s" then "OK".
    let ran: usize = run
        .stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no \"Ran N tests\" line\n{transcript}"));
    let expected = count_test_methods(&manifest_dir().join("tests/python/test_ctypes.py"));
    assert!(expected > 0, "no test methods found in test_ctypes.py");
    assert_eq!(
        ran, expected,
        "unittest ran {ran} tests, test_ctypes.py defines {expected}\n{transcript}"
    );
    let verdict = run
        .stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert_eq!(
        verdict, "OK",
        "the Python run must end in a plain OK (no skips, no expected failures)\n{transcript}"
    );

    // The suite really talked to this simulator through the library.
    assert!(
        sim.api_connections() > 0,
        "the simulator saw no API connection\n{transcript}"
    );
}

/// Runs the Python example with `extra` arguments.
fn run_example(sim: &sim::Sim, extra: &[&str]) -> Finished {
    let mut args = vec!["examples/python/device_status.py"];
    args.extend_from_slice(extra);
    run(python_command(sim, &args), PYTHON_TIMEOUT)
}

#[test]
fn python_example_prints_state_and_reboots_only_when_allowed() {
    let sim = sim::Sim::start();
    let app_id = sim.app_id();
    // Values only this simulator has, so the output cannot come from elsewhere.
    sim.with_state(|s| {
        let dev = s.device.as_object_mut().expect("device is an object");
        dev.insert("os_version".into(), "balenaOS 6.1.7+example".into());
        dev.insert("ip_address".into(), "10.77.0.5 192.168.9.4".into());
        dev.insert("status".into(), "Downloading".into());
        dev.insert("download_progress".into(), 57.into());
        dev.insert("update_pending".into(), true.into());
    });
    let (commit, container_id, image_id) = sim.with_state(|s| {
        let app = s.app(app_id).expect("the sim's app");
        (
            app.commit.clone(),
            app.services[0].container_id.clone(),
            // `GET /v1/apps/:id` shows the image's name as `imageId`.
            sim::image_name(app.app_id, &app.services[0].name),
        )
    });

    // State only.
    let r = run_example(&sim, &[]);
    let t = SEE_OUTPUT;
    assert!(r.status.success(), "the example failed\n{t}");
    for (label, value) in [
        (
            "library:",
            format!("balena_device {}", env!("CARGO_PKG_VERSION")),
        ),
        ("status:", "Downloading".to_string()),
        ("commit:", commit.clone()),
        ("os version:", "balenaOS 6.1.7+example".to_string()),
        ("supervisor version:", "19.0.5".to_string()),
        ("ip address:", "10.77.0.5 192.168.9.4".to_string()),
        ("mac address:", "02:42:AC:11:00:02".to_string()),
        ("api port:", "48484".to_string()),
        ("download progress:", "57%".to_string()),
        ("update pending:", "yes".to_string()),
        ("update failed:", "no".to_string()),
        ("app id:", app_id.to_string()),
        ("app commit:", commit.clone()),
        ("app release id:", "2345678".to_string()),
        ("app image id:", image_id.to_string()),
        ("app container id:", container_id.clone()),
    ] {
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line\n{t}"));
        assert_eq!(line[label.len()..].trim(), value, "line {line:?}\n{t}");
    }
    assert!(
        !r.stdout.contains("reboot"),
        "no reboot without --reboot\n{t}"
    );
    let reqs = sim.requests();
    let seen: Vec<(&str, &str)> = reqs
        .iter()
        .map(|q| (q.method.as_str(), q.path.as_str()))
        .collect();
    let app_path = format!("/v1/apps/{app_id}");
    assert!(seen.contains(&("GET", "/v1/device")), "{seen:?}");
    assert!(seen.contains(&("GET", app_path.as_str())), "{seen:?}");
    assert!(
        seen.iter().all(|(m, _)| *m == "GET"),
        "only reads: {seen:?}"
    );
    let key = sim.api_key();
    for q in &reqs {
        assert_eq!(q.query_param("apikey"), Some(key.as_str()), "{q:?}");
    }

    // --reboot while an update lock is held: refused, nothing done.
    sim.clear_requests();
    sim.with_state(|s| s.locked = true);
    let r = run_example(&sim, &["--reboot"]);
    let t = SEE_OUTPUT;
    assert_eq!(r.status.code(), Some(3), "refusal exits 3\n{t}");
    assert!(r.stderr.contains("update lock"), "{t}");
    assert!(r.stderr.contains("--force"), "{t}");
    assert!(r.stdout.contains("Downloading"), "state still printed\n{t}");
    let last = sim.last_request().expect("a request");
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("POST", "/v1/reboot")
    );
    assert_eq!(last.header("content-type"), Some("application/json"));
    assert_eq!(last.json(), Some(serde_json::json!({"force": false})));
    sim.with_state(|s| {
        assert!(s.locked, "still locked");
        assert!(s.actions.is_empty(), "no reboot: {:?}", s.actions);
    });

    // --reboot --force: overrides the lock.
    sim.clear_requests();
    let r = run_example(&sim, &["--reboot", "--force"]);
    let t = SEE_OUTPUT;
    assert!(r.status.success(), "forced reboot failed\n{t}");
    assert!(
        r.stdout.contains("reboot:             requested (forced)"),
        "{t}"
    );
    let posts: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|q| q.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "one reboot request: {posts:?}");
    assert_eq!(posts[0].path, "/v1/reboot");
    assert_eq!(posts[0].json(), Some(serde_json::json!({"force": true})));
    assert_eq!(posts[0].query_param("apikey"), Some(key.as_str()));
    sim.with_state(|s| {
        assert!(!s.locked, "a forced reboot clears the lock");
        assert_eq!(s.actions, vec!["reboot(force)".to_string()]);
    });

    // --reboot without a lock: plain reboot.
    let r = run_example(&sim, &["--reboot"]);
    let t = SEE_OUTPUT;
    assert!(r.status.success(), "reboot failed\n{t}");
    assert!(r.stdout.contains("reboot:             requested\n"), "{t}");
    let last = sim.last_request().expect("a request");
    assert_eq!(last.json(), Some(serde_json::json!({"force": false})));
    sim.with_state(|s| {
        assert_eq!(
            s.actions,
            vec!["reboot(force)".to_string(), "reboot".to_string()]
        )
    });

    // The run line at the top of the example names this file.
    let source = std::fs::read_to_string(manifest_dir().join("examples/python/device_status.py"))
        .expect("example source");
    assert!(
        source
            .lines()
            .take(5)
            .any(|l| l.contains("python3 examples/python/device_status.py")),
        "the example starts with its run line"
    );
}
