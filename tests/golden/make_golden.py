"""Generate the golden MessagePack fixtures of the ZeroMQ contract (docs/PROTOCOL.md).

Run once from the repository root::

    python3 tests/golden/make_golden.py            # writes the missing files only
    python3 tests/golden/make_golden.py --force    # rewrites them: a WIRE CHANGE, review the diff
    python3 tests/golden/make_golden.py --markdown # prints the examples block of PROTOCOL.md

Each file is exactly one ZeroMQ frame:

- ``request-<op>.msgpack``: the body a client sends for ``<op>``; ``request-<op>-<case>.msgpack``
  another example of it (``cancel-deadline``: with the common field ``deadline_ns``);
- ``reply-<name>.msgpack``: the body the sidecar answers;
- ``event-<type>.topic`` and ``event-<type>.msgpack``: frames 0 (topic) and 1 (envelope)
  of one event; ``event-preview.image`` is frame 2 of the inline preview.

``golden.json`` holds the JSON rendering of every MessagePack file, for clients
that want to compare decoded values. ``tests/protocol/test_wire.py`` imports the
example values below and checks the encoders still produce these bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from sidecar.errors import over_limit
from sidecar.protocol import wire
from sidecar.protocol.events import (
    EVENT_TYPES,
    EventCounters,
    HealthView,
    Heartbeat,
    InstanceStatus,
    InstanceView,
    JobAccepted,
    JobCancelled,
    JobCancelUnconfirmed,
    JobCompleted,
    JobFailed,
    JobPaused,
    JobProgress,
    JobQueued,
    JobResubmitted,
    JobResumed,
    JobStarted,
    JobView,
    NodeCached,
    NodeExecuting,
    NodeOutput,
    NodeProgress,
    NodeText,
    OutputCounters,
    PreviewCounters,
    PreviewPublished,
    StoreCounters,
    StoredOutput,
)

HERE = Path(__file__).resolve().parent

RUN = "5f3c9a0e7b2d4e6f8a1b3c5d7e9f0a2b"
SIDECAR = "gpu-host-a"  # sidecar.name
TS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in Unix nanoseconds
INSTANCE = "gpu0"
URL = "http://127.0.0.1:8188"
JOB_ID = "job-0001"
PROMPT_ID = "0b9e4f0e-6a1d-4c3b-9f57-2c1e8d7a6b54"
CLIENT_DATA = {"user": "u-42"}

WORKFLOW: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bridge"}},
}
OUTPUTS: dict[str, Any] = {
    "2": {"images": [{"filename": "bridge_00001_.png", "subfolder": "", "type": "output"}]},
}
STORED = StoredOutput(  # the copy of OUTPUTS["2"]'s image in the `files` output store
    node="2",
    filename="bridge_00001_.png",
    subfolder="",
    type="output",
    state="stored",
    prompt_id=PROMPT_ID,
    ref="/srv/comfy-bridge/state/outputs/job-0001/001-node2-output-bridge_00001_.png",
    size_bytes=666,
    sha256="9f2d6c1e0b7a4f3e8d5c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e",
    content_type="image/png",
    attempts=1,
)
FETCH_FAILED = StoredOutput(  # a PreviewImage file ComfyUI had lost (a restart empties its temp folder)
    node="3",
    filename="ComfyUI_temp_droxp_00001_.png",
    subfolder="",
    type="temp",
    state="failed",
    prompt_id=PROMPT_ID,
    error="GET /view answered HTTP 404 (ComfyUI no longer has the file; a restart empties its temp folder)",
    attempts=1,
)
# Not a real JPEG: the contract is "raw bytes in frame 2", whatever they are.
PREVIEW_IMAGE = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00golden-preview\xff\xd9"


def requests() -> dict[str, wire.Request]:
    """One example request per op, keyed by op."""
    return {
        "submit": wire.Submit(id="r1", workflow=WORKFLOW, job_id=JOB_ID, instance=INSTANCE, client_data=CLIENT_DATA),
        "cancel": wire.Cancel(id="r2", job_id=JOB_ID),
        "job": wire.GetJob(id="r3", job_id=JOB_ID),
        "jobs": wire.ListJobs(id="r4", active=True, instance=INSTANCE),
        "health": wire.Health(id="r5"),
        "snapshot": wire.Snapshot(id="r6"),
        "ping": wire.Ping(id="r7"),
        "pause": wire.Pause(id="r11", job_id=JOB_ID),
        "resume": wire.Resume(id="r12", job_id=JOB_ID, instance="gpu1"),
    }


DEADLINE_NS = TS + 5_000_000_000  # the client gives up 5 s after TS


def more_requests() -> dict[str, wire.Request]:
    """More examples, keyed ``<op>-<case>``: the optional common fields a client may add."""
    return {"cancel-deadline": wire.Cancel(id="r10", job_id=JOB_ID, deadline_ns=DEADLINE_NS)}


def _job_view(
    state: str,
    percent: float,
    outputs: dict[str, Any],
    job_seq: int,
    error: JobFailed | None = None,
    stored: list[StoredOutput] | None = None,
) -> JobView:
    return JobView(
        job_id=JOB_ID,
        instance=INSTANCE,
        state=state,
        prompt_id=PROMPT_ID,
        percent=percent,
        current_node=None,
        created_ns=TS,
        updated_ns=TS + 2_500_000_000 if state in ("completed", "failed") else TS + 12_000_000,
        outputs=outputs,
        error=error,
        client_data=CLIENT_DATA,
        job_seq=job_seq,
        stored=stored if stored is not None else ([STORED] if outputs else []),
    )


def _instance_view() -> InstanceView:
    return InstanceView(
        name=INSTANCE,
        url=URL,
        state="connected",
        client_id="comfy-bridge-gpu0-4f1e2d3c4b5a",
        version="0.12.1",
        last_connected_ns=TS - 60_000_000_000,
        last_error=None,
        queue_remaining=1,
        in_flight=1,
        frames=1234,
        malformed=0,
        unknown=2,
    )


def _health() -> HealthView:
    """The sidecar's own result Struct (``Sidecar._health`` builds the same one), so no key is missed."""
    return HealthView(
        run=RUN,
        seq=41,
        instances=[_instance_view()],
        events_published=41,
        events=EventCounters(published=41, dropped={}, backlog=0, backlog_peak=0, hwm=10000),
        requests_served=7,
        bad_requests=1,
        previews=PreviewCounters(store="files", queued=0, written=5, dropped=0, failed=0),
        store=StoreCounters(path="state/bridge.sqlite3", writes=12, errors=0),
        outputs=OutputCounters(store="files", fetched=3, failed=0, pending=0, bytes=1996, retries=0),
        sidecar=SIDECAR,
    )


