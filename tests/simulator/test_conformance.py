"""Conformance: replay each recorded scenario against the simulator and compare with the real server.

How a scenario is replayed: the trace's records are walked in order; WS connects use
the same ``clientId`` query, ``send`` records (the feature-flags frame) are sent as
recorded, HTTP requests are made with the recorded method, path and body.  Trace
prompt ids are mapped to the simulator's ids (learned from the ``POST /prompt``
responses) in later paths and bodies.  Synchronisation is causal, not timed: before
an action recorded at time ``t``, we wait until every open socket has received as
many frames as its trace counterpart had received before ``t``.  BridgeProbe steps
are shortened with ``step_ms`` (the server override).

What is compared, per WS client:

* Every non-``status`` frame, in order, as a token: message ``type`` plus the *shape*
  of ``data`` (recursive key sets; values reduced to their JSON type; keys that are
  node or prompt ids reduced to ``<id>``), for ``progress_state`` also each node's
  ``state``; binary frames as event type plus metadata keys (type 4) or the image
  format (type 1).  Per-prompt messages come from a single worker, so their order is
  deterministic and compared exactly.  Where the real run raced a timed action
  (interrupt after N steps, reconnect mid-run, two clients), consecutive repeats of
  the same block (the per-step ``progress_state``/preview/``progress`` group) are
  collapsed before comparing, because the number of steps seen around the action
  depends on timing.
* ``status`` frames are compared by number (one per queue change: put, start, finish,
  two per pending delete), by the connect-time message (with ``sid``), and by the
  final ``queue_remaining``; not by position or intermediate values: when a request
  lands relative to a running prompt is timing, in the real server too.

Scenarios: 00–09 and 11 for every version; 10 (SIGKILL and restart of the real
process) cannot be replayed and is covered by ``test_behaviour``'s restart test.

Per HTTP exchange: the status code, the media type, and the shape of a JSON body
(or the exact text of a non-JSON body); bodies the recorder summarised (object_info,
/view, big history) are compared by status and media type only.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from .conftest import Frame, WsRecorder, load_trace

SCENARIOS = {
    # scenario: (exact frame order?, step_ms override)
    "00": (True, 5),
    "01": (True, 5),
    "02": (True, 5),
    "03": (True, 5),
    "04": (True, 5),
    "05": (True, 5),
    "06": (False, 15),
    "07": (True, 25),
    "08": (True, 5),
    "09": (False, 25),
    "11": (False, 5),
}
VERSIONS = ("0.0.2", "0.3.44", "0.12.1")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# Shapes ------------------------------------------------------------------------


def _dynamic_key(key: str) -> bool:
    return key.isdigit() or bool(_UUID.match(key)) or key in {"my-job-42", "does-not-exist"}


def shape(value: Any) -> Any:
    """JSON structure without values: dict keys (ids merged), list element shapes, type names."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        dynamic: set[str] = set()
        for key, item in value.items():
            if _dynamic_key(key):
                dynamic.add(json.dumps(shape(item), sort_keys=True))
            else:
                out[key] = shape(item)
        if dynamic:
            out["<id>"] = sorted(dynamic)
        return out
    if isinstance(value, list):
        shapes = [shape(item) for item in value]
        unique = {json.dumps(s, sort_keys=True) for s in shapes}
        return shapes if len(unique) > 1 else shapes[:1]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "num"
    if value is None:
        return "null"
    return "str"


def token(
    kind: str,
    msg_type: str,
    data: Any,
    event: int = 0,
    meta: dict[str, Any] | None = None,
    image_format: Any = None,
) -> str:
    """Comparable description of one frame (see module docstring)."""
    if kind == "binary":
        return f"BIN{event}:{sorted(meta) if meta is not None else image_format}"
    extra = ""
    if msg_type == "progress_state":
        extra = json.dumps(sorted((k, v["state"]) for k, v in data["nodes"].items()))
    return f"{msg_type}:{json.dumps(shape(data), sort_keys=True)}{extra}"


def trace_token(rec: dict[str, Any]) -> str:
    if rec["kind"] == "binary":
        h = rec["header"]
        return token("binary", "", None, h["event"], h.get("metadata"), h.get("image_type"))
    return token("text", rec["msg"]["type"], rec["msg"]["data"])


