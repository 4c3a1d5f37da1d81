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
from typing import Any, get_args

import msgspec

from . import __version__
from .cli_client import (
    DEFAULT_PUB,
    DEFAULT_ROUTER,
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NO_SIDECAR,
    EXIT_USAGE,
    NoSidecar,
    client_command,
)
from .config import (
    NAME_RE,
    BridgeConfig,
    InstanceConfig,
    LogLevel,
    default_toml,
    load,
    parse_instance_flag,
    validate,
)
from .curve import CLIENT_KEY_ENV, SERVER_KEY_ENV, client_curve
from .errors import ConfigError, SidecarError
from .proxy import add_parser as proxy_parser
from .simulator.versions import VERSIONS as SIM_VERSIONS

__all__ = ["main"]

logger = logging.getLogger("sidecar")

DEFAULT_CONFIG = "bridge.toml"
LEVELS: tuple[str, ...] = get_args(LogLevel)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfy-bridge",
        description="Link a backend (ZeroMQ) to ComfyUI instances: run the sidecar, or talk to a running one.",
        epilog="exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"comfy-bridge {__version__}")
    parser.add_argument(
        "--log-level", default=None, choices=LEVELS, type=str.upper, help="log level (default: from the config; INFO)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the sidecar", description="Run the sidecar until SIGINT or SIGTERM.")
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
    run.add_argument("--state", metavar="PATH", help="state file (SQLite); one sidecar per file")

    sim = sub.add_parser("simulate", help="serve a simulated ComfyUI", description="Serve a simulated ComfyUI.")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sim.add_argument("--port", type=port, default=8188, help="port (default: 8188, ComfyUI's own; 0: a free one)")
    sim.add_argument("--version", default="0.12.1", choices=SIM_VERSIONS, help="the ComfyUI version to behave as")
    sim.add_argument("--step-ms", type=float, default=None, metavar="N", help="duration of one sampler step, in ms")
    sim.add_argument(
        "--fuzz",
        type=int,
        default=None,
        metavar="SEED",
        help="fuzzing mode: after real frames, send mutated ones (garbled, wrong types, unknown types/prompts)",
    )
    sim.add_argument("--token", metavar="TOKEN", help="require Authorization: Bearer TOKEN on every request")
    sim.add_argument("--basic-auth", metavar="USER:PASSWORD", help="require basic auth on every request")
    sim.add_argument("--query-token", metavar="TOKEN", help="require ?PARAM=TOKEN on every request (--query-param)")
    sim.add_argument("--query-param", default="token", metavar="PARAM", help="for --query-token (default: token)")
    sim.add_argument("--tls-cert", metavar="FILE", help="serve https:// and wss:// with this certificate chain (PEM)")
    sim.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM; default: in --tls-cert)")

    watch = sub.add_parser(
        "watch", help="live progress of every job", description="Follow every job and instance of a running sidecar."
    )
    _endpoints(watch)
    watch.add_argument(
        "--pub",
        action="append",
        metavar="ENDPOINT",
        help=f"repeatable, one per --router or one for all (a proxy's); default: {DEFAULT_PUB}",
    )
    watch.add_argument(
        "--until-idle",
        action="store_true",
        help="exit once no job is unfinished (with a fresh sidecar, after its first job)",
    )
    _timeout(watch, 5.0, "for each answer; no event for this long shows the sidecar as silent")
    _curve_flags(watch)

    demo = sub.add_parser("demo", help="simulated instances + sidecar + sample jobs, with live progress")
    demo.add_argument(
        "--versions",
        default="0.12.1,0.3.44",
        help=f"simulated ComfyUI versions, comma-separated: {', '.join(SIM_VERSIONS)}",
    )
    demo.add_argument("--step-ms", type=float, default=60.0, metavar="N", help="duration of one sampler step, in ms")

    plugins = sub.add_parser("plugins", help="list plugins, preview stores and the adapter of each instance")
    plugins.add_argument("--config", metavar="FILE", help=f"config file (default: ./{DEFAULT_CONFIG} if present)")
    plugins.add_argument("--instance", metavar="NAME=URL", action="append", default=[], help="as for run")
    plugins.add_argument("--no-probe", action="store_true", help="do not contact the instances")
    plugins.add_argument("--trace-plugins", action="store_true", help="log every hook call")

    cfg = sub.add_parser("config", help="configuration helpers")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    init = cfg_sub.add_parser("init", help="write the commented default config")
    init.add_argument("path", nargs="?", default=DEFAULT_CONFIG, help=f"where (default: {DEFAULT_CONFIG})")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    keys = sub.add_parser("keys", help="ZeroMQ CURVE keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    generate = keys_sub.add_parser(
        "generate",
        help="write a CURVE key pair: DIR/NAME.key (public) and DIR/NAME.key_secret (mode 0600)",
        description="Write a CURVE key pair in the Z85 certificate format ZeroMQ bindings read"
        " (pyzmq's zmq.auth.load_certificate, czmq): DIR/NAME.key (public) and DIR/NAME.key_secret.",
    )
    generate.add_argument("dir", metavar="DIR", help="where (made, mode 0700, if absent)")
    generate.add_argument("--name", default="server", type=key_name, help="file name (default: server)")
    generate.add_argument("--force", action="store_true", help="overwrite an existing pair")
    proxy_parser(sub)

    submit = _client(sub, "submit", "submit an API-format workflow JSON file", 15.0)
    submit.add_argument("file", help="the workflow, in ComfyUI's API format (docs/examples/*.json)")
    submit.add_argument("--job-id", metavar="ID", help="your id for the job (default: the sidecar makes one)")
    submit.add_argument("--instance", metavar="NAME", help="the instance to run it on (default: the least loaded)")
    submit.add_argument("--client-data", metavar="JSON", help="any JSON value, echoed in the job's events")
    submit.add_argument(
        "--file",
        dest="files",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="an input file the workflow names by NAME (default: the file's name); repeatable",
    )
    submit.add_argument("--wait", action="store_true", help="follow the job to its end; the exit code says how")
    submit.add_argument(
        "--pub", action="append", metavar="ENDPOINT", help=f"for --wait, as for watch (default: {DEFAULT_PUB})"
    )
    for name, helptext in (
        ("job", "one job's view"),
        ("cancel", "cancel a job"),
        ("pause", "pause a job: stop it in ComfyUI and hold it in the sidecar"),
    ):
        _client(sub, name, helptext).add_argument("job_id", metavar="ID")
    resume = _client(sub, "resume", "run a paused job again")
    resume.add_argument("job_id", metavar="ID")
    resume.add_argument("--instance", metavar="NAME", help="run it there (default: its own instance if connected)")
    jobs = _client(sub, "jobs", "list the jobs the sidecar knows")
    jobs.add_argument("--active", action="store_true", help="only unfinished jobs")
    jobs.add_argument("--instance", metavar="NAME", help="only this instance's jobs")
    _client(sub, "health", "instances, counters and the state file")
    _client(sub, "snapshot", "every instance and unfinished job, with the seq it reflects")
    _client(sub, "ping", "is a sidecar there? (its run id and seq)")
    return parser


