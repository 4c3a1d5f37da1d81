//! The steps of the scenario but the restart: join, submit and follow, cancel, bad requests,
//! closing checks.

use super::{detail, Outcome, Scenario, Trace};
use crate::follower::{short, Follower, Resnapshot};
use crate::wire::{
    BareRequest, CancelResult, Common, Data, HealthResult, JobIdRequest, PingResult, Request,
};
use serde::de::IgnoredAny;
use serde::Serialize;
use serde_json::Map;
use std::time::{Duration, Instant};

impl Scenario {
    pub(super) fn join(&mut self, snap: &Resnapshot) -> Outcome<()> {
        detail(format!(
            "first event received; snapshot: run {} seq {}, {} instance(s), {} unfinished job(s), {} buffered event(s) dropped",
            short(&snap.run),
            snap.seq,
            self.follower.instances.len(),
            snap.jobs.len(),
            snap.dropped
        ));
        let want = self.opts.instance.clone();
        let connected = |f: &Follower| {
            f.instances
                .values()
                .any(|i| i.state == "connected" && want.as_ref().map_or(true, |w| *w == i.name))
        };
        if !connected(&self.follower) {
            let mut ready = false;
            let deadline = Instant::now() + self.opts.job_timeout;
            while !ready && Instant::now() < deadline {
                let _ = self
                    .follower
                    .next(Duration::from_millis(500))
                    .map_err(|e| e.to_string())?;
                ready = connected(&self.follower);
            }
            check!(
                ready,
                "no instance became connected: {:?}",
                self.follower
                    .instances
                    .values()
                    .map(|i| (&i.name, &i.state))
                    .collect::<Vec<_>>()
            );
        }
        for i in self.follower.instances.values() {
            detail(format!(
                "instance {}: {} (ComfyUI {}, adapter {})",
                i.name,
                i.state,
                i.version.as_deref().unwrap_or("?"),
                i.adapter.as_deref().unwrap_or("?")
            ));
        }
        Ok(())
    }

    pub(super) fn submit_and_follow(&mut self) -> Outcome<()> {
        let job_id = self.job_a.clone();
        let reply = self.submit(&job_id, self.opts.job_steps)?;
        check!(
            reply.job.job_id == job_id,
            "submit answered for {}",
            reply.job.job_id
        );
        check!(
            !reply.duplicate && !reply.held,
            "fresh submit: duplicate {} held {}",
            reply.duplicate,
            reply.held
        );
        check!(
            matches!(reply.job.state.as_str(), "queued" | "started" | "completed"),
            "submit reply state {}",
            reply.job.state
        );
        check!(
            reply.job.prompt_id.is_some(),
            "submit reply has no prompt_id"
        );
        detail(format!(
            "submitted {job_id}: {} as prompt {}",
            reply.job.state,
            reply.job.prompt_id.as_deref().unwrap_or("")
        ));

        let mut trace = Trace::default();
        self.follow_job(&job_id, &mut trace)?;
        let kinds = trace.kinds();
        check!(
            kinds.first() == Some(&"job.accepted"),
            "first event of the job: {:?}",
            kinds.first()
        );
        check!(
            kinds.last() == Some(&"job.completed"),
            "the job ended {:?}",
            kinds.last()
        );
        trace.check_monotonic()?;
        let last = trace.percents.last().map(|p| p.1);
        check!(last == Some(100.0), "last job.progress {last:?}, not 100.0");
        check!(
            trace.percents[..trace.percents.len() - 1]
                .iter()
                .all(|p| p.1 < 100.0),
            "100.0 published before the end"
        );
        let before_end = trace.events.iter().rev().nth(1).map(|e| e.kind.as_str());
        check!(
            before_end == Some("job.progress"),
            "job.completed follows {before_end:?}, not job.progress 100.0"
        );
        let outputs = match &trace.events.last().map(|e| &e.data) {
            Some(Data::JobCompleted(done)) => done.outputs.clone(),
            _ => Map::new(),
        };
        check!(
            outputs.contains_key("9"),
            "job.completed outputs lack the SaveImage node: {:?}",
            outputs.keys().collect::<Vec<_>>()
        );
        let previews = trace.events.iter().filter(|e| e.kind == "preview").count();
        detail(format!(
            "{} events; {} job.progress: {}; {previews} previews; outputs {:?}",
            trace.events.len(),
            trace.percents.len(),
            trace.percent_list(),
            outputs.keys().collect::<Vec<_>>()
        ));

        let view = self.job(&job_id)?;
        check!(
            view.state == "completed" && view.percent == 100.0,
            "job: {} at {}",
            view.state,
            view.percent
        );
        let again = self.submit(&job_id, self.opts.job_steps)?;
        check!(
            again.duplicate && again.job.state == "completed",
            "the same job_id again: duplicate {} state {}",
            again.duplicate,
            again.job.state
        );
        detail("job: completed at 100.0; submitting the same job_id again: duplicate, nothing ran");
        Ok(())
    }

