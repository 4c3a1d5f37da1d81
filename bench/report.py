"""The hot path at production scale, in one run: the sidecar beside a direct client and a naive relay.

Measures, in one run on this machine (issue 9), as ratios to the floor measured in the same run:
1. one-way latency (p50, p90, p99, p99.9, max, lost) from a ComfyUI ``progress`` frame sent to
   its arrival, at 100, 1,000 and 10,000 frames/s, without and with previews (20 KB after every
   tenth frame), for the direct WebSocket client (the floor, ``direct.py``), a naive relay
   (``naive_relay.py``) and the sidecar (default configuration); the three take turns, round
   after round, so that the machine's noise hits them alike;
2. the highest rate each sustains on one instance with nothing lost and p99 under 5 ms;
3. 1, 8 and 64 instances at 100 frames/s each: latency, CPU per frame, RSS;
4. the sidecar's RSS after 10^4 and 10^6 frames, and after 10^5 finished jobs;
5. start-up: process start to ``ping`` answered and to every instance ``connected``;
6. the cancel (``cancel.py``) and reconnect (``reconnect.py``) figures;
then checks the issue's targets. Writes ``bench/results/latest.md`` (also printed),
``latest.json`` and ``latest.png`` (the latency distributions; needs matplotlib, the ``bench``
extra), and with ``--readme`` puts the summary in README.md's Performance section.

Usage: ``python bench/report.py [--quick] [--only latency,sustained,instances,memory,recovery]
[--out DIR] [--readme]``. ``--quick`` takes about two minutes, the full run about 20 (most of
it 10^6 frames and 10^5 jobs).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import render  # noqa: E402
from memory import frames_run, jobs_run  # noqa: E402
from rig import Direct, Naive, Segment, Sidecar, Stream, Streamer, compile_sidecar, segment  # noqa: E402

SECTIONS = ("latency", "sustained", "instances", "memory", "recovery")
P99_LIMIT_US = 5000.0


@dataclass(frozen=True)
class Plan:
    """How long each part runs: ``--quick`` or the full run."""

    rounds: int  # turns of each client per latency configuration
    seconds: dict[float, float]  # rate -> seconds per turn
    instance_seconds: float
    trial_s: float  # one try of the sustained-rate search
    max_rates: int  # rates tried by the sustained-rate search, per client (each up to twice)
    frames: int  # the long stream for memory
    frame_marks: tuple[int, ...]
    frames_rate: float
    jobs: int
    job_marks: tuple[int, ...]
    cancels: int
    cycles: int


QUICK = Plan(2, {100: 1.0, 1000: 0.5, 10000: 0.5}, 1.5, 1.0, 5, 50_000, (10_000, 50_000), 10_000.0,
             1_500, (500, 1_500), 10, 2)  # fmt: skip
FULL = Plan(3, {100: 5.0, 1000: 3.0, 10000: 3.0}, 4.0, 3.0, 8, 1_000_000, (10_000, 100_000, 1_000_000), 10_000.0,
            100_000, (1_000, 10_000, 100_000), 50, 10)  # fmt: skip


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Collected:
    """Segments of one configuration, per client: samples merged across rounds."""

    def __init__(self) -> None:
        self.by_subject: dict[str, list[Segment]] = {}

    def add(self, seg: Segment) -> None:
        self.by_subject.setdefault(seg.subject, []).append(seg)

    def row(self, subject: str) -> dict[str, Any]:
        segs = self.by_subject[subject]
        lat = [x for s in segs for x in s.lat_us]
        frames = sum(s.sent + s.previews_sent for s in segs)
        return {
            "client": subject,
            **render.stats(lat),
            "sent": sum(s.sent for s in segs),
            "lost": sum(s.lost for s in segs),
            "previews_sent": sum(s.previews_sent for s in segs),
            "previews_got": sum(s.previews_got for s in segs),
            "cpu_us_per_frame": 1e6 * sum(s.cpu_s for s in segs) / max(1, frames),
            "rss_mb": segs[-1].rss_mb,
            "timed_out": any(s.timed_out for s in segs),
        }

    def samples(self, subject: str) -> list[float]:
        return [x for s in self.by_subject[subject] for x in s.lat_us]


def warm_up(subjects: list[Any], streamer: Streamer, instances: int) -> None:
    """A short stream through each client, until one arrives whole (the SUB sockets are subscribed)."""
    for subject in subjects:
        for _ in range(10):
            seg = segment(subject, streamer, Stream(1000, 300), instances, grace_s=2.0)
            if seg.lost == 0 and not seg.timed_out:
                break
        else:
            raise RuntimeError(f"{subject.name}: warm-up streams never arrived whole")


def turns(subjects: list[Any], rounds: int, shift: int) -> list[Any]:
    """Round r runs the clients in an order rotated by r (and by ``shift``, per configuration)."""
    order = []
    for r in range(rounds):
        k = (r + shift) % len(subjects)
        order += subjects[k:] + subjects[:k]
    return order


def latency_and_sustained(plan: Plan, sections: set[str], results: dict[str, Any], samples: dict[str, Any]) -> None:
    streamer = Streamer(1)
    subjects: list[Any] = []
    try:
        subjects.append(Direct(streamer.urls))  # one by one: those started are closed if the next fails
        subjects.append(Naive(streamer.urls))
        sidecar = Sidecar(streamer.urls)
        subjects.append(sidecar)
        results["startup"].append(render.startup_row("latency runs", 1, sidecar))
        warm_up(subjects, streamer, 1)
        if "latency" in sections:
            for shift, (rate, previews) in enumerate(itertools.product((100.0, 1000.0, 10000.0), (False, True))):
                label = f"{rate:,.0f} f/s{', previews' if previews else ''}"
                log(f"latency: {label}, {plan.rounds} round(s) of {plan.seconds[rate]} s per client")
                collected = Collected()
                stream = Stream(rate, int(rate * plan.seconds[rate]), 10 if previews else 0)
                for subject in turns(subjects, plan.rounds, shift):
                    collected.add(segment(subject, streamer, stream, 1))
                for subject in subjects:
                    results["latency"].append({"rate": rate, "previews": previews, **collected.row(subject.name)})
                    samples.setdefault(label, {})[subject.name] = collected.samples(subject.name)
        if "sustained" in sections:
            results["sustained"] = sustained(plan, subjects, streamer)
    finally:
        for subject in subjects:
            subject.close()
        streamer.close()


def _try(subject: Any, streamer: Streamer, rate: float, seconds: float) -> dict[str, Any]:
    log(f"sustained: {subject.name} at {rate:,.0f} f/s for {seconds} s")
    seg = segment(subject, streamer, Stream(rate, int(rate * seconds)), 1, grace_s=10.0)
    p99 = render.stats(seg.lat_us)["p99"] if seg.lat_us else float("inf")
    clean = seg.lost == 0 and not seg.timed_out and p99 < P99_LIMIT_US
    behind = seg.achieved < 0.9 * rate  # the source could not keep the rate
    why = ("source behind" if behind else "") if clean else (f"lost {seg.lost:,}" if seg.lost else "p99 ≥ 5 ms")
    return {"rate": rate, "achieved": seg.achieved, "lost": seg.lost, "p99": p99, "ok": clean, "behind": behind,
            "why": why, "cpu_us_per_frame": 1e6 * seg.cpu_s / max(1, seg.sent)}  # fmt: skip


def sustained(plan: Plan, subjects: list[Any], streamer: Streamer) -> dict[str, Any]:
    """Per client, the highest rate with nothing lost and p99 < 5 ms: doubling from 5,000 frames/s
    until a rate fails, then halving the gap (geometrically), the clients taking turns; at most
    ``plan.max_rates`` rates each. A rate that fails is tried once more before it counts as failed
    (a stall of the shared machine can fail one try). A clean try whose source fell more than 10 %
    behind its rate says the rig, not the client, is the limit, and ends that client's search."""
    state = {s.name: {"lo": None, "hi": None, "trials": [], "rates": 0, "limited": False} for s in subjects}
    active = list(subjects)
    while active:
        for subject in list(active):
            st = state[subject.name]
            lo, hi = st["lo"], st["hi"]
            if lo is None:
                rate = 5000.0 if hi is None else hi / 2
            else:
                rate = lo * 2 if hi is None else (lo * hi) ** 0.5
            rate = round(rate, -2)
            st["rates"] += 1
            for _ in range(2):
                trial = _try(subject, streamer, rate, plan.trial_s)
                st["trials"].append(trial)
                if trial["ok"]:
                    break
            if trial["ok"] and trial["behind"]:
                st["limited"] = True
            elif trial["ok"]:
                st["lo"] = rate
            else:
                st["hi"] = rate
            lo, hi = st["lo"], st["hi"]
            done = (
                st["limited"]
                or st["rates"] >= plan.max_rates
                or (lo is not None and hi is not None and hi / lo < 1.15)
                or (lo is None and hi is not None and hi <= 1000)
                or (lo is not None and lo >= 160_000)
            )
            if done:
                active.remove(subject)
    out = {}
    for name, st in state.items():
        best = max((t for t in st["trials"] if t["ok"]), key=lambda t: t["achieved"], default=None)
        out[name] = {
            "rate": best["achieved"] if best else 0.0,
            "p99": best["p99"] if best else None,
            "limited": bool(best and best["behind"]),  # the best try was held back by the source
            "first_fail": st["hi"],
            "trials": st["trials"],
        }
    return out


