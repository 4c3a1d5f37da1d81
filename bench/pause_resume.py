"""How much of a paused job's work a resume skips (issue 10, section 3).

Processes: simulated ComfyUIs (``comfy-bridge simulate``, whose cache behaves as ComfyUI's: a node
whose inputs did not change is served from cache), the sidecar (``comfy-bridge run``) and this
client. The job is ComfyUI's default text-to-image graph (docs/examples/text-to-image.json:
checkpoint load, two text encodes, a 20-step sampler, VAE decode, save). For each pause point
(``job.progress`` >= P %), on fresh simulators:

- a fresh run, start to end (``job.started`` to ``job.completed``, by the events' ``ts``);
- the same job paused at P % and resumed on the same instance: the resumed prompt's run, the
  nodes it ran and served from cache, the sampler steps it ran;
- the same, resumed on another instance (nothing cached there).

Each simulator first runs a warm-up job (another checkpoint, so nothing of it is cached for the
measured one) so that the sidecar has learned what each node costs and the percentage follows time.

Usage: ``python bench/pause_resume.py [--at 30,60,80] [--step-ms 20] [--version 0.12.1]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Client, sidecar_process, simulator_process  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW: dict[str, Any] = json.loads((ROOT / "docs" / "examples" / "text-to-image.json").read_text())
SAMPLER = "3"


def workflow(ckpt: str, seed: int) -> dict[str, Any]:
    flow = json.loads(json.dumps(WORKFLOW))
    flow["4"]["inputs"]["ckpt_name"] = ckpt
    flow["3"]["inputs"]["seed"] = seed
    return flow


def follow(client: Client, job_id: str, until: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every event of ``job_id`` up to and including the first of type ``until``."""
    events = []
    while True:
        event, _ = client.wait_event(lambda e: e["job_id"] == job_id, timeout_s=120)
        events.append(event)
        if event["type"] in until:
            return events


def run_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    """One prompt's run: seconds from job.started to its end, nodes run and cached, sampler steps."""
    started = next(e["ts"] for e in events if e["type"] == "job.started")
    end = events[-1]["ts"]
    return {
        "seconds": (end - started) / 1e9,
        "ran": [e["data"]["node"] for e in events if e["type"] == "node.executing"],
        "cached": sorted({n for e in events if e["type"] == "node.cached" for n in e["data"]["nodes"]}),
        "steps": sum(1 for e in events if e["type"] == "node.progress" and e["data"]["node"] == SAMPLER),
    }


def measure(at: float, step_ms: float, version: str) -> dict[str, Any]:
    fp16, full = "v1-5-pruned-emaonly-fp16.safetensors", "v1-5-pruned-emaonly.safetensors"
    with (
        simulator_process(version, step_ms) as a,
        simulator_process(version, step_ms) as b,
        simulator_process(version, step_ms) as c,
        simulator_process(version, step_ms) as fresh_sim,
        sidecar_process(f"a={a}", f"b={b}", f"c={c}", f"f={fresh_sim}") as sc,
    ):
        client = Client(sc.router, sc.pub, topics=(b"job.", b"progress."))
        client.wait_connected()
        for name in ("a", "b", "c", "f"):  # learn the node costs on each instance (nothing of it is cached after)
            client.request("submit", job_id=f"warm-{name}", instance=name, workflow=workflow(fp16, 1))
            follow(client, f"warm-{name}", ("job.completed",))
        client.request("submit", job_id="fresh", instance="f", workflow=workflow(full, 7))
        fresh = run_of(follow(client, "fresh", ("job.completed",)))

        result: dict[str, Any] = {"at": at, "fresh": fresh}
        for first, where in (("a", "a"), ("c", "b")):  # each on a simulator that never ran it
            job_id = f"paused-{where}"
            client.request("submit", job_id=job_id, instance=first, workflow=workflow(full, 7))
            before: list[dict[str, Any]] = []
            while True:
                event, _ = client.wait_event(lambda e, j=job_id: e["job_id"] == j, timeout_s=120)
                before.append(event)
                if event["type"] == "job.progress" and event["data"]["percent"] >= at:
                    break
            assert client.request("pause", job_id=job_id)["ok"]
            before += follow(client, job_id, ("job.paused", "job.completed"))
            paused = before[-1]
            if paused["type"] != "job.paused":  # the pause lost the race with the job's end
                result[f"resumed_on_{'same' if where == 'a' else 'other'}"] = None
                continue
            steps_before = max(
                [e["data"]["value"] for e in before if e["type"] == "node.progress" and e["data"]["node"] == SAMPLER],
                default=0,
            )
            reply = client.request("resume", job_id=job_id, instance=where)
            assert reply["ok"], reply
            after = follow(client, job_id, ("job.completed", "job.failed"))
            assert after[-1]["type"] == "job.completed", after[-1]
            percents = [e["data"]["percent"] for e in before + after if e["type"] == "job.progress"]
            resumed = run_of(after)
            result[f"resumed_on_{'same' if where == 'a' else 'other'}"] = {
                **resumed,
                "paused_at_percent": paused["data"]["percent"],
                "paused_in_node": paused["data"]["node"],
                "sampler_steps_before_pause": steps_before,
                "before_pause_s": run_of(before)["seconds"],
                "percent_monotonic": percents == sorted(percents),
            }
        client.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", default="30,60,80", help="pause points, in percent")
    parser.add_argument("--step-ms", type=float, default=20.0)
    parser.add_argument("--version", default="0.12.1")
    args = parser.parse_args()
    print(f"text-to-image, simulated ComfyUI {args.version}, {args.step_ms:g} ms per step unit")
    for at in (float(p) for p in args.at.split(",")):
        r = measure(at, args.step_ms, args.version)
        fresh = r["fresh"]["seconds"]
        print(f"\npause at >= {at:g} %: fresh run {fresh:.2f} s, {len(r['fresh']['ran'])} nodes")
        for key in ("resumed_on_same", "resumed_on_other"):
            x = r[key]
            if x is None:
                print(f"  {key}: the job completed before the pause took effect")
                continue
            skipped = 1 - x["seconds"] / fresh
            print(
                f"  {key}: paused at {x['paused_at_percent']} % in node {x['paused_in_node']}"
                f" (sampler step {x['sampler_steps_before_pause']}/20, {x['before_pause_s']:.2f} s run);"
                f" resumed run {x['seconds']:.2f} s = {100 * x['seconds'] / fresh:.0f} % of a fresh run"
                f" ({100 * skipped:.0f} % skipped); ran {x['ran']}, cached {x['cached']},"
                f" sampler steps {x['steps']}; percent monotonic: {x['percent_monotonic']}"
            )


if __name__ == "__main__":
    main()
