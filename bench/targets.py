"""Issue 9's targets, and the cancel and reconnect scripts' own, checked on one report's figures.

Each check gives ``{"target", "measured", "pass"}``; ``pass`` is None when that part was not
run. Ratios are to the floor (the direct WebSocket client) of the same run; latency targets
are read without previews, as the issue measured them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FLAT_TOLERANCE", "check"]

FLAT_TOLERANCE = 0.05  # "flat": RSS grows by at most 5 % from the first mark to the last
FLOOR, NAIVE, SIDECAR = "direct (floor)", "naive relay", "sidecar"


def _row(rows: list[dict[str, Any]], client: str, **where: Any) -> dict[str, Any] | None:
    for row in rows:
        if row["client"] == client and all(row.get(k) == v for k, v in where.items()):
            return row
    return None


def _ratio_check(
    target: str, side: dict[str, Any] | None, floor: dict[str, Any] | None, key: str, limit: float
) -> dict[str, Any]:
    if not side or not floor or not side[key] or not floor[key]:
        return {"target": target, "measured": "–", "pass": None}
    ratio = side[key] / floor[key]
    lost = f"; sidecar lost {side['lost']:,}" if side["lost"] else ""
    measured = f"{ratio:.2f}× (sidecar {side[key]:,.0f} µs, floor {floor[key]:,.0f} µs{lost})"
    return {"target": target, "measured": measured, "pass": ratio <= limit and not side["lost"]}


def _flat(target: str, marks: list[dict[str, Any]], unit: str) -> dict[str, Any]:
    if len(marks) < 2:
        return {"target": target, "measured": "–", "pass": None}
    first, last = marks[0], marks[-1]
    growth = last["rss_mb"] - first["rss_mb"]
    measured = (
        f"{first['rss_mb']:.1f} MB after {first[unit]:,} {unit}, {last['rss_mb']:.1f} MB after {last[unit]:,} "
        f"({growth:+.1f} MB; flat: at most +{FLAT_TOLERANCE:.0%})"
    )
    return {"target": target, "measured": measured, "pass": growth <= FLAT_TOLERANCE * first["rss_mb"]}


def check(results: dict[str, Any]) -> list[dict[str, Any]]:
    lat, out = results["latency"], []
    for rate, key, limit in ((1000.0, "p50", 1.8), (1000.0, "p99", 2.0), (10000.0, "p99", 2.0)):
        side = _row(lat, SIDECAR, rate=rate, previews=False)
        floor = _row(lat, FLOOR, rate=rate, previews=False)
        target = f"{key} ≤ {limit}× floor's {key} at {rate:,.0f} frames/s"
        out.append(_ratio_check(target, side, floor, key, limit))

    side = _row(lat, SIDECAR, rate=10000.0, previews=False)
    out.append(
        {
            "target": "sidecar CPU ≤ 15 µs per frame at 10,000 frames/s",
            "measured": f"{side['cpu_us_per_frame']:.1f} µs (all threads)" if side else "–",
            "pass": side["cpu_us_per_frame"] <= 15 if side else None,
        }
    )

    sus = results["sustained"]
    mine, naive = sus.get(SIDECAR), sus.get(NAIVE)
    out.append(
        {
            "target": "sustained ≥ 60,000 frames/s on one instance, nothing lost, p99 < 5 ms",
            "measured": f"{mine['rate']:,.0f} frames/s" if mine else "–",
            "pass": mine["rate"] >= 60_000 if mine else None,
        }
    )
    if mine and naive and naive["rate"]:
        ratio = mine["rate"] / naive["rate"]
        measured = f"{ratio:.2f}× ({mine['rate']:,.0f} vs {naive['rate']:,.0f})"
        out.append({"target": "sustained ≥ 4× the naive relay's", "measured": measured, "pass": ratio >= 4})
    else:
        out.append({"target": "sustained ≥ 4× the naive relay's", "measured": "–", "pass": None})

    inst = results["instances"]
    one, many = _row(inst, SIDECAR, instances=1), _row(inst, SIDECAR, instances=64)
    check64 = _ratio_check("64 instances × 100 frames/s: p99 ≤ 2× the one-instance p99", many, one, "p99", 2.0)
    check64["measured"] = check64["measured"].replace("floor", "1 instance").replace("sidecar ", "64 instances ")
    out.append(check64)

    rss = [(r["rss_mb"], f"{r['instances']} instances") for r in inst if r["client"] == SIDECAR]
    rss += [(r["rss_mb"], f"{r['rate']:,.0f} f/s") for r in lat if r["client"] == SIDECAR]
    mem = results["memory"]
    for part, unit in (("frames", "frames"), ("jobs", "jobs")):
        if mem.get(part):
            rss += [(m["rss_mb"], f"{m[unit]:,} {unit}") for m in mem[part]["marks"]]
            rss.append((mem[part]["rss_end"], f"end of the {part} run"))
    top = max(rss, default=None)
    out.append(
        {
            "target": "sidecar RSS ≤ 80 MB (largest seen in this run)",
            "measured": f"{top[0]:.1f} MB ({top[1]})" if top else "–",
            "pass": top[0] <= 80 if top else None,
        }
    )
    frames = mem.get("frames", {}).get("marks", [])
    out.append(_flat(f"RSS flat from 10⁴ to {frames[-1]['frames']:,} frames" if frames else "RSS flat over 10⁶ frames",
                     frames, "frames"))  # fmt: skip
    jobs = mem.get("jobs", {}).get("marks", [])
    out.append(_flat(f"RSS flat with history, {jobs[0]['jobs']:,} to {jobs[-1]['jobs']:,} finished jobs" if jobs
                     else "RSS flat over 10⁵ finished jobs", jobs, "jobs"))  # fmt: skip

    starts = results["startup"]
    slowest = max(starts, key=lambda r: r["ping_ms"], default=None)
    measured = f"slowest {slowest['ping_ms']:.0f} ms ({slowest['where']}) of {len(starts)} starts" if slowest else "–"
    out.append(
        {
            "target": "ready (`ping` answered) ≤ 1 s after start",
            "measured": measured,
            "pass": slowest["ping_ms"] <= 1000 if slowest else None,
        }
    )

    c = results.get("cancel")
    if c:
        ok_reply, ok_final = c["met"]
        out.append({"target": "cancel → reply p99 ≤ 20 ms (bench/cancel.py)", "measured": "see §6", "pass": ok_reply})
        out.append({"target": "`job.cancelled` ≤ ComfyUI's stop + 50 ms, p99 (bench/cancel.py)", "measured": "see §6",
                    "pass": ok_final})  # fmt: skip
    r = results.get("reconnect")
    if r:
        measured = f"{len(r['lost'])} lost, {len(r['duplicated'])} twice, of {len(r['submitted'])} jobs"
        out.append({"target": "every job ends exactly once across kills (bench/reconnect.py)", "measured": measured,
                    "pass": not r["lost"] and not r["duplicated"]})  # fmt: skip
    return out
