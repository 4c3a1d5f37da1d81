//! The snapshot procedure of PROTOCOL.md 7.2 (the ZeroMQ guide's Clone pattern).
//!
//! `Follower::join` does steps 1-4; `Follower::next` does step 6 (and 7): it hands out events
//! in `seq` order, one at a time, after applying them to the local state, and re-snapshots
//! (steps 3-5) when the `run` changes, when `seq` jumps, or after a silence.

use crate::client::{Client, Error, Result};
use crate::wire::{
    Common, Data, Event, InstanceView, JobView, Request, SnapshotResult, StoredOutput,
};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// What `Follower::next` yields.
#[derive(Debug)]
pub enum Step {
    /// An event, already applied to the state.
    Event(Box<Event>),
    /// The state was replaced by a new snapshot.
    Resnapshot(Resnapshot),
}

#[derive(Debug, Clone)]
pub struct Resnapshot {
    pub reason: String,
    pub previous_run: Option<String>,
    pub run: String,
    pub seq: u64,
    /// Events received before the reply that the snapshot already covered (step 4).
    pub dropped: usize,
    /// The snapshot's unfinished jobs.
    pub jobs: Vec<JobView>,
    /// Step 5: jobs the client followed that the snapshot no longer lists, with the final
    /// JobView the `job` request returned (None: `job_not_found`).
    pub reconciled: Vec<(String, Option<JobView>)>,
}

pub struct Follower {
    pub client: Client,
    /// The sidecar's name (`sidecar` of its snapshot; "" from an older sidecar), which every
    /// event of its stream carries (PROTOCOL.md 7.3).
    pub sidecar: String,
    pub run: Option<String>,
    /// The next `seq` expected (7.2 step 6).
    pub expected: u64,
    pub instances: BTreeMap<String, InstanceView>,
    /// Unfinished jobs, as the snapshot and the events since describe them.
    pub jobs: BTreeMap<String, JobView>,
    /// Events ready to apply, after a snapshot filtered the buffer.
    ready: VecDeque<Event>,
    /// Liveness (7.2 step 7): after this long without any event, the next one re-snapshots.
    silence: Duration,
    last_event: Instant,
    stale: bool,
    pub snapshots: u32,
    /// Job-family events whose `job_seq` was not the job's previous one + 1 (a job's own gap,
    /// what a `job.`-filtered subscriber would detect; 0 when every event arrives).
    pub job_seq_gaps: u32,
}

impl Follower {
    /// Steps 1-4: the SUB is connected (by `Client::connect`); wait for a first event, then
    /// snapshot.
    pub fn join(client: Client, heartbeat: Duration) -> Result<(Follower, Resnapshot)> {
        let mut follower = Follower {
            client,
            sidecar: String::new(),
            run: None,
            expected: 0,
            instances: BTreeMap::new(),
            jobs: BTreeMap::new(),
            ready: VecDeque::new(),
            silence: heartbeat * 3,
            last_event: Instant::now(),
            stale: false,
            snapshots: 0,
            job_seq_gaps: 0,
        };
        // Step 2: past the slow-joiner window. A heartbeat comes within `heartbeat` (once the
        // sidecar is up: allow for its start, too).
        let wait = heartbeat * 5 + follower.client.timeout;
        match follower.client.next_event(wait)? {
            Some(first) => follower.client.buffer.push_front(first),
            None => {
                return Err(Error::Timeout {
                    op: "first event".into(),
                    after: wait,
                })
            }
        }
        let snap = follower.snapshot("join")?;
        Ok((follower, snap))
    }

