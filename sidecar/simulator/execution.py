"""Running one prompt: node order, caching, and the WS message sequence of each version.

:class:`PromptRun` executes a :class:`~sidecar.simulator.state.QueueItem` and returns
its :class:`~sidecar.simulator.state.HistoryEntry`.  Message order (trace 01/02):
``execution_start`` → ``execution_cached`` → (re-sent ``executed`` of cached outputs)
→ per node [``progress_state``] ``executing`` → steps → [``executed``] → terminal.
Executor messages go only to the prompt's client; ``progress``, ``progress_state``
and previews of a prompt without ``client_id`` are broadcast (trace 11), and so is a
node's progress text (binary type 3), whoever submitted the prompt.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .hub import encode_preview, encode_preview_with_metadata, encode_text
from .images import RGB, preview_jpeg
from .runtime import BEHAVIOURS, DEFAULT_KSAMPLER_STEP_MS, NodeFailure, SimImage
from .scheduling import CycleError, ancestors, dangling_links, execution_order, is_link
from .state import HistoryEntry, QueueItem

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["CacheEntry", "PromptRun", "WorkerCrashed", "now_ms"]


def now_ms() -> int:
    """Wall-clock milliseconds, as in ComfyUI's ``timestamp`` fields."""
    return int(time.time() * 1000)


class WorkerCrashed(Exception):
    """The 0.0.2 executor died on a dangling link (its worker thread never recovers)."""


class _Interrupted(Exception):
    pass


@dataclass
class CacheEntry:
    """Cached result of one node: reused when the node's signature is unchanged."""

    signature: str
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None
    ui_seq: int


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else repr(value)


