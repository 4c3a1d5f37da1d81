"""Built-in preview stores that write nothing: ``inline`` and ``none``.

``inline``: the image bytes travel as the extra frame of each ``preview`` event, so there
is nothing to store and no reference to give. ``none``: previews are not published at all
(the shell checks the store's name); the store exists so that every configuration has one.
Neither needs the preview writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import hookimpl

if TYPE_CHECKING:
    from ...config import BridgeConfig
    from ..api import PreviewItem, PreviewStore

__all__ = ["PREVIEW_STORES", "InlineStore", "NoStore", "bridge_make_preview_store"]

PREVIEW_STORES = ("inline", "none")


class _NullStore:
    """A store whose every method does nothing; subclasses set ``name`` and ``inline``."""

    name: str
    inline: bool

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} {self.name!r}>"

    def ref(self, item: PreviewItem) -> str | None:
        return None

    async def put(self, item: PreviewItem, ref: str | None) -> None:
        return None

    async def job_finished(self, job_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


class InlineStore(_NullStore):
    """Previews go inline, as the ``preview`` event's extra frame; nothing is stored."""

    name = "inline"
    inline = True


class NoStore(_NullStore):
    """No previews: the sidecar publishes no ``preview`` events with this store."""

    name = "none"
    inline = False


@hookimpl
def bridge_make_preview_store(name: str, options: dict[str, Any], config: BridgeConfig) -> PreviewStore | None:
    if name == "inline":
        return InlineStore()
    if name == "none":
        return NoStore()
    return None
