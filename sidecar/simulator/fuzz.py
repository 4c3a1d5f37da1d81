"""Mutated ComfyUI frames: the simulator's fuzzing mode, and the mutator the fuzz tests and
``bench/fuzz.py`` use.

Seeded and deterministic: every function takes a :class:`random.Random`. :func:`mutate`
returns any damage at all (a frame may even stay valid, or become a valid frame of another
shape); :func:`harmless` returns only damage that cannot change what happens to a real job:
a frame a decoder must find malformed (garbled JSON, a wrong type in a known message, a
binary preview cut inside its header or metadata, JSON nested deeper than a decoder can
recurse), of an unknown type, or for a prompt no one submitted. :class:`FrameFuzzer` is the
simulator's mode (``SimServer(fuzz=SEED)``, ``comfy-bridge simulate --fuzz SEED``): after each
real frame it sends, with probability ``rate``, one harmless mutation of that frame to the same
socket.
"""

from __future__ import annotations

import json
import random
import struct
from collections import Counter
from typing import Any

__all__ = ["HARMLESS_KINDS", "KINDS", "FrameFuzzer", "harmless", "mutate", "random_json"]

#: kinds of :func:`harmless`; :func:`mutate` adds byte-level damage and valid-looking changes
HARMLESS_KINDS = ("garbled", "wrong_type", "unknown_type", "unknown_prompt", "truncated", "as_binary", "deep")
KINDS = (*HARMLESS_KINDS, "bytes", "splice", "any_value", "drop_key", "non_utf8", "header")

# Fields of ComfyUI messages whose type is checked (never ``Any``): a list or a bool in any of
# them makes the message malformed (a map would not: status and exec_info are maps).
_TYPED = ("prompt_id", "node", "nodes", "value", "max", "status", "timestamp", "display_node", "sid", "exec_info")
_WRONG: tuple[Any, ...] = ([1, None], True, ["x", {"y": [2]}])


def random_json(rng: random.Random, depth: int = 3) -> Any:
    """A random JSON value (nested up to ``depth``)."""
    pick = rng.randrange(10 if depth > 0 else 7)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.choice((0, -1, 1, 2**31, 2**63, -(2**64), 10**30, rng.randrange(-1000, 1000)))
    if pick == 3:
        return rng.choice((0.0, -0.5, 1e308, 3.25, rng.random()))
    if pick in (4, 5, 6):
        return rng.choice(("", "1", "prompt", "\u00e9\u4e2d", "\x00", "a" * rng.randrange(64), str(rng.random())))
    if pick in (7, 8):
        return [random_json(rng, depth - 1) for _ in range(rng.randrange(4))]
    keys = ("type", "data", "node", "prompt_id", "value", "max", "output", "nodes", "status", "x")
    return {rng.choice(keys): random_json(rng, depth - 1) for _ in range(rng.randrange(4))}


def _bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


def _garble(rng: random.Random, text: bytes) -> bytes:
    """Cut a JSON text where it cannot end, or drop its last closing brace."""
    text = text.rstrip()
    if len(text) > 2 and rng.random() < 0.5:
        return text[: rng.randrange(1, len(text) - 1)]
    return text[:-1] + rng.choice((b"", b",", b"]", b'"'))


def _swap_prompt(obj: dict[str, Any], rng: random.Random) -> bool:
    data = obj.get("data")
    if isinstance(data, dict) and "prompt_id" in data:
        data["prompt_id"] = f"fuzz-{rng.getrandbits(64):016x}"
        return True
    return False


DEEP = 5000  # nesting of a "deep" mutation: past Python's default recursion limit (1000)


def _deep(prompt_id: str) -> bytes:
    return b'{"prompt_id": "' + prompt_id.encode() + b'", "x": ' + b"[" * DEEP + b"]" * DEEP + b"}"


def _text(rng: random.Random, frame: bytes, kind: str) -> tuple[bytes, bool]:
    obj: Any
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        return _garble(rng, frame), True
    data = obj.get("data")
    if kind == "deep":
        return b'{"type": ' + json.dumps(obj.get("type")).encode() + b', "data": ' + _deep("fuzz-deep") + b"}", True
    if kind == "wrong_type":
        keys = [k for k in _TYPED if isinstance(data, dict) and k in data]
        if keys and isinstance(data, dict):
            data[rng.choice(keys)] = rng.choice(_WRONG)
            return json.dumps(obj).encode(), True
        kind = "unknown_type"
    if kind == "unknown_prompt" and _swap_prompt(obj, rng):
        return json.dumps(obj).encode(), True
    if kind in ("unknown_type", "unknown_prompt"):
        obj["type"] = f"fuzz_{rng.getrandbits(32):08x}"
        return json.dumps(obj).encode(), True
    if kind == "as_binary":
        return frame, False  # JSON in a binary frame: an unknown binary event type
    if kind == "any_value" and isinstance(data, dict) and data:
        data[rng.choice(list(data))] = random_json(rng)
        return json.dumps(obj).encode(), True
    if kind == "drop_key" and isinstance(data, dict) and data:
        del data[rng.choice(list(data))]
        return json.dumps(obj).encode(), True
    if kind == "non_utf8":
        at = rng.randrange(len(frame) + 1)
        return frame[:at] + rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80")) + frame[at:], True
    return _garble(rng, frame), True


