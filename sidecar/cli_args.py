"""The ``comfy-bridge`` command line's arguments: every subcommand, flag and help text (``cli.py``
acts on them)."""

from __future__ import annotations

import argparse
from typing import Any, get_args

from . import __version__
from .cli_client import DEFAULT_PUB, DEFAULT_ROUTER, EXIT_CODES
from .config import NAME_RE, LogLevel
from .curve import CLIENT_KEY_ENV, SERVER_KEY_ENV
from .proxy import add_parser as proxy_parser
from .simulator.versions import VERSIONS as SIM_VERSIONS

__all__ = ["DEFAULT_CONFIG", "LEVELS", "parser"]

DEFAULT_CONFIG = "bridge.toml"
LEVELS: tuple[str, ...] = get_args(LogLevel)


def parser() -> argparse.ArgumentParser:
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