    pub(super) fn cancel_running(&mut self) -> Outcome<()> {
        let job_id = format!("rust-{}-b", std::process::id());
        self.submit(&job_id, self.opts.cancel_steps)?;
        let mut trace = Trace::default();
        let id = job_id.clone();
        self.follow(
            &format!("{job_id} to run"),
            |e| {
                if e.is_job(&id) {
                    trace.record(e);
                    check!(
                        !e.is_final(),
                        "{id} ended before it was cancelled: {}",
                        e.kind
                    );
                }
                Ok(e.is_job(&id) && e.kind == "node.progress")
            },
            |_| Ok(false),
        )?;
        let cancel: CancelResult = self.ok(Request::Cancel(JobIdRequest {
            common: Common::default(),
            job_id: job_id.clone(),
        }))?;
        check!(
            cancel.job_id == job_id && cancel.state == "started",
            "cancel reply: {} {}",
            cancel.job_id,
            cancel.state
        );
        check!(
            cancel.cancel_sent && !cancel.already_requested,
            "cancel reply: sent {} already {}",
            cancel.cancel_sent,
            cancel.already_requested
        );
        detail(format!(
            "cancel accepted while started: method {:?}",
            cancel.method
        ));
        self.follow_job(&job_id, &mut trace)?;
        let end = trace.events.last().expect("a final event");
        let by = match &end.data {
            Data::JobCancelled(c) => c.confirmed_by.clone(),
            _ => {
                return Err(format!(
                    "{job_id} ended with {}, not job.cancelled",
                    end.kind
                ))
            }
        };
        trace.check_monotonic()?;
        check!(
            trace.percents.iter().all(|p| p.1 < 100.0),
            "a cancelled job reached 100"
        );
        detail(format!(
            "job.cancelled (confirmed_by {by}) after {} events; last percent {:?}",
            trace.events.len(),
            trace.percents.last().map(|p| p.1)
        ));
        let view = self.job(&job_id)?;
        check!(
            view.state == "cancelled" && view.cancel_requested,
            "job: {} cancel_requested {}",
            view.state,
            view.cancel_requested
        );
        let again = self.request::<CancelResult>(Request::Cancel(JobIdRequest {
            common: Common::default(),
            job_id: job_id.clone(),
        }))?;
        let code = again.error.as_ref().map(|e| e.code.as_str());
        check!(
            !again.ok && code == Some("job_finished"),
            "cancelling it again: ok {} code {code:?}",
            again.ok
        );
        detail("cancelling it again: ok:false job_finished");
        Ok(())
    }

    fn expect_error(
        &mut self,
        label: &str,
        body: &[u8],
        id: Option<&str>,
        code: &str,
        field: Option<(&str, &str)>,
    ) -> Outcome<()> {
        let reply = self
            .follower
            .client
            .request_raw::<IgnoredAny>(label, body, id)
            .map_err(|e| format!("{label}: {e}"))?;
        let error = match (reply.ok, reply.error) {
            (false, Some(error)) => error,
            (ok, _) => return Err(format!("{label}: ok {ok}, no error")),
        };
        check!(
            reply.id.as_deref() == id,
            "{label}: reply id {:?}, expected {id:?}",
            reply.id
        );
        check!(
            error.code == code,
            "{label}: code {}, expected {code} ({})",
            error.code,
            error.message
        );
        if let Some((key, value)) = field {
            let got = error.details.get(key).and_then(|v| v.as_str());
            check!(
                got == Some(value),
                "{label}: details.{key} {got:?}, expected {value:?}"
            );
        }
        detail(format!(
            "{label}: ok:false {} \"{}\"",
            error.code, error.message
        ));
        Ok(())
    }

