"""comfy-bridge-contact-sheet: a preview store that writes an HTML contact sheet per job.

Registered through the ``comfy_bridge`` entry-point group (see ``pyproject.toml``) under
the name ``contact_sheet``. Select it in ``bridge.toml``::

    [previews]
    store = "contact_sheet"
    options = { dir = "state/sheets", columns = 4 }

Each preview image is written to ``<dir>/<job_id>/<index:05d>-node<node>.<ext>``; when the
job ends, ``<dir>/<job_id>/index.html`` shows them as a grid, in order, captioned with
their node. This module holds only the hook; the store is in :mod:`.store`, the page in
:mod:`.sheet` (pure). It imports ``sidecar.plugins`` (the markers) and nothing else of
comfy-bridge at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.plugins import hookimpl

from .store import ContactSheetStore

if TYPE_CHECKING:
    from sidecar.config import BridgeConfig

__all__ = ["PREVIEW_STORES", "ContactSheetStore", "bridge_make_preview_store"]

__version__ = "0.1.0"

#: The store names this plugin makes; ``comfy-bridge plugins`` lists them.
PREVIEW_STORES = ("contact_sheet",)

_OPTIONS = {"dir", "columns"}


@hookimpl
def bridge_make_preview_store(name: str, options: dict[str, Any], config: BridgeConfig) -> ContactSheetStore | None:
    """Make the ``contact_sheet`` store; None for any other name (another plugin's).

    Options (``[previews.options]``): ``dir`` (default ``previews.dir``) and ``columns``
    (default 4). An unknown option or a wrong type is an error, as in ``bridge.toml``.
    """
    if name not in PREVIEW_STORES:
        return None
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} in [previews.options]; "
            f"known: {', '.join(sorted(_OPTIONS))}"
        )
    directory = options.get("dir", config.previews.dir)
    if not isinstance(directory, str) or not directory:
        raise ValueError("option 'dir' must be a non-empty path string")
    columns = options.get("columns", 4)
    if not isinstance(columns, int) or isinstance(columns, bool) or not 1 <= columns <= 32:
        raise ValueError("option 'columns' must be an integer from 1 to 32")
    return ContactSheetStore(directory, columns=columns)
