"""The contact sheet page and the file names it lists. Pure: strings in, strings out.

Everything that reaches the page (job id, node ids, file names) is escaped; file names
are also percent-encoded where they are used as URLs.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

__all__ = ["SheetEntry", "file_name", "parse_file_name", "render_sheet", "safe_component"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_FILE = re.compile(r"^(\d{5,})-node(.+)\.([A-Za-z0-9]+)$")
_EXTENSIONS = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp"}


@dataclass(frozen=True, slots=True)
class SheetEntry:
    """One picture on the sheet."""

    index: int
    node: str | None
    file_name: str


def safe_component(text: str, limit: int = 80, *, unique: bool = True) -> str:
    """``text`` as one harmless path component: no separators, not hidden, never ``..``.

    With ``unique``, a name that had to change ends in ``-`` and 8 hex digits of the
    original's SHA-1, so ``a/b`` and ``a_b`` stay apart (the built-in ``files`` store
    names job folders the same way).
    """
    safe = _UNSAFE.sub("_", text).lstrip(".")[:limit]
    if unique and safe != text:
        safe = f"{safe}-{hashlib.sha1(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return safe or "_"


def file_name(index: int, node: str | None, image_format: str) -> str:
    """``00003-node12.jpg``: the index first, so names sort in arrival order.

    An unknown node is ``-node_``; a format other than jpeg, png or webp is ``.bin``.
    """
    ext = _EXTENSIONS.get(image_format.lower(), "bin")
    return f"{index:05d}-node{'_' if node is None else safe_component(node, unique=False)}.{ext}"


def parse_file_name(name: str) -> SheetEntry | None:
    """The entry a preview file's name describes, or None for any other file."""
    match = _FILE.match(name)
    if match is None:
        return None
    node = match.group(2)
    return SheetEntry(int(match.group(1)), None if node == "_" else node, name)


_STYLE = """\
body { font-family: system-ui, sans-serif; margin: 1rem; }
.sheet { display: grid; grid-template-columns: repeat(%d, minmax(0, 1fr)); gap: 0.75rem; }
figure { margin: 0; }
img { width: 100%%; height: auto; display: block; background: #eee; }
figcaption { font-size: 0.8rem; color: #444; }"""


def render_sheet(job_id: str, entries: Iterable[SheetEntry], columns: int = 4) -> str:
    """The ``index.html`` of one job: its previews in index order, each captioned."""
    ordered = sorted(entries, key=lambda e: e.index)
    job = html.escape(job_id)
    figures = []
    for position, entry in enumerate(ordered, 1):
        src = html.escape(quote(entry.file_name), quote=True)
        node = html.escape(entry.node if entry.node is not None else "unknown")
        figures.append(
            f'<figure id="p{entry.index}"><a href="{src}"><img src="{src}" loading="lazy" '
            f'alt="preview {entry.index} of node {node}"></a>'
            f"<figcaption>#{position} (index {entry.index}) &middot; node {node}</figcaption></figure>"
        )
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en">',
            '<head><meta charset="utf-8">',
            f"<title>Previews of job {job}</title>",
            f"<style>\n{_STYLE % columns}\n</style></head>",
            "<body>",
            f"<h1>Job <code>{job}</code></h1>",
            f"<p>{len(ordered)} preview{'s' if len(ordered) != 1 else ''}, in the order they arrived.</p>",
            '<div class="sheet">',
            *figures,
            "</div>",
            "</body>",
            "</html>",
            "",
        ]
    )