    pub(super) fn invalid_requests(&mut self) -> Outcome<()> {
        let before: HealthResult = self.ok(Request::Health(Common::default()))?;
        let id = self.follower.client.fresh_id();
        let body = rmp_serde::to_vec_named(&BareRequest { op: "job", id: &id })
            .map_err(|e| e.to_string())?;
        self.expect_error(
            "job without job_id",
            &body,
            Some(&id),
            "invalid_request",
            Some(("field", "job_id")),
        )?;
        let id = self.follower.client.fresh_id();
        let body = rmp_serde::to_vec_named(&BareRequest {
            op: "reboot",
            id: &id,
        })
        .map_err(|e| e.to_string())?;
        self.expect_error(
            "op \"reboot\"",
            &body,
            Some(&id),
            "unknown_op",
            Some(("op", "reboot")),
        )?;
        let id = self.follower.client.fresh_id();
        let body = rmp_serde::to_vec_named(&Request::Job(JobIdRequest {
            common: Common {
                id: Some(id.clone()),
                deadline_ns: None,
            },
            job_id: "no-such-job".into(),
        }))
        .map_err(|e| e.to_string())?;
        self.expect_error(
            "job of an unknown id",
            &body,
            Some(&id),
            "job_not_found",
            Some(("job_id", "no-such-job")),
        )?;
        #[derive(Serialize)]
        struct Ping<'a> {
            op: &'a str,
            id: &'a str,
        }
        // rmp_serde::to_vec writes a struct as an ARRAY: the sidecar needs maps (to_vec_named).
        let as_array = rmp_serde::to_vec(&Ping {
            op: "ping",
            id: "array",
        })
        .map_err(|e| e.to_string())?;
        self.expect_error(
            "ping encoded with to_vec (an array)",
            &as_array,
            None,
            "malformed_request",
            None,
        )?;
        self.expect_error(
            "bytes that are not MessagePack",
            b"\xc1 not msgpack",
            None,
            "malformed_request",
            None,
        )?;
        let pong: PingResult = self.ok(Request::Ping(Common::default()))?;
        check!(
            pong.pong && Some(&pong.run) == self.follower.run.as_ref(),
            "ping after the bad requests: {pong:?}"
        );
        let after: HealthResult = self.ok(Request::Health(Common::default()))?;
        check!(
            after.bad_requests >= before.bad_requests + 2,
            "health bad_requests {} -> {}",
            before.bad_requests,
            after.bad_requests
        );
        detail(format!(
            "then ping: pong (run {}, seq {}); health bad_requests {} -> {}",
            short(&pong.run),
            pong.seq,
            before.bad_requests,
            after.bad_requests
        ));
        Ok(())
    }

    pub(super) fn closing_checks(&mut self) -> Outcome<()> {
        let health: HealthResult = self.ok(Request::Health(Common::default()))?;
        check!(
            Some(&health.run) == self.follower.run.as_ref(),
            "health run {} is not the followed run",
            short(&health.run)
        );
        for i in &health.instances {
            detail(format!(
                "instance {}: {} frames {} malformed {} unknown {}",
                i.name, i.state, i.frames, i.malformed, i.unknown
            ));
            check!(
                i.malformed == 0,
                "{}: {} malformed ComfyUI frames",
                i.name,
                i.malformed
            );
        }
        detail(format!(
            "events published {} dropped {:?} backlog peak {}; previews {} written {}; store {} writes {} errors {}",
            health.events.published,
            health.events.dropped,
            health.events.backlog_peak,
            health.previews.store,
            health.previews.written,
            health.store.path,
            health.store.writes,
            health.store.errors
        ));
        check!(
            health.store.errors == 0,
            "state file errors: {}",
            health.store.errors
        );
        let curve = &health.curve;
        detail(format!(
            "CURVE: enabled {} clients {} accepted {} refused {}",
            curve.enabled, curve.clients, curve.accepted, curve.refused
        ));
        check!(
            curve.enabled == self.opts.curve.is_some(),
            "health says CURVE enabled {}, the client connected with keys: {}",
            curve.enabled,
            self.opts.curve.is_some()
        );
        check!(
            self.follower.job_seq_gaps == 0,
            "{} gap(s) in a job's job_seq",
            self.follower.job_seq_gaps
        );
        let bad = &self.follower.client.undecodable;
        check!(
            bad.is_empty(),
            "{} event(s) did not decode: {:?}",
            bad.len(),
            bad
        );
        detail(format!(
            "snapshots taken {}; DEALER re-created after a timeout {} time(s); every event decoded; job_seq without a gap",
            self.follower.snapshots, self.follower.client.dealer_resets
        ));
        if let Some(s) = self.sidecar.as_mut() {
            check!(s.exited().is_none(), "the sidecar exited by itself");
        }
        Ok(())
    }
}
