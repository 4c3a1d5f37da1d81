"""What metrics add per frame, measured in-process (``bench/latency.py --metrics`` is too noisy for it).

Times, over many iterations, the two wrappers :mod:`sidecar.metrics` installs when metrics are on:
the decoder's (a ComfyUI ``progress`` frame decoded, counted by type) and the publish callable's
(an event counted by type, its latency observed), each against the bare call.
Usage: ``python bench/metrics_cost.py [--n 200000]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.metrics import Metrics  # noqa: E402
from sidecar.protocol import comfy  # noqa: E402
from sidecar.protocol.events import NodeProgress  # noqa: E402
from sidecar.protocol.wire import Event  # noqa: E402

FRAME = b'{"type": "progress", "data": {"value": 7, "max": 20, "prompt_id": "p-1", "node": "3"}}'


def per_call_ns(fn: Any, arg: Any, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn(arg)
        best = min(best, (time.perf_counter_ns() - start) / n)
    return best


class _Sidecar:  # what Metrics reads on a final event: not reached here
    book = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    metrics = Metrics(_Sidecar(), "127.0.0.1", 0)  # type: ignore[arg-type]

    decoder = comfy.Decoder()
    bare_decode = per_call_ns(decoder.decode, FRAME, args.n)
    metrics.watch_decoder("bench", decoder)
    counted_decode = per_call_ns(decoder.decode, FRAME, args.n)

    data = NodeProgress(node="3", value=7, max=20)
    event = Event(
        seq=1,
        run="r",
        ts=time.time_ns(),
        type="node.progress",
        instance="bench",
        job_id="j",
        data=data,
        job_seq=None,
        sidecar="bench",
    )

    def publish(event: Event) -> None:
        pass

    bare_publish = per_call_ns(publish, event, args.n)
    counted_publish = per_call_ns(metrics.counting(publish), event, args.n)
    print(f"decode a progress frame: {bare_decode:.0f} ns bare, {counted_decode:.0f} ns counted")
    print(f"publish (a no-op) one event: {bare_publish:.0f} ns bare, {counted_publish:.0f} ns counted")
    added = counted_decode - bare_decode + 2 * (counted_publish - bare_publish)
    print(f"added per progress frame (one frame, two events: node.progress and job.progress): {added:.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
