"""Messages that arrive before their prompt id is known: ComfyUI may start a prompt before the
answer to its ``POST /prompt`` reaches the sidecar.

:class:`EarlyMessages` keeps them briefly and bounded (:data:`ORPHAN_PROMPTS` prompts,
:data:`ORPHAN_MESSAGES` each, :data:`ORPHAN_TTL_NS` old at most, dropped oldest first) until
:class:`~sidecar.core.tracker.InstanceTracker` learns the prompt id and replays them.
"""

from __future__ import annotations

from ..protocol import comfy

__all__ = ["ORPHAN_MESSAGES", "ORPHAN_PROMPTS", "ORPHAN_TTL_NS", "EarlyMessages"]

ORPHAN_PROMPTS = 16
ORPHAN_MESSAGES = 1024
ORPHAN_TTL_NS = 120 * 1_000_000_000


class EarlyMessages:
    """Per unknown prompt id: when its first message came, and ``(arrived_ns, message)`` pairs."""

    def __init__(self) -> None:
        self._by_prompt: dict[str, tuple[int, list[tuple[int, comfy.ComfyMessage]]]] = {}

    def keep(self, prompt_id: str, msg: comfy.ComfyMessage, now_ns: int) -> None:
        """Keep ``msg``; a new prompt first drops expired prompts, then the oldest one if full."""
        entry = self._by_prompt.get(prompt_id)
        if entry is None:
            for pid, (first_ns, _) in list(self._by_prompt.items()):
                if now_ns - first_ns > ORPHAN_TTL_NS:
                    del self._by_prompt[pid]
            if len(self._by_prompt) >= ORPHAN_PROMPTS:
                del self._by_prompt[next(iter(self._by_prompt))]
            entry = (now_ns, [])
            self._by_prompt[prompt_id] = entry
        if len(entry[1]) < ORPHAN_MESSAGES:
            entry[1].append((now_ns, msg))

    def take(self, prompt_id: str | None) -> list[tuple[int, comfy.ComfyMessage]]:
        """The messages kept for ``prompt_id`` (now known, or ended), oldest first; forgotten here."""
        if prompt_id is None:
            return []
        entry = self._by_prompt.pop(prompt_id, None)
        return entry[1] if entry is not None else []