    /// Step 6: the next event in order (applied), a re-snapshot, or None after `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Step>> {
        let deadline = Instant::now() + timeout;
        loop {
            let event = match self.ready.pop_front() {
                Some(event) => event,
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.client.next_event(left.min(self.silence))? {
                        Some(event) => event,
                        None => {
                            if self.last_event.elapsed() >= self.silence {
                                self.stale = true; // step 7: re-snapshot when events return
                            }
                            if Instant::now() >= deadline {
                                return Ok(None);
                            }
                            continue;
                        }
                    }
                }
            };
            self.last_event = Instant::now();
            if self.run.as_deref() != Some(event.run.as_str()) {
                let reason = format!("new run {} (the sidecar restarted)", short(&event.run));
                self.client.buffer.push_front(event);
                return self.snapshot(&reason).map(|s| Some(Step::Resnapshot(s)));
            }
            if self.stale {
                let reason = "events resumed after a silence".to_string();
                self.client.buffer.push_front(event);
                return self.snapshot(&reason).map(|s| Some(Step::Resnapshot(s)));
            }
            if event.seq > self.expected {
                let reason = format!("gap: expected seq {}, got {}", self.expected, event.seq);
                self.client.buffer.push_front(event);
                return self.snapshot(&reason).map(|s| Some(Step::Resnapshot(s)));
            }
            if event.seq < self.expected {
                continue; // a duplicate of what the snapshot reflects
            }
            self.expected += 1;
            self.apply(&event);
            return Ok(Some(Step::Event(Box::new(event))));
        }
    }

    /// Steps 3-5.
    fn snapshot(&mut self, reason: &str) -> Result<Resnapshot> {
        let reply = self
            .client
            .request::<SnapshotResult>(Request::Snapshot(Common::default()))?;
        let snap = match (reply.ok, reply.result) {
            (true, Some(snap)) => snap,
            (_, _) => {
                return Err(Error::Decode(format!(
                    "snapshot failed: {:?}",
                    reply.error.map(|e| e.code)
                )))
            }
        };
        self.snapshots += 1;
        // Step 4: everything received up to the reply (the old ready queue too) is either
        // covered by the snapshot, from another run, or to be applied in order.
        let mut dropped = 0;
        let mut keep = VecDeque::new();
        let pending: Vec<Event> = self
            .ready
            .drain(..)
            .chain(self.client.buffer.drain(..))
            .collect();
        for event in pending {
            if event.run != snap.run || event.seq <= snap.seq {
                dropped += 1;
            } else {
                keep.push_back(event);
            }
        }
        self.ready = keep;
        let previous_run = self.run.replace(snap.run.clone());
        self.sidecar = snap.sidecar.clone();
        self.expected = snap.seq + 1;
        self.stale = false;
        self.instances = snap
            .instances
            .iter()
            .map(|i| (i.name.clone(), i.clone()))
            .collect();
        let followed: Vec<String> = self.jobs.keys().cloned().collect();
        self.jobs = snap
            .jobs
            .iter()
            .map(|j| (j.job_id.clone(), j.clone()))
            .collect();
        // Step 5: a followed job missing from the snapshot has ended (or was forgotten).
        let mut reconciled = Vec::new();
        for job_id in followed {
            if self.jobs.contains_key(&job_id) {
                continue;
            }
            let reply =
                self.client
                    .request::<JobView>(Request::Job(crate::wire::JobIdRequest {
                        common: Common::default(),
                        job_id: job_id.clone(),
                    }))?;
            reconciled.push((job_id, reply.result));
        }
        Ok(Resnapshot {
            reason: reason.to_string(),
            previous_run,
            run: snap.run,
            seq: snap.seq,
            dropped,
            jobs: snap.jobs,
            reconciled,
        })
    }

    /// Keep the local view of instances and unfinished jobs up to date.
    fn apply(&mut self, event: &Event) {
        if let Data::InstanceStatus(status) = &event.data {
            if let Some(view) = self.instances.get_mut(&event.instance) {
                view.state = status.state.clone();
                view.version = status.version.clone().or_else(|| view.version.clone());
                view.last_error = status.error.clone();
            }
            return;
        }
        let job_id = match &event.job_id {
            Some(id) => id.clone(),
            None => return,
        };
        if event.is_final() {
            self.jobs.remove(&job_id);
            return;
        }
        if let Data::JobAccepted(accepted) = &event.data {
            self.jobs.insert(
                job_id.clone(),
                accepted_view(event, accepted.instance.clone()),
            );
        }
        let job = match self.jobs.get_mut(&job_id) {
            Some(job) => job,
            None => return,
        };
        job.updated_ns = event.ts;
        if let Some(n) = event.job_seq {
            if n != job.job_seq + 1 {
                self.job_seq_gaps += 1;
            }
            job.job_seq = n;
        }
        match &event.data {
            Data::JobQueued(q) => {
                job.state = "queued".into();
                job.prompt_id = Some(q.prompt_id.clone());
            }
            Data::JobStarted(_) => job.state = "started".into(),
            Data::JobResubmitted(r) => {
                job.prompt_id = Some(r.prompt_id.clone());
                job.attempts = r.attempt;
                job.outputs.clear();
            }
            Data::JobPaused(_) => {
                job.state = "paused".into();
                job.current_node = None;
            }
            Data::JobResumed(r) => {
                job.state = "accepted".into();
                job.instance = r.instance.clone();
                job.prompt_id = None;
            }
            Data::JobProgress(p) => job.percent = p.percent,
            Data::NodeExecuting(n) => job.current_node = Some(n.node.clone()),
            Data::NodeOutput(o) => {
                job.outputs.insert(o.node.clone(), o.output.clone());
            }
            Data::OutputStored(s) | Data::OutputFailed(s) => {
                let same = |e: &&mut StoredOutput| {
                    (&e.node, &e.filename, &e.subfolder, &e.folder, &e.prompt_id)
                        == (&s.node, &s.filename, &s.subfolder, &s.folder, &s.prompt_id)
                };
                match job.stored.iter_mut().find(same) {
                    Some(entry) => *entry = s.clone(),
                    None => job.stored.push(s.clone()),
                }
            }
            _ => {}
        }
    }
}

fn accepted_view(event: &Event, instance: String) -> JobView {
    JobView {
        job_id: event.job_id.clone().unwrap_or_default(),
        instance,
        state: "accepted".into(),
        prompt_id: None,
        percent: 0.0,
        current_node: None,
        created_ns: event.ts,
        updated_ns: event.ts,
        outputs: Default::default(),
        error: None,
        client_data: serde_json::Value::Null,
        cancel_requested: false,
        attempts: 0,
        job_seq: 0,
        pause_requested: false,
        stored: Vec::new(),
    }
}

pub fn short(run: &str) -> &str {
    &run[..run.len().min(8)]
}
