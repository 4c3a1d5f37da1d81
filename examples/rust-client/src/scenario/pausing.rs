//! Pause a running job and resume it (PROTOCOL.md 5.11, 5.12): held by the sidecar while paused,
//! resumed on the same instance, where ComfyUI's cache serves the nodes that had finished.

use super::{detail, Outcome, Scenario, Trace};
use crate::wire::{Common, Data, JobIdRequest, PauseResult, Request, ResumeRequest, ResumeResult};

const SAMPLER: &str = "3";
const PROMPT_TEXT: &str = "6"; // its text names the seed: it runs for this job, not cached before

impl Scenario {
    pub(super) fn pause_and_resume(&mut self) -> Outcome<()> {
        let job_id = format!("rust-{}-p", std::process::id());
        self.submit(&job_id, self.opts.job_steps)?;
        let mut trace = Trace::default();
        let id = job_id.clone();
        self.follow(
            &format!("{job_id}'s sampler to run"),
            |e| {
                if !e.is_job(&id) {
                    return Ok(false);
                }
                trace.record(e);
                check!(!e.is_final(), "{id} ended before it was paused: {}", e.kind);
                Ok(matches!(&e.data, Data::NodeProgress(p) if p.node.as_deref() == Some(SAMPLER) && p.value >= 2.0))
            },
            |_| Ok(false),
        )?;
        let pause: PauseResult = self.ok(Request::Pause(JobIdRequest {
            common: Common::default(),
            job_id: job_id.clone(),
        }))?;
        check!(
            pause.state == "started" && pause.pause_sent && !pause.already_requested,
            "pause reply: state {} sent {} already {}",
            pause.state,
            pause.pause_sent,
            pause.already_requested
        );
        let mut paused = None;
        self.follow(
            &format!("{job_id} to be paused"),
            |e| {
                if !e.is_job(&id) {
                    return Ok(false);
                }
                trace.record(e);
                check!(!e.is_final(), "{id} ended instead of pausing: {}", e.kind);
                if let Data::JobPaused(p) = &e.data {
                    paused = Some(p.clone());
                    return Ok(true);
                }
                Ok(false)
            },
            |_| Ok(false),
        )?;
        let paused = paused.expect("followed to job.paused");
        let view = self.job(&job_id)?;
        check!(
            view.state == "paused" && view.percent == paused.percent && !view.pause_requested,
            "job while paused: {} at {} (job.paused said {}), pause_requested {}",
            view.state,
            view.percent,
            paused.percent,
            view.pause_requested
        );
        detail(format!(
            "pause ({:?}) -> job.paused confirmed_by {} in node {:?} at {} %, outputs so far {:?}",
            pause.method,
            paused.confirmed_by,
            paused.node,
            paused.percent,
            paused.outputs.keys().collect::<Vec<_>>()
        ));

        let mark = trace.events.len();
        let resumed: ResumeResult = self.ok(Request::Resume(ResumeRequest {
            common: Common::default(),
            job_id: job_id.clone(),
            instance: None,
        }))?;
        check!(
            !resumed.held && resumed.job.prompt_id != paused.prompt_id,
            "resume reply: held {} prompt {:?}",
            resumed.held,
            resumed.job.prompt_id
        );
        self.follow_job(&job_id, &mut trace)?;
        let after = &trace.events[mark..];
        let kinds: Vec<&str> = after.iter().map(|e| e.kind.as_str()).collect();
        check!(
            kinds.first() == Some(&"job.resumed") && kinds.last() == Some(&"job.completed"),
            "after resume: {kinds:?}"
        );
        let cached: Vec<String> = after
            .iter()
            .filter_map(|e| match &e.data {
                Data::NodeCached(c) => Some(c.nodes.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        check!(
            cached.iter().any(|n| n == PROMPT_TEXT),
            "node {PROMPT_TEXT}, finished before the pause, not served from cache on resume: {cached:?}"
        );
        let first_step = after.iter().find_map(|e| match &e.data {
            Data::NodeProgress(p) if p.node.as_deref() == Some(SAMPLER) => Some(p.value),
            _ => None,
        });
        check!(
            first_step == Some(1.0),
            "the interrupted sampler restarts from its first step, got {first_step:?}"
        );
        trace.check_monotonic()?;
        let last = trace.percents.last().map(|p| p.1);
        check!(last == Some(100.0), "last job.progress {last:?}, not 100.0");
        detail(format!(
            "resume -> job.resumed, job.queued; cached {cached:?}; sampler from step 1; job.completed; percents {}",
            trace.percent_list()
        ));
        Ok(())
    }
}