def _binary(rng: random.Random, frame: bytes, kind: str) -> tuple[bytes, bool]:
    event = int.from_bytes(frame[:4], "big") if len(frame) >= 4 else -1
    if kind == "deep":
        nested = _deep("fuzz-deep")
        return struct.pack(">II", 4, len(nested)) + nested + frame[8:], False
    if kind == "unknown_prompt" and event == 4 and len(frame) >= 8:
        length = int.from_bytes(frame[4:8], "big")
        meta: Any
        try:
            meta = json.loads(frame[8 : 8 + length])
        except (ValueError, RecursionError):
            meta = None
        if isinstance(meta, dict) and "prompt_id" in meta:
            meta["prompt_id"] = f"fuzz-{rng.getrandbits(64):016x}"
            body = json.dumps(meta).encode()
            return struct.pack(">II", 4, len(body)) + body + frame[8 + length :], False
    if kind == "header" and len(frame) >= 8:
        return frame[:4] + struct.pack(">I", rng.choice((0, 3, 2**31, 2**32 - 1, len(frame)))) + frame[8:], False
    if kind in ("truncated", "wrong_type", "garbled", "header") or event not in (1, 3, 4):
        # cut inside the fixed header, or inside type 4's metadata: never a whole preview
        end = 8
        if event == 4 and len(frame) >= 8:
            end = 8 + int.from_bytes(frame[4:8], "big")
        return frame[: rng.randrange(min(end, len(frame)) or 1)], False
    return struct.pack(">I", rng.choice((0, 2, 5, 255, 2**24 - 1))) + frame[4:], False  # unknown event type


def harmless(rng: random.Random, frame: bytes, is_text: bool, kind: str | None = None) -> tuple[bytes, bool, str]:
    """A mutated copy of a real frame that cannot change a real job's fate, with its kind."""
    kind = kind or rng.choice(HARMLESS_KINDS)
    out, text = _text(rng, frame, kind) if is_text else _binary(rng, frame, kind)
    return out, text, kind


def mutate(rng: random.Random, frame: bytes, is_text: bool, frames: list[bytes] | None = None) -> tuple[bytes, bool]:
    """Any mutation of ``frame`` (``frames``: others to splice with); may stay valid."""
    kind = rng.choice(KINDS)
    if kind == "bytes" and frame:
        out = bytearray(frame)
        for _ in range(rng.randrange(1, 6)):
            op, at = rng.randrange(3), rng.randrange(len(out) + 1)
            if op == 0 and at < len(out):
                out[at] = rng.randrange(256)
            elif op == 1:
                out[at:at] = _bytes(rng, rng.randrange(1, 9))
            else:
                del out[at : at + rng.randrange(1, 9)]
        return bytes(out), is_text
    if kind == "splice" and frames:
        other = rng.choice(frames)
        return frame[: rng.randrange(len(frame) + 1)] + other[rng.randrange(len(other) + 1) :], is_text
    if is_text:
        return _text(rng, frame, kind)
    return _binary(rng, frame, kind)


class FrameFuzzer:
    """The simulator's fuzzing mode: harmless mutated copies of real frames, seeded."""

    def __init__(self, seed: int, rate: float = 0.5) -> None:
        self.seed = seed
        self.rate = rate
        self._rng = random.Random(seed)
        #: mutated frames sent, by kind
        self.sent: Counter[str] = Counter()

    def after(self, data: bytes | str) -> list[bytes | str]:
        """The mutated frames to send after the real frame ``data`` (none or one)."""
        if self._rng.random() >= self.rate:
            return []
        is_text = isinstance(data, str)
        raw = data.encode() if isinstance(data, str) else data
        out, text, kind = harmless(self._rng, raw, is_text)
        self.sent[kind] += 1
        if text:
            return [out.decode("utf-8", "replace")]
        return [out]