def replies() -> dict[str, wire.Reply]:
    """Example replies: one ``ok`` per op that succeeds, and the error shapes."""
    queued = _job_view("queued", 0.0, {}, job_seq=2)  # after job.accepted and job.queued
    # as jobs and snapshot show it: a job may have stored files while queued (a resubmitted one)
    listed = _job_view("queued", 0.0, {}, job_seq=2, stored=[STORED])
    return {
        "ok-submit": wire.ok_reply("r1", {"job": queued, "duplicate": False, "held": False}),
        "ok-cancel": wire.ok_reply(
            "r2",
            {
                "job_id": JOB_ID,
                "state": "started",
                "cancel_sent": True,
                "already_requested": False,
                "method": "interrupt",
            },
        ),
        "ok-job": wire.ok_reply("r3", _job_view("completed", 100.0, OUTPUTS, job_seq=5)),
        "ok-jobs": wire.ok_reply("r4", {"jobs": [listed]}),
        "ok-health": wire.ok_reply("r5", _health()),
        "ok-snapshot": wire.ok_reply(
            "r6", {"seq": 41, "run": RUN, "instances": [_instance_view()], "jobs": [listed], "sidecar": SIDECAR}
        ),
        "ok-ping": wire.ok_reply("r7", {"pong": True, "run": RUN, "seq": 41}),
        "error-unknown-op": wire.error_reply(
            "r9",
            "unknown_op",
            "unknown op 'reboot'; known ops: " + ", ".join(wire.REQUEST_TYPES),
            {"op": "reboot", "known": list(wire.REQUEST_TYPES)},
        ),
        "error-job-finished": wire.error_reply(
            "r2", "job_finished", "job 'job-0001' already completed", {"job_id": JOB_ID, "state": "completed"}
        ),
        "error-job-not-found": wire.error_reply("r3", "job_not_found", "no job 'job-9999'", {"job_id": "job-9999"}),
        "error-invalid-request": wire.error_reply(
            "r8", "invalid_request", "job: Object missing required field `job_id`", {"field": "job_id"}
        ),
        "error-malformed-request": wire.error_reply(
            None, "malformed_request", "request body must be a map, got an array"
        ),
        "ok-pause": wire.ok_reply(
            "r11",
            {
                "job_id": JOB_ID,
                "state": "started",
                "pause_sent": True,
                "already_requested": False,
                "method": "interrupt",
            },
        ),
        "ok-resume": wire.ok_reply("r12", {"job": _resumed_view(), "held": False}),
        "error-job-not-paused": wire.error_reply(
            "r12", "job_not_paused", "job 'job-0001' is started, not paused", {"job_id": JOB_ID, "state": "started"}
        ),
        "error-expired": _expired(),
        "error-limit-exceeded": _over_limit(),
    }


