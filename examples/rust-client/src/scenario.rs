//! The backend's day, step by step: join, submit and follow, a job with an input file, cancel,
//! pause and resume, bad requests, and a sidecar restart in the middle of a job. Each step prints
//! one line with its time, and the facts it checked; the first broken promise ends the run with
//! `FAIL`.

use crate::client::{now_ns, outsider, Client};
use crate::curve::CurveKeys;
use crate::follower::{short, Follower, Resnapshot, Step};
use crate::sidecar::Sidecar;
use crate::wire::{
    Common, Data, Event, HealthResult, JobIdRequest, JobView, Reply, Request, SubmitRequest,
    SubmitResult,
};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

pub struct Options {
    pub router: String,
    pub publisher: String,
    pub sidecar: Option<String>,
    pub sidecar_log: Option<String>,
    pub instance: Option<String>,
    pub heartbeat: Duration,
    pub timeout: Duration,
    pub job_timeout: Duration,
    pub job_steps: u32,
    pub cancel_steps: u32,
    pub restart_steps: u32,
    /// Restart (SIGTERM) when the job's sampler has done this fraction of its steps.
    pub restart_at: f64,
    /// Then restart again (SIGKILL) at this fraction (0: no second restart).
    pub kill_at: f64,
    /// The sidecar runs with CURVE: connect with these keys (curve.rs).
    pub curve: Option<CurveKeys>,
}

type Outcome<T> = Result<T, String>;

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

mod files;
mod pausing;
mod restart;
mod steps;

fn detail(text: impl AsRef<str>) {
    println!("      {}", text.as_ref());
}

/// ComfyUI's default text-to-image graph ("Save (API Format)"), `steps` sampler steps.
pub fn workflow(seed: u64, steps: u32) -> Map<String, Value> {
    let graph = json!({
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}},
        "6": {"class_type": "CLIPTextEncode",
              "inputs": {"text": format!("a lighthouse at dusk, oil painting, take {seed}"), "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "3": {"class_type": "KSampler",
              "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
                         "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                         "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "rust-client", "images": ["8", 0]}}
    });
    match graph {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

/// What the client saw of one job: its events in order, across runs.
#[derive(Default)]
struct Trace {
    events: Vec<Event>,
    /// (run, percent) of every job.progress.
    percents: Vec<(String, f64)>,
}

impl Trace {
    fn record(&mut self, event: &Event) {
        if let Data::JobProgress(p) = &event.data {
            self.percents.push((event.run.clone(), p.percent));
        }
        self.events.push(event.clone());
    }

    fn kinds(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.kind.as_str()).collect()
    }

    /// Percentages must never go down, whatever the run.
    fn check_monotonic(&self) -> Outcome<()> {
        for pair in self.percents.windows(2) {
            let ((run_a, a), (run_b, b)) = (&pair[0], &pair[1]);
            if b < a {
                return Err(format!(
                    "job.progress went backwards: {a} (run {}) then {b} (run {}); {}",
                    short(run_a),
                    short(run_b),
                    self.percent_summary()
                ));
            }
        }
        Ok(())
    }

    fn runs(&self) -> usize {
        let mut runs: Vec<&str> = self.events.iter().map(|e| e.run.as_str()).collect();
        runs.dedup();
        runs.len()
    }

    /// Per run: how many values, and the first and last.
    fn percent_summary(&self) -> String {
        let mut parts: Vec<(String, usize, f64, f64)> = Vec::new();
        for (run, p) in &self.percents {
            match parts.last_mut() {
                Some(last) if last.0 == *run => {
                    last.1 += 1;
                    last.3 = *p;
                }
                _ => parts.push((run.clone(), 1, *p, *p)),
            }
        }
        let parts: Vec<String> = parts
            .iter()
            .map(|(run, n, first, last)| {
                format!("[run {}] {n} values {first} .. {last}", short(run))
            })
            .collect();
        parts.join(", ")
    }

    fn percent_list(&self) -> String {
        let mut out = Vec::new();
        let mut run = "";
        for (r, p) in &self.percents {
            if r != run {
                out.push(format!("[run {}]", short(r)));
                run = r;
            }
            out.push(format!("{p}"));
        }
        out.join(" ")
    }
}

pub struct Scenario {
    opts: Options,
    follower: Follower,
    sidecar: Option<Sidecar>,
    seed: u64,
    job_a: String,
}

