"""The ``comfy-bridge`` command line. The only place that configures logging.

``run`` serves; ``simulate`` is a simulated ComfyUI; ``config init`` writes the
commented default config; ``keys generate`` writes a CURVE key pair; ``watch`` and ``demo``
show live progress; ``submit``, ``job``, ``jobs``, ``health``, ``snapshot``, ``ping``,
``cancel``, ``pause`` and ``resume`` are small ZeroMQ clients of a running sidecar
(``cli_client.py``). No traceback reaches the user: every error is a message and an exit code
of :data:`~sidecar.cli_client.EXIT_CODES` (listed in README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec

from .cli_args import DEFAULT_CONFIG
from .cli_args import parser as _parser
from .cli_client import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NO_SIDECAR,
    EXIT_USAGE,
    NoSidecar,
    client_command,
)
from .config import (
    BridgeConfig,
    InstanceConfig,
    default_toml,
    load,
    parse_instance_flag,
    validate,
)
from .curve import client_curve
from .errors import ConfigError, SidecarError
from .simulator.versions import VERSIONS as SIM_VERSIONS

__all__ = ["main"]

logger = logging.getLogger("sidecar")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),  # checked: LEVELS
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def build_config(args: argparse.Namespace) -> BridgeConfig:
    """The file (explicit, or ./bridge.toml if present, else defaults) with the flags on top."""
    if args.config:
        config = load(args.config)
    elif Path(DEFAULT_CONFIG).is_file():
        config = load(DEFAULT_CONFIG)
    else:
        config = BridgeConfig()
    if args.instance:
        instances = {}
        for flag in args.instance:
            name, url = parse_instance_flag(flag)
            if name in instances:
                raise ConfigError(f"--instance {name}=...: instance {name!r} given twice")
            instances[name] = InstanceConfig(url=url)
        config = msgspec.structs.replace(config, instances=instances)
    if getattr(args, "router", None):
        config = msgspec.structs.replace(config, zmq=msgspec.structs.replace(config.zmq, router=args.router))
    if getattr(args, "pub", None):
        config = msgspec.structs.replace(config, zmq=msgspec.structs.replace(config.zmq, pub=args.pub))
    if getattr(args, "state", None):
        config = msgspec.structs.replace(config, state=msgspec.structs.replace(config.state, path=args.state))
    flags = [f"--{name}" for name in ("instance", "router", "pub", "state") if getattr(args, name, None)]
    # The flags are checked by the file's rules (a Struct built in code is not checked by msgspec).
    return validate(config, " ".join(flags)) if flags else config


async def _run(config: BridgeConfig) -> None:
    import zmq

    from .app import Sidecar

    simulator = None
    if not config.instances:
        from .simulator import SimServer

        simulator = SimServer(config.simulator.version, step_ms=config.simulator.step_ms)
        await _listen(simulator, "the embedded simulated ComfyUI")
        logger.warning(
            "no ComfyUI instance configured: started a simulated ComfyUI %s at %s (instance 'sim')",
            config.simulator.version,
            simulator.url,
        )
        config = msgspec.structs.replace(config, instances={"sim": InstanceConfig(url=simulator.url)})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def second_signal(signum: int, _frame: Any) -> None:
        logger.warning("second signal (%s): exiting now", signal.Signals(signum).name)
        os._exit(EXIT_INTERRUPTED)

    def on_signal(signum: int) -> None:
        if stop.is_set():  # a second signal that reached the loop before its handler was swapped
            second_signal(signum, None)
        # From now on a plain handler, not the loop's: it also runs while the loop is busy or closed.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            signal.signal(sig, second_signal)
        stop.set()
        logger.info("%s: shutting down gracefully; a second signal exits at once", signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        try:
            sidecar = Sidecar(config)
        except zmq.ZMQError as exc:
            raise SidecarError(f"cannot bind {config.zmq.router} / {config.zmq.pub}: {exc}") from exc
        logger.info(
            "ROUTER on %s, PUB on %s, run %s, sidecar %s",
            sidecar.router.endpoint,
            sidecar.publisher.endpoint,
            sidecar.run_id,
            sidecar.name,
        )
        # Start-up's objects (modules, config, plugins: about 38,000) leave the collector's view, so an
        # oldest-generation collection no longer walks them: 5.6 ms -> 0.1 ms (bench/README.md, hot path).
        # Once the sockets serve: the collection before the freeze takes 30-80 ms, not spent before `ping`.
        loop.call_later(FREEZE_AFTER_S, _freeze)
        await sidecar.run(stop.wait)
    finally:
        if simulator is not None:
            await simulator.close()


FREEZE_AFTER_S = 0.5


def _freeze() -> None:
    gc.collect()
    gc.freeze()


async def _listen(server: Any, what: str) -> None:
    """Start an aiohttp-based server; a port in use or a bad address is a usage error, not a traceback."""
    try:
        await server.start()
    except OSError as exc:
        raise SidecarError(f"{what} cannot listen: {exc.strerror or exc}") from None


def _sim_security(args: argparse.Namespace) -> dict[str, Any]:
    """``simulate``'s credentials and TLS flags -> SimServer's ``auth`` and ``ssl_context``."""
    import ssl

    from .simulator.auth import SimAuth

    basic = None
    if args.basic_auth is not None:
        user, sep, password = args.basic_auth.partition(":")
        if not sep or not user or not password:
            raise ConfigError("--basic-auth: expected USER:PASSWORD")
        basic = (user, password)
    auth = SimAuth(token=args.token, basic=basic, query_token=args.query_token, query_param=args.query_param)
    context = None
    if args.tls_cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"--tls-cert {args.tls_cert}: cannot load: {reason}") from None
    elif args.tls_key is not None:
        raise ConfigError("--tls-key: give --tls-cert too")
    return {"auth": auth if auth.required else None, "ssl_context": context}


async def _simulate(
    host: str, port: int, version: str, step_ms: float | None, fuzz: int | None = None, **security: Any
) -> None:
    from .simulator import SimServer

    server = SimServer(version, host=host, port=port, step_ms=step_ms, fuzz=fuzz, **security)
    await _listen(server, f"simulate --host {host} --port {port}")
    logger.info("ComfyUI %s simulator ready at %s", version, server.url)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


async def _probe(config: BridgeConfig, adapters: list[Any]) -> dict[str, str]:
    """The adapter each configured instance would get now (or why none), by asking it over HTTP."""
    from .comfy_http import ComfyHttp
    from .core.versions import select_adapter
    from .credentials import resolve
    from .plugins.api import ServerInfo

    async def one(name: str, settings: InstanceConfig) -> tuple[str, str]:
        http = ComfyHttp(resolve(name, settings), timeout_s=3.0)  # the instance's credentials and TLS
        try:
            stats = await http.system_stats()
            features = await http.has_features()
            version = stats.get("system", {}).get("comfyui_version") if isinstance(stats, dict) else None
            info = ServerInfo(version if isinstance(version, str) else None, features, features, False, stats)
            adapter, note = select_adapter(adapters, info)
            if adapter.capabilities(info).jobs_api:
                info = msgspec.structs.replace(info, jobs_cancel=await http.has_job_cancel())
                adapter, note = select_adapter(adapters, info)
            return name, f"{adapter.name} (ComfyUI {info.version or '< 0.1'})" + (f"; {note}" if note else "")
        except SidecarError as exc:
            return name, f"unreachable: {exc}"
        finally:
            await http.close()

    found = await asyncio.gather(*(one(n, i) for n, i in config.instances.items()))
    return dict(found)


def _plugins(args: argparse.Namespace) -> int:
    from .plugins.listing import describe
    from .plugins.manager import Plugins, get_plugin_manager

    config = build_config(args)
    by_instance = None
    if not args.no_probe and config.instances:
        pm = get_plugin_manager(config)
        if args.trace_plugins:
            pm.trace.root.setwriter(lambda text: print(text, end="", file=sys.stderr))
            pm.enable_tracing()
        by_instance = asyncio.run(_probe(config, Plugins(pm).protocol_adapters()))
    print(describe(config, by_instance))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    unknown = [v for v in versions if v not in SIM_VERSIONS]
    if not versions or unknown:
        raise ConfigError(
            f"--versions {args.versions!r}: give one or more of {', '.join(SIM_VERSIONS)}, comma-separated"
        )
    if args.step_ms <= 0:
        raise ConfigError(f"--step-ms {args.step_ms:g}: must be more than 0")
    return asyncio.run(run_demo(versions, args.step_ms))


def _config_init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists; use --force to overwrite")
    try:
        path.write_text(default_toml(), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"wrote {path}")
    return 0


def _keys_generate(args: argparse.Namespace) -> int:
    from .curve import read_key_file, write_key_pair

    public, secret = write_key_pair(args.dir, args.name, args.force)
    print(f"wrote {public} (public: give it to the other side) and {secret} (secret, mode 0600: keep it here)")
    print(f"public key: {read_key_file(public, str(public), secret=False).public.decode()}")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "config":
        return _config_init(args)
    if args.command == "keys":
        return _keys_generate(args)
    if args.command == "watch":
        _setup_logging(args.log_level or "WARNING")
        from .watch import watch_fleet as follow

        if args.timeout <= 0:
            raise ConfigError(f"--timeout {args.timeout:g}: must be more than 0 seconds")
        from .fleet import endpoints

        curve = client_curve(args.curve_server_key, args.curve_client_key)
        routers, pubs = endpoints(args, need_pubs=True)
        asyncio.run(follow(routers, pubs, until_idle=args.until_idle, timeout_s=args.timeout, curve=curve))
        return 0
    if args.command == "proxy":
        _setup_logging(args.log_level or "INFO")
        from .proxy import command as proxy_command

        return proxy_command(args)
    if args.command == "demo":
        _setup_logging(args.log_level or "WARNING")
        return _demo(args)
    if args.command == "plugins":
        _setup_logging(args.log_level or "WARNING")
        return _plugins(args)
    if args.command == "run":
        config = build_config(args)
        _setup_logging(args.log_level or config.log.level)
        asyncio.run(_run(config))
        return 0
    _setup_logging(args.log_level or "INFO")
    if args.command == "simulate":
        security = _sim_security(args)
        asyncio.run(_simulate(args.host, args.port, args.version, args.step_ms, args.fuzz, **security))
        return 0
    return client_command(args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # a usage error exits 2 with argparse's message
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"comfy-bridge: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NoSidecar as exc:
        print(
            f"comfy-bridge: {exc}; is `comfy-bridge run` running there? (see --router, --timeout; a sidecar"
            " with CURVE refuses a client without keys, or whose key it does not list: --curve-server-key,"
            " --curve-client-key)",
            file=sys.stderr,
        )
        return EXIT_NO_SIDECAR
    except SidecarError as exc:
        print(f"comfy-bridge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: a plain message; the traceback only when asked for
        logger.debug("unexpected error", exc_info=True)
        print(
            f"comfy-bridge: unexpected error: {type(exc).__name__}: {exc} (a bug; --log-level DEBUG shows where)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
