"""The single prompt worker: takes queued prompts one at a time and runs them.

Status broadcasts follow the traces: one when a prompt is queued (sent by the
route), one when the worker takes it, one when it finishes (after the history
entry is written), then ``executing`` with ``node: null`` to the prompt's client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from .execution import CacheEntry, PromptRun, WorkerCrashed
from .hub import ClientHub
from .nodes import NodeSpec
from .state import FileStore, PromptStore
from .uploads import UploadedFiles
from .versions import VersionProfile

__all__ = ["Engine", "status_data"]

logger = logging.getLogger(__name__)


def status_data(remaining: int, sid: str | None = None) -> dict[str, Any]:
    """The ``status`` message body (``sid`` only in the per-socket connect message)."""
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": remaining}}}
    if sid is not None:
        data["sid"] = sid
    return data


class Engine:
    """Prompt worker plus the state it shares with the routes (cache, interrupt flag)."""

    def __init__(
        self,
        profile: VersionProfile,
        registry: Mapping[str, NodeSpec],
        hub: ClientHub,
        store: PromptStore,
        files: FileStore,
        step_ms_override: float | None,
    ) -> None:
        self.profile = profile
        self.registry = registry
        self.hub = hub
        self.store = store
        self.files = files
        self.step_ms_override = step_ms_override
        self.cache: dict[str, CacheEntry] = {}
        self.interrupted = False
        self.current_node: str | None = None
        self.crashed = False
        #: fault injection: accept interrupts but never act on them
        self.ignore_interrupts = False
        self._paused = False
        #: cleared to hold the running node before its next step (fault injection; set by default)
        self.steps_open = asyncio.Event()
        self.steps_open.set()
        #: set while no prompt runs or waits (tests wait on it instead of sleeping)
        self.idle = asyncio.Event()
        self.idle.set()
        self._wake = asyncio.Event()
        self._ui_seq = 0
        #: files loaders read (``LoadImage``); set by the SimServer, which keeps them across restarts
        self.uploads = UploadedFiles()

    # Public

    def wake(self) -> None:
        """Tell the worker that the queue changed."""
        if self.store.remaining():
            self.idle.clear()
        self._wake.set()

    def pause(self) -> None:
        """Stop starting new prompts (the running one finishes)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self.wake()

    def interrupt(self, prompt_id: str | None) -> bool:
        """Interrupt the running prompt; with a targeted id only if it matches (when supported)."""
        running = self.store.running
        if running is None or self.ignore_interrupts:
            return False
        if prompt_id is not None and self.profile.targeted_interrupt and prompt_id != running.prompt_id:
            return False
        self.interrupted = True
        return True

    def reconnect_message(self, sid: str) -> dict[str, Any] | None:
        """Extra ``executing`` for a client reconnecting while its prompt runs (trace 09)."""
        running = self.store.running
        if running is None or running.client_id != sid or self.current_node is None:
            return None
        return {"node": self.current_node}

    def next_ui_seq(self) -> int:
        self._ui_seq += 1
        return self._ui_seq

    def evict(self, keep: set[str]) -> None:
        """Drop cache entries of nodes absent from the last prompt."""
        for node in [n for n in self.cache if n not in keep]:
            del self.cache[node]

    async def run(self) -> None:
        """Worker loop; runs until cancelled."""
        while True:
            item = None
            while item is None:
                if not (self._paused or self.crashed):
                    item = self.store.take()
                if item is None:
                    if self.store.remaining() == 0:
                        self.idle.set()
                    self._wake.clear()
                    await self._wake.wait()
            self.idle.clear()
            self.interrupted = False
            await self.hub.send_json("status", status_data(self.store.remaining()), None)
            logger.debug("running prompt %s", item.prompt_id)
            try:
                entry = await PromptRun(self, item).execute()
            except WorkerCrashed:
                logger.error("prompt worker died on %s (dangling link, as ComfyUI 0.0.2)", item.prompt_id)
                self.crashed = True
                continue
            self.store.finish(entry)
            self.interrupted = False
            await self.hub.send_json("status", status_data(self.store.remaining()), None)
            if item.client_id is not None:
                await self.hub.send_json("executing", {"node": None, "prompt_id": item.prompt_id}, item.client_id)