class PromptRun:
    """One execution of a queued prompt; implements the ``NodeContext`` used by node behaviours."""

    def __init__(self, engine: Engine, item: QueueItem) -> None:
        self.engine = engine
        self.profile = engine.profile
        self.item = item
        self.pid = item.prompt_id
        self.cid = item.client_id
        self.prompt: Mapping[str, Any] = item.prompt
        self.results: dict[str, tuple[Any, ...]] = {}
        self.ui: dict[str, tuple[int, dict[str, Any]]] = {}
        self.executed: list[str] = []
        self.messages: list[list[Any]] = []
        self.snapshot: dict[str, dict[str, Any]] = {}
        self.node: str | None = None
        self._signatures: dict[str, str] = {}
        self._current_inputs: dict[str, Any] = {}

    # Public

    async def execute(self) -> HistoryEntry:
        """Run the prompt to a terminal state; raise :class:`WorkerCrashed` on the 0.0.2 wedge."""
        engine, profile = self.engine, self.profile
        start_ms = now_ms()
        closure = ancestors(self.prompt, self.item.outputs)
        cached = [n for n in self.prompt if n in closure and self._cached(n)]
        await self._emit_logged("execution_start", self._stamp({"prompt_id": self.pid}))
        await self._emit_logged("execution_cached", self._stamp({"nodes": cached, "prompt_id": self.pid}))
        if profile.dangling_link_kills_worker and dangling_links(self.prompt, closure - set(cached)):
            raise WorkerCrashed(self.pid)
        for node in cached:
            entry = engine.cache[node]
            self.results[node] = entry.outputs
            if entry.ui is not None:
                self.ui[node] = (entry.ui_seq, entry.ui)
        if profile.resend_cached_outputs:
            for node in self.item.outputs:
                if node in self.ui:
                    await self._emit("executed", self._executed_data(node, self.ui[node][1]))
                    await self._progress_state(node, 1, 1, "finished")
        status_str, completed = "success", True
        try:
            order = execution_order(profile.order_rule, self.prompt, self.item.outputs, cached, self._is_output)
            for node in order:
                await self._run_node(node)
        except _Interrupted:
            status_str, completed = "error", False
            data = {
                "prompt_id": self.pid,
                "node_id": self.node,
                "node_type": self._class(self.node),
                "executed": list(self.executed),
            }
            await self._emit_logged("execution_interrupted", self._stamp(data))
        except (NodeFailure, CycleError) as exc:
            status_str, completed = "error", False
            failure = exc if isinstance(exc, NodeFailure) else NodeFailure("Exception", "Dependency cycle detected", [])
            await self._emit_logged("execution_error", self._stamp(self._error_data(failure)))
        else:
            if profile.execution_success:
                await self._emit_logged("execution_success", self._stamp({"prompt_id": self.pid}))
        finally:
            engine.current_node = None
            engine.evict(set(self.prompt))
        outputs = {n: ui for n, (_, ui) in sorted(self.ui.items(), key=lambda kv: kv[1][0])}
        meta = None
        if profile.display_node:
            meta = {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in outputs}
        return HistoryEntry(self.item, outputs, status_str, completed, self.messages, meta, start_ms, now_ms())

    # NodeContext

    def step_ms(self, requested: float | None) -> float:
        override = self.engine.step_ms_override
        if override is not None:
            return override
        return DEFAULT_KSAMPLER_STEP_MS if requested is None else requested

    async def step(self, value: int, total: int, rgb: RGB, step_ms: float) -> None:
        await self.engine.steps_open.wait()
        await asyncio.sleep(max(0.0, step_ms) / 1000)
        if self.engine.interrupted:
            raise _Interrupted
        node = self.node
        assert node is not None
        self.engine.current_node = node
        await self._progress_state(node, value, total, "running")
        jpeg = preview_jpeg(rgb, f"prompt={self.pid} node={node} step={value}")
        show_node = self.cid is not None or self.profile.broadcast_progress_node
        progress = {"value": value, "max": total, "prompt_id": self.pid, "node": node if show_node else None}
        if self.cid is not None and self.profile.feature_flags and self.engine.hub.wants_metadata(self.cid):
            meta = {
                "node_id": node,
                "prompt_id": self.pid,
                "display_node_id": node,
                "parent_node_id": None,
                "real_node_id": node,
                "image_type": "image/jpeg",
            }
            await self.engine.hub.send_bytes(encode_preview_with_metadata(jpeg, meta), self.cid)
            await self.engine.hub.send_json("progress", progress, self.cid)
        else:
            await self.engine.hub.send_json("progress", progress, self.cid)
            await self.engine.hub.send_bytes(encode_preview(jpeg), self.cid)

    async def work(self, steps: float) -> None:
        duration_ms = steps * self.step_ms(None)
        if duration_ms > 0:
            await asyncio.sleep(duration_ms / 1000)

    def save_images(self, image: SimImage, prefix: str, kind: str) -> list[dict[str, str]]:
        return self.engine.files.save(image, prefix, kind)

    def input_file(self, name: str) -> bytes | None:
        return self.engine.uploads.find(name)

    async def text(self, text: str) -> None:
        # ComfyUI's nodes send it without a client id: every socket gets it, with no prompt id
        if self.profile.progress_text and self.node is not None:
            await self.engine.hub.send_bytes(encode_text(self.node, text), None)

    # Private

    def _class(self, node: str | None) -> str:
        return str(self.prompt.get(node, {}).get("class_type", "")) if node is not None else ""

    def _is_output(self, node: str) -> bool:
        spec = self.engine.registry.get(self._class(node))
        return bool(spec and spec.output_node)

    def _stamp(self, data: dict[str, Any]) -> dict[str, Any]:
        if self.profile.timestamps:
            data["timestamp"] = now_ms()
        return data

    def _signature(self, node: str) -> str:
        if node not in self._signatures:
            self._signatures[node] = "?"  # cycle guard
            inputs = self.prompt[node].get("inputs", {})
            parts: dict[str, Any] = {}
            for name, value in sorted(inputs.items()) if isinstance(inputs, Mapping) else ():
                if is_link(value) and str(value[0]) in self.prompt:
                    parts[name] = [self._signature(str(value[0])), value[1]]
                else:
                    parts[name] = value
            self._signatures[node] = json.dumps([self._class(node), parts], sort_keys=True, default=repr)
        return self._signatures[node]

    def _cached(self, node: str) -> bool:
        entry = self.engine.cache.get(node)
        return entry is not None and entry.signature == self._signature(node)

    async def _emit(self, kind: str, data: dict[str, Any]) -> None:
        if self.cid is not None:
            await self.engine.hub.send_json(kind, data, self.cid)

    async def _emit_logged(self, kind: str, data: dict[str, Any]) -> None:
        self.messages.append([kind, data])
        await self._emit(kind, data)

    def _executed_data(self, node: str, ui: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {"node": node}
        if self.profile.display_node:
            data["display_node"] = node
        data.update({"output": ui, "prompt_id": self.pid})
        return data

    async def _progress_state(self, node: str, value: float, total: float, state: str) -> None:
        if not self.profile.progress_state:
            return
        self.snapshot[node] = {
            "value": value,
            "max": total,
            "state": state,
            "node_id": node,
            "prompt_id": self.pid,
            "display_node_id": node,
            "parent_node_id": None,
            "real_node_id": node,
        }
        nodes = {k: dict(v) for k, v in self.snapshot.items()}
        await self.engine.hub.send_json("progress_state", {"prompt_id": self.pid, "nodes": nodes}, self.cid)

    async def _run_node(self, node: str) -> None:
        spec = self.engine.registry[self._class(node)]
        self.node = node
        self.engine.current_node = node
        await self._progress_state(node, 0.0, 1.0, "running")
        data: dict[str, Any] = {"node": node}
        if self.profile.display_node:
            data["display_node"] = node
        data["prompt_id"] = self.pid
        await self._emit("executing", data)
        if self.engine.interrupted:
            raise _Interrupted
        kwargs = self._resolve_inputs(node)
        for inp in spec.inputs:
            if inp.required and inp.name not in kwargs:
                message = f"{spec.name}.{spec.function}() missing 1 required positional argument: '{inp.name}'"
                raise NodeFailure("TypeError", message, [self._frame(spec.function)])
        self._current_inputs = kwargs
        result = await BEHAVIOURS[spec.name](self, **kwargs)
        self.results[node] = result.outputs
        seq = self.engine.next_ui_seq()
        self.engine.cache[node] = CacheEntry(self._signature(node), result.outputs, result.ui, seq)
        if result.ui is not None:
            self.ui[node] = (seq, result.ui)
            await self._emit("executed", self._executed_data(node, result.ui))
        last = self.snapshot.get(node)
        stepped = last is not None and last["state"] == "running" and isinstance(last["value"], int)
        if stepped and last is not None:
            await self._progress_state(node, last["value"], last["max"], "finished")
        else:
            await self._progress_state(node, 1.0, 1.0, "finished")
        self.executed.append(node)

    def _resolve_inputs(self, node: str) -> dict[str, Any]:
        spec = self.engine.registry[self._class(node)]
        self._current_inputs = {}
        kwargs: dict[str, Any] = {}
        inputs = self.prompt[node].get("inputs", {})
        for name, value in inputs.items() if isinstance(inputs, Mapping) else ():
            declared = spec.input(name)
            if declared is None:
                continue
            if is_link(value):
                src, index = str(value[0]), value[1]
                if src not in self.results:
                    raise NodeFailure("KeyError", repr(src), [self._frame("get_input_data")])
                try:
                    kwargs[name] = self.results[src][index]
                except IndexError as exc:
                    raise NodeFailure("IndexError", str(exc), [self._frame("get_input_data")]) from exc
            else:
                kwargs[name] = _coerce(declared.kind, value)
            self._current_inputs[name] = kwargs[name]
        return kwargs

    def _frame(self, function: str) -> str:
        return f'  File "sidecar/simulator/execution.py", line 1, in {function}\n    node.{function}(**inputs)\n'

    def _error_data(self, failure: NodeFailure) -> dict[str, Any]:
        message = failure.message + ("\n" if self.profile.exception_newline else "")
        current_outputs: Any
        if self.profile.current_outputs_as_dict:
            current_outputs = {n: [[_plain(v)] for v in self.results[n]] for n in self.results}
        else:
            current_outputs = list(self.prompt)
        traceback = [self._frame("execute"), *failure.traceback]
        inputs = self._current_inputs
        return {
            "prompt_id": self.pid,
            "node_id": self.node,
            "node_type": self._class(self.node),
            "executed": list(self.executed),
            "exception_message": message,
            "exception_type": failure.exception_type,
            "traceback": traceback,
            "current_inputs": {k: [_plain(v)] for k, v in inputs.items()},
            "current_outputs": current_outputs,
        }


def _coerce(kind: Any, value: Any) -> Any:
    converters: dict[str, Callable[[Any], Any]] = {"INT": int, "FLOAT": float}
    convert = converters.get(kind) if isinstance(kind, str) else None
    if convert is None:
        return value
    try:
        return convert(value)
    except (TypeError, ValueError):
        return value
