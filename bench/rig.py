"""The processes of ``report.py`` and one measured stream ("segment") through each of them.

Three subjects read the same ``streamer.py`` (a ComfyUI stand-in that records each frame's
send time): the floor (``direct.py``, a WebSocket client, no hop), the naive relay
(``naive_relay.py``) and the sidecar (``comfy-bridge run``, default configuration, in a
fresh working directory). Each is its own process; for the two relays this process is the
subscriber and timestamps each event as it is read. :func:`segment` runs one stream per
instance through one subject and returns the one-way latencies, what was lost, and the
subject's CPU and RSS.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import zmq
from harness import Client, _stop, free_ports
from streamer import stream_workflow

__all__ = [
    "Direct",
    "Naive",
    "Segment",
    "Sidecar",
    "Streamer",
    "compile_sidecar",
    "cpu_s",
    "free_ports",
    "rss_mb",
    "segment",
]

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
if ENV.get("PYTHONPATH"):  # the sidecar runs in its own directory: a relative entry would miss
    ENV["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in ENV["PYTHONPATH"].split(os.pathsep))
FINAL = (b"job.completed", b"job.failed", b"job.cancelled")
_tags = itertools.count(1)


def compile_sidecar() -> str:
    """Write the bytecode of the ``sidecar`` package the subjects import, as ``pip install`` does for
    an installed package, so start-up is measured without compiling 60-odd modules from source
    (which happens at every start when ``PYTHONDONTWRITEBYTECODE`` is set, as on our CI machines,
    and costs about 0.2 s). Returns the package directory."""
    code = "import compileall, os, sidecar; d = os.path.dirname(sidecar.__file__); "
    code += "compileall.compile_dir(d, quiet=1); print(d)"
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def cpu_s(pid: int) -> float:
    """CPU time of a process so far, in seconds: the sum of its live threads' run time in
    nanoseconds (``/proc/PID/task/*/schedstat``), where the kernel keeps it, else user +
    system time in clock ticks (``/proc/PID/stat``, 10 ms steps: too coarse for short runs)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except FileNotFoundError:  # a thread that just ended
                continue
        return total / 1e9
    except (FileNotFoundError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Streamer:
    """``streamer.py --instances N``: the frame source; ``urls`` are its instances' base URLs."""

    def __init__(self, instances: int, version: str = "0.3.44") -> None:
        cmd = [sys.executable, str(HERE / "streamer.py"), "--instances", str(instances), "--version", version]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV)
        line = self.proc.stderr.readline()  # type: ignore[union-attr]
        if not line.startswith("streaming on "):
            _stop(self.proc)
            raise RuntimeError(f"streamer did not start: {line!r}")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # type: ignore[union-attr]
        self.urls = line.split()[2:]

    def post(self, url: str, workflow: dict[str, Any], client_id: str) -> str:
        body = json.dumps({"prompt": workflow, "client_id": client_id}).encode()
        req = urllib.request.Request(url + "/prompt", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as answer:
            return str(json.load(answer)["prompt_id"])

    def sends(self, url: str, tag: str, wait_s: float) -> dict[str, Any]:
        with urllib.request.urlopen(f"{url}/bench/sends/{tag}?wait={wait_s}", timeout=wait_s + 10) as answer:
            result: dict[str, Any] = json.load(answer)
            return result

    def close(self) -> None:
        _stop(self.proc)


@dataclass
class Stream:
    """What one segment asks of each instance."""

    rate: float
    count: int
    preview_every: int = 0


@dataclass
class Segment:
    """One segment's figures: latencies in µs of the progress frames, all instances together."""

    subject: str
    rate: float
    instances: int
    lat_us: list[float]
    sent: int
    lost: int
    previews_sent: int
    previews_got: int
    cpu_s: float
    rss_mb: float
    achieved: float  # progress frames/s actually sent (one instance's, the slowest)
    wall_s: float
    timed_out: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Subject:
    """A process that reads the streamer; :meth:`start` starts the streams, :meth:`collect` waits."""

    name = "?"
    pid = 0

    def start(self, streamer: Streamer, workflows: list[dict[str, Any]]) -> list[str]:
        raise NotImplementedError

    def collect(self, keys: list[str], timeout_s: float) -> tuple[dict[str, list[tuple[int, int]]], int, bool]:
        """Per key, the (value, arrival ns) of each progress frame; previews received; timed out."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Direct(Subject):
    name = "direct (floor)"

    def __init__(self, urls: list[str]) -> None:
        self.client_id = "bench-direct"
        self.urls = urls
        cmd = [sys.executable, str(HERE / "direct.py"), "--client-id", self.client_id, *urls]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
        self.pid = self.proc.pid
        if json.loads(self.proc.stdout.readline() or "{}").get("ready") is not True:  # type: ignore[union-attr]
            raise RuntimeError("direct.py did not connect")

    def start(self, streamer: Streamer, workflows: list[dict[str, Any]]) -> list[str]:
        return [streamer.post(url, wf, self.client_id) for url, wf in zip(self.urls, workflows, strict=True)]

    def collect(self, keys: list[str], timeout_s: float) -> tuple[dict[str, list[tuple[int, int]]], int, bool]:
        self.proc.stdin.write(json.dumps({"op": "wait", "pids": keys, "timeout_s": timeout_s}) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        answer = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]
        arrivals = {pid: [(v, t) for v, t in got] for pid, got in answer["arrivals"].items()}
        return arrivals, int(answer["previews"]), len(answer["ended"]) < len(keys)

    def close(self) -> None:
        _stop(self.proc)


class _Subscriber(Subject):
    """A relay whose events this process reads on a SUB socket."""

    sub: zmq.Socket

    def _end(self, frames: list[bytes]) -> str | None:
        raise NotImplementedError

    def _progress(self, frames: list[bytes]) -> tuple[str, int] | None:
        raise NotImplementedError

    def _is_preview(self, topic: bytes) -> bool:
        raise NotImplementedError

    def collect(self, keys: list[str], timeout_s: float) -> tuple[dict[str, list[tuple[int, int]]], int, bool]:
        pending = set(keys)
        got: list[tuple[int, list[bytes]]] = []
        sub, now_ns, end = self.sub, time.time_ns, self._end
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            if not sub.poll(100):
                continue
            while True:
                try:
                    frames = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                got.append((now_ns(), frames))
                key = end(frames)
                if key is not None:
                    pending.discard(key)
        arrivals: dict[str, list[tuple[int, int]]] = {k: [] for k in keys}
        previews = 0
        for at, frames in got:
            if self._is_preview(frames[0]):
                previews += 1
                continue
            progress = self._progress(frames)
            if progress is not None and progress[0] in arrivals:
                arrivals[progress[0]].append((progress[1], at))
        return arrivals, previews, bool(pending)


class Naive(_Subscriber):
    name = "naive relay"

    def __init__(self, urls: list[str]) -> None:
        self.client_id = "bench-naive"
        self.urls = urls
        pub = f"tcp://127.0.0.1:{free_ports(1)[0]}"
        names = [f"i{n}={url}" for n, url in enumerate(urls)]
        cmd = [sys.executable, str(HERE / "naive_relay.py"), "--pub", pub, "--client-id", self.client_id, *names]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV)
        self.pid = self.proc.pid
        for _ in urls:
            if not self.proc.stderr.readline().startswith("relaying"):  # type: ignore[union-attr]
                raise RuntimeError("naive_relay.py did not connect")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # type: ignore[union-attr]
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(pub)

    def start(self, streamer: Streamer, workflows: list[dict[str, Any]]) -> list[str]:
        return [streamer.post(url, wf, self.client_id) for url, wf in zip(self.urls, workflows, strict=True)]

    def _end(self, frames: list[bytes]) -> str | None:
        if frames[0] == b"execution_success":
            return str(json.loads(frames[1])["data"]["prompt_id"])
        return None

    def _progress(self, frames: list[bytes]) -> tuple[str, int] | None:
        if frames[0] != b"progress":
            return None
        data = json.loads(frames[1])["data"]
        return data["prompt_id"], int(data["value"])

    def _is_preview(self, topic: bytes) -> bool:
        return topic == b"preview"

    def close(self) -> None:
        self.sub.close(0)
        self.ctx.term()
        _stop(self.proc)


class Sidecar(_Subscriber):
    """``comfy-bridge run`` with the default configuration (previews as files, a state file) in a
    fresh directory. Start-up is timed: process start to ``ping`` answered, and to every instance
    ``connected`` (``health``)."""

    name = "sidecar"

    def __init__(self, urls: list[str], names: list[str] | None = None) -> None:
        self.names = names or [f"i{n}" for n in range(len(urls))]
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-report-"))
        router, pub = (f"tcp://127.0.0.1:{p}" for p in free_ports(2))
        cmd = [sys.executable, "-m", "sidecar", "run", "--router", router, "--pub", pub]
        cmd += ["--state", str(self.workdir / "state.sqlite3")]
        for name, url in zip(self.names, urls, strict=True):
            cmd += ["--instance", f"{name}={url}"]
        probe_ctx = zmq.Context()
        probe = probe_ctx.socket(zmq.DEALER)
        probe.setsockopt(zmq.RECONNECT_IVL, 5)
        probe.setsockopt(zmq.LINGER, 0)
        log = open(self.workdir / "sidecar.log", "wb")  # noqa: SIM115 - the child owns it
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stderr=log, env=ENV, cwd=self.workdir)
        self.pid = self.proc.pid
        try:
            probe.connect(router)
            probe.send(msgspec.msgpack.encode({"op": "ping", "id": "start"}))
            if not probe.poll(30_000):
                raise RuntimeError(f"sidecar did not answer ping; see {self.workdir / 'sidecar.log'}")
            probe.recv()
            self.ping_ms = (time.monotonic() - started) * 1000
            self.client = Client(router, pub, topics=(b"progress.", b"job.", b"preview."))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                health = self.client.request("health")["result"]
                if all(i["state"] == "connected" for i in health["instances"]):
                    break
                time.sleep(0.005)  # sync-ok: polling health is the measurement
            else:
                raise RuntimeError("instances not connected")
            self.connected_ms = (time.monotonic() - started) * 1000
            self.client.wait_connected()
        except BaseException:
            _stop(self.proc)
            raise
        finally:
            probe.close(0)
            probe_ctx.term()
        self.sub = self.client.sub
        self._n = 0

    def start(self, streamer: Streamer, workflows: list[dict[str, Any]]) -> list[str]:
        keys = []
        for name, wf in zip(self.names, workflows, strict=True):
            self._n += 1
            job_id = wf["1"]["inputs"]["tag"]
            request = {"op": "submit", "id": f"s{self._n}", "job_id": job_id, "workflow": wf, "instance": name}
            self.client.dealer.send(msgspec.msgpack.encode(request))
            keys.append(job_id)
        for _ in workflows:  # pipelined: all submits out, then their replies
            if not self.client.dealer.poll(30_000):
                raise TimeoutError("submit")
            reply = msgspec.msgpack.decode(self.client.dealer.recv())
            if not reply["ok"]:
                raise RuntimeError(f"submit refused: {reply}")
        return keys

    def _end(self, frames: list[bytes]) -> str | None:
        if frames[0].startswith(b"job."):
            event = msgspec.msgpack.decode(frames[1])
            if event["type"].encode() in FINAL:
                return str(event["job_id"])
        return None

    def _progress(self, frames: list[bytes]) -> tuple[str, int] | None:
        if not frames[0].startswith(b"progress."):
            return None
        event = msgspec.msgpack.decode(frames[1])
        if event["type"] != "node.progress":
            return None
        return event["job_id"], int(event["data"]["value"])

    def _is_preview(self, topic: bytes) -> bool:
        return topic.startswith(b"preview.")

    def close(self) -> None:
        self.client.close()
        _stop(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


POST_MS = 10
"""Time allowed per instance for its prompt to be posted before the streams start (``segment``)."""


def segment(subject: Subject, streamer: Streamer, stream: Stream, instances: int, grace_s: float = 30.0) -> Segment:
    """One stream of ``stream.count`` progress frames at ``stream.rate`` on each of the first
    ``instances`` instances, read through ``subject``; lost = not received ``grace_s`` after the
    stream should have ended. Each instance's stream starts 200 ms plus ``POST_MS`` per instance
    after its prompt, plus its share of one frame period, so that the instances' frames are spread
    evenly over time."""
    tags = [f"t{next(_tags)}" for _ in range(instances)]
    # Independent instances: their frames spread evenly over one period, not all due at once. The
    # streams start once every prompt is in (POST_MS per instance: the sidecar posts its submits while
    # it relays, so 64 POSTs overlapping the first frames measured the submit burst, not the stream).
    offsets_ms = [200 + POST_MS * instances + k * 1000 / stream.rate / instances for k in range(instances)]
    workflows = [
        stream_workflow(tag, stream.rate, stream.count, stream.preview_every, delay_ms=offset)
        for tag, offset in zip(tags, offsets_ms, strict=True)
    ]
    began, cpu_before = time.monotonic(), cpu_s(subject.pid)
    keys = subject.start(streamer, workflows)
    arrivals, previews_got, timed_out = subject.collect(keys, 0.2 + stream.count / stream.rate + grace_s)
    used = cpu_s(subject.pid) - cpu_before
    wall = time.monotonic() - began
    lat_us: list[float] = []
    sent = lost = previews_sent = 0
    achieved = float("inf")
    for key, tag, url in zip(keys, tags, streamer.urls, strict=False):
        record = streamer.sends(url, tag, wait_s=30)
        sends: list[int] = record["sends"]
        seen: set[int] = set()
        for value, at in arrivals.get(key, []):
            if value not in seen and 1 <= value <= len(sends):
                seen.add(value)
                lat_us.append((at - sends[value - 1]) / 1000)
        sent += len(sends)
        lost += len(sends) - len(seen)
        previews_sent += int(record["previews"])
        if len(sends) > 1:
            achieved = min(achieved, (len(sends) - 1) / max(1e-9, (sends[-1] - sends[0]) / 1e9))
    return Segment(
        subject=subject.name,
        rate=stream.rate,
        instances=instances,
        lat_us=lat_us,
        sent=sent,
        lost=lost,
        previews_sent=previews_sent,
        previews_got=previews_got,
        cpu_s=used,
        rss_mb=rss_mb(subject.pid),
        achieved=achieved if achieved != float("inf") else 0.0,
        wall_s=wall,
        timed_out=timed_out,
    )