def sim_token(frame: Frame) -> str:
    if frame.kind == "binary":
        fmt = None
        if frame.event == 1:
            assert isinstance(frame.raw, bytes)
            fmt = int.from_bytes(frame.raw[4:8], "big")
        return token("binary", "", None, frame.event, frame.metadata, fmt)
    return token("text", frame.type, frame.data)


def collapse(tokens: list[str], max_period: int = 4) -> list[str]:
    """Remove immediately repeated blocks of up to ``max_period`` tokens."""
    out: list[str] = []
    for tok in tokens:
        out.append(tok)
        changed = True
        while changed:
            changed = False
            for p in range(1, max_period + 1):
                if len(out) >= 2 * p and out[-p:] == out[-2 * p : -p]:
                    del out[-p:]
                    changed = True
                    break
    return out


# Replay ------------------------------------------------------------------------


class Replay:
    def __init__(self, server: Any, session: aiohttp.ClientSession, records: list[dict[str, Any]]):
        self.server = server
        self.session = session
        self.records = records
        self.sim: dict[str, WsRecorder] = {}
        self.trace_frames: dict[str, list[dict[str, Any]]] = {}
        self.ids: dict[str, str] = {}
        self.http: list[tuple[dict[str, Any], int, str, Any]] = []
        for rec in records:
            if rec["src"] == "ws" and rec["dir"] == "recv":
                self.trace_frames.setdefault(rec["client"], []).append(rec)

    def _map(self, text: str) -> str:
        """Replace trace prompt ids and output file names by the simulator's."""
        for trace_id, sim_id in self.ids.items():
            text = text.replace(trace_id, sim_id)
        for label, recs in self.trace_frames.items():
            sim = self.sim.get(label)
            trace_out = [
                r["msg"]["data"]["output"] for r in recs if r["kind"] == "text" and r["msg"]["type"] == "executed"
            ]
            sim_out = [f.data["output"] for f in sim.frames if f.type == "executed"] if sim else []
            for t_ui, s_ui in zip(trace_out, sim_out, strict=False):
                for t_img, s_img in zip(t_ui.get("images", []), s_ui.get("images", []), strict=False):
                    text = text.replace(f"filename={t_img['filename']}&", f"filename={s_img['filename']}&")
        return text

    async def _sync(self, t: float, *, within_s: float = 5.0) -> None:
        """Wait until each open socket has the trace's (milestones, step frames) counts before ``t``."""
        for label, rec in self.sim.items():
            if rec.closed.is_set() or rec.ws.closed:
                continue
            needed = _counts([_trace_is_step(f) for f in self.trace_frames.get(label, []) if f["t"] < t])
            try:
                await rec.wait_until(functools.partial(_reached, needed=needed), within_s)
            except TimeoutError:
                raise AssertionError(
                    f"client {label}: before t={t} the trace had (milestones, steps)={needed}, "
                    f"the simulator sent {rec.frames}"
                ) from None

    async def run(self) -> None:
        for rec in self.records:
            if rec["src"] == "ws":
                await self._ws(rec)
            elif rec["src"] == "http" and "status" in rec:
                await self._sync(rec["t_request"])
                await self._request(rec)

    async def _ws(self, rec: dict[str, Any]) -> None:
        label = rec["client"]
        if rec["dir"] == "connect":
            await self._sync(rec["t"])
            query = urlsplit(rec["url"]).query
            url = self.server.ws_url + (f"?{query}" if query else "")
            self.sim[label] = await WsRecorder.connect(self.session, url)
        elif rec["dir"] == "send":
            await self._sync(rec["t"])
            await self.sim[label].send_json(rec["msg"])
        elif rec["dir"] == "client_close":
            await self._sync(rec["t"])
            await self.sim[label].ws.close()

    async def _request(self, rec: dict[str, Any]) -> None:
        body = rec["request"]
        kwargs: dict[str, Any] = {}
        if isinstance(body, str):
            kwargs["data"] = body.encode()
        elif body is not None:
            kwargs["data"] = self._map(json.dumps(body)).encode()
            kwargs["headers"] = {"Content-Type": "application/json"}
        url = self.server.url + self._map(rec["path"])
        async with self.session.request(rec["method"], url, **kwargs) as resp:
            raw = await resp.read()
            ctype = resp.content_type if resp.headers.get("Content-Type") else ""
        parsed: Any = raw.decode("utf-8", "replace")
        if ctype == "application/json":
            parsed = json.loads(raw)
        if rec["path"] == "/prompt" and rec["method"] == "POST" and isinstance(rec.get("response"), dict):
            trace_id = rec["response"].get("prompt_id")
            if trace_id and isinstance(parsed, dict) and "prompt_id" in parsed:
                self.ids.setdefault(trace_id, parsed["prompt_id"])
        self.http.append((rec, resp.status, ctype, parsed))

    async def close(self) -> None:
        for rec in self.sim.values():
            await rec.close()


