//! The step that sends a job's input file with it (PROTOCOL.md 5.4, "Input files"): the
//! sidecar uploads it to whichever instance the job lands on, under a name of the job's own.

use super::{detail, Outcome, Scenario, Trace};
use crate::wire::{Bin, Common, Data, Request, SubmitRequest, SubmitResult};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A 4x2 PNG of one colour (the simulated ComfyUI's `LoadImage` reads its header).
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d,
    0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02,
    0x08, 0x02, 0x00, 0x00, 0x00, 0xf0, 0xca, 0xea, 0x34, 0x00, 0x00, 0x00,
    0x10, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x38, 0x51, 0xa1, 0x01,
    0x47, 0x0c, 0xc8, 0x1c, 0x00, 0x97, 0x5a, 0x0b, 0x41, 0x11, 0x55, 0x51,
    0xf5, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60,
    0x82,
];

impl Scenario {
    pub(super) fn submit_with_file(&mut self) -> Outcome<()> {
        let job_id = format!("rust-{}-f", std::process::id());
        let workflow = match json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": "rust-input.png"}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
        }) {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let files = BTreeMap::from([("rust-input.png".to_string(), Bin(PNG.to_vec()))]);
        let reply: SubmitResult = self.ok(Request::Submit(SubmitRequest {
            common: Common::default(),
            workflow,
            job_id: Some(job_id.clone()),
            instance: self.opts.instance.clone(),
            client_data: json!({"backend": "rust-client", "files": 1}),
            preview_interval_s: None,
            queue_anyway: false,
            files: Some(files),
        }))?;
        check!(
            reply.job.job_id == job_id && !reply.duplicate,
            "submit answered for {} (duplicate {})",
            reply.job.job_id,
            reply.duplicate
        );
        detail(format!(
            "submitted {job_id} with rust-input.png ({} bytes, MessagePack bin): {} on {}",
            PNG.len(),
            reply.job.state,
            reply.job.instance
        ));
        let mut trace = Trace::default();
        self.follow_job(&job_id, &mut trace)?;
        let end = trace.events.last().expect("a final event");
        let done = match &end.data {
            Data::JobCompleted(done) => done,
            _ => return Err(format!("{job_id} ended with {}, not job.completed", end.kind)),
        };
        check!(
            done.outputs.contains_key("2"),
            "job.completed outputs lack the PreviewImage node: {:?}",
            done.outputs.keys().collect::<Vec<_>>()
        );
        check!(
            done.stored.iter().all(|s| s.state == "stored"),
            "stored copies: {:?}",
            done.stored.iter().map(|s| (&s.filename, &s.state, &s.error)).collect::<Vec<_>>()
        );
        detail(format!(
            "job.completed: LoadImage read the uploaded file; {} output file(s) in the output store",
            done.stored.len()
        ));
        Ok(())
    }
}
