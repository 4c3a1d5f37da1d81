"""SHELL: ComfyUI's REST calls, through one aiohttp client session per instance.

Every call sits under a timeout; a connection failure is :class:`ComfyUnavailable`
and an unreadable answer :class:`ComfyProtocolError`, both chained to the cause.
Bare paths are used (``/prompt``, not ``/api/prompt``): they exist on every
recorded version (PROTOCOL.md §1). Every call carries the instance's credentials
(:class:`~sidecar.credentials.Credentials`: headers, query parameters, TLS context); a 401
or 403 answer is :class:`AuthRefused`, and no message carries a secret.

aiohttp is imported at the first call, not with this module: its client takes 0.15-0.25 s to
import (two TLS contexts among it), which the sidecar would otherwise spend before it answers
``ping`` (issue 9, start-up).
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from .credentials import Credentials, auth_refused
from .errors import AuthRefused, ComfyProtocolError, ComfyUnavailable

if TYPE_CHECKING:
    import aiohttp

if TYPE_CHECKING:
    import aiohttp

__all__ = ["ComfyHttp", "FileTooLarge"]

logger = logging.getLogger(__name__)

_json = msgspec.json.Decoder()


class FileTooLarge(ComfyProtocolError):
    """A file ComfyUI serves is larger than the sidecar takes (``outputs.max_file_bytes``)."""


class ComfyHttp:
    """HTTP client for one instance; :meth:`close` is idempotent."""

    def __init__(
        self, target: str | Credentials, headers: dict[str, str] | None = None, timeout_s: float = 10.0
    ) -> None:
        """``target``: an instance's :class:`Credentials`, or a base URL with ``headers`` and nothing else."""
        self.access = target if isinstance(target, Credentials) else Credentials.plain(target, headers)
        self.base_url = self.access.base_url
        self._params = self.access.params or None
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    # Public

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``(status, parsed JSON | text | None)`` for one call; :class:`AuthRefused` on 401 or 403."""
        import aiohttp

        session = self._session_()
        data = msgspec.json.encode(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        url = self.base_url + path
        try:
            async with session.request(method, url, data=data, headers=headers, params=self._params) as resp:
                raw = await resp.read()
                status = resp.status
                ctype = resp.content_type
        except (TimeoutError, aiohttp.ClientConnectionError, OSError) as exc:
            reason = self.access.redact(f"{exc.__class__.__name__}: {exc}")
            raise ComfyUnavailable(f"{method} {path}: {reason}") from exc
        if status in (401, 403):
            raise AuthRefused(auth_refused(status, f"{method} {path}"))
        if not raw:
            return status, None
        if ctype == "application/json" or raw[:1] in (b"{", b"["):
            try:
                return status, _json.decode(raw)
            except msgspec.DecodeError:
                pass
        return status, raw.decode("utf-8", "replace")

    async def get_json(self, path: str) -> Any:
        status, body = await self.request("GET", path)
        if status != 200:
            raise ComfyProtocolError(f"GET {path}: HTTP {status}")
        return body

    async def post_prompt(self, body: dict[str, Any]) -> tuple[int, Any]:
        return await self.request("POST", "/prompt", body)

    async def upload_image(self, name: str, data: bytes, subfolder: str) -> tuple[int, Any]:
        """``POST /upload/image`` (multipart: ``image``, ``type=input``, ``subfolder``,
        ``overwrite=true``): ``(status, parsed JSON | text | None)``; ComfyUI answers
        ``{"name", "subfolder", "type"}``."""
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("image", data, filename=name, content_type="application/octet-stream")
        form.add_field("type", "input")
        form.add_field("subfolder", subfolder)
        form.add_field("overwrite", "true")
        session = self._session_()
        try:
            async with session.post(self.base_url + "/upload/image", data=form, params=self._params) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientConnectionError, OSError) as exc:
            reason = self.access.redact(f"{exc.__class__.__name__}: {exc}")
            raise ComfyUnavailable(f"POST /upload/image: {reason}") from exc
        if status in (401, 403):
            raise AuthRefused(auth_refused(status, "POST /upload/image"))
        try:
            return status, _json.decode(raw) if raw else None
        except msgspec.DecodeError:
            return status, raw.decode("utf-8", "replace")

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The prompt's history entry, or None while ComfyUI has none (200 ``{}``)."""
        body = await self.get_json(f"/history/{prompt_id}")
        if not isinstance(body, dict):
            raise ComfyProtocolError(f"GET /history/{prompt_id}: not a JSON object")
        entry = body.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def queue(self) -> dict[str, Any]:
        body = await self.get_json("/queue")
        if not isinstance(body, dict):
            raise ComfyProtocolError("GET /queue: not a JSON object")
        return body

    async def delete_queued(self, prompt_ids: list[str]) -> None:
        await self.request("POST", "/queue", {"delete": prompt_ids})

    async def interrupt(self, prompt_id: str | None = None) -> None:
        await self.request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    async def cancel_job(self, prompt_id: str) -> bool:
        """``POST /api/jobs/{id}/cancel`` (newer servers): True when ComfyUI dispatched a cancel."""
        status, body = await self.request("POST", f"/api/jobs/{prompt_id}/cancel", {})
        if status != 200 or not isinstance(body, dict):
            raise ComfyProtocolError(f"POST /api/jobs/{prompt_id}/cancel: HTTP {status}")
        return bool(body.get("cancelled"))

    async def has_job_cancel(self) -> bool:
        """Probe for the per-job cancel endpoint with an id no job has: a no-op where it exists."""
        status, body = await self.request("POST", f"/api/jobs/{uuid.uuid4()}/cancel", {})
        return status == 200 and isinstance(body, dict) and "cancelled" in body

    async def view(self, filename: str, subfolder: str, type_: str, max_bytes: int) -> tuple[int, bytes, str | None]:
        """``GET /view`` of one file: ``(status, body, content type)``; the body is read only on 200.

        A body past ``max_bytes`` (announced or read) raises :class:`FileTooLarge` without
        reading the rest.
        """
        import aiohttp  # loaded on first use where the module defers it; a no-op once loaded

        session = self._session_()
        params = {"filename": filename, "subfolder": subfolder, "type": type_}
        try:
            async with session.get(self.base_url + "/view", params=params) as resp:
                if resp.status != 200:
                    return resp.status, b"", resp.content_type
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise FileTooLarge(f"{filename}: {resp.content_length} bytes, over {max_bytes}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > max_bytes:
                        raise FileTooLarge(f"{filename}: over {max_bytes} bytes")
                return 200, bytes(body), resp.content_type
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ComfyUnavailable(f"GET /view {filename}: {exc.__class__.__name__}: {exc}") from exc

    async def system_stats(self) -> Any:
        return await self.get_json("/system_stats")

    async def has_features(self) -> bool:
        status, _ = await self.request("GET", "/features")
        return status == 200

    async def output_classes(self) -> set[str] | None:
        """Class names ComfyUI executes as outputs (``/object_info``), None if unreadable."""
        try:
            body = await self.get_json("/object_info")
        except ComfyProtocolError:
            return None
        if not isinstance(body, dict):
            return None
        return {name for name, info in body.items() if isinstance(info, dict) and info.get("output_node")}

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # Private

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            import aiohttp

            access = self.access
            timeout = aiohttp.ClientTimeout(total=self._timeout_s)
            connector = aiohttp.TCPConnector(ssl=access.ssl) if access.ssl is not None else None
            self._session = aiohttp.ClientSession(timeout=timeout, headers=access.headers, connector=connector)
        return self._session
