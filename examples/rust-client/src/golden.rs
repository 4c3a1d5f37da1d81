//! `rust-client golden DIR`: decode every fixture of tests/golden into the client's structs.
//!
//! Every `request-*`, `reply-*` and `event-*` file must decode into its typed struct (an
//! event type this client does not know is a failure here, though it is skipped live), every
//! `.msgpack` file must equal its rendering in `golden.json`, and no fixture may be left over.

use crate::wire::{
    self, CancelResult, Data, Event, HealthResult, JobView, JobsResult, PauseResult, PingResult,
    Request, ResumeResult, SnapshotResult, SubmitResult,
};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

fn typed<R: DeserializeOwned>(body: &[u8]) -> Result<(), String> {
    let reply = wire::decode_reply::<R>(body)?;
    match (reply.ok, reply.result, reply.error) {
        (true, Some(_), None) => Ok(()),
        (ok, result, error) => Err(format!(
            "a success reply: ok {ok}, result present {}, error {error:?}",
            result.is_some()
        )),
    }
}

fn ok_reply(op: &str, body: &[u8]) -> Result<(), String> {
    match op {
        "submit" => typed::<SubmitResult>(body),
        "cancel" => typed::<CancelResult>(body),
        "job" => typed::<JobView>(body),
        "jobs" => typed::<JobsResult>(body),
        "health" => typed::<HealthResult>(body),
        "snapshot" => typed::<SnapshotResult>(body),
        "ping" => typed::<PingResult>(body),
        "pause" => typed::<PauseResult>(body),
        "resume" => typed::<ResumeResult>(body),
        other => Err(format!("no result struct for op {other:?}")),
    }
}

fn error_reply(name: &str, body: &[u8]) -> Result<(), String> {
    let reply = wire::decode_reply::<IgnoredAny>(body)?;
    let error = match (reply.ok, reply.error) {
        (false, Some(error)) => error,
        (ok, _) => return Err(format!("an error reply: ok {ok}, no error")),
    };
    let code = name.replace('-', "_");
    if error.code != code {
        return Err(format!(
            "code {:?}, the file name says {code:?}",
            error.code
        ));
    }
    Ok(())
}

fn request(name: &str, body: &[u8]) -> Result<(), String> {
    // request-<op>.msgpack, or request-<op>-<variant>.msgpack (ops have no '-')
    let op = name.split('-').next().unwrap_or(name);
    let decoded: Request = rmp_serde::from_slice(body).map_err(|e| e.to_string())?;
    if decoded.op() != op {
        return Err(format!("op {:?}, the file name says {op:?}", decoded.op()));
    }
    // What the client sends for it decodes back to the same request.
    let again: Request = rmp_serde::from_slice(&decoded.encode().map_err(|e| e.to_string())?)
        .map_err(|e| format!("re-encoded: {e}"))?;
    if again != decoded {
        return Err("re-encoded with to_vec_named, it decodes differently".into());
    }
    Ok(())
}

fn event(dir: &Path, kind: &str, envelope: Vec<u8>) -> Result<(), String> {
    let mut frames = vec![read(dir, &format!("event-{kind}.topic"))?, envelope];
    let image = dir.join(format!("event-{kind}.image"));
    if image.exists() {
        frames.push(fs::read(&image).map_err(|e| e.to_string())?);
    }
    let decoded = Event::decode(&frames)?;
    if decoded.kind != kind {
        return Err(format!(
            "type {:?}, the file name says {kind:?}",
            decoded.kind
        ));
    }
    if let Data::Unknown = decoded.data {
        return Err(format!(
            "event type {kind:?} is unknown to this client: add a struct"
        ));
    }
    let topic = format!("{}.{}", wire::family(kind), decoded.instance);
    if decoded.topic != topic {
        return Err(format!("topic {:?}, expected {topic:?}", decoded.topic));
    }
    if let Data::Preview(p) = &decoded.data {
        let got = decoded.image.as_ref().map(|i| i.len() as u64);
        if p.inline && got != Some(p.size_bytes) {
            return Err(format!(
                "inline preview: frame 2 has {got:?} bytes, size_bytes {}",
                p.size_bytes
            ));
        }
    }
    Ok(())
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, String> {
    fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))
}

/// Check every fixture; prints one line per file and returns the number of failures.
pub fn check(dir: &Path) -> Result<usize, String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let rendered: BTreeMap<String, Value> = serde_json::from_slice(&read(dir, "golden.json")?)
        .map_err(|e| format!("golden.json: {e}"))?;
    let (mut failures, mut counts) = (0, BTreeMap::new());
    for name in &names {
        let outcome = if let Some(stem) = name.strip_suffix(".msgpack") {
            let body = read(dir, name)?;
            let typed = if let Some(op) = stem.strip_prefix("request-") {
                *counts.entry("requests").or_insert(0) += 1;
                request(op, &body)
            } else if let Some(op) = stem.strip_prefix("reply-ok-") {
                *counts.entry("replies").or_insert(0) += 1;
                ok_reply(op, &body)
            } else if let Some(code) = stem.strip_prefix("reply-error-") {
                *counts.entry("replies").or_insert(0) += 1;
                error_reply(code, &body)
            } else if let Some(kind) = stem.strip_prefix("event-") {
                *counts.entry("events").or_insert(0) += 1;
                event(dir, kind, body.clone())
            } else {
                Err("a .msgpack fixture of no known kind (request-, reply-ok-, reply-error-, event-)".into())
            };
            typed.and_then(|()| {
                let generic: Value = rmp_serde::from_slice(&body).map_err(|e| e.to_string())?;
                match rendered.get(name) {
                    Some(json) if *json == generic => Ok(()),
                    Some(_) => Err("differs from its rendering in golden.json".into()),
                    None => Err("missing from golden.json".into()),
                }
            })
        } else if let Some(stem) = name
            .strip_suffix(".topic")
            .or_else(|| name.strip_suffix(".image"))
        {
            if names.contains(&format!("{stem}.msgpack")) {
                continue; // decoded with its envelope
            }
            Err("a frame file without its .msgpack envelope".into())
        } else {
            continue; // golden.json, README.md, make_golden.py
        };
        match outcome {
            Ok(()) => println!("ok    {name}"),
            Err(e) => {
                failures += 1;
                println!("FAIL  {name}: {e}");
            }
        }
    }
    for name in rendered.keys() {
        if !names.contains(name) {
            failures += 1;
            println!("FAIL  golden.json renders {name}, which is not in the directory");
        }
    }
    println!(
        "golden: {} requests, {} replies, {} events decoded into typed structs; {failures} failure(s)",
        counts.get("requests").unwrap_or(&0),
        counts.get("replies").unwrap_or(&0),
        counts.get("events").unwrap_or(&0)
    );
    Ok(failures)
}
