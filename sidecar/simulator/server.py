"""The simulated ComfyUI server object and the ``serve`` entry point.

:class:`SimServer` binds one aiohttp site (HTTP and ``/ws`` on one port), runs the
prompt worker, and offers fault injection for tests (drop sockets, garbage frames,
wedge the worker), credentials in front of it (:class:`~.auth.SimAuth`) and TLS.
All state is in memory and is lost on :meth:`SimServer.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from typing import Any

from aiohttp import web

from .auth import SimAuth
from .engine import Engine
from .fuzz import FrameFuzzer
from .hub import ClientHub
from .nodes import build_registry
from .routes import ServerState, build_app
from .state import FileStore, PromptStore
from .uploads import UploadedFiles
from .versions import get_profile

__all__ = ["SimServer", "serve"]

logger = logging.getLogger(__name__)


class SimServer:
    """A fake ComfyUI of a recorded ``version`` on ``host:port`` (port 0 = any free port)."""

    def __init__(
        self,
        version: str = "0.12.1",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        step_ms: float | None = None,
        jobs_cancel_endpoint: bool = False,
        ignore_interrupts: bool = False,
        report_version: bool = True,
        features_route: bool = True,
        fuzz: int | None = None,
        max_upload_bytes: int = 100 * 1024 * 1024,
        auth: SimAuth | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        profile = get_profile(version)
        if not report_version:  # a build that reports no comfyui_version (as 0.0.2 does), with this behaviour
            system = {k: v for k, v in profile.system.items() if k != "comfyui_version"}
            profile = dataclasses.replace(profile, system=system)
        #: ``GET /features`` is served when the version has it (False: 404, as behind a proxy that hides it)
        self.features_route = features_route
        self.profile = profile
        self.version = version
        self.host = host
        self.port = port
        self.step_ms = step_ms
        #: serve ``POST /api/jobs/{id}/cancel`` (not in any recorded version; for cancel-path tests)
        self.jobs_cancel_endpoint = jobs_cancel_endpoint
        self._ignore_interrupts = ignore_interrupts
        #: every ``POST /prompt`` JSON body received, in order (kept across restarts)
        self.submitted: list[dict[str, Any]] = []
        #: the largest request body ComfyUI takes (its ``--max-upload-size``): 413 above it
        self.max_upload_bytes = max_upload_bytes
        #: files sent to ``POST /upload/image``: kept across restarts, like ComfyUI's input directory
        self.uploads = UploadedFiles()
        #: fuzzing mode (``fuzz=SEED``): after each real frame, sometimes a harmless mutated copy of it
        self.fuzzer = FrameFuzzer(fuzz) if fuzz is not None else None
        #: credentials required on every request (None: none, as ComfyUI itself); ``auth.refused`` counts
        self.auth = auth
        #: serve https:// and wss:// with this server context (ComfyUI's --tls-certfile/--tls-keyfile)
        self.ssl_context = ssl_context
        #: ComfyUI's folders on disk: kept across restarts (each start empties ``temp``, as ComfyUI does)
        self.files = FileStore()
        self._files_used = False
        #: fault injection: ``GET /view`` answers this HTTP status instead of the file (None: as ComfyUI)
        self.view_fault: int | None = None
        #: ``GET /view`` requests received, over restarts
        self.view_requests = 0
        self._state: ServerState | None = None
        self._runner: web.AppRunner | None = None
        self._worker: asyncio.Task[None] | None = None
        self._muted = False

    # Public

    @property
    def url(self) -> str:
        """HTTP base URL, e.g. ``http://127.0.0.1:8188`` (``https://`` with TLS)."""
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    @property
    def ignore_interrupts(self) -> bool:
        """When True, interrupts are answered 200 but never stop the running prompt (a stuck node)."""
        return self._ignore_interrupts

    @ignore_interrupts.setter
    def ignore_interrupts(self, value: bool) -> None:
        self._ignore_interrupts = value
        if self._state is not None:
            self._state.engine.ignore_interrupts = value

    @property
    def ws_url(self) -> str:
        """WebSocket URL without ``clientId``."""
        return f"{'wss' if self.ssl_context else 'ws'}://{self.host}:{self.port}/ws"

    async def start(self) -> None:
        """Bind the port and start the worker with fresh, empty state."""
        if self._runner is not None:
            raise RuntimeError("SimServer already started")
        hub, store, files = ClientHub(self.fuzzer), PromptStore(), self.files
        if self._files_used:
            files.restart()  # ComfyUI empties its temp folder at start-up
        self._files_used = True
        registry = build_registry(self.profile)
        engine = Engine(self.profile, registry, hub, store, files, self.step_ms)
        engine.ignore_interrupts = self._ignore_interrupts
        engine.uploads = self.uploads
        self.uploads.started()
        self._state = ServerState(
            self.profile,
            registry,
            hub,
            store,
            files,
            engine,
            self.submitted,
            self.jobs_cancel_endpoint,
            features_route=self.features_route,
            uploads=self.uploads,
            max_upload_bytes=self.max_upload_bytes,
            server=self,
        )
        app = build_app(self._state, self.auth if self.auth is not None and self.auth.required else None)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self._worker = asyncio.create_task(engine.run(), name=f"comfy-sim-worker-{self.port}")
        logger.info("simulated ComfyUI %s listening on %s", self.version, self.url)

    async def close(self) -> None:
        """Stop serving: abort WebSockets, stop the worker, forget all state. Idempotent."""
        runner, worker, state = self._runner, self._worker, self._state
        self._runner = self._worker = None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if state is not None:
            state.hub.abort_all()
        if runner is not None:
            await runner.cleanup()
            logger.info("simulated ComfyUI %s on port %d closed", self.version, self.port)

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Fault injection and introspection

    async def drop_connections(self) -> None:
        """Abort every WebSocket without a close frame (clients see 1006)."""
        self._require().hub.abort_all()

    async def send_raw(self, data: bytes | str, client_id: str | None = None) -> None:
        """Send an arbitrary text/binary frame to one client, or to all when ``client_id`` is None."""
        await self._require().hub.send_raw(data, client_id)

    def pause_worker(self) -> None:
        """Wedge the queue: prompts are accepted but none starts until :meth:`resume_worker`."""
        self._require().engine.pause()

    def resume_worker(self) -> None:
        self._require().engine.resume()

    def hold_steps(self) -> None:
        """Hold the running node before its next step (a long step) until :meth:`release_steps`."""
        self._require().engine.steps_open.clear()

    def release_steps(self) -> None:
        self._require().engine.steps_open.set()

    @property
    def mute_websockets(self) -> bool:
        """True after muting: the sockets connected then get no frames (they stay open)."""
        return self._muted

    @mute_websockets.setter
    def mute_websockets(self, value: bool) -> None:
        self._muted = value
        self._require().hub.mute(value)

    @property
    def refuse_websockets(self) -> bool:
        """While True, WebSocket upgrades get 503 (HTTP still works)."""
        return self._require().hub.refusing

    @refuse_websockets.setter
    def refuse_websockets(self, value: bool) -> None:
        self._require().hub.refusing = value

    async def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Wait until no prompt runs or waits in the queue."""
        async with asyncio.timeout(timeout_s):
            await self._require().engine.idle.wait()

    def frames_sent_to(self, client_id: str) -> int:
        """WebSocket frames delivered to ``client_id`` since start."""
        return self._require().hub.sent[client_id]

    @property
    def prompt_delay_s(self) -> float:
        """Seconds ``POST /prompt`` waits before answering, the prompt already queued (a slow answer)."""
        return self._require().prompt_delay_s

    @prompt_delay_s.setter
    def prompt_delay_s(self, value: float) -> None:
        self._require().prompt_delay_s = value

    @property
    def history_delay_s(self) -> float:
        """Seconds ``GET /history/<id>`` waits before answering (a slow answer)."""
        return self._require().history_delay_s

    @history_delay_s.setter
    def history_delay_s(self, value: float) -> None:
        self._require().history_delay_s = value

    def clients(self) -> list[str]:
        """clientIds of the connected WebSockets."""
        return self._state.hub.sids() if self._state is not None else []

    @property
    def worker_crashed(self) -> bool:
        """True after the 0.0.2 dangling-link crash wedged the worker."""
        return self._state is not None and self._state.engine.crashed

    # Private

    def _require(self) -> ServerState:
        if self._state is None:
            raise RuntimeError("SimServer not started")
        return self._state


async def serve(
    host: str, port: int, version: str, step_ms: float | None, fuzz: int | None = None, **options: Any
) -> None:
    """Run a simulated ComfyUI until cancelled (``comfy-bridge simulate``); ``options`` as for SimServer."""
    server = SimServer(version, host=host, port=port, step_ms=step_ms, fuzz=fuzz, **options)
    await server.start()
    logger.info("ComfyUI %s simulator ready at %s", version, server.url)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()
