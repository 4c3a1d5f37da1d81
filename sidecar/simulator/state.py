"""In-memory server state: the prompt queue, the history, saved files (PROTOCOL.md §2, §9).

The queue and the history are lost when the server closes, like ComfyUI's own state. Saved
files are ComfyUI's folders on disk: :class:`FileStore` outlives a restart of the server
(``SimServer`` keeps it), and, as ComfyUI does at start-up, each start empties the ``temp``
folder (``PreviewImage`` results) while ``output`` (``SaveImage``) and ``input`` stay.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Any

from .images import solid_png
from .runtime import SimImage

__all__ = ["FileStore", "PromptStore", "QueueItem"]


@dataclass
class QueueItem:
    """One queued prompt (``[number, prompt_id, prompt, extra_data, outputs]`` on the wire)."""

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    seq: int
    create_time_ms: int

    @property
    def client_id(self) -> str | None:
        cid = self.extra_data.get("client_id")
        return cid if isinstance(cid, str) and cid else None

    def as_list(self) -> list[Any]:
        number: Any = int(self.number) if float(self.number).is_integer() else self.number
        return [number, self.prompt_id, self.prompt, self.extra_data, list(self.outputs)]


@dataclass
class HistoryEntry:
    """A finished prompt; ``render()`` is the ``/history`` value."""

    item: QueueItem
    outputs: dict[str, Any]
    status_str: str
    completed: bool
    messages: list[list[Any]]
    meta: dict[str, Any] | None
    start_ms: int = 0
    end_ms: int = 0

    def render(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "prompt": self.item.as_list(),
            "outputs": self.outputs,
            "status": {"status_str": self.status_str, "completed": self.completed, "messages": self.messages},
        }
        if self.meta is not None:
            entry["meta"] = self.meta
        return entry


@dataclass
class PromptStore:
    """Pending and running prompts plus the history (insertion-ordered, ids may repeat)."""

    pending: list[QueueItem] = field(default_factory=list)
    running: QueueItem | None = None
    history: dict[str, HistoryEntry] = field(default_factory=dict)
    next_number: int = 0
    _seq: int = 0

    # Public

    def make_item(
        self,
        prompt_id: str,
        prompt: dict[str, Any],
        extra: dict[str, Any],
        outputs: list[str],
        *,
        number: float | None,
        front: bool,
        now_ms: int,
    ) -> QueueItem:
        """Create an item with the next queue number (``front`` puts it before the others)."""
        value: float = self.next_number
        if front:
            value = -value
        self.next_number += 1
        if number is not None:
            value = number
        self._seq += 1
        return QueueItem(value, prompt_id, prompt, extra, outputs, self._seq, now_ms)

    def put(self, item: QueueItem) -> None:
        self.pending.append(item)
        self.pending.sort(key=lambda i: (i.number, i.seq))

    def take(self) -> QueueItem | None:
        """Move the first pending item to running."""
        if not self.pending or self.running is not None:
            return None
        self.running = self.pending.pop(0)
        return self.running

    def remaining(self) -> int:
        return len(self.pending) + (1 if self.running is not None else 0)

    def delete(self, prompt_ids: list[str]) -> int:
        """Remove pending items with these ids; return how many were removed."""
        before = len(self.pending)
        wanted = set(prompt_ids)
        self.pending = [i for i in self.pending if i.prompt_id not in wanted]
        return before - len(self.pending)

    def clear(self) -> int:
        removed = len(self.pending)
        self.pending = []
        return removed

    def finish(self, entry: HistoryEntry) -> None:
        """Record ``entry`` in the history and free the running slot."""
        self.history[entry.item.prompt_id] = entry
        self.running = None

    def queue_json(self) -> dict[str, Any]:
        running = [self.running.as_list()] if self.running is not None else []
        return {"queue_running": running, "queue_pending": [i.as_list() for i in self.pending]}

    def history_json(self, max_items: int | None = None) -> dict[str, Any]:
        ids = list(self.history)
        if max_items is not None:
            ids = ids[-max_items:] if max_items > 0 else []
        return {pid: self.history[pid].render() for pid in ids}


class FileStore:
    """Saved output/temp PNGs served by ``/view``, with ComfyUI-style counters per prefix.

    Lives as long as the ``SimServer`` (ComfyUI's folders are on disk); :meth:`restart`
    does what a ComfyUI start does to them.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        #: temp prefix suffix, fixed per server process like ``ComfyUI_temp_droxp``
        self.temp_prefix = self._temp_prefix()
        self._counters: dict[tuple[str, str], int] = {}
        self._files: dict[tuple[str, str, str], bytes] = {}

    def restart(self) -> None:
        """A server start: the temp folder is emptied (ComfyUI's start-up cleanup) and a new
        process picks a new temp prefix; ``output`` and ``input`` files stay."""
        self._files = {key: data for key, data in self._files.items() if key[0] != "temp"}
        self._counters = {key: n for key, n in self._counters.items() if key[0] != "temp"}
        self.temp_prefix = self._temp_prefix()

    def _temp_prefix(self) -> str:
        return "ComfyUI_temp_" + "".join(self._rng.choice(string.ascii_lowercase) for _ in range(5))

    def save(self, image: SimImage, prefix: str, kind: str) -> list[dict[str, str]]:
        """Store one PNG per batch item; return the ui records."""
        prefix = prefix or "ComfyUI"
        if kind == "temp":
            prefix = self.temp_prefix
        records = []
        data = solid_png(image.rgb, max(1, image.width), max(1, image.height))
        for _ in range(max(1, image.batch)):
            counter = self._counters.get((kind, prefix), 0) + 1
            self._counters[(kind, prefix)] = counter
            filename = f"{prefix}_{counter:05}_.png"
            self._files[(kind, "", filename)] = data
            records.append({"filename": filename, "subfolder": "", "type": kind})
        return records

    def get(self, kind: str, subfolder: str, filename: str) -> bytes | None:
        return self._files.get((kind or "output", subfolder, filename))
