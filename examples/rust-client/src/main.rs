//! A Rust backend's client for comfy-bridge, written from docs/PROTOCOL.md alone.
//!
//! ```text
//! rust-client golden DIR            decode every fixture in DIR (tests/golden) into typed structs
//! rust-client run --router EP --pub EP [--sidecar CMD] [options]
//!                                   join, submit, follow, cancel, bad requests, restart
//! rust-client fleet --router EP --pub EP --router EP --pub EP [options]
//!                                   follow several sidecars at once, a job on each
//! ```
//!
//! Exit status 0 when every check passed, 1 when one failed, 2 on a usage error.

mod client;
mod curve;
mod fleet;
mod follower;
mod golden;
mod scenario;
mod sidecar;
// The structs mirror the whole contract; the scenario does not read every field.
#[allow(dead_code)]
mod wire;

use std::path::Path;
use std::process::exit;
use std::time::Duration;

const USAGE: &str = "usage:
  rust-client golden DIR
  rust-client run --router EP --pub EP [--sidecar \"CMD ARGS...\"] [--sidecar-log FILE]
                  [--instance NAME] [--heartbeat-s 1.0] [--timeout-s 10] [--job-timeout-s 60]
                  [--job-steps 10] [--cancel-steps 400] [--restart-steps 60] [--restart-at 0.3]
                  [--kill-at 0.6] [--curve-server-key FILE --curve-client-key FILE]
  rust-client fleet --router EP --pub EP [--router EP --pub EP]... [--heartbeat-s 1.0]
                  [--timeout-s 10] [--job-timeout-s 60] [--job-steps 10]

run: --sidecar is the sidecar's command line (split on spaces). The client starts it, and in
the restart step stops it mid-job and starts it again with the same command (so the same
--state file and endpoints): with SIGTERM when the job's sampler has done --restart-at of its
steps, then with SIGKILL at --kill-at (0: no second restart). Without --sidecar the restart
step is skipped.

--curve-server-key (the sidecar's NAME.key) and --curve-client-key (this client's NAME.key_secret,
listed in the sidecar's zmq.curve.clients_dir): connect with ZeroMQ CURVE, and check first that a
client without keys and one with a key the sidecar does not list get no reply and no event.";

fn usage(problem: &str) -> ! {
    eprintln!("rust-client: {problem}\n{USAGE}");
    exit(2)
}

fn seconds(flag: &str, value: &str) -> Duration {
    match value.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Duration::from_secs_f64(s),
        _ => usage(&format!(
            "{flag}: not a positive number of seconds: {value:?}"
        )),
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| usage(&format!("{flag}: not a number: {value:?}")))
}

fn parse_run(args: &[String]) -> scenario::Options {
    let mut opts = scenario::Options {
        router: String::new(),
        publisher: String::new(),
        sidecar: None,
        sidecar_log: None,
        instance: None,
        heartbeat: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
        job_timeout: Duration::from_secs(60),
        job_steps: 10,
        cancel_steps: 400,
        restart_steps: 60,
        restart_at: 0.3,
        kill_at: 0.6,
        curve: None,
    };
    let (mut server_key, mut client_key) = (None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = match it.next() {
            Some(v) => v.as_str(),
            None => usage(&format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "--router" => opts.router = value.to_string(),
            "--pub" => opts.publisher = value.to_string(),
            "--sidecar" => opts.sidecar = Some(value.to_string()),
            "--sidecar-log" => opts.sidecar_log = Some(value.to_string()),
            "--instance" => opts.instance = Some(value.to_string()),
            "--heartbeat-s" => opts.heartbeat = seconds(flag, value),
            "--timeout-s" => opts.timeout = seconds(flag, value),
            "--job-timeout-s" => opts.job_timeout = seconds(flag, value),
            "--job-steps" => opts.job_steps = number(flag, value),
            "--cancel-steps" => opts.cancel_steps = number(flag, value),
            "--restart-steps" => opts.restart_steps = number(flag, value),
            "--restart-at" => opts.restart_at = number(flag, value),
            "--kill-at" => opts.kill_at = number(flag, value),
            "--curve-server-key" => server_key = Some(value.to_string()),
            "--curve-client-key" => client_key = Some(value.to_string()),
            other => usage(&format!("unknown option {other}")),
        }
    }
    if opts.router.is_empty() || opts.publisher.is_empty() {
        usage("run needs --router and --pub");
    }
    opts.curve = match (server_key, client_key) {
        (None, None) => None,
        (Some(server), Some(client)) => Some(
            curve::CurveKeys::load(&server, &client)
                .unwrap_or_else(|e| usage(&format!("CURVE keys: {e}"))),
        ),
        _ => usage("--curve-server-key and --curve-client-key go together"),
    };
    opts
}

fn parse_fleet(args: &[String]) -> fleet::Options {
    let mut routers = Vec::new();
    let mut pubs = Vec::new();
    let mut opts = fleet::Options {
        endpoints: Vec::new(),
        heartbeat: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
        job_timeout: Duration::from_secs(60),
        job_steps: 10,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = match it.next() {
            Some(v) => v.as_str(),
            None => usage(&format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "--router" => routers.push(value.to_string()),
            "--pub" => pubs.push(value.to_string()),
            "--heartbeat-s" => opts.heartbeat = seconds(flag, value),
            "--timeout-s" => opts.timeout = seconds(flag, value),
            "--job-timeout-s" => opts.job_timeout = seconds(flag, value),
            "--job-steps" => opts.job_steps = number(flag, value),
            other => usage(&format!("unknown option {other}")),
        }
    }
    if routers.is_empty() || routers.len() != pubs.len() {
        usage("fleet needs a --pub for each --router");
    }
    opts.endpoints = routers.into_iter().zip(pubs).collect();
    opts
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("golden") if args.len() == 2 => match golden::check(Path::new(&args[1])) {
            Ok(0) => {}
            Ok(_) => exit(1),
            Err(e) => {
                println!("FAIL  {e}");
                exit(1)
            }
        },
        Some("run") => {
            if let Err(e) = scenario::run(parse_run(&args[1..])) {
                println!("rust-client: FAIL: {e}");
                exit(1)
            }
        }
        Some("fleet") => {
            if let Err(e) = fleet::run(parse_fleet(&args[1..])) {
                println!("rust-client: FAIL: {e}");
                exit(1)
            }
        }
        _ => usage("expected a subcommand"),
    }
}