def _resumed_view() -> JobView:
    """The job after ``resume`` on gpu1: queued there as a new prompt, its percentage kept."""
    view = _job_view("queued", 62.5, {"1": OUTPUTS["2"]}, job_seq=4)
    view.instance, view.prompt_id, view.attempts = "gpu1", "9a8b7c6d-0000-4000-8000-000000000002", 2
    return view


def _over_limit() -> wire.Reply:
    """A submit whose workflow has more nodes than ``limits.workflow_nodes`` (the default, 10000)."""
    exc = over_limit("workflow_nodes", 10_000, "the workflow has 10001 nodes")
    return wire.error_reply("r10", exc.code, exc.message, exc.details)


def _expired() -> wire.Reply:
    """The answer to ``request-cancel-deadline`` read 1.25 s after its deadline."""
    reply = wire.expired(more_requests()["cancel-deadline"], DEADLINE_NS + 1_250_000_000)
    assert reply is not None
    return reply


def _failure() -> JobFailed:
    return JobFailed(
        code="execution_error",
        message="Probe failed at step 2",
        prompt_id=PROMPT_ID,
        node="2",
        node_type="SaveImage",
        exception_type="RuntimeError",
        traceback=['  File "execution.py", line 1, in run\n', "RuntimeError: Probe failed at step 2\n"],
        outputs={},
        client_data=CLIENT_DATA,
        stored=[FETCH_FAILED],  # a preview that ran before the failure, lost by ComfyUI before its copy
    )


def events() -> dict[str, wire.Event]:
    """One example event per type in ``EVENT_TYPES``, keyed by type, in a plausible order."""
    data: dict[str, tuple[str, str | None, Any]] = {
        "instance.status": (INSTANCE, None, InstanceStatus(state="connected", url=URL, version="0.12.1")),
        "heartbeat": ("*", None, Heartbeat(instances_up=1, instances=1, jobs_active=0)),
        "job.accepted": (INSTANCE, JOB_ID, JobAccepted(instance=INSTANCE, client_data=CLIENT_DATA)),
        "job.queued": (INSTANCE, JOB_ID, JobQueued(prompt_id=PROMPT_ID, number=7, client_data=CLIENT_DATA)),
        "job.started": (INSTANCE, JOB_ID, JobStarted(prompt_id=PROMPT_ID, client_data=CLIENT_DATA)),
        "node.cached": (INSTANCE, JOB_ID, NodeCached(nodes=["1"])),
        "node.executing": (
            INSTANCE,
            JOB_ID,
            NodeExecuting(node="2", class_type="SaveImage", title="SaveImage", display_node="2"),
        ),
        "node.progress": (INSTANCE, JOB_ID, NodeProgress(node="2", value=5, max=20)),
        "job.progress": (INSTANCE, JOB_ID, JobProgress(percent=62.5, eta_s=4.2)),
        "preview": (
            INSTANCE,
            JOB_ID,
            PreviewPublished(node="2", format="jpeg", size_bytes=len(PREVIEW_IMAGE), index=0),
        ),
        "node.output": (INSTANCE, JOB_ID, NodeOutput(node="2", output=OUTPUTS["2"], display_node="2")),
        "job.completed": (
            INSTANCE,
            JOB_ID,
            JobCompleted(prompt_id=PROMPT_ID, outputs=OUTPUTS, client_data=CLIENT_DATA, stored=[STORED]),
        ),
        "job.failed": (INSTANCE, JOB_ID, _failure()),
        "job.cancel_unconfirmed": (
            INSTANCE,
            JOB_ID,
            JobCancelUnconfirmed(prompt_id=PROMPT_ID, waited_s=10.012, method="interrupt"),
        ),
        "job.pause_unconfirmed": (
            INSTANCE,
            JOB_ID,
            JobCancelUnconfirmed(prompt_id=PROMPT_ID, waited_s=10.004, method="interrupt"),
        ),
        "job.cancelled": (
            INSTANCE,
            JOB_ID,
            JobCancelled(
                confirmed_by="execution_interrupted",
                prompt_id=PROMPT_ID,
                node="2",
                node_type="SaveImage",
                outputs={},
                client_data=CLIENT_DATA,
                stored=[STORED],  # partial outputs: their copies outlive ComfyUI
            ),
        ),
        "job.resubmitted": (
            INSTANCE,
            JOB_ID,
            JobResubmitted(  # moved by failover from gpu1, unreachable, to this instance
                prompt_id=PROMPT_ID,
                previous_prompt_id="7c1d2e3f-0000-4000-8000-000000000001",
                attempt=2,
                previous_instance="gpu1",
                instance=INSTANCE,
            ),
        ),
        # Added after the first fixtures: last, so the seq of every earlier example stays as it was.
        "node.text": (INSTANCE, JOB_ID, NodeText(node="2", text="64 x 64 pixels\nbatch of 1")),
        "job.paused": (
            INSTANCE,
            JOB_ID,
            JobPaused(
                confirmed_by="execution_interrupted",
                prompt_id=PROMPT_ID,
                node="2",
                node_type="SaveImage",
                percent=62.5,
                outputs={},
                client_data=CLIENT_DATA,
            ),
        ),
        "job.resumed": (
            "gpu1",
            JOB_ID,
            JobResumed(
                previous_prompt_id=PROMPT_ID,
                instance="gpu1",
                previous_instance=INSTANCE,
                percent=62.5,
                client_data=CLIENT_DATA,
            ),
        ),
        "output.stored": (INSTANCE, JOB_ID, STORED),
        "output.failed": (INSTANCE, JOB_ID, FETCH_FAILED),
    }
    out: dict[str, wire.Event] = {}
    job_seq = 0  # JOB_ID's count of job-family events, in this same order
    for seq, (type_, (instance, job_id, payload)) in enumerate(data.items(), start=1):
        in_job_family = job_id is not None and wire.family_of(type_) == "job"
        job_seq += in_job_family
        out[type_] = wire.Event(
            seq=seq,
            run=RUN,
            ts=TS + seq * 1_000_000,
            type=type_,
            instance=instance,
            job_id=job_id,
            data=payload,
            job_seq=job_seq if in_job_family else None,
            sidecar=SIDECAR,
        )
    out["preview"].image = PREVIEW_IMAGE
    return out


