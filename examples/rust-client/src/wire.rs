//! The comfy-bridge wire contract as typed serde structs, written from docs/PROTOCOL.md.
//!
//! Rules the structs follow (PROTOCOL.md sections 3 and 10):
//! - unknown keys are ignored (serde's default: no `deny_unknown_fields` anywhere);
//! - a key the document gives a default for is `#[serde(default)]` (an `Option` is read as
//!   `None` when absent), so an older sidecar that does not send it still decodes;
//! - integers are read into `u64`/`i64` whatever MessagePack width they arrive in; `int | float`
//!   fields are read as `f64`;
//! - `any` values (outputs, client_data, details) are `serde_json::Value`;
//! - an event's `data` is decoded by its `type`; an unknown type is skipped, not an error.
//!
//! Requests are encoded with `rmp_serde::to_vec_named` (maps with string keys); plain
//! `rmp_serde::to_vec` would write structs as arrays, which the sidecar refuses.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub type AnyMap = Map<String, Value>;

// ---------------------------------------------------------------------------------------------
// Requests (5.1, 5.4-5.10). Serialize for sending; Deserialize to read the golden fixtures.

/// Fields every request carries.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Common {
    /// The client's request id, echoed in the reply.
    #[serde(default)]
    pub id: Option<String>,
    /// Unix ns after which the sidecar must not act on the request (issue 8; an older sidecar
    /// ignores it, as it ignores every field it does not know).
    #[serde(default)]
    pub deadline_ns: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SubmitRequest {
    #[serde(flatten)]
    pub common: Common,
    pub workflow: AnyMap,
    #[serde(default)]
    pub job_id: Option<String>,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub client_data: Value,
    #[serde(default)]
    pub preview_interval_s: Option<f64>,
    #[serde(default)]
    pub queue_anyway: bool,
    /// The job's input files (5.4 "Input files"): name -> raw bytes, sent as MessagePack `bin`.
    /// Left off the wire when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, Bin>>,
}

/// Raw bytes that travel as MessagePack `bin`. serde writes a plain `Vec<u8>` as an array of
/// integers, which the sidecar refuses for `files`; `serialize_bytes` writes `bin`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bin(pub Vec<u8>);

impl Serialize for Bin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BinVisitor;
        impl<'de> serde::de::Visitor<'de> for BinVisitor {
            type Value = Bin;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("MessagePack bin")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bin, E> {
                Ok(Bin(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bin, E> {
                Ok(Bin(v))
            }
        }
        deserializer.deserialize_bytes(BinVisitor)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JobIdRequest {
    #[serde(flatten)]
    pub common: Common,
    pub job_id: String,
}

/// `resume` (5.12): `instance` nil lets the sidecar choose (the job's own when connected).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ResumeRequest {
    #[serde(flatten)]
    pub common: Common,
    pub job_id: String,
    #[serde(default)]
    pub instance: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JobsRequest {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub instance: Option<String>,
}

/// One request body; `op` is the tag.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Submit(SubmitRequest),
    Cancel(JobIdRequest),
    Job(JobIdRequest),
    Jobs(JobsRequest),
    Health(Common),
    Snapshot(Common),
    Ping(Common),
    Pause(JobIdRequest),
    Resume(ResumeRequest),
}

impl Request {
    pub fn op(&self) -> &'static str {
        match self {
            Request::Submit(_) => "submit",
            Request::Cancel(_) => "cancel",
            Request::Job(_) => "job",
            Request::Jobs(_) => "jobs",
            Request::Health(_) => "health",
            Request::Snapshot(_) => "snapshot",
            Request::Ping(_) => "ping",
            Request::Pause(_) => "pause",
            Request::Resume(_) => "resume",
        }
    }

    pub fn common_mut(&mut self) -> &mut Common {
        match self {
            Request::Submit(r) => &mut r.common,
            Request::Cancel(r) | Request::Job(r) | Request::Pause(r) => &mut r.common,
            Request::Resume(r) => &mut r.common,
            Request::Jobs(r) => &mut r.common,
            Request::Health(c) | Request::Snapshot(c) | Request::Ping(c) => c,
        }
    }

    /// The body as it goes on the wire: a MessagePack map with string keys.
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }
}

/// A request with an arbitrary op and no other field: to provoke `unknown_op` or
/// `invalid_request` on purpose.
#[derive(Serialize, Debug)]
pub struct BareRequest<'a> {
    pub op: &'a str,
    pub id: &'a str,
}

