"""The ``comfy-bridge`` command line. The only place that configures logging.

``run`` serves; ``simulate`` is a simulated ComfyUI; ``config init`` writes the
commented default config; ``submit``, ``job``, ``jobs``, ``health``, ``ping`` and
``cancel`` are small ZeroMQ clients of a running sidecar.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec

from .config import BridgeConfig, InstanceConfig, default_toml, load, parse_instance_flag
from .errors import ConfigError, SidecarError

__all__ = ["main"]

logger = logging.getLogger("sidecar")

DEFAULT_CONFIG = "bridge.toml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfy-bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR (default: from config)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the sidecar")
    run.add_argument("--config", metavar="FILE", help=f"config file (default: ./{DEFAULT_CONFIG} if present)")
    run.add_argument(
        "--instance",
        metavar="NAME=URL",
        action="append",
        default=[],
        help="a ComfyUI instance by its HTTP base URL; repeatable; replaces the file's instances",
    )
    run.add_argument("--router", metavar="ENDPOINT", help="ZeroMQ ROUTER endpoint for requests")
    run.add_argument("--pub", metavar="ENDPOINT", help="ZeroMQ PUB endpoint for events")
    run.add_argument("--state", metavar="PATH", help="state file (SQLite)")

    sim = sub.add_parser("simulate", help="serve a simulated ComfyUI")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8188)
    sim.add_argument("--version", default="0.12.1", help="0.0.2, 0.3.44 or 0.12.1")
    sim.add_argument("--step-ms", type=float, default=None, help="duration of one sampler step")

    watch = sub.add_parser("watch", help="live progress of every job")
    watch.add_argument("--router", default="tcp://127.0.0.1:5555")
    watch.add_argument("--pub", default="tcp://127.0.0.1:5556")
    watch.add_argument("--until-idle", action="store_true", help="exit once jobs were seen and all have ended")

    demo = sub.add_parser("demo", help="simulated instances + sidecar + sample jobs, with live progress")
    demo.add_argument("--versions", default="0.12.1,0.3.44", help="simulated ComfyUI versions, comma-separated")
    demo.add_argument("--step-ms", type=float, default=60.0)

    plugins = sub.add_parser("plugins", help="list plugins, preview stores and the adapter of each instance")
    plugins.add_argument("--config", metavar="FILE", help=f"config file (default: ./{DEFAULT_CONFIG} if present)")
    plugins.add_argument("--instance", metavar="NAME=URL", action="append", default=[])
    plugins.add_argument("--no-probe", action="store_true", help="do not contact the instances")
    plugins.add_argument("--trace-plugins", action="store_true", help="log every hook call")

    cfg = sub.add_parser("config", help="configuration helpers")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    init = cfg_sub.add_parser("init", help="write the commented default config")
    init.add_argument("path", nargs="?", default=DEFAULT_CONFIG)
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    for name, helptext in (("health", "instances' health"), ("jobs", "list jobs"), ("ping", "ping the sidecar")):
        client = sub.add_parser(name, help=helptext)
        client.add_argument("--router", default="tcp://127.0.0.1:5555")
    submit = sub.add_parser("submit", help="submit an API-format workflow JSON file")
    submit.add_argument("file")
    submit.add_argument("--job-id")
    submit.add_argument("--instance")
    submit.add_argument("--router", default="tcp://127.0.0.1:5555")
    for name in ("job", "cancel"):
        one = sub.add_parser(name, help=f"{name} one job")
        one.add_argument("job_id")
        one.add_argument("--router", default="tcp://127.0.0.1:5555")
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
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
                raise ConfigError(f"--instance {flag!r}: instance {name!r} given twice")
            instances[name] = InstanceConfig(url=url)
        config = msgspec.structs.replace(config, instances=instances)
    if getattr(args, "router", None):
        config = msgspec.structs.replace(config, zmq=msgspec.structs.replace(config.zmq, router=args.router))
    if getattr(args, "pub", None):
        config = msgspec.structs.replace(config, zmq=msgspec.structs.replace(config.zmq, pub=args.pub))
    if getattr(args, "state", None):
        config = msgspec.structs.replace(config, state=msgspec.structs.replace(config.state, path=args.state))
    return config


async def _run(config: BridgeConfig) -> None:
    import zmq

    from .app import Sidecar

    simulator = None
    if not config.instances:
        from .simulator import SimServer

        simulator = SimServer(config.simulator.version, step_ms=config.simulator.step_ms)
        await simulator.start()
        logger.warning(
            "no ComfyUI instance configured: started a simulated ComfyUI %s at %s (instance 'sim')",
            config.simulator.version,
            simulator.url,
        )
        config = msgspec.structs.replace(config, instances={"sim": InstanceConfig(url=simulator.url)})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            logger.warning("second signal: exiting now")
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        try:
            sidecar = Sidecar(config)
        except zmq.ZMQError as exc:
            raise SidecarError(f"cannot bind {config.zmq.router} / {config.zmq.pub}: {exc}") from exc
        logger.info(
            "ROUTER on %s, PUB on %s, run %s", sidecar.router.endpoint, sidecar.publisher.endpoint, sidecar.run_id
        )
        # Start-up's objects (modules, config, plugins: about 38,000) leave the collector's view, so an
        # oldest-generation collection no longer walks them: 5.6 ms -> 0.1 ms (bench/README.md, hot path).
        gc.collect()
        gc.freeze()
        await sidecar.run(stop.wait)
    finally:
        if simulator is not None:
            await simulator.close()


async def _probe(config: BridgeConfig, adapters: list[Any]) -> dict[str, str]:
    """The adapter each configured instance would get now (or why none), by asking it over HTTP."""
    from .comfy_http import ComfyHttp
    from .core.versions import select_adapter
    from .plugins.api import ServerInfo

    async def one(name: str, url: str, headers: dict[str, str]) -> tuple[str, str]:
        http = ComfyHttp(url, headers, timeout_s=3.0)
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

    found = await asyncio.gather(*(one(n, i.url, i.headers) for n, i in config.instances.items()))
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


def _request(router: str, body: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(router)
        sock.send(msgspec.msgpack.encode({"id": "cli", **body}))
        if not sock.poll(int(timeout_s * 1000)):
            raise SystemExit(f"comfy-bridge: no reply from {router} within {timeout_s:.0f} s")
        reply: dict[str, Any] = msgspec.msgpack.decode(sock.recv())
        return reply
    finally:
        sock.close()
        ctx.term()


def _client(args: argparse.Namespace) -> int:
    if args.command == "submit":
        try:
            workflow = json.loads(Path(args.file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"comfy-bridge: {args.file}: {exc}") from exc
        body: dict[str, Any] = {"op": "submit", "workflow": workflow}
        if args.job_id:
            body["job_id"] = args.job_id
        if args.instance:
            body["instance"] = args.instance
    elif args.command in ("job", "cancel"):
        body = {"op": args.command, "job_id": args.job_id}
    else:
        body = {"op": args.command}
    reply = _request(args.router, body)
    print(json.dumps(reply, indent=2, default=str))
    return 0 if reply.get("ok") else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "config":
            path = Path(args.path)
            if path.exists() and not args.force:
                print(f"comfy-bridge: {path} exists; use --force to overwrite", file=sys.stderr)
                return 2
            path.write_text(default_toml(), encoding="utf-8")
            print(f"wrote {path}")
            return 0
        if args.command == "watch":
            _setup_logging(args.log_level or "WARNING")
            from .watch import watch as follow

            asyncio.run(follow(args.router, args.pub, until_idle=args.until_idle))
            return 0
        if args.command == "demo":
            _setup_logging(args.log_level or "WARNING")
            from .demo import run_demo

            return asyncio.run(run_demo([v.strip() for v in args.versions.split(",") if v.strip()], args.step_ms))
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
            from .simulator import serve

            asyncio.run(serve(args.host, args.port, args.version, args.step_ms))
            return 0
        return _client(args)
    except ConfigError as exc:
        print(f"comfy-bridge: config error: {exc}", file=sys.stderr)
        return 2
    except SidecarError as exc:
        print(f"comfy-bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
