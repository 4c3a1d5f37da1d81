"""Soak: many jobs through one sidecar process, ComfyUI killed and restarted a few times; the sidecar's RSS.

A simulated ComfyUI (``comfy-bridge simulate``, a process) runs ComfyUI's default text-to-image
graph, one preview per sampler step; the sidecar (``comfy-bridge run``, a process, default
configuration: previews written as files) gets ``--jobs`` jobs, ``--inflight`` at a time. At
``--kills`` evenly spaced points the simulator is SIGKILLed and restarted empty on the same port
(the sidecar resubmits what it lost). The sidecar's resident set size (``VmRSS``) is printed every
``--every`` finished jobs; at the end, the growth after warm-up and whether every job reached
exactly one final state.

Usage: ``python bench/soak.py [--jobs 1000] [--kills 4] [--inflight 2] [--steps 20] [--step-ms 2]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Client, _stop, free_ports  # noqa: E402

FINAL = ("job.completed", "job.failed", "job.cancelled")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
PROMPT = (
    "a lighthouse on a basalt cliff at dusk, volumetric light, rain, highly detailed, 35mm photograph, "
    "muted colours, fog rolling in from the sea, seagulls, long exposure, award winning composition"
)


def start_simulator(port: int, version: str, step_ms: float) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "sidecar", "simulate", "--port", str(port), "--version", version]
    proc = subprocess.Popen([*cmd, "--step-ms", str(step_ms)], stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        if b"listening on" in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # type: ignore[union-attr]
            return proc
        if not line:
            break
    raise RuntimeError("simulator did not start")


def start_sidecar(comfy_port: int, router: str, pub: str, workdir: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "sidecar", "run", "--instance", f"c=http://127.0.0.1:{comfy_port}"]
    cmd += ["--router", router, "--pub", pub, "--state", str(workdir / "state.sqlite3")]
    log = open(workdir / "sidecar.log", "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(cmd, stderr=log, env=ENV, cwd=workdir)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def workflow(n: int, steps: int) -> dict[str, Any]:
    """ComfyUI's default text-to-image graph as the UI exports it (API format, with titles)."""

    def node(class_type: str, inputs: dict[str, Any], title: str) -> dict[str, Any]:
        return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}

    return {
        "3": node(
            "KSampler",
            {
                "seed": 1000 + n,
                "steps": steps,
                "cfg": 7.5,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
            "KSampler",
        ),
        "4": node("CheckpointLoaderSimple", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, "Load Checkpoint"),
        "5": node("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, "Empty Latent Image"),
        "6": node("CLIPTextEncode", {"text": f"{PROMPT}, variation {n}", "clip": ["4", 1]}, "Positive"),
        "7": node("CLIPTextEncode", {"text": "text, watermark, blurry, lowres", "clip": ["4", 1]}, "Negative"),
        "8": node("VAEDecode", {"samples": ["3", 0], "vae": ["4", 2]}, "VAE Decode"),
        "9": node("SaveImage", {"filename_prefix": f"soak/{n:05d}", "images": ["8", 0]}, "Save Image"),
    }


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
        (self.workdir / "bridge.toml").write_text(f'[previews]\nstore = "{args.previews}"\n')
        self.comfy_port, router_port, pub_port = free_ports(3)
        self.router, self.pub = f"tcp://127.0.0.1:{router_port}", f"tcp://127.0.0.1:{pub_port}"
        self.finals: dict[str, list[str]] = {}
        self.pending: dict[str, float] = {}  # job id -> when last heard of (monotonic)
        self.submitted = 0
        self.samples: list[tuple[int, float, float]] = []  # (finished jobs, seconds, RSS MB)

    def run(self) -> int:
        args = self.args
        comfy = start_simulator(self.comfy_port, args.version, args.step_ms)
        sidecar = start_sidecar(self.comfy_port, self.router, self.pub, self.workdir)
        client = Client(self.router, self.pub, topics=(b"job.", b"instance."))
        kill_at = [args.jobs * (k + 1) // (args.kills + 1) for k in range(args.kills)]
        started = time.monotonic()
        try:
            client.wait_connected()
            self.sample(sidecar.pid, started)
            while len(self.finals) < args.jobs:
                while self.submitted < args.jobs and len(self.pending) < args.inflight:
                    self.submit(client)
                self.follow(client)
                if kill_at and len(self.finals) >= kill_at[0]:
                    kill_at.pop(0)
                    comfy.send_signal(signal.SIGKILL)
                    comfy.wait()
                    comfy = start_simulator(self.comfy_port, args.version, args.step_ms)
                    print(f"  ComfyUI killed and restarted after {len(self.finals)} jobs", flush=True)
                if len(self.finals) >= (len(self.samples)) * args.every:
                    self.sample(sidecar.pid, started)
            health = client.request("health")["result"]
        finally:
            client.close()
            for proc in (sidecar, comfy):
                _stop(proc)
        return self.report(health)

    def submit(self, client: Client) -> None:
        job_id = f"soak-{self.submitted:05d}"
        body = workflow(self.submitted, self.args.steps)
        # Held while ComfyUI restarts (queue_anyway), as a backend that wants every job run would do.
        reply = client.request("submit", job_id=job_id, workflow=body, instance="c", queue_anyway=True)
        self.submitted += 1
        if reply["ok"]:
            self.pending[job_id] = time.monotonic()
        else:
            self.finals.setdefault(job_id, []).append("rejected:" + reply["error"]["code"])

    def follow(self, client: Client) -> None:
        """Take the events that arrived; ask `job` for a job not heard of for a while (§7 step 5)."""
        try:
            event, _ = client.next_event(timeout_s=0.5)
        except TimeoutError:
            event = None
        if event is not None and event["job_id"] is not None:
            job_id = event["job_id"]
            if event["type"] in FINAL:
                self.finals.setdefault(job_id, []).append(event["type"])
                self.pending.pop(job_id, None)
            elif job_id in self.pending:
                self.pending[job_id] = time.monotonic()
        now = time.monotonic()
        for job_id, heard in list(self.pending.items()):
            if now - heard > 5.0:
                reply = client.request("job", job_id=job_id)
                self.pending[job_id] = now
                if reply["ok"] and reply["result"]["state"] in ("completed", "failed", "cancelled"):
                    self.finals.setdefault(job_id, []).append("job." + reply["result"]["state"] + " (asked)")
                    self.pending.pop(job_id)

    def sample(self, pid: int, started: float) -> None:
        rss = rss_mb(pid)
        elapsed = time.monotonic() - started
        self.samples.append((len(self.finals), elapsed, rss))
        print(f"{len(self.finals):6d} jobs  {elapsed:7.1f} s  RSS {rss:6.1f} MB", flush=True)

    def report(self, health: dict[str, Any]) -> int:
        lost = self.args.jobs - len(self.finals)
        twice = [j for j, f in self.finals.items() if len(f) > 1]
        outcomes: dict[str, int] = {}
        for kinds in self.finals.values():
            outcomes[kinds[0]] = outcomes.get(kinds[0], 0) + 1
        print()
        print(
            f"ComfyUI {self.args.version} (simulated), {self.args.jobs} jobs, {self.args.kills} ComfyUI kills, "
            f"previews.store {self.args.previews}"
        )
        print(f"outcomes: {outcomes}; without a final state: {lost}; with two final events: {len(twice)}")
        print(f"events published: {health['events_published']}; previews: {health.get('previews')}")
        warm = next((s for s in self.samples if s[0] >= self.args.every), self.samples[0])
        last = self.samples[-1]
        print(
            f"RSS: {self.samples[0][2]:.1f} MB at start, {warm[2]:.1f} MB after {warm[0]} jobs, "
            f"{last[2]:.1f} MB after {last[0]} jobs: {last[2] - warm[2]:+.1f} MB after warm-up"
        )
        return 0 if lost == 0 and not twice else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=4, help="ComfyUI kills, evenly spaced")
    parser.add_argument("--inflight", type=int, default=2, help="jobs submitted and not yet finished")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (one preview each)")
    parser.add_argument("--step-ms", type=float, default=2.0)
    parser.add_argument("--every", type=int, default=100, help="print RSS every N finished jobs")
    parser.add_argument("--version", default="0.12.1")
    parser.add_argument("--previews", default="files", help="previews.store: files (the default), inline or none")
    return Soak(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