def _trace_is_step(rec: dict[str, Any]) -> bool:
    return rec["kind"] == "binary" or rec["msg"]["type"] in ("progress", "progress_state")


def _sim_is_step(frame: Frame) -> bool:
    return frame.kind == "binary" or frame.type in ("progress", "progress_state")


def _counts(is_step: list[bool]) -> tuple[int, int]:
    return (is_step.count(False), is_step.count(True))


def _reached(frames: list[Frame], needed: tuple[int, int]) -> bool:
    milestones, steps = _counts([_sim_is_step(f) for f in frames])
    return milestones >= needed[0] and steps >= needed[1]


async def _settle(replay: Replay) -> None:
    """Wait (bounded) until each open socket has as many frames as the trace recorded in total."""
    try:
        await replay._sync(float("inf"), within_s=5.0)
    except AssertionError:
        pass  # the comparison below reports what differs


# The test ------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_replayed_trace_matches_real_server(scenario: str, version: str, sim_factory: Any) -> None:
    """The simulator answers a recorded session with the same messages and shapes as real ComfyUI."""
    exact, step_ms = SCENARIOS[scenario]
    server = await sim_factory(version, step_ms=step_ms)
    async with aiohttp.ClientSession() as session:
        if scenario == "03":  # 03 resubmits 02's prompt: give the cache the same history
            warmup = Replay(server, session, load_trace(version, "02"))
            await warmup.run()
            await _settle(warmup)
            await warmup.close()
        replay = Replay(server, session, load_trace(version, scenario))
        try:
            await replay.run()
            await _settle(replay)
            _compare_ws(replay, exact)
            _compare_http(replay)
        finally:
            await replay.close()


def _compare_ws(replay: Replay, exact: bool) -> None:
    for label, trace_frames in replay.trace_frames.items():
        sim_frames = replay.sim[label].frames
        trace_tokens = [trace_token(r) for r in trace_frames if not _is_status(r)]
        sim_tokens = [sim_token(f) for f in sim_frames if f.type != "status"]
        if not exact:
            trace_tokens, sim_tokens = collapse(trace_tokens), collapse(sim_tokens)
        assert sim_tokens == trace_tokens, f"client {label}: per-prompt frames differ"
        trace_status = [r["msg"]["data"] for r in trace_frames if _is_status(r)]
        sim_status = [f.data for f in sim_frames if f.type == "status"]
        assert len(sim_status) == len(trace_status), f"client {label}: number of status messages differs"
        assert [shape(d) for d in sim_status[:1]] == [shape(d) for d in trace_status[:1]], label
        assert sorted(_remaining(d) for d in sim_status if "sid" in d) == sorted(
            _remaining(d) for d in trace_status if "sid" in d
        ), f"client {label}: connect-time status differs"
        if trace_status:
            assert _remaining(sim_status[-1]) == _remaining(trace_status[-1]), f"client {label}: final queue length"


def _remaining(status: dict[str, Any]) -> int:
    return int(status["status"]["exec_info"]["queue_remaining"])


def _is_status(rec: dict[str, Any]) -> bool:
    return rec["kind"] == "text" and rec["msg"]["type"] == "status"


def _compare_http(replay: Replay) -> None:
    assert len(replay.http) == sum(1 for r in replay.records if r["src"] == "http" and "status" in r)
    for rec, status, ctype, body in replay.http:
        where = f"{rec['method']} {rec['path']}"
        assert status == rec["status"], where
        assert ctype == rec["content_type"].split(";")[0], where
        if "response" in rec:
            assert shape(body) == shape(rec["response"]), where
        elif "response_text" in rec:
            assert body == rec["response_text"], where
        elif rec["path"].startswith("/view"):
            assert isinstance(body, str) and body.startswith("\ufffdPNG"), where