def port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(text)
    return port


def key_name(text: str) -> str:
    if not NAME_RE.match(text):
        raise ValueError(text)
    return text


def _curve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--curve-server-key",
        metavar="FILE",
        help=f"the sidecar's public NAME.key, when it runs with CURVE (default: ${SERVER_KEY_ENV})",
    )
    parser.add_argument(
        "--curve-client-key",
        metavar="FILE",
        help=f"this client's NAME.key_secret, allowed by the sidecar (default: ${CLIENT_KEY_ENV})",
    )


def _timeout(parser: argparse.ArgumentParser, default: float, what: str = "for each reply") -> None:
    parser.add_argument(
        "--timeout", type=float, default=default, metavar="S", help=f"seconds to wait {what} (default: {default:g})"
    )


def _client(sub: Any, name: str, helptext: str, timeout_s: float = 5.0) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=helptext, description=f"Ask a running sidecar: {helptext}."
    )
    _endpoints(parser)
    _timeout(parser, timeout_s)
    _curve_flags(parser)
    return parser


def _endpoints(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--router",
        action="append",
        metavar="ENDPOINT",
        help=f"a sidecar's ROUTER; repeatable: a fleet (docs/deployment.md); default: [fleet], else {DEFAULT_ROUTER}",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config whose [fleet] tables name the sidecars (default: ./bridge.toml if present)",
    )


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
