"""Shared pieces of the benchmark scripts: processes to start, a blocking client, percentiles."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import zmq

__all__ = ["Client", "Running", "percentile", "sidecar_process", "simulator_process", "summary"]


def _lines_until(proc: subprocess.Popen[str], pattern: str, timeout_s: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        if not line:
            break
        match = re.search(pattern, line)
        if match:
            # keep draining stderr so the child never blocks on a full pipe
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # type: ignore[union-attr]
            return match
    raise RuntimeError(f"process did not print {pattern!r}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def simulator_process(version: str, step_ms: float | None = None) -> Iterator[str]:
    """``comfy-bridge simulate`` on a free port; yields its URL."""
    cmd = [sys.executable, "-m", "sidecar", "simulate", "--port", "0", "--version", version]
    if step_ms is not None:
        cmd += ["--step-ms", str(step_ms)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield _lines_until(proc, r"(http://127\.0\.0\.1:\d+)", 30).group(1)
    finally:
        _stop(proc)


class Running(NamedTuple):
    router: str
    pub: str
    pid: int

    def rss_bytes(self) -> int:
        """The process's resident set size now (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu_s(self, main_thread_only: bool = False) -> float:
        """CPU time (user + system) used so far, in seconds (Linux /proc): the whole process
        (ZeroMQ's I/O threads included) or only its main thread, where the event loop runs."""
        path = f"/proc/{self.pid}/task/{self.pid}/stat" if main_thread_only else f"/proc/{self.pid}/stat"
        fields = Path(path).read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CHECKOUT = Path(__file__).resolve().parent.parent  # the repository whose sidecar the benches measure


@contextmanager
def sidecar_process(*instances: str, config_toml: str | None = None) -> Iterator[Running]:
    """``comfy-bridge run --instance NAME=URL ...`` on free ports and a fresh state file, in the state
    file's directory (so previews, written to ``state/previews`` by default, land there too);
    ``config_toml``, when given, is written to a ``bridge.toml`` passed with ``--config``."""
    state = Path(tempfile.mkdtemp(prefix="bench-state-")) / "state.sqlite3"
    config = []
    if config_toml is not None:
        (state.parent / "bridge.toml").write_text(config_toml)
        config = ["--config", str(state.parent / "bridge.toml")]
    cmd = [
        sys.executable,
        "-m",
        "sidecar",
        "run",
        "--router",
        "tcp://127.0.0.1:*",
        "--pub",
        "tcp://127.0.0.1:*",
        "--state",
        str(state),
        *config,
    ]
    for inst in instances:
        cmd += ["--instance", inst]
    # run in the state's directory, on the sidecar of the checkout this bench belongs to
    path = os.pathsep.join(p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=state.parent)
    try:
        match = _lines_until(proc, r"ROUTER on (\S+), PUB on (\S+),", 30)
        yield Running(match.group(1), match.group(2), proc.pid)
    finally:
        _stop(proc)


class Client:
    """A blocking DEALER + SUB pair for benchmark loops."""

    def __init__(self, router: str, pub: str, topics: tuple[bytes, ...] = (b"",)) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        for topic in {*topics, b"instance."}:  # instance.*: heartbeats, to know the SUB is subscribed
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.connect(pub)
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.connect(router)
        self._n = 0

    def request(self, op: str, timeout_s: float = 30, **fields: Any) -> dict[str, Any]:
        self._n += 1
        self.dealer.send(msgspec.msgpack.encode({"op": op, "id": str(self._n), **fields}))
        if not self.dealer.poll(int(timeout_s * 1000)):
            raise TimeoutError(op)
        reply: dict[str, Any] = msgspec.msgpack.decode(self.dealer.recv())
        return reply

    def wait_connected(self, timeout_s: float = 30) -> None:
        """Every instance connected, and the SUB socket subscribed (it has received an event)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            instances = self.request("health")["result"]["instances"]
            if all(i["state"] == "connected" for i in instances):
                break
            self.sub.poll(50)
        else:
            raise TimeoutError("instances not connected")
        self.next_event(max(0.1, deadline - time.monotonic()))  # a heartbeat comes within a second

    def next_event(self, timeout_s: float = 30) -> tuple[dict[str, Any], int]:
        """The next event and its arrival time (Unix ns)."""
        if not self.sub.poll(int(timeout_s * 1000)):
            raise TimeoutError("no event")
        frames = self.sub.recv_multipart()
        now = time.time_ns()
        return msgspec.msgpack.decode(frames[1]), now

    def wait_event(self, pred: Any, timeout_s: float = 30) -> tuple[dict[str, Any], int]:
        deadline = time.monotonic() + timeout_s
        while True:
            event, at = self.next_event(max(0.01, deadline - time.monotonic()))
            if pred(event):
                return event, at

    def close(self) -> None:
        self.sub.close(0)
        self.dealer.close(0)
        self.ctx.term()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (all held open while choosing, so none repeats)."""
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def probe_workflow(seed: int, steps: int = 20, step_ms: float = 20) -> dict[str, Any]:
    """The recorder's probe graph: an image, ``steps`` probe steps of ``step_ms`` each, a save."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": seed}},
        "2": {
            "class_type": "BridgeProbe",
            "inputs": {"image": ["1", 0], "steps": steps, "step_ms": step_ms, "fail_at": -1, "seed": seed},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
    }


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summary(name: str, values: list[float], unit: str = "ms") -> str:
    return (
        f"{name:<34} n={len(values):<5} p50 {percentile(values, 50):8.2f} {unit}   "
        f"p99 {percentile(values, 99):8.2f} {unit}   max {max(values):8.2f} {unit}"
    )