// ---------------------------------------------------------------------------------------------
// Replies (5.2)

/// A reply body. `result` is present on success, `error` on failure.
#[derive(Deserialize, Debug)]
#[serde(bound = "R: DeserializeOwned")]
pub struct Reply<R> {
    #[serde(default)]
    pub id: Option<String>,
    pub ok: bool,
    #[serde(default = "none")]
    pub result: Option<R>,
    #[serde(default)]
    pub error: Option<ErrorBody>,
}

fn none<R>() -> Option<R> {
    None
}

/// What the client reads first from any reply, to match it with its request.
pub type ReplyHead = Reply<IgnoredAny>;

#[derive(Deserialize, Debug, Clone)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: AnyMap,
}

/// JobView (5.3).
#[derive(Deserialize, Debug, Clone)]
pub struct JobView {
    pub job_id: String,
    pub instance: String,
    pub state: String,
    pub prompt_id: Option<String>,
    pub percent: f64,
    pub current_node: Option<String>,
    pub created_ns: i64,
    pub updated_ns: i64,
    pub outputs: AnyMap,
    pub error: Option<JobFailed>,
    #[serde(default)]
    pub client_data: Value,
    #[serde(default)]
    pub cancel_requested: bool,
    #[serde(default = "one")]
    pub attempts: u64,
    /// Issue 8: the last per-job event number the view reflects (0 before any; absent before).
    #[serde(default)]
    pub job_seq: u64,
    /// Issue 10: a pause was accepted and has not taken effect yet (absent before: false).
    #[serde(default)]
    pub pause_requested: bool,
    /// Issue 10: the job's file outputs and their copies in the output store.
    #[serde(default)]
    pub stored: Vec<StoredOutput>,
}

fn one() -> u64 {
    1
}

