"""Decoder cost per frame over the recorded 0.12.1 traces: ``progress_state`` decoded in full, or skipped.

The sidecar skips ``progress_state`` (recognised by its first bytes) except while it restores
node state after a (re)connect. This measures what that choice saves, on the recorded frames
and on ``progress_state`` frames of bigger prompts (the message lists every node touched so
far, so it grows with the workflow). Pure: no sockets. Usage: ``python bench/decode.py``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.protocol import comfy  # noqa: E402
from tests.tracesupport import TRACES, frame_of, load, ws_recv  # noqa: E402

PROMPT = "c158ef17-a5fe-4100-b4a2-b58f56168bb4"


def per_frame_ns(decoders: list[Callable[[bytes], object]], frames: list[bytes], rounds: int = 15) -> list[float]:
    """ns per frame of each decoder over ``frames``: the best of ``rounds``, measured in turn (the box is shared)."""
    reps = max(1, 4_000 // len(frames))
    best = [float("inf")] * len(decoders)
    for _ in range(rounds):
        for i, decode in enumerate(decoders):
            start = time.perf_counter()
            for _ in range(reps):
                for frame in frames:
                    decode(frame)
            best[i] = min(best[i], (time.perf_counter() - start) / (reps * len(frames)))
    return [b * 1e9 for b in best]


def progress_state_frame(nodes: int) -> bytes:
    state = {
        str(i): {
            "value": 1.0,
            "max": 1.0,
            "state": "finished",
            "node_id": str(i),
            "prompt_id": PROMPT,
            "display_node_id": str(i),
            "parent_node_id": None,
            "real_node_id": str(i),
        }
        for i in range(nodes)
    }
    return json.dumps({"type": "progress_state", "data": {"prompt_id": PROMPT, "nodes": state}}).encode()


def main() -> int:
    paths = sorted((TRACES / "0.12.1").glob("*.jsonl"))
    frames = [frame_of(rec)[0] for path in paths for _, rec in ws_recv(load(path))]
    states = [f for f in frames if f.startswith(b'{"type": "progress_state"')]
    others = [f for f in frames if not f.startswith(b'{"type": "progress_state"')]
    full = comfy.Decoder()
    skipping = comfy.Decoder(comfy.TEXT_TYPES, skip={"progress_state"})
    print(f"0.12.1 traces: {len(frames)} frames, {len(states)} progress_state ({len(states) / len(frames):.0%})")
    print(f"{'frames':<40} {'full decode':>12} {'skipped':>12}")
    rows = [
        ("progress_state (recorded)", states),
        ("every other frame (recorded)", others),
        ("all recorded frames", frames),
    ]
    rows += [(f"progress_state of a {n}-node prompt", [progress_state_frame(n)]) for n in (5, 30, 100)]
    for name, batch in rows:
        full_ns, skipped_ns = per_frame_ns([full.decode, skipping.decode], batch)
        print(f"{name:<40} {full_ns:>9.0f} ns {skipped_ns:>9.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
