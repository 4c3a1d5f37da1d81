//! `rust-client fleet`: follow several sidecars at once (PROTOCOL.md 7.3, docs/deployment.md).
//!
//! The backend of "one sidecar per GPU host": one `DEALER` per sidecar (a `DEALER` connected to
//! several `ROUTER`s would send each request to the next one in turn) and one `SUB` per sidecar,
//! each with its own snapshot procedure (`Follower`), so `seq` and `run` are kept per sidecar. It
//! joins every sidecar, submits one job to each, and follows all of them until every job ended,
//! reading the streams in turn; each event must carry the `sidecar` name of its stream.

use crate::client::Client;
use crate::follower::{short, Follower, Step};
use crate::scenario::workflow;
use crate::wire::{Common, JobIdRequest, JobView, Request, SubmitRequest, SubmitResult};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub struct Options {
    /// (router, pub) of each sidecar.
    pub endpoints: Vec<(String, String)>,
    pub heartbeat: Duration,
    pub timeout: Duration,
    pub job_timeout: Duration,
    pub job_steps: u32,
}

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

pub fn run(opts: Options) -> Result<(), String> {
    let started = Instant::now();
    println!("[1] join every sidecar (7.2 per sidecar: subscribe, first event, snapshot)");
    let mut followers: Vec<Follower> = Vec::new();
    for (router, publisher) in &opts.endpoints {
        let client = Client::connect(router, publisher, opts.timeout, None)
            .map_err(|e| format!("connect {router}: {e}"))?;
        let (follower, snap) =
            Follower::join(client, opts.heartbeat).map_err(|e| format!("join {router}: {e}"))?;
        println!(
            "      {router}: sidecar {:?}, run {}, seq {}, instances {:?}",
            follower.sidecar,
            short(&snap.run),
            snap.seq,
            follower.instances.keys().collect::<Vec<_>>()
        );
        followers.push(follower);
    }
    let names: BTreeSet<&str> = followers.iter().map(|f| f.sidecar.as_str()).collect();
    check!(
        names.len() == followers.len() && !names.contains(""),
        "sidecar names must be set and unique across the fleet, got {names:?}"
    );

    println!("[2] submit one job to each sidecar, on its own DEALER");
    let mut jobs = Vec::new();
    for (n, follower) in followers.iter_mut().enumerate() {
        let job_id = format!("rust-fleet-{}-{}", std::process::id(), follower.sidecar);
        let request = Request::Submit(SubmitRequest {
            common: Common::default(),
            workflow: workflow(n as u64 + 1, opts.job_steps),
            job_id: Some(job_id.clone()),
            instance: follower.instances.keys().next().cloned(),
            client_data: json!({"backend": "rust-client fleet"}),
            preview_interval_s: None,
            queue_anyway: false,
            files: None,
        });
        let reply = follower
            .client
            .request::<SubmitResult>(request)
            .map_err(|e| format!("submit to {}: {e}", follower.sidecar))?;
        check!(
            reply.ok,
            "submit to {}: {:?}",
            follower.sidecar,
            reply.error.map(|e| e.code)
        );
        println!("      {job_id} -> sidecar {}", follower.sidecar);
        jobs.push(job_id);
    }

    println!("[3] follow every sidecar at once until each job ended");
    let count = followers.len();
    let mut ended: Vec<Option<String>> = vec![None; count];
    let mut events = vec![0usize; count];
    let mut job_events = vec![0usize; count];
    // Job events of the others seen while a job was still running: the streams were read together.
    let mut interleaved = 0usize;
    let deadline = Instant::now() + opts.job_timeout;
    while ended.iter().any(Option::is_none) {
        check!(
            Instant::now() < deadline,
            "jobs not all ended within {:?}: {ended:?}",
            opts.job_timeout
        );
        for (n, follower) in followers.iter_mut().enumerate() {
            let step = follower
                .next(Duration::from_millis(10))
                .map_err(|e| format!("sidecar {}: {e}", follower.sidecar))?;
            match step {
                Some(Step::Event(event)) => {
                    check!(
                        event.sidecar == follower.sidecar,
                        "an event of sidecar {:?} on the stream of {:?}",
                        event.sidecar,
                        follower.sidecar
                    );
                    events[n] += 1;
                    if event.is_job(&jobs[n]) {
                        job_events[n] += 1;
                        if ended
                            .iter()
                            .enumerate()
                            .any(|(m, e)| m != n && e.is_none() && job_events[m] > 0)
                        {
                            interleaved += 1;
                        }
                        if event.is_final() {
                            ended[n] = Some(event.kind.clone());
                        }
                    }
                }
                Some(Step::Resnapshot(snap)) => {
                    println!(
                        "      sidecar {}: re-snapshot ({})",
                        follower.sidecar, snap.reason
                    );
                    if ended[n].is_none() && !snap.jobs.iter().any(|j| j.job_id == jobs[n]) {
                        let view = follower
                            .client
                            .request::<JobView>(Request::Job(JobIdRequest {
                                common: Common::default(),
                                job_id: jobs[n].clone(),
                            }))
                            .map_err(|e| format!("job: {e}"))?;
                        ended[n] = view.result.map(|v| format!("job.{}", v.state));
                    }
                }
                None => {}
            }
        }
    }
    for (n, follower) in followers.iter().enumerate() {
        println!(
            "      sidecar {}: {} events in seq order (next expected {}), {} of its job, {}, {} snapshot(s)",
            follower.sidecar,
            events[n],
            follower.expected,
            job_events[n],
            ended[n].as_deref().unwrap_or("?"),
            follower.snapshots
        );
        check!(
            ended[n].as_deref() == Some("job.completed"),
            "job {} ended {:?}",
            jobs[n],
            ended[n]
        );
    }
    check!(
        interleaved > 0,
        "no job event of one sidecar arrived while another's job ran: not followed at once"
    );
    println!(
        "rust-client: fleet: followed {count} sidecars at once, all 3 steps passed in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
