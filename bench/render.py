"""What ``report.py`` writes: statistics, the machine, the targets, the Markdown, the PNG, README's section."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from targets import check

__all__ = ["finish", "machine", "startup_row", "stats"]

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ("direct (floor)", "naive relay", "sidecar")
COLOURS = {"direct (floor)": "#444444", "naive relay": "#e08a00", "sidecar": "#1f5fbf"}
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def stats(lat_us: list[float]) -> dict[str, Any]:
    """n, p50, p90, p99, p99.9, max and mean of latencies in µs (nearest-rank on the sorted list)."""
    if not lat_us:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "p999": None, "max": None, "mean": None}
    ordered = sorted(lat_us)
    last = len(ordered) - 1

    def at(p: float) -> float:
        return ordered[min(last, int(round(p / 100 * last)))]

    return {"n": len(ordered), "p50": at(50), "p90": at(90), "p99": at(99), "p999": at(99.9),
            "max": ordered[-1], "mean": sum(ordered) / len(ordered)}  # fmt: skip


def startup_row(where: str, instances: int, sidecar: Any) -> dict[str, Any]:
    return {"where": where, "instances": instances, "ping_ms": sidecar.ping_ms, "connected_ms": sidecar.connected_ms}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(quick: bool, argv: list[str]) -> dict[str, Any]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import zmq

    return {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "quick": quick,
            "command": "python " + " ".join(argv),
            "cores": os.cpu_count(),
            "cpu": model,
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "libraries": {
                "comfy-bridge": f"{_version('comfy-bridge')} ({commit or 'no git'})",
                "websockets": _version("websockets"),
                "pyzmq": f"{zmq.__version__} (libzmq {zmq.zmq_version()})",
                "msgspec": _version("msgspec"),
                "aiohttp": _version("aiohttp"),
            },
            "load_start": os.getloadavg(),
        },
        "took": {},
    }


# Markdown


def _us(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _x(value: float | None, floor: float | None) -> str:
    return "–" if not value or not floor else f"{value / floor:.2f}×"


def _latency_table(rows: list[dict[str, Any]], first: str, key: Any) -> list[str]:
    head = f"| {first} | client | n | p50 | p90 | p99 | p99.9 | max | lost | p50 ×floor | p99 ×floor |"
    head += " CPU µs/frame | RSS MB |"
    out = [head, "|" + "---|" * head.count(" | ") + "---|"]
    floors = {key(r): r for r in rows if r["client"] == CLIENTS[0]}
    for r in rows:
        f = floors.get(key(r), {})
        out.append(
            f"| {key(r)} | {r['client']} | {r['n']:,} | {_us(r['p50'])} | {_us(r['p90'])} | {_us(r['p99'])} | "
            f"{_us(r['p999'])} | {_us(r['max'])} | {r['lost']:,} | {_x(r['p50'], f.get('p50'))} | "
            f"{_x(r['p99'], f.get('p99'))} | {r['cpu_us_per_frame']:.1f} | {r['rss_mb']:.1f} |"
        )
    return out


def _meta_lines(results: dict[str, Any]) -> list[str]:
    m = results["meta"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    load = "/".join(f"{x:.2f}" for x in m["load_start"])
    end = "/".join(f"{x:.2f}" for x in m.get("load_end", ()))
    kind = "quick run (`--quick`: short samples, so p99.9 and max rest on few frames)" if m["quick"] else "full run"
    return [
        f"- Run: {m['date']}, {kind}, {results['took'].get('total', 0):.0f} s.",
        f"- Command: `{m['command']}`",
        f"- Machine: {m['cores']} cores, {m['cpu']}, {m['os']}, Python {m['python']}; {libs}.",
        f"- Load average (1/5/15 min) at start {load}, at end {end}: other work on the machine adds noise alike "
        f"to the three clients, which take turns.",
    ]


def _targets_table(results: dict[str, Any]) -> list[str]:
    out = ["| target | measured | result |", "|---|---|---|"]
    for row in results["targets"]:
        result = {True: "**pass**", False: "**FAIL**", None: "not measured"}[row["pass"]]
        out.append(f"| {row['target']} | {row['measured']} | {result} |")
    return out


def markdown(results: dict[str, Any], png: str) -> str:
    lines = ["# comfy-bridge: hot path benchmark (`bench/report.py`)", "", *_meta_lines(results), ""]
    if results["errors"]:
        lines += ["**Parts that failed** (their figures are missing):", ""]
        lines += [f"- {error}" for error in results["errors"]] + [""]
    lines += ["## Targets (issue 9)", "", *_targets_table(results), ""]
    if results["latency"]:
        lines += [
            "## 1. One-way latency, µs: ComfyUI `progress` frame sent → received",
            "",
            "Floor: a WebSocket client reading the stand-in ComfyUI directly (`bench/direct.py`). Naive relay: "
            "`bench/naive_relay.py` (websockets + json + pyzmq with their defaults: it negotiates "
            "permessage-deflate, as it would with a real ComfyUI). Sidecar: `comfy-bridge run`, "
            "default configuration (previews written as files, state file). Previews: 20 KB after every tenth "
            "frame; CPU per frame counts every WebSocket frame (progress and previews), all threads of the process.",
            "",
            *_latency_table(
                results["latency"],
                "rate, previews",
                lambda r: f"{r['rate']:,.0f}{' + previews' if r['previews'] else ''}",
            ),
            "",
        ]
    lines += _sustained(results) + _instances(results) + _memory(results) + _startup(results) + _recovery(results)
    lines += [f"Latency distributions: {png}", ""]
    return "\n".join(lines)


def _sustained(results: dict[str, Any]) -> list[str]:
    sus = results["sustained"]
    if not sus:
        return []
    floor = sus.get(CLIENTS[0], {}).get("rate")
    out = [
        "## 2. Highest sustained rate, one instance (nothing lost, p99 < 5 ms)",
        "",
        "From 5,000 frames/s the rate doubles until one fails, then the gap is halved (geometrically); a rate is "
        "tried twice before it counts as failed. The rate shown is the one the stand-in actually sent at.",
        "",
        "| client | frames/s | p99 there, µs | ×floor | lowest failed rate (both tries) | tries |",
        "|---|---|---|---|---|---|",
    ]
    for name in CLIENTS:
        s = sus.get(name)
        if s is None:
            continue
        fails = [t for t in s["trials"] if t["rate"] == s["first_fail"]]
        first = f"{s['first_fail']:,.0f}: " + ", ".join(t["why"] for t in fails) if fails else "none"
        tries = ", ".join(f"{t['rate'] / 1000:g}k {t['why'] or 'ok'}" for t in s["trials"])
        rate = f"{s['rate']:,.0f}" + (" (the source's limit)" if s["limited"] else "")
        out.append(f"| {name} | {rate} | {_us(s['p99'])} | {_x(s['rate'], floor)} | {first} | {tries} |")
    return [*out, ""]


def _instances(results: dict[str, Any]) -> list[str]:
    rows = results["instances"]
    if not rows:
        return []
    return [
        "## 3. Many instances, 100 frames/s each",
        "",
        "One stand-in process serves every instance (a port each); their frames are spread evenly over each "
        "10 ms period. Each client reads all instances (the sidecar and the naive relay: one process each).",
        "",
        *_latency_table(rows, "instances", lambda r: str(r["instances"])),
        "",
    ]


def _memory(results: dict[str, Any]) -> list[str]:
    mem = results["memory"]
    if not mem:
        return []
    out = ["## 4. Sidecar memory with history", "", "| after | RSS MB | at (s) | notes |", "|---|---|---|---|"]
    fr = mem.get("frames")
    if fr:
        out.append(f"| start-up (connected, idle) | {fr['rss_start']:.1f} | 0 | |")
        for m in fr["marks"]:
            out.append(f"| {m['frames']:,} frames | {m['rss_mb']:.1f} | {m['at_s']:.1f} | |")
        st = fr["stats"]
        out.append(
            f"| the job's end | {fr['rss_end']:.1f} | {fr['took_s']:.1f} | one job of {fr['count']:,} frames at "
            f"{fr['rate']:,.0f}/s (sent at {fr['achieved']:,.0f}/s): lost {fr['lost']:,}, p50 {_us(st['p50'])} µs, "
            f"p99 {_us(st['p99'])} µs, max {_us(st['max'])} µs, CPU {fr['cpu_us_per_frame']:.1f} µs/frame |"
        )
    jb = mem.get("jobs")
    if jb:
        out.append(f"| start-up (connected, idle) | {jb['rss_start']:.1f} | 0 | simulated ComfyUI 0.12.1, 0 ms steps |")
        for m in jb["marks"]:
            out.append(f"| {m['jobs']:,} finished jobs | {m['rss_mb']:.1f} | {m['at_s']:.1f} | |")
        rb = jb["readback"]
        out.append(
            f"| all {jb['count']:,} jobs | {jb['rss_end']:.1f} | {jb['took_s']:.1f} | "
            f"{jb['count'] / max(1e-9, jb['took_s']):,.0f} jobs/s; outcomes {jb['outcomes']}; the first job read back "
            f"with `job`: {rb['state']} in {rb['ms']:.1f} ms |"
        )
    return [*out, ""]


def _startup(results: dict[str, Any]) -> list[str]:
    rows = results["startup"]
    if not rows:
        return []
    out = [
        "## 5. Start-up: process start → `ping` answered → every instance `connected`",
        "",
        "| sidecar started for | instances | ping answered, ms | all connected, ms |",
        "|---|---|---|---|",
    ]
    for r in rows:
        out.append(f"| {r['where']} | {r['instances']} | {r['ping_ms']:.0f} | {r['connected_ms']:.0f} |")
    return [*out, ""]


def _recovery(results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    c, r = results.get("cancel"), results.get("reconnect")
    if c:
        s = {k: stats(v) for k, v in c.items() if k in ("reply", "final", "stop", "share")}
        out += [
            "## 6. Cancel and reconnect",
            "",
            f"`bench/cancel.py` ({len(c['reply'])} cancels of running jobs, simulated ComfyUI 0.12.1, 50 ms steps; "
            f"{c['took_s']:.0f} s), in ms:",
            "",
            "| measure | p50 | p99 | max |",
            "|---|---|---|---|",
        ]
        names = {"reply": "cancel → reply", "final": "cancel → `job.cancelled`", "stop": "ComfyUI's own stop time",
                 "share": "sidecar's share after ComfyUI stopped"}  # fmt: skip
        for key, label in names.items():
            if s[key]["n"]:
                out.append(f"| {label} | {s[key]['p50']:.1f} | {s[key]['p99']:.1f} | {s[key]['max']:.1f} |")
        out.append("")
    if r:
        ms = stats(r["reconnect_ms"])
        out += [
            f"`bench/reconnect.py` ({len(r['submitted']) // 2} kill/restart cycles, ComfyUI and the sidecar "
            f"alternately; {r['took_s']:.0f} s): reconnect after a ComfyUI restart p50 {ms['p50'] or 0:.0f} ms, "
            f"max {ms['max'] or 0:.0f} ms over {ms['n']} restarts; {len(r['submitted'])} jobs, "
            f"{len(r['lost'])} without a final state, {len(r['duplicated'])} with two final events "
            f"({len(r['asked'])} final states learnt with `job` after a sidecar restart).",
            "",
        ]
    return out


# PNG


def plot(samples: dict[str, dict[str, list[float]]], path: Path, title: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    except ImportError:
        return "PNG skipped: matplotlib is not installed (`pip install -e '.[bench]'`)."
    if not samples:
        return "PNG skipped: no latency measured."
    every = [x for by_client in samples.values() for lat in by_client.values() for x in lat if x > 0]
    low, high = min(every) / 1.3, max(every) * 1.3
    ncols = 3
    nrows = (len(samples) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(15, 4.3 * nrows), squeeze=False)
    ticks = [t for t in (10, 30, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6) if low <= t <= high]
    for ax, (label, by_client) in zip(axes.flat, samples.items(), strict=False):
        for client in CLIENTS:
            lat = sorted(x for x in by_client.get(client, []) if x > 0)
            if not lat:
                continue
            n = len(lat)
            # complementary CDF on log-log: the share of frames slower than x, down to 1/n
            ks = sorted({min(n - 1, int(n - n / 10 ** (j / 40))) for j in range(0, 40 * len(str(n)) + 1)})
            s = stats(lat)
            ax.step([lat[k] for k in ks], [max(1 / n, 1 - k / n) for k in ks], where="post",
                    color=COLOURS[client], lw=1.6,
                    label=f"{client}: p50 {s['p50']:,.0f}, p99 {s['p99']:,.0f} µs")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(low, high)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g} ms" if v >= 1000 else f"{v:g} µs"))
        ax.axvline(5000, color="#bb0000", lw=0.8, ls=":")
        n = max((len(v) for v in by_client.values()), default=0)
        ax.set_title(f"{label} (n = {n:,} per client)", fontsize=11)
        ax.set_xlabel("one-way latency (log scale)")
        ax.set_ylabel("share of frames slower")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    for ax in list(axes.flat)[len(samples) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return f"`{path.name}` (complementary CDF per configuration; the dotted line is 5 ms)."


# README


def readme_block(results: dict[str, Any]) -> str:
    latency = [r for r in results["latency"] if not r["previews"]]
    lines = [README_START, "", *_meta_lines(results), ""]
    lines += _targets_table(results) + [""]
    if latency:
        lines += ["One-way latency in µs, no previews (every figure, previews too: `bench/results/latest.md`):", ""]
        lines += _latency_table(latency, "frames/s", lambda r: f"{r['rate']:,.0f}") + [""]
    lines.append(README_END)
    return "\n".join(lines)


def update_readme(results: dict[str, Any], path: Path = ROOT / "README.md") -> None:
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no {README_START} ... {README_END} block to replace")
    path.write_text(pattern.sub(lambda _: readme_block(results), text), encoding="utf-8")


def finish(results: dict[str, Any], samples: dict[str, dict[str, list[float]]], out: Path, readme: bool) -> None:
    results["meta"]["load_end"] = os.getloadavg()
    results["targets"] = check(results)
    out.mkdir(parents=True, exist_ok=True)
    m = results["meta"]
    kind = "quick run" if m["quick"] else "full run"
    title = f"One-way latency, {m['date']}, {m['cores']} cores, {m['cpu']} ({kind})"
    png = plot(samples, out / "latest.png", title)
    text = markdown(results, png)
    (out / "latest.md").write_text(text + "\n", encoding="utf-8")
    (out / "latest.json").write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    if readme:
        update_readme(results)
    print(text)
    print(f"\nwritten: {out / 'latest.md'}, {out / 'latest.json'}; {png}" + ("; README.md updated" if readme else ""))