impl JobView {
    pub fn is_final(&self) -> bool {
        matches!(self.state.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// InstanceView (5.3).
#[derive(Deserialize, Debug, Clone)]
pub struct InstanceView {
    pub name: String,
    pub url: String,
    pub state: String,
    pub client_id: String,
    pub version: Option<String>,
    pub last_connected_ns: Option<i64>,
    pub last_error: Option<String>,
    pub queue_remaining: i64,
    pub in_flight: i64,
    pub frames: u64,
    pub malformed: u64,
    pub unknown: u64,
    #[serde(default)]
    pub adapter: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct SubmitResult {
    pub job: JobView,
    pub duplicate: bool,
    /// Absent in a duplicate's reply: read as false.
    #[serde(default)]
    pub held: bool,
}

#[derive(Deserialize, Debug, Clone)]
pub struct CancelResult {
    pub job_id: String,
    pub state: String,
    pub cancel_sent: bool,
    pub already_requested: bool,
    pub method: Option<String>,
}

/// The result of `pause` (5.11).
#[derive(Deserialize, Debug, Clone)]
pub struct PauseResult {
    pub job_id: String,
    pub state: String,
    pub pause_sent: bool,
    pub already_requested: bool,
    pub method: Option<String>,
}

/// The result of `resume` (5.12).
#[derive(Deserialize, Debug, Clone)]
pub struct ResumeResult {
    pub job: JobView,
    pub held: bool,
}

#[derive(Deserialize, Debug, Clone)]
pub struct JobsResult {
    pub jobs: Vec<JobView>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct EventCounters {
    pub published: u64,
    pub dropped: BTreeMap<String, u64>,
    pub backlog: u64,
    pub backlog_peak: u64,
}

#[derive(Deserialize, Debug, Clone)]
pub struct PreviewCounters {
    pub store: String,
    pub queued: u64,
    pub written: u64,
    pub dropped: u64,
    pub failed: u64,
}

/// Issue 10: health's `outputs` (absent from older sidecars).
#[derive(Deserialize, Debug, Clone)]
pub struct OutputCounters {
    pub store: String,
    pub fetched: u64,
    pub failed: u64,
    pub pending: u64,
    pub bytes: u64,
    #[serde(default)]
    pub retries: u64,
}

#[derive(Deserialize, Debug, Clone)]
pub struct StoreCounters {
    pub path: String,
    pub writes: u64,
    pub errors: u64,
}

#[derive(Deserialize, Debug, Clone)]
pub struct HealthResult {
    pub run: String,
    pub seq: u64,
    pub instances: Vec<InstanceView>,
    pub events_published: u64,
    pub events: EventCounters,
    pub requests_served: u64,
    pub bad_requests: u64,
    pub previews: PreviewCounters,
    pub store: StoreCounters,
    #[serde(default)]
    pub outputs: Option<OutputCounters>,
    /// An extension (10): absent from older sidecars, read as CURVE off.
    #[serde(default)]
    pub curve: CurveCounters,
    /// Issue 13: the sidecar's name; "" from an older sidecar.
    #[serde(default)]
    pub sidecar: String,
}

/// health's `curve` (5.8): is CURVE on, how many client keys are allowed, handshakes let in and refused.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct CurveCounters {
    pub enabled: bool,
    pub clients: u64,
    pub accepted: u64,
    pub refused: u64,
}

#[derive(Deserialize, Debug, Clone)]
pub struct SnapshotResult {
    pub seq: u64,
    pub run: String,
    pub instances: Vec<InstanceView>,
    pub jobs: Vec<JobView>,
    /// Issue 13: the sidecar's name, the key of its events' stream (PROTOCOL.md 7.3).
    #[serde(default)]
    pub sidecar: String,
}

#[derive(Deserialize, Debug, Clone)]
pub struct PingResult {
    pub pong: bool,
    pub run: String,
    pub seq: u64,
}

/// Decode a reply body whose `result` is `R`.
pub fn decode_reply<R: DeserializeOwned>(body: &[u8]) -> Result<Reply<R>, String> {
    rmp_serde::from_slice(body).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Events (6.1, 6.4)

/// The envelope (frame 1) with its `data` still undecoded.
#[derive(Deserialize, Debug)]
pub struct EnvelopeHead {
    pub seq: u64,
    pub run: String,
    pub ts: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub instance: String,
    pub job_id: Option<String>,
    /// Issue 8: the job's own count of job-family events in this run; nil otherwise.
    #[serde(default)]
    pub job_seq: Option<u64>,
    pub data: IgnoredAny,
    /// Issue 13: the name of the sidecar that made the event; "" from an older sidecar.
    #[serde(default)]
    pub sidecar: String,
}

#[derive(Deserialize)]
#[serde(bound = "D: DeserializeOwned")]
struct DataOnly<D> {
    data: D,
}

#[derive(Deserialize, Debug, Clone)]
pub struct InstanceStatus {
    pub state: String,
    pub url: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub next_attempt_ns: Option<i64>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct Heartbeat {
    pub instances_up: u64,
    pub instances: u64,
    pub jobs_active: u64,
}

#[derive(Deserialize, Debug, Clone)]
pub struct JobAccepted {
    pub instance: String,
    #[serde(default)]
    pub client_data: Value,
}

#[derive(Deserialize, Debug, Clone)]
pub struct JobQueued {
    pub prompt_id: String,
    #[serde(default)]
    pub number: Option<i64>,
    #[serde(default)]
    pub client_data: Value,
}

#[derive(Deserialize, Debug, Clone)]
pub struct JobStarted {
    pub prompt_id: String,
    #[serde(default)]
    pub client_data: Value,
}

#[derive(Deserialize, Debug, Clone)]
pub struct NodeExecuting {
    pub node: String,
    #[serde(default)]
    pub class_type: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub display_node: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct NodeCached {
    pub nodes: Vec<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct NodeProgress {
    pub node: Option<String>,
    pub value: f64,
    pub max: f64,
}

/// Issue 8: ComfyUI's progress text (family `progress`).
#[derive(Deserialize, Debug, Clone)]
pub struct NodeText {
    pub node: Option<String>,
    pub text: String,
}

#[derive(Deserialize, Debug, Clone)]
pub struct JobProgress {
    pub percent: f64,
}

#[derive(Deserialize, Debug, Clone)]
pub struct NodeOutput {
    pub node: String,
    pub output: Value,
    #[serde(default)]
    pub display_node: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct Preview {
    pub node: Option<String>,
    pub format: String,
    pub size_bytes: u64,
    pub index: u64,
    #[serde(default = "yes")]
    pub inline: bool,
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
}

fn yes() -> bool {
    true
}

/// Issue 10: one file output and its stored copy (`output.stored`, `output.failed`, `stored`).
#[derive(Deserialize, Debug, Clone)]
pub struct StoredOutput {
    pub node: String,
    pub filename: String,
    pub subfolder: String,
    #[serde(rename = "type")]
    pub folder: String,
    /// `pending`, `stored` or `failed`.
    pub state: String,
    #[serde(default)]
    pub prompt_id: Option<String>,
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub attempts: u64,
}

#[derive(Deserialize, Debug, Clone)]
pub struct JobCompleted {
    pub prompt_id: String,
    pub outputs: AnyMap,
    #[serde(default)]
    pub client_data: Value,
    #[serde(default)]
    pub stored: Vec<StoredOutput>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct JobFailed {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub prompt_id: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub node_type: Option<String>,
    #[serde(default)]
    pub exception_type: Option<String>,
    #[serde(default)]
    pub traceback: Vec<String>,
    #[serde(default)]
    pub details: AnyMap,
    #[serde(default)]
    pub outputs: AnyMap,
    #[serde(default)]
    pub client_data: Value,
    #[serde(default)]
    pub stored: Vec<StoredOutput>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct JobCancelled {
    pub confirmed_by: String,
    #[serde(default)]
    pub prompt_id: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub node_type: Option<String>,
    #[serde(default)]
    pub outputs: AnyMap,
    #[serde(default)]
    pub client_data: Value,
    #[serde(default)]
    pub stored: Vec<StoredOutput>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct JobCancelUnconfirmed {
    pub prompt_id: Option<String>,
    pub waited_s: f64,
    pub method: String,
}

#[derive(Deserialize, Debug, Clone)]
pub struct JobResubmitted {
    pub prompt_id: String,
    pub previous_prompt_id: Option<String>,
    pub attempt: u64,
}

/// `job.paused` (6.4): the job is held by the sidecar, `percent` is where `resume` goes on from.
#[derive(Deserialize, Debug, Clone)]
pub struct JobPaused {
    pub confirmed_by: String,
    #[serde(default)]
    pub prompt_id: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub node_type: Option<String>,
    #[serde(default)]
    pub percent: f64,
    #[serde(default)]
    pub outputs: AnyMap,
    #[serde(default)]
    pub client_data: Value,
}

/// `job.resumed` (6.4): posted again on `instance`; `job.queued` follows.
#[derive(Deserialize, Debug, Clone)]
pub struct JobResumed {
    pub previous_prompt_id: Option<String>,
    pub instance: String,
    pub previous_instance: String,
    #[serde(default)]
    pub percent: f64,
    #[serde(default)]
    pub client_data: Value,
}

/// An event's `data`, by `type`.
#[derive(Debug, Clone)]
pub enum Data {
    InstanceStatus(InstanceStatus),
    Heartbeat(Heartbeat),
    JobAccepted(JobAccepted),
    JobQueued(JobQueued),
    JobStarted(JobStarted),
    NodeExecuting(NodeExecuting),
    NodeCached(NodeCached),
    NodeProgress(NodeProgress),
    NodeText(NodeText),
    JobProgress(JobProgress),
    NodeOutput(NodeOutput),
    Preview(Preview),
    JobCompleted(JobCompleted),
    JobFailed(JobFailed),
    JobCancelled(JobCancelled),
    JobCancelUnconfirmed(JobCancelUnconfirmed),
    /// `job.pause_unconfirmed`: the same fields as `job.cancel_unconfirmed`, for a pause.
    JobPauseUnconfirmed(JobCancelUnconfirmed),
    JobResubmitted(JobResubmitted),
    JobPaused(JobPaused),
    JobResumed(JobResumed),
    OutputStored(StoredOutput),
    OutputFailed(StoredOutput),
    /// A type this client does not know: skipped (PROTOCOL.md 6.2, 10).
    Unknown,
}

/// The family of each known type (PROTOCOL.md 6.2); others: the part before the first dot.
pub fn family(kind: &str) -> &str {
    match kind {
        "instance.status" | "heartbeat" => "instance",
        "job.accepted"
        | "job.queued"
        | "job.started"
        | "job.completed"
        | "job.failed"
        | "job.cancelled"
        | "job.cancel_unconfirmed"
        | "job.pause_unconfirmed"
        | "job.resubmitted"
        | "job.paused"
        | "job.resumed"
        | "node.output"
        | "output.stored"
        | "output.failed" => "job",
        "node.executing" | "node.cached" | "node.progress" | "node.text" | "job.progress" => {
            "progress"
        }
        "preview" => "preview",
        other => other.split('.').next().unwrap_or(other),
    }
}

fn data<D: DeserializeOwned>(envelope: &[u8]) -> Result<D, String> {
    rmp_serde::from_slice::<DataOnly<D>>(envelope)
        .map(|d| d.data)
        .map_err(|e| e.to_string())
}

/// Decode `data` of an envelope whose type is `kind`.
pub fn decode_data(kind: &str, envelope: &[u8]) -> Result<Data, String> {
    Ok(match kind {
        "instance.status" => Data::InstanceStatus(data(envelope)?),
        "heartbeat" => Data::Heartbeat(data(envelope)?),
        "job.accepted" => Data::JobAccepted(data(envelope)?),
        "job.queued" => Data::JobQueued(data(envelope)?),
        "job.started" => Data::JobStarted(data(envelope)?),
        "node.executing" => Data::NodeExecuting(data(envelope)?),
        "node.cached" => Data::NodeCached(data(envelope)?),
        "node.progress" => Data::NodeProgress(data(envelope)?),
        "node.text" => Data::NodeText(data(envelope)?),
        "job.progress" => Data::JobProgress(data(envelope)?),
        "node.output" => Data::NodeOutput(data(envelope)?),
        "preview" => Data::Preview(data(envelope)?),
        "job.completed" => Data::JobCompleted(data(envelope)?),
        "job.failed" => Data::JobFailed(data(envelope)?),
        "job.cancelled" => Data::JobCancelled(data(envelope)?),
        "job.cancel_unconfirmed" => Data::JobCancelUnconfirmed(data(envelope)?),
        "job.pause_unconfirmed" => Data::JobPauseUnconfirmed(data(envelope)?),
        "job.resubmitted" => Data::JobResubmitted(data(envelope)?),
        "job.paused" => Data::JobPaused(data(envelope)?),
        "job.resumed" => Data::JobResumed(data(envelope)?),
        "output.stored" => Data::OutputStored(data(envelope)?),
        "output.failed" => Data::OutputFailed(data(envelope)?),
        _ => Data::Unknown,
    })
}

/// One received event: all its frames decoded.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: String,
    pub seq: u64,
    pub run: String,
    pub ts: i64,
    pub kind: String,
    pub instance: String,
    pub job_id: Option<String>,
    pub job_seq: Option<u64>,
    /// The sidecar that made it: `seq` and `run` are per sidecar (PROTOCOL.md 7.3).
    pub sidecar: String,
    pub data: Data,
    /// Frame 2: the inline preview's bytes.
    pub image: Option<Vec<u8>>,
}

impl Event {
    /// Decode a multipart event message (4.3): topic, envelope, and maybe the image.
    pub fn decode(frames: &[Vec<u8>]) -> Result<Event, String> {
        if frames.len() < 2 || frames.len() > 3 {
            return Err(format!("an event has 2 or 3 frames, got {}", frames.len()));
        }
        let topic = String::from_utf8(frames[0].clone()).map_err(|e| format!("topic: {e}"))?;
        let head: EnvelopeHead =
            rmp_serde::from_slice(&frames[1]).map_err(|e| format!("envelope: {e}"))?;
        let data =
            decode_data(&head.kind, &frames[1]).map_err(|e| format!("{}: {e}", head.kind))?;
        Ok(Event {
            topic,
            seq: head.seq,
            run: head.run,
            ts: head.ts,
            kind: head.kind,
            instance: head.instance,
            job_id: head.job_id,
            job_seq: head.job_seq,
            sidecar: head.sidecar,
            data,
            image: frames.get(2).cloned(),
        })
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self.data,
            Data::JobCompleted(_) | Data::JobFailed(_) | Data::JobCancelled(_)
        )
    }

    pub fn is_job(&self, job_id: &str) -> bool {
        self.job_id.as_deref() == Some(job_id)
    }
}

#[cfg(test)]
mod tests {
    //! Forward compatibility (PROTOCOL.md 10): what a newer sidecar may send still decodes.
    use super::*;
    use serde_json::json;

    fn pack(value: Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&value).expect("encodes")
    }

    fn envelope(kind: &str, data: Value) -> Vec<Vec<u8>> {
        let body = json!({"seq": 7, "run": "r", "ts": 1_767_225_600_000_000_000u64, "type": kind,
                          "instance": "gpu0", "job_id": "j", "data": data,
                          "job_seq": 3, "sidecar": "gpu-host-a", "a_key_from_the_future": [1, 2]});
        vec![format!("{}.gpu0", family(kind)).into_bytes(), pack(body)]
    }

    #[test]
    fn unknown_keys_are_ignored_and_job_seq_is_read() {
        let frames = envelope("job.progress", json!({"percent": 12.5, "later": true}));
        let event = Event::decode(&frames).expect("decodes");
        assert_eq!(event.job_seq, Some(3));
        assert_eq!(event.sidecar, "gpu-host-a");
        assert!(
            matches!(event.data, Data::JobProgress(JobProgress { percent }) if percent == 12.5)
        );
    }

    #[test]
    fn an_unknown_event_type_is_skipped_not_an_error() {
        let event =
            Event::decode(&envelope("gpu.thermal", json!({"celsius": 80}))).expect("decodes");
        assert!(matches!(event.data, Data::Unknown));
        assert_eq!(event.topic, "gpu.gpu0");
    }

    #[test]
    fn files_travel_as_bin_and_are_left_off_when_unset() {
        let mut submit = SubmitRequest {
            common: Common::default(),
            workflow: AnyMap::new(),
            job_id: None,
            instance: None,
            client_data: Value::Null,
            preview_interval_s: None,
            queue_anyway: false,
            files: None,
        };
        let plain = Request::Submit(submit.clone()).encode().expect("encodes");
        assert!(!plain.windows(5).any(|w| w == b"files"));
        let png = vec![0x89, b'P', b'N', b'G'];
        submit.files = Some(BTreeMap::from([("cat.png".to_string(), Bin(png.clone()))]));
        let packed = Request::Submit(submit.clone()).encode().expect("encodes");
        // fixstr "cat.png", then bin 8 (0xc4) of 4 bytes
        let at = packed.windows(7).position(|w| w == b"cat.png").expect("the name") + 7;
        assert_eq!(&packed[at..at + 6], &[0xc4, 4, 0x89, b'P', b'N', b'G']);
        let back: Request = rmp_serde::from_slice(&packed).expect("decodes");
        assert_eq!(back, Request::Submit(submit));
    }

    #[test]
    fn node_text_decodes() {
        let event = Event::decode(&envelope(
            "node.text",
            json!({"node": "3", "text": "step 2/20"}),
        ))
        .expect("decodes");
        assert!(matches!(event.data, Data::NodeText(ref t) if t.text == "step 2/20"));
        assert_eq!(event.topic, "progress.gpu0");
    }

    #[test]
    fn absent_keys_read_as_their_documented_defaults() {
        // An older sidecar: no job_seq, attempts, cancel_requested, adapter, inline, ref.
        let view: JobView = rmp_serde::from_slice(&pack(json!({
            "job_id": "j", "instance": "gpu0", "state": "queued", "prompt_id": null,
            "percent": 0, "current_node": null, "created_ns": 1, "updated_ns": 2,
            "outputs": {}, "error": null})))
        .expect("decodes");
        assert_eq!(
            (view.attempts, view.cancel_requested, view.job_seq),
            (1, false, 0)
        );
        assert_eq!(view.client_data, Value::Null);
        let preview = Event::decode(&envelope(
            "preview",
            json!({"node": null, "format": "jpeg", "size_bytes": 3, "index": 0}),
        ))
        .expect("decodes");
        assert!(matches!(preview.data, Data::Preview(ref p) if p.inline && p.reference.is_none()));
    }

    #[test]
    fn an_older_envelope_without_job_seq_and_sidecar_decodes() {
        let body = json!({"seq": 1, "run": "r", "ts": 1, "type": "heartbeat", "instance": "*",
                          "job_id": null, "data": {"instances_up": 1, "instances": 1, "jobs_active": 0}});
        let event = Event::decode(&[b"instance.*".to_vec(), pack(body)]).expect("decodes");
        assert_eq!((event.job_seq, event.sidecar.as_str()), (None, ""));
    }

    #[test]
    fn requests_are_maps_with_a_deadline() {
        let mut request = Request::Ping(Common::default());
        request.common_mut().deadline_ns = Some(5);
        let value: Value =
            rmp_serde::from_slice(&request.encode().expect("encodes")).expect("a map");
        assert_eq!(value, json!({"op": "ping", "id": null, "deadline_ns": 5}));
    }
}