def instances(plan: Plan, results: dict[str, Any], samples: dict[str, Any]) -> None:
    for count in (1, 8, 64):
        log(f"instances: {count} at 100 f/s each, {plan.rounds} round(s) of {plan.instance_seconds} s per client")
        streamer = Streamer(count)
        subjects: list[Any] = []
        try:
            subjects.append(Direct(streamer.urls))
            subjects.append(Naive(streamer.urls))
            sidecar = Sidecar(streamer.urls)
            subjects.append(sidecar)
            results["startup"].append(render.startup_row(f"{count} instance(s)", count, sidecar))
            warm_up(subjects, streamer, count)
            collected = Collected()
            stream = Stream(100.0, int(100 * plan.instance_seconds))
            for subject in turns(subjects, plan.rounds, 0):
                collected.add(segment(subject, streamer, stream, count))
            for subject in subjects:
                results["instances"].append({"instances": count, **collected.row(subject.name)})
                samples.setdefault(f"{count} instance(s) × 100 f/s", {})[subject.name] = collected.samples(subject.name)
        finally:
            for subject in subjects:
                subject.close()
            streamer.close()


def memory(plan: Plan, results: dict[str, Any]) -> None:
    log(f"memory: {plan.frames:,} frames at {plan.frames_rate:,.0f} f/s through one sidecar")
    results["memory"]["frames"] = frames_run(plan.frames, plan.frames_rate, plan.frame_marks, results["startup"], log)
    log(f"memory: {plan.jobs:,} jobs through one sidecar")
    results["memory"]["jobs"] = jobs_run(plan.jobs, plan.job_marks, results["startup"], log)


