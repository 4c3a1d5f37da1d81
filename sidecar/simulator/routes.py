"""HTTP and WebSocket routes of the simulated ComfyUI (PROTOCOL.md §2–§3).

:func:`build_app` wires every handler to a :class:`ServerState`; each route also
exists under ``/api`` where the version has the prefix, and ``/api/jobs`` exists
only with the prefix.  Missing endpoints answer 404 with an empty body, as the
recorded servers did.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import posixpath
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .auth import SimAuth
from .engine import Engine, status_data
from .execution import now_ms
from .hub import ClientHub
from .jobs import job_detail, list_jobs
from .nodes import NodeSpec, object_info
from .state import FileStore, PromptStore
from .uploads import UploadedFiles, upload_image
from .validate import Rejected, validate_prompt
from .versions import SERVER_FEATURES, VersionProfile

__all__ = ["ServerState", "build_app"]

logger = logging.getLogger(__name__)

_INTERNAL_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"
_DEVICE = {
    "name": "cpu",
    "type": "cpu",
    "index": None,
    "vram_total": 25276502016,
    "vram_free": 24176885760,
    "torch_vram_total": 25276502016,
    "torch_vram_free": 24176885760,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ServerState:
    """Everything the handlers share; rebuilt on every server start."""

    profile: VersionProfile
    registry: dict[str, NodeSpec]
    hub: ClientHub
    store: PromptStore
    files: FileStore
    engine: Engine
    submitted: list[dict[str, Any]] = field(default_factory=list)
    jobs_cancel_endpoint: bool = False
    #: serve ``GET /features`` when the profile has it (False: hidden, for fault tests)
    features_route: bool = True
    #: seconds ``POST /prompt`` waits, after queueing the prompt, before answering (a slow answer)
    prompt_delay_s: float = 0.0
    #: seconds ``GET /history/<id>`` waits before answering (a busy server; a kill can land meanwhile)
    history_delay_s: float = 0.0
    #: the largest request body (ComfyUI's ``--max-upload-size``, 100 MB by default): 413 above it
    max_upload_bytes: int = 100 * 1024 * 1024
    #: files sent to ``POST /upload/image`` (owned by the SimServer: they outlive a restart)
    uploads: UploadedFiles = field(default_factory=UploadedFiles)
    #: the SimServer (its ``view_fault`` and ``view_requests``), when there is one
    server: Any = None


def _not_found() -> web.Response:
    return web.Response(status=404, headers={"Content-Type": "application/octet-stream"})


@web.middleware
async def _empty_not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _not_found()


def build_app(state: ServerState, auth: SimAuth | None = None) -> web.Application:
    """Create the aiohttp application for ``state``; ``auth``: credentials every request must carry."""
    middlewares = [auth.middleware] if auth is not None else []
    app = web.Application(middlewares=[*middlewares, _empty_not_found], client_max_size=state.max_upload_bytes)
    h = _Handlers(state)
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/ws", h.websocket),
        ("POST", "/prompt", h.post_prompt),
        ("GET", "/prompt", h.get_prompt),
        ("GET", "/queue", h.get_queue),
        ("POST", "/queue", h.post_queue),
        ("POST", "/interrupt", h.interrupt),
        ("GET", "/history", h.get_history),
        ("GET", "/history/{prompt_id}", h.get_history_item),
        ("POST", "/history", h.post_history),
        ("GET", "/system_stats", h.system_stats),
        ("GET", "/view", h.view),
        ("POST", "/upload/image", h.upload_image),
        ("GET", "/object_info", h.object_info_all),
        ("GET", "/object_info/{node_class}", h.object_info_one),
        ("GET", "/embeddings", h.embeddings),
    ]
    if state.profile.feature_flags and state.features_route:
        routes.append(("GET", "/features", h.features))
    prefixes = ["", "/api"] if state.profile.api_prefix else [""]
    for prefix in prefixes:
        for method, path, handler in routes:
            app.router.add_route(method, prefix + path, handler)
    if state.profile.api_jobs:
        app.router.add_get("/api/jobs", h.jobs)
        app.router.add_get("/api/jobs/{job_id}", h.job)
    if state.jobs_cancel_endpoint:
        app.router.add_post("/api/jobs/{job_id}/cancel", h.cancel_job)
    return app


async def _json_body(request: web.Request) -> Any:
    text = await request.text()
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


class _Handlers:
    def __init__(self, state: ServerState) -> None:
        self.s = state

    async def _broadcast_status(self) -> None:
        await self.s.hub.send_json("status", status_data(self.s.store.remaining()), None)

    # WebSocket

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if self.s.hub.refusing:
            return web.Response(status=503, text="refusing WebSocket connections (fault injection)")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        client = self.s.hub.register(sid, ws, request)
        logger.info("ws client connected: %s", sid)
        try:
            await self.s.hub.send_client(client, "status", status_data(self.s.store.remaining(), sid))
            extra = self.s.engine.reconnect_message(sid)
            if extra is not None:
                await self.s.hub.send_client(client, "executing", extra)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and not client.saw_first_text:
                    client.saw_first_text = True
                    await self._handshake(client, msg.data)
        finally:
            self.s.hub.unregister(client)
            logger.info("ws client disconnected: %s", sid)
        return ws

    async def _handshake(self, client: Any, text: str) -> None:
        if not self.s.profile.feature_flags:
            return
        try:
            message = json.loads(text)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("type") == "feature_flags":
            data = message.get("data")
            client.flags = dict(data) if isinstance(data, dict) else {}
            await self.s.hub.send_client(client, "feature_flags", dict(SERVER_FEATURES))

    # Prompts and queue

    async def post_prompt(self, request: web.Request) -> web.StreamResponse:
        text = await request.text()
        try:
            body = json.loads(text)
        except ValueError:
            return web.Response(status=500, text=_INTERNAL_ERROR, content_type="text/plain")
        if not isinstance(body, dict):
            return web.Response(status=500, text=_INTERNAL_ERROR, content_type="text/plain")
        self.s.submitted.append(body)
        profile = self.s.profile
        result = validate_prompt(body, profile, self.s.registry, self._file_exists)
        if isinstance(result, Rejected):
            return web.json_response(result.body, status=400)
        supplied = body.get("prompt_id")
        use_supplied = profile.client_prompt_id and isinstance(supplied, str) and supplied
        prompt_id = supplied if use_supplied and isinstance(supplied, str) else str(uuid.uuid4())
        extra = dict(body["extra_data"]) if isinstance(body.get("extra_data"), dict) else {}
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        created = now_ms()
        if profile.create_time:
            extra["create_time"] = created
        number = body.get("number")
        number = float(number) if isinstance(number, int | float) and not isinstance(number, bool) else None
        item = self.s.store.make_item(
            prompt_id,
            body["prompt"],
            extra,
            result.outputs,
            number=number,
            front=bool(body.get("front")),
            now_ms=created,
        )
        self.s.store.put(item)
        await self._broadcast_status()
        self.s.engine.wake()
        response_number: Any = int(item.number) if float(item.number).is_integer() else item.number
        if self.s.prompt_delay_s > 0:  # fault injection: queued already, the answer is late
            await asyncio.sleep(self.s.prompt_delay_s)
        return web.json_response({"prompt_id": prompt_id, "number": response_number, "node_errors": result.node_errors})

    def _file_exists(self, annotated: str) -> bool:
        """Whether a loader's file input names an existing file (``LoadImage.VALIDATE_INPUTS``)."""
        return self.s.uploads.find(annotated) is not None

    async def upload_image(self, request: web.Request) -> web.StreamResponse:
        return await upload_image(request, self.s.uploads)

    async def get_prompt(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"exec_info": {"queue_remaining": self.s.store.remaining()}})

    async def get_queue(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.s.store.queue_json())

    async def post_queue(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if isinstance(body, dict):
            if body.get("clear"):
                self.s.store.clear()
                await self._broadcast_status()
            delete = body.get("delete")
            if isinstance(delete, list) and self.s.store.delete([str(d) for d in delete]):
                await self._broadcast_status()
                await self._broadcast_status()
        return web.Response(status=200)

    async def interrupt(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        target = body.get("prompt_id") if isinstance(body, dict) else None
        self.s.engine.interrupt(target if isinstance(target, str) else None)
        return web.Response(status=200)

    # History

    async def get_history(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("max_items")
        max_items = int(raw) if raw is not None and raw.lstrip("-").isdigit() else None
        return web.json_response(self.s.store.history_json(max_items))

    async def get_history_item(self, request: web.Request) -> web.StreamResponse:
        prompt_id = request.match_info["prompt_id"]
        if self.s.history_delay_s > 0:  # fault injection: the answer is late
            await asyncio.sleep(self.s.history_delay_s)
        entry = self.s.store.history.get(prompt_id)
        return web.json_response({prompt_id: entry.render()} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if isinstance(body, dict):
            if body.get("clear"):
                self.s.store.history.clear()
            for prompt_id in body.get("delete", []) if isinstance(body.get("delete"), list) else []:
                self.s.store.history.pop(str(prompt_id), None)
        return web.Response(status=200)

    # Jobs (0.12.1)

    async def jobs(self, request: web.Request) -> web.StreamResponse:
        def _int(name: str, default: int | None) -> int | None:
            raw = request.query.get(name)
            return int(raw) if raw is not None and raw.isdigit() else default

        return web.json_response(list_jobs(self.s.store, limit=_int("limit", None), offset=_int("offset", 0) or 0))

    async def job(self, request: web.Request) -> web.StreamResponse:
        detail = job_detail(self.s.store, request.match_info["job_id"])
        if detail is None:
            return web.json_response({"error": "Job not found"}, status=404)
        return web.json_response(detail)

    async def cancel_job(self, request: web.Request) -> web.StreamResponse:
        """Optional per-job cancel: removes a pending job or interrupts the running one."""
        job_id = request.match_info["job_id"]
        store, cancelled = self.s.store, False
        if store.delete([job_id]):
            cancelled = True
            await self._broadcast_status()
            await self._broadcast_status()
        elif store.running is not None and store.running.prompt_id == job_id:
            cancelled = self.s.engine.interrupt(job_id)
        return web.json_response({"cancelled": cancelled})

    # Reads

    async def system_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"system": dict(self.s.profile.system), "devices": [dict(_DEVICE)]})

    async def features(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(dict(SERVER_FEATURES))

    async def view(self, request: web.Request) -> web.StreamResponse:
        """``GET /view`` as ComfyUI answers it: no ``filename``: 404; an empty one, one that starts
        with ``/`` or contains ``..``, or a ``type`` other than ``output``, ``temp``, ``input``: 400;
        a subfolder outside the folder: 403; no such file: 404; else the bytes, with the content type
        guessed from the name and ``Content-Disposition: filename="..."``."""
        server = self.s.server
        if server is not None:
            server.view_requests += 1
            if server.view_fault is not None:
                return web.Response(status=server.view_fault)
        q = request.query
        if "filename" not in q:
            return _not_found()
        filename = q["filename"]
        kind = q.get("type", "output")
        if not filename or filename.startswith("/") or ".." in filename or kind not in ("output", "temp", "input"):
            return web.Response(status=400)
        subfolder = q.get("subfolder", "")
        if subfolder.startswith("/") or ".." in subfolder.split("/"):
            return web.Response(status=403)
        data = self.s.files.get(kind, subfolder, filename.rsplit("/", 1)[-1])
        if data is None:
            path = posixpath.normpath(posixpath.join(q.get("subfolder", "") or ".", q.get("filename", "")))
            data = self.s.uploads.get(q.get("type", "output"), path)
        if data is None:
            return _not_found()
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in ("text/html", "application/xhtml+xml", "text/javascript", "text/css"):
            content_type = "application/octet-stream"  # ComfyUI makes browsers download these
        return web.Response(
            body=data, content_type=content_type, headers={"Content-Disposition": f'filename="{filename}"'}
        )

    async def object_info_all(self, request: web.Request) -> web.StreamResponse:
        profile = self.s.profile
        return web.json_response({name: object_info(spec, profile) for name, spec in self.s.registry.items()})

    async def object_info_one(self, request: web.Request) -> web.StreamResponse:
        spec = self.s.registry.get(request.match_info["node_class"])
        return web.json_response({spec.name: object_info(spec, self.s.profile)} if spec is not None else {})

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([])
