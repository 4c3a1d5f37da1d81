//! The sidecar as a child process, so the scenario can restart it mid-job (SIGTERM, then the
//! same command line again, on the same state file).

use std::fs::OpenOptions;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub struct Sidecar {
    argv: Vec<String>,
    log: Option<String>,
    child: Option<Child>,
    pub starts: u32,
}

impl Sidecar {
    /// `command` is split on whitespace (no quoting): paths must not contain spaces.
    pub fn new(command: &str, log: Option<String>) -> Result<Sidecar, String> {
        let argv: Vec<String> = command.split_whitespace().map(String::from).collect();
        if argv.is_empty() {
            return Err("--sidecar: empty command".into());
        }
        Ok(Sidecar {
            argv,
            log,
            child: None,
            starts: 0,
        })
    }

    pub fn start(&mut self) -> Result<u32, String> {
        let mut command = Command::new(&self.argv[0]);
        command.args(&self.argv[1..]).stdin(Stdio::null());
        if let Some(path) = &self.log {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("sidecar log {path}: {e}"))?;
            let err = file.try_clone().map_err(|e| e.to_string())?;
            command.stdout(Stdio::from(file)).stderr(Stdio::from(err));
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", self.argv[0]))?;
        let pid = child.id();
        self.child = Some(child);
        self.starts += 1;
        Ok(pid)
    }

    /// Send `signal` and wait (bounded) for the process to exit; SIGKILL after `grace`.
    /// Returns the exit status as text.
    pub fn stop(&mut self, signal: i32, grace: Duration) -> Result<String, String> {
        let mut child = match self.child.take() {
            Some(child) => child,
            None => return Err("the sidecar is not running".into()),
        };
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status.to_string());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let status = child.wait().map_err(|e| e.to_string())?;
                return Err(format!(
                    "did not exit within {grace:?} of signal {signal}; killed ({status})"
                ));
            }
            sleep(Duration::from_millis(20)); // polling a child's exit: no event to wait on
        }
    }

    /// Has the child exited by itself? (It must not.)
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            _ => None,
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(libc::SIGTERM, Duration::from_secs(8));
        }
    }
}