pub fn run(opts: Options) -> Outcome<()> {
    let started = Instant::now();
    let mut sidecar = match &opts.sidecar {
        Some(command) => Some(Sidecar::new(command, opts.sidecar_log.clone())?),
        None => None,
    };
    let mut steps = 0;
    let t = Instant::now();
    if let Some(s) = sidecar.as_mut() {
        let pid = s.start()?;
        detail(format!("started the sidecar (pid {pid})"));
    }
    let client = Client::connect(&opts.router, &opts.publisher, opts.timeout, opts.curve.clone())
        .map_err(|e| format!("connect: {e}"))?;
    let (follower, snap) =
        Follower::join(client, opts.heartbeat).map_err(|e| format!("join: {e}"))?;
    let mut scenario = Scenario {
        seed: (now_ns() as u64) % 1_000_000_007,
        job_a: format!("rust-{}-a", std::process::id()),
        opts,
        follower,
        sidecar,
    };
    let result = (|| {
        scenario.step(
            &mut steps,
            "join (7.2: subscribe, first event, snapshot)",
            t,
            |s| s.join(&snap),
        )?;
        if scenario.opts.curve.is_some() {
            scenario.step(
                &mut steps,
                "CURVE: no keys, or a key not listed: no reply, no event; the sidecar keeps serving",
                Instant::now(),
                Scenario::curve_outsiders,
            )?;
        }
        scenario.step(
            &mut steps,
            "submit and follow to job.completed",
            Instant::now(),
            Scenario::submit_and_follow,
        )?;
        scenario.step(
            &mut steps,
            "submit with an input file (files: LoadImage), follow to job.completed",
            Instant::now(),
            Scenario::submit_with_file,
        )?;
        scenario.step(
            &mut steps,
            "cancel a running job",
            Instant::now(),
            Scenario::cancel_running,
        )?;
        scenario.step(
            &mut steps,
            "pause a running job, then resume it from ComfyUI's cache",
            Instant::now(),
            Scenario::pause_and_resume,
        )?;
        scenario.step(
            &mut steps,
            "invalid requests get ok:false, the sidecar keeps serving",
            Instant::now(),
            Scenario::invalid_requests,
        )?;
        scenario.step(
            &mut steps,
            "sidecar restarts mid-job (SIGTERM, then SIGKILL), re-snapshot, follow to the end",
            Instant::now(),
            Scenario::restart_mid_job,
        )?;
        scenario.step(
            &mut steps,
            "health and the stream after it all",
            Instant::now(),
            Scenario::closing_checks,
        )
    })();
    if let Some(mut s) = scenario.sidecar.take() {
        match s.stop(libc::SIGTERM, Duration::from_secs(10)) {
            Ok(status) => detail(format!("stopped the sidecar ({status})")),
            Err(e) => detail(format!("stopping the sidecar: {e}")),
        }
    }
    result?;
    println!(
        "rust-client: all {steps} steps passed in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

impl Scenario {
    fn step(
        &mut self,
        count: &mut u32,
        name: &str,
        t: Instant,
        body: impl FnOnce(&mut Scenario) -> Outcome<()>,
    ) -> Outcome<()> {
        *count += 1;
        println!("[{count}] {name}");
        let result = body(self);
        let took = t.elapsed().as_secs_f64();
        match &result {
            Ok(()) => println!("    ok ({took:.2} s)"),
            Err(e) => println!("    FAIL ({took:.2} s): {e}"),
        }
        result.map_err(|e| format!("step {count} ({name}): {e}"))
    }

    /// A DEALER and a SUB without keys, then with a fresh key the sidecar does not list: neither
    /// DEALER ever becomes writable (`ZMQ_IMMEDIATE`: no handshake completed) and neither SUB
    /// receives an event, during two heartbeat intervals each; the allowed client is answered.
    fn curve_outsiders(&mut self) -> Outcome<()> {
        let keys = self.opts.curve.clone().ok_or("no CURVE keys")?;
        let wait = self.opts.heartbeat * 2;
        let stranger = keys.stranger()?;
        for (who, curve) in [("no keys", None), ("a key not listed", Some(&stranger))] {
            let (writable, events) = outsider(&self.opts.router, &self.opts.publisher, curve, wait)
                .map_err(|e| format!("{who}: {e}"))?;
            detail(format!(
                "{who}: DEALER writable {writable}, {events} event(s) in {wait:?}"
            ));
            check!(!writable, "{who}: the DEALER connected (the sidecar let it in)");
            check!(events == 0, "{who}: the SUB received {events} event(s)");
        }
        let health: HealthResult = self.ok(Request::Health(Common::default()))?;
        check!(
            health.curve.enabled && health.curve.refused >= 1,
            "health after the refusals: {:?}",
            health.curve
        );
        Ok(())
    }

    // Requests -----------------------------------------------------------------------------

    fn request<R: serde::de::DeserializeOwned>(&mut self, request: Request) -> Outcome<Reply<R>> {
        let op = request.op();
        self.follower
            .client
            .request(request)
            .map_err(|e| format!("{op}: {e}"))
    }

    fn ok<R: serde::de::DeserializeOwned>(&mut self, request: Request) -> Outcome<R> {
        let op = request.op();
        let reply = self.request::<R>(request)?;
        match (reply.ok, reply.result, reply.error) {
            (true, Some(result), _) => Ok(result),
            (_, _, Some(error)) => Err(format!("{op}: {} ({})", error.code, error.message)),
            _ => Err(format!("{op}: a reply with neither result nor error")),
        }
    }

    fn submit(&mut self, job_id: &str, steps: u32) -> Outcome<SubmitResult> {
        self.seed += 1;
        let request = Request::Submit(SubmitRequest {
            common: Common::default(),
            workflow: workflow(self.seed, steps),
            job_id: Some(job_id.to_string()),
            instance: self.opts.instance.clone(),
            client_data: json!({"backend": "rust-client", "steps": steps}),
            preview_interval_s: None,
            queue_anyway: false,
            files: None,
        });
        self.ok(request)
    }

    fn job(&mut self, job_id: &str) -> Outcome<JobView> {
        self.ok(Request::Job(JobIdRequest {
            common: Common::default(),
            job_id: job_id.to_string(),
        }))
    }

    // Events -------------------------------------------------------------------------------

    /// Follow the stream until `done` says so; re-snapshots are handed to `on_snapshot`.
    fn follow(
        &mut self,
        what: &str,
        mut on_event: impl FnMut(&Event) -> Outcome<bool>,
        mut on_snapshot: impl FnMut(&Resnapshot) -> Outcome<bool>,
    ) -> Outcome<()> {
        let deadline = Instant::now() + self.opts.job_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "timed out after {:?} waiting for {what}",
                    self.opts.job_timeout
                ));
            }
            let step = self
                .follower
                .next(left)
                .map_err(|e| format!("while waiting for {what}: {e}"))?;
            let done = match step {
                Some(Step::Event(event)) => on_event(&event)?,
                Some(Step::Resnapshot(snap)) => {
                    detail(format!(
                        "re-snapshot ({}): run {} -> {} seq {}, {} unfinished job(s), {} buffered event(s) dropped",
                        snap.reason,
                        short(snap.previous_run.as_deref().unwrap_or("-")),
                        short(&snap.run),
                        snap.seq,
                        snap.jobs.len(),
                        snap.dropped
                    ));
                    on_snapshot(&snap)?
                }
                None => false,
            };
            if done {
                return Ok(());
            }
        }
    }

    /// Follow one job to its final event, recording what it published.
    fn follow_job(&mut self, job_id: &str, trace: &mut Trace) -> Outcome<()> {
        let id = job_id.to_string();
        self.follow(
            &format!("the end of {job_id}"),
            |event| {
                if let (Data::Preview(p), true) = (&event.data, event.is_job(&id)) {
                    if p.inline {
                        let got = event.image.as_ref().map(|i| i.len() as u64);
                        check!(
                            got == Some(p.size_bytes),
                            "inline preview {}: frame 2 has {got:?} bytes, size_bytes {}",
                            p.index,
                            p.size_bytes
                        );
                    }
                }
                if !event.is_job(&id) {
                    return Ok(false);
                }
                trace.record(event);
                Ok(event.is_final())
            },
            |snap| {
                // The job ended while we were away: step 5 read its final view.
                for (jid, view) in &snap.reconciled {
                    if *jid == id {
                        return Err(format!(
                            "{id} ended unseen (reconciled as {:?})",
                            view.as_ref().map(|v| &v.state)
                        ));
                    }
                }
                Ok(false)
            },
        )
    }
}