def frames() -> dict[str, bytes]:
    """Every golden file name and its bytes, made with the sidecar's own encoders."""
    encoder = msgspec.msgpack.Encoder()
    out: dict[str, bytes] = {}
    for op, request in {**requests(), **more_requests()}.items():
        out[f"request-{op}.msgpack"] = encoder.encode(request)
    for name, reply in replies().items():
        out[f"reply-{name}.msgpack"] = wire.encode_reply([], reply, encoder)[0]
    for type_, event in events().items():
        parts = wire.encode_event(event, encoder)
        out[f"event-{type_}.topic"] = bytes(parts[0])
        out[f"event-{type_}.msgpack"] = bytes(parts[1])
        if len(parts) == 3:
            out[f"event-{type_}.image"] = bytes(parts[2])
    return out


def as_json(body: bytes) -> str:
    """The JSON rendering of one MessagePack frame, keys in wire order."""
    return msgspec.json.format(msgspec.json.encode(msgspec.msgpack.decode(body)), indent=2).decode()


def as_hex(body: bytes, per_line: int = 16) -> str:
    lines = [body[i : i + per_line].hex(" ") for i in range(0, len(body), per_line)]
    return "\n".join(lines)


def golden_json(files: dict[str, bytes]) -> bytes:
    rendered = {name: msgspec.msgpack.decode(body) for name, body in sorted(files.items()) if name.endswith(".msgpack")}
    return msgspec.json.format(msgspec.json.encode(rendered), indent=2) + b"\n"


def markdown(names: list[str]) -> str:
    """The examples block of PROTOCOL.md: JSON next to the hex bytes of each named file."""
    files = frames()
    parts = []
    for name in names:
        body = files[name]
        if name.endswith(".topic"):
            parts.append(f"<!-- golden: {name} -->\n\n```text\n{body.decode()}\n{as_hex(body)}\n```\n")
            continue
        parts.append(f"<!-- golden: {name} -->\n\n```json\n{as_json(body)}\n```\n\n```text\n{as_hex(body)}\n```\n")
    return "\n".join(parts)


DOC_EXAMPLES = [
    "request-ping.msgpack",
    "reply-ok-ping.msgpack",
    "reply-error-malformed-request.msgpack",
    "event-job.progress.topic",
    "event-job.progress.msgpack",
    "request-cancel-deadline.msgpack",
    "reply-error-expired.msgpack",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rewrite existing files (a wire change)")
    parser.add_argument("--markdown", action="store_true", help="print the PROTOCOL.md examples and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(DOC_EXAMPLES))
        return 0
    missing = set(EVENT_TYPES) - set(events())
    if missing:
        print(f"no example for event type(s) {sorted(missing)}: add one to events()", file=sys.stderr)
        return 1
    files = frames()
    files["golden.json"] = golden_json(files)
    written = 0
    for name, body in files.items():
        path = HERE / name
        if path.exists() and not args.force:
            if path.read_bytes() != body:
                print(
                    f"differs (not rewritten; use --force for a deliberate wire change): {name}",
                    file=sys.stderr,
                )
            continue
        path.write_bytes(body)
        written += 1
    print(f"wrote {written} of {len(files)} files in {HERE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
