"""``POST /upload/image`` and the files it stores, as ComfyUI serves them (issue 10).

No recorded trace has an upload: this follows ComfyUI's ``server.py`` (``image_upload``,
the same from before 0.0.2 to 0.12.1) and ``nodes.py`` (``LoadImage.VALIDATE_INPUTS``):

- multipart fields ``image`` (the file; its filename is the name), ``type`` (``input``
  when absent, or ``temp`` / ``output``), ``subfolder`` (``""`` when absent), ``overwrite``;
- no ``image`` file, an empty filename, or a path leaving the type's directory: 400,
  empty body; an unknown ``type``: 500 (ComfyUI fails on it);
- ``overwrite`` ``"true"`` or ``"1"`` replaces a file of that name; otherwise a different
  file of that name makes it ``"<stem> (1)<ext>"``, ``(2)``... and the same bytes under that
  name are not written again (the existing name is answered);
- 200 ``{"name", "subfolder", "type"}``: the name it was stored under, the subfolder as sent.

A loader names a file relative to the input directory (``subfolder/name``), optionally
annotated ``" [input]"``, ``" [output]"`` or ``" [temp]"`` for another directory:
:meth:`UploadedFiles.find`. The files belong to the :class:`~sidecar.simulator.SimServer`
and outlive a restart of it, like ComfyUI's input directory on disk, except ``temp``,
which ComfyUI empties when it starts (:meth:`UploadedFiles.started`).
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["UploadedFiles", "split_annotation", "upload_image"]

_TYPES = ("input", "temp", "output")
_ANNOTATIONS = {" [input]": "input", " [output]": "output", " [temp]": "temp"}


def split_annotation(name: str) -> tuple[str, str]:
    """``("cat.png", "output")`` for ``"cat.png [output]"``; ``(name, "input")`` when not annotated."""
    for suffix, kind in _ANNOTATIONS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, "input"


def _relative(subfolder: str, filename: str) -> str | None:
    """The file's path inside its type's directory, or None when it would leave it."""
    path = posixpath.normpath(posixpath.join("/d", posixpath.normpath(subfolder or "."), filename))
    return path[3:] if path.startswith("/d/") else None


class UploadedFiles:
    """Files sent to ``POST /upload/image``, by type and path inside that type's directory."""

    def __init__(self) -> None:
        self._files: dict[tuple[str, str], bytes] = {}
        #: every upload answered 200: ``(type, subfolder, name stored, size)``, in order
        self.log: list[tuple[str, str, str, int]] = []

    def started(self) -> None:
        """The server (re)started: its temp directory is empty again."""
        self._files = {key: data for key, data in self._files.items() if key[0] != "temp"}

    def get(self, kind: str, path: str) -> bytes | None:
        return self._files.get((kind, path))

    def find(self, annotated: str) -> bytes | None:
        """The bytes of the file a loader's ``image`` input names (``subfolder/name [input]``)."""
        name, kind = split_annotation(annotated)
        path = _relative("", name)
        return self._files.get((kind, path)) if path is not None else None

    def store(self, kind: str, subfolder: str, filename: str, data: bytes, overwrite: bool) -> str | None:
        """Store ``data``; the name it is stored under, or None when the path leaves the directory."""
        path = _relative(subfolder, filename)
        if path is None:
            return None
        if not overwrite:
            stem, ext = posixpath.splitext(filename)
            digest = hashlib.sha256(data).digest()
            i = 1
            while (kind, path) in self._files:
                if hashlib.sha256(self._files[(kind, path)]).digest() == digest:
                    return filename  # the same file: not written again
                filename = f"{stem} ({i}){ext}"
                path = _relative(subfolder, filename) or path
                i += 1
        self._files[(kind, path)] = data
        return filename


async def upload_image(request: web.Request, files: UploadedFiles) -> web.Response:
    """Serve ``POST /upload/image`` into ``files``."""
    from aiohttp import web  # here: the engine imports this module, and needs no aiohttp

    post = await request.post()
    image: Any = post.get("image")
    kind = post.get("type")
    kind = "input" if kind is None else str(kind)
    if kind not in _TYPES:
        return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
    if isinstance(image, str) and image:  # a plain field, not a file: ComfyUI fails on it
        return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
    if not isinstance(image, web.FileField) or not image.filename:
        return web.Response(status=400)
    subfolder = str(post.get("subfolder", ""))
    overwrite = str(post.get("overwrite")) in ("true", "1")
    data = image.file.read()
    name = files.store(kind, subfolder, image.filename, data, overwrite)
    if name is None:
        return web.Response(status=400)
    files.log.append((kind, subfolder, name, len(data)))
    return web.json_response({"name": name, "subfolder": subfolder, "type": kind})
