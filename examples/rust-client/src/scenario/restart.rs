//! The restart step: the sidecar stopped mid-job (SIGTERM, then SIGKILL) and started again on
//! the same state file; the client re-snapshots and follows the restored job to its end.

use super::{detail, Outcome, Scenario, Trace};
use crate::client::Error as ClientError;
use crate::wire::{Common, Data, JobView, PingResult, Request};
use std::cell::RefCell;
use std::time::{Duration, Instant};

impl Scenario {
    pub(super) fn restart_mid_job(&mut self) -> Outcome<()> {
        if self.sidecar.is_none() {
            detail("skipped: no --sidecar command given, so the client cannot restart it");
            return Ok(());
        }
        let job_id = format!("rust-{}-c", std::process::id());
        self.submit(&job_id, self.opts.restart_steps)?;
        let mut trace = Trace::default();
        let mut restarts = vec![(libc::SIGTERM, "SIGTERM", self.opts.restart_at)];
        if self.opts.kill_at > 0.0 {
            restarts.push((libc::SIGKILL, "SIGKILL", self.opts.kill_at));
        }
        for (signal, name, at) in restarts {
            self.restart_at(&job_id, signal, name, at, &mut trace)?;
        }
        self.follow_job(&job_id, &mut trace)?;
        let runs = trace.runs();
        detail(format!(
            "{job_id} followed to {} across {} runs",
            trace.kinds().last().unwrap_or(&"?"),
            runs
        ));
        detail(format!(
            "job.progress across the runs: {}",
            trace.percent_summary()
        ));
        check!(
            trace.kinds().last() == Some(&"job.completed"),
            "{job_id} ended {:?}",
            trace.kinds().last()
        );
        check!(
            trace.percents.last().map(|p| p.1) == Some(100.0),
            "{job_id} did not end at 100.0"
        );
        trace.check_monotonic()?;
        detail("job.progress never decreased, in any run");

        let first = self.job_a.clone();
        let earlier = self.job(&first)?;
        check!(
            earlier.state == "completed",
            "{first} (finished in the first run): {}",
            earlier.state
        );
        detail(format!(
            "job {first} (finished in the first run, read back from the state file): {} at {}%",
            earlier.state, earlier.percent
        ));
        check!(
            earlier.percent == 100.0,
            "a completed job of an earlier run reads back at {}%, not 100.0",
            earlier.percent
        );
        Ok(())
    }

    /// Follow `job_id` until its sampler has done `at` of its steps, stop the sidecar with
    /// `signal`, start it again, and follow until the new run's snapshot, which must list it.
    fn restart_at(
        &mut self,
        job_id: &str,
        signal: i32,
        name: &str,
        at: f64,
        trace: &mut Trace,
    ) -> Outcome<()> {
        let id = job_id.to_string();
        self.follow(
            &format!("{job_id}'s sampler to pass {:.0}% of its steps", at * 100.0),
            |e| {
                if !e.is_job(&id) {
                    return Ok(false);
                }
                trace.record(e);
                check!(!e.is_final(), "{id} ended before the restart: {}", e.kind);
                Ok(matches!(&e.data, Data::NodeProgress(p) if p.value >= at * p.max))
            },
            |_| Ok(false),
        )?;
        let old_run = self.follower.run.clone().unwrap_or_default();
        let before = trace.percents.last().map(|p| p.1).unwrap_or(0.0);
        let t = Instant::now();
        let sidecar = self.sidecar.as_mut().expect("checked by the caller");
        let status = sidecar.stop(signal, Duration::from_secs(10))?;
        let stopped = t.elapsed().as_secs_f64();
        // A request while no sidecar listens: with ZMQ_IMMEDIATE it is not even queued; after
        // its timeout the DEALER is re-created, so it can never reach the next sidecar late.
        let resets = self.follower.client.dealer_resets;
        let ping = self.follower.client.request_within::<PingResult>(
            Request::Ping(Common::default()),
            Duration::from_millis(300),
        );
        check!(
            matches!(ping, Err(ClientError::Timeout { .. })),
            "ping with no sidecar running: {ping:?}"
        );
        check!(
            self.follower.client.dealer_resets == resets + 1,
            "the DEALER was not re-created after the timeout"
        );
        let sidecar = self.sidecar.as_mut().expect("checked by the caller");
        let pid = sidecar.start()?;
        detail(format!(
            "{job_id} at {before}% (sampler {:.0}% done): {name} -> exited ({status}) in {stopped:.2} s; \
             a ping meanwhile timed out (DEALER re-created); started again (pid {pid}) on the same state file",
            at * 100.0
        ));
        // Both callbacks look at what the re-snapshot found: shared through a cell.
        let restored: RefCell<Option<JobView>> = RefCell::new(None);
        self.follow(
            &format!("the new run's snapshot after {name}"),
            |e| {
                if e.is_job(&id) {
                    trace.record(e); // the old run's last events may still arrive first
                    check!(
                        !e.is_final(),
                        "{id} ended before the new run's snapshot: {}",
                        e.kind
                    );
                }
                Ok(false)
            },
            |snap| {
                if snap.run == old_run {
                    return Ok(false);
                }
                let found = snap.jobs.iter().find(|j| j.job_id == id).cloned();
                check!(
                    found.is_some(),
                    "the new run's snapshot does not list {id} (it has {:?}); reconciled {:?}",
                    snap.jobs.iter().map(|j| &j.job_id).collect::<Vec<_>>(),
                    snap.reconciled
                        .iter()
                        .map(|r| (&r.0, r.1.as_ref().map(|v| &v.state)))
                        .collect::<Vec<_>>()
                );
                *restored.borrow_mut() = found;
                Ok(true)
            },
        )?;
        let view = restored.into_inner().expect("set by the snapshot");
        detail(format!(
            "the new run's snapshot lists {job_id}: {} at {}% (attempts {}, prompt {})",
            view.state,
            view.percent,
            view.attempts,
            view.prompt_id.as_deref().unwrap_or("-")
        ));
        Ok(())
    }
}
