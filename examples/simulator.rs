//! A balena Supervisor simulator for offline development and for the C and
//! Python tests.
//!
//! ```text
//! cargo run --example simulator -- --port 48484 --key SECRETKEY --app-id 1234 \
//!     [--multi-container] [--locked] [--local-mode]
//! ```
//!
//! It prints the `export` lines that point the library at it (the key is
//! the app container's, scoped to the app, as on a device), logs every
//! request (method and path) to stderr and runs until killed. Its state can
//! be changed while it runs through the control routes, e.g.
//! `curl -X POST -d '{"locked":true}' http://127.0.0.1:48484/_sim/state`.

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::io::Write;
use std::process::exit;
use std::time::Duration;

const USAGE: &str = "usage: simulator [options]
  --port N             port on 127.0.0.1 (default 48484; 0 = any free port)
  --key KEY            the app containers' API key, scoped to the app
                       (default sim-key-0123456789abcdef)
  --global-key KEY     the global key, valid for every app (default: derived
                       from --key; see GET /_sim/state)
  --app-id N           id of the installed app (default 1234)
  --multi-container    the app has two services, main and worker
  --locked             an update lock is held
  --local-mode         local mode (target state may be set; no key check)
  --unmanaged          unmanaged device (no key check)
  --instant-updates    /v1/update applies at once (204)
  --idle-ms N          keep-alive idle time before closing (default 5000)
  --log-interval-ms N  interval between streamed log lines (default 200)
  --quiet              do not log requests
Control routes (no key): GET /_sim/state, POST /_sim/state {json},
  GET /_sim/requests, GET /_sim/last, POST /_sim/reset";

fn die(msg: &str) -> ! {
    eprintln!("simulator: {msg}\n{USAGE}");
    exit(2)
}

fn number<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
    let v = v.unwrap_or_else(|| die(&format!("{flag} needs a value")));
    v.parse()
        .unwrap_or_else(|_| die(&format!("{flag}: not a valid number: {v}")))
}

fn main() {
    let mut cfg = sim::SimConfig {
        log_requests: true,
        ..sim::SimConfig::default()
    };
    let mut port: u16 = 48484;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next());
        match flag.as_str() {
            "--port" => port = number(&flag, value()),
            "--key" => {
                cfg.api_key = value().unwrap_or_else(|| die("--key needs a value"));
                if cfg.api_key.is_empty() {
                    die("--key must not be empty");
                }
            }
            "--global-key" => {
                let k = value().unwrap_or_else(|| die("--global-key needs a value"));
                if k.is_empty() {
                    die("--global-key must not be empty");
                }
                cfg.global_key = Some(k);
            }
            "--app-id" => cfg.app_id = number(&flag, value()),
            "--idle-ms" => cfg.idle_timeout = Duration::from_millis(number(&flag, value())),
            "--log-interval-ms" => cfg.log_interval = Duration::from_millis(number(&flag, value())),
            "--multi-container" => cfg.multi_container = true,
            "--locked" => cfg.locked = true,
            "--local-mode" => cfg.local_mode = true,
            "--unmanaged" => cfg.unmanaged = true,
            "--instant-updates" => cfg.instant_updates = true,
            "--quiet" => cfg.log_requests = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => die(&format!("unknown option {other}")),
        }
    }
    if !cfg
        .api_key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        eprintln!(
            "simulator: warning: the key has characters other than [A-Za-z0-9_]; \
             the supervisor accepts such a key only in the apikey query parameter"
        );
    }

    let sim = match sim::Sim::start_on(port, cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("simulator: cannot listen on 127.0.0.1:{port}: {e}");
            exit(1)
        }
    };
    println!("export BALENA_SUPERVISOR_ADDRESS={}", sim.address());
    println!("export BALENA_SUPERVISOR_API_KEY={}", sim.api_key());
    println!("export BALENA_APP_ID={}", sim.app_id());
    let _ = std::io::stdout().flush();
    eprintln!(
        "simulator: listening on {} (control: {}/_sim/state); Ctrl-C to stop",
        sim.address(),
        sim.address()
    );
    loop {
        std::thread::park();
    }
}