def recovery(plan: Plan, results: dict[str, Any]) -> None:
    import cancel
    import reconnect

    log(f"cancel: {plan.cancels} cancels of running jobs (bench/cancel.py)")
    started = time.monotonic()
    times = cancel.measure(plan.cancels)
    results["cancel"] = {**times, "took_s": time.monotonic() - started, "met": cancel.met(times)}
    log(f"reconnect: {plan.cycles} kill/restart cycles (bench/reconnect.py)")
    started = time.monotonic()
    outcome = reconnect.measure(plan.cycles, log=lambda line: log("reconnect: " + line))
    results["reconnect"] = {**outcome, "took_s": time.monotonic() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about two minutes)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output directory")
    parser.add_argument("--readme", action="store_true", help="put the summary in README.md's Performance section")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else FULL
    results: dict[str, Any] = render.machine(args.quick, sys.argv if argv is None else ["bench/report.py", *argv])
    results.update(
        latency=[], sustained={}, instances=[], memory={}, startup=[], cancel=None, reconnect=None, errors=[]
    )
    samples: dict[str, dict[str, list[float]]] = {}
    log(f"bytecode written for {compile_sidecar()}")
    started = time.monotonic()
    steps: list[tuple[str, Callable[[], None]]] = []
    if sections & {"latency", "sustained"}:
        steps.append(("latency", lambda: latency_and_sustained(plan, sections, results, samples)))
    if "instances" in sections:
        steps.append(("instances", lambda: instances(plan, results, samples)))
    if "memory" in sections:
        steps.append(("memory", lambda: memory(plan, results)))
    if "recovery" in sections:
        steps.append(("recovery", lambda: recovery(plan, results)))
    for name, step in steps:
        began = time.monotonic()
        try:
            step()
        except Exception as exc:  # a part that fails is reported; the others still run
            log(f"{name} failed: {exc!r}")
            results["errors"].append(f"{name}: {exc.__class__.__name__}: {exc}")
        results["took"][name] = time.monotonic() - began
    results["took"]["total"] = time.monotonic() - started
    render.finish(results, samples, Path(args.out), args.readme)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
