"""SHELL: which version adapter and decoder serve one instance, refined by what the server shows.

At every connect the adapter is chosen from what ComfyUI reports (``/system_stats``'
version, ``/features``). On the connection it is chosen again whenever the server shows
more: the feature-flags reply, the per-job cancel probe, and, for a server that reports
no version, a message type that only a later adapter decodes
(:func:`~sidecar.core.versions.first_to_know`). The instance has one decoder for its
whole life, reconfigured in place, so the read loop that bound its ``decode`` reads the
very next frame with the new tables, at no cost per frame.

``progress_state`` (v0.3.45 on: about twice as many frames as ``progress``, and growing
with every node a prompt has touched) is skipped by its first bytes, except while the
tracker wants node state: after a (re)connect, until the jobs it follows have been
restored from one (:meth:`AdapterChoice.want_node_state`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from .core.versions import first_to_know, placed_version, select_adapter
from .plugins.api import ServerInfo
from .plugins.manager import PluginError
from .protocol import comfy

if TYPE_CHECKING:
    from .instance import Instance

__all__ = ["NODE_STATE", "AdapterChoice"]

NODE_STATE = frozenset({"progress_state"})  # decoded only while the tracker wants node state


class AdapterChoice:
    """The adapter, capabilities and decoder of one :class:`~sidecar.instance.Instance`.

    Sets ``inst.adapter`` and ``inst.caps`` at every choice.
    """

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self.info = ServerInfo(None, False, False, False)
        self.decoder = comfy.Decoder({})
        self._note: str | None = None
        self.choose()

    # Public: what the server showed

    def connected(self, stats: Any, features: bool) -> None:
        """A new connection: start again from what the server reports."""
        system = stats.get("system") if isinstance(stats, dict) else None
        version = system.get("comfyui_version") if isinstance(system, dict) else None
        self.info = ServerInfo(version if isinstance(version, str) else None, features, False, False, stats)
        self.choose()

    def probed(self, jobs_cancel: bool) -> None:
        """The per-job cancel endpoint answered the probe (or not)."""
        self.info = msgspec.structs.replace(self.info, jobs_cancel=jobs_cancel)
        self.choose()

    def flags_replied(self) -> None:
        """The server answered the feature-flags handshake (v0.3.45 on)."""
        if not self.info.feature_flags_reply:
            self.info = msgspec.structs.replace(self.info, feature_flags_reply=True)
            self.choose()

    def refine(self, message_type: str) -> bool:
        """A server that reports no version sent ``message_type``: move to a later adapter that knows it.

        Returns whether the adapter changed (then decode that frame again).
        """
        if self.info.version is not None:
            return False
        least = first_to_know(self.inst.adapters, self.info, message_type)
        if least is None or least <= placed_version(self.info):
            return False
        before = self.inst.adapter.name
        self.info = msgspec.structs.replace(self.info, min_version=least)
        self.choose()
        shown = ".".join(map(str, least))
        self.inst.log.info(
            "ComfyUI sent %r, which no release before %s sends: adapter %s instead of %s",
            message_type,
            shown,
            self.inst.adapter.name,
            before,
        )
        return True

    # Public: node state

    def want_node_state(self) -> None:
        """After a (re)connect, frames about unfinished jobs may have been missed: restore them from progress_state."""
        inst = self.inst
        if NODE_STATE.isdisjoint(inst.adapter.message_types()):
            return
        for job in inst.book:
            if job.instance == inst.name and job.active:
                inst.tracker.want_state(job)
        if inst.tracker.state_wanted:
            self.configure_decoder()

    def configure_decoder(self) -> None:
        """The adapter's message types; ``progress_state`` only while the tracker wants node state."""
        types = self.inst.adapter.message_types()
        skip = () if self.inst.tracker.state_wanted else NODE_STATE.intersection(types)
        self.decoder.configure(types, skip)

    # Public: the choice

    def choose(self) -> None:
        inst = self.inst
        try:
            adapter, note = select_adapter(inst.adapters, self.info)
        except LookupError as exc:
            raise PluginError(
                f"instance {inst.name!r}: {exc}; is the adapters plugin disabled (plugins.disabled)?"
            ) from exc
        if note and note != self._note:
            inst.log.warning("%s", note)
        self._note = note
        inst.adapter = adapter
        inst.caps = adapter.capabilities(self.info)
        inst.tracker.announces_success = inst.caps.execution_success
        self.configure_decoder()
