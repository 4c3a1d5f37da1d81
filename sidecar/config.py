"""``bridge.toml``: msgspec Structs, strict decoding, and the commented default.

Every Struct forbids unknown fields, so a typo is an error naming the key
(``ConfigError: bridge.toml: unknown key 'rotuer' in [zmq]``) rather than a
setting silently ignored. Units are in the names: ``*_s`` seconds, ``*_ms``
milliseconds, ``*_bytes`` sizes.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import tomli_w

from .errors import ConfigError

__all__ = [
    "BackoffConfig",
    "BridgeConfig",
    "CancelConfig",
    "RecoveryConfig",
    "InstanceConfig",
    "LogConfig",
    "PluginsConfig",
    "PreviewConfig",
    "SimulatorConfig",
    "StateConfig",
    "SubmitConfig",
    "ZmqConfig",
    "default_toml",
    "load",
    "loads",
    "parse_instance_flag",
]

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class InstanceConfig(_Strict):
    """One ComfyUI instance; ``url`` is its HTTP base URL (``http://127.0.0.1:8188``)."""

    url: str
    headers: dict[str, str] = {}
    client_id: str | None = None


class ZmqConfig(_Strict):
    router: str = "tcp://127.0.0.1:5555"
    pub: str = "tcp://127.0.0.1:5556"
    pub_hwm: int = 10_000  # each subscriber's own send queue, in events (bench/README.md: why 10000)
    pub_sndbuf_bytes: int = 0  # kernel send buffer per subscriber connection; 0 = the OS default
    heartbeat_s: float = 1.0


class BackoffConfig(_Strict):
    initial_s: float = 0.1
    max_s: float = 1.5
    multiplier: float = 2.0


class SubmitConfig(_Strict):
    accept_partial: bool = False
    http_timeout_s: float = 10.0
    history_attempts: int = 8
    history_retry_s: float = 0.1


class CancelConfig(_Strict):
    confirm_timeout_s: float = 10.0
    poll_s: float = 0.05


class RecoveryConfig(_Strict):
    resubmit_lost: int = 1
    unseen_s: float = 5.0
    silent_s: float = 30.0
    stalled_s: float = 60.0
    check_s: float = 1.0
    failover_after_s: float = 30.0  # README: why 30; 0 = never move jobs


class PreviewConfig(_Strict):
    store: str = "files"
    dir: str = "state/previews"
    interval_s: float = 0.0
    keep_per_job: int = 0
    max_total_bytes: int = 512 * 1024 * 1024
    queue_size: int = 256
    options: dict[str, Any] = {}


class PluginsConfig(_Strict):
    disabled: list[str] = []


class StateConfig(_Strict):
    path: str = "state/bridge.sqlite3"


class SimulatorConfig(_Strict):
    version: str = "0.12.1"
    step_ms: float = 100.0


class MetricsConfig(_Strict):
    listen: str = ""  # HOST:PORT of the Prometheus endpoint; "" = off
    allow_remote: bool = False  # a non-loopback HOST is refused unless this is true


class LogConfig(_Strict):
    level: str = "INFO"


class BridgeConfig(_Strict):
    instances: dict[str, InstanceConfig] = {}
    zmq: ZmqConfig = msgspec.field(default_factory=ZmqConfig)
    backoff: BackoffConfig = msgspec.field(default_factory=BackoffConfig)
    submit: SubmitConfig = msgspec.field(default_factory=SubmitConfig)
    cancel: CancelConfig = msgspec.field(default_factory=CancelConfig)
    recovery: RecoveryConfig = msgspec.field(default_factory=RecoveryConfig)
    previews: PreviewConfig = msgspec.field(default_factory=PreviewConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    simulator: SimulatorConfig = msgspec.field(default_factory=SimulatorConfig)
    plugins: PluginsConfig = msgspec.field(default_factory=PluginsConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)


_TABLES = {
    "zmq": ZmqConfig,
    "backoff": BackoffConfig,
    "submit": SubmitConfig,
    "cancel": CancelConfig,
    "recovery": RecoveryConfig,
    "previews": PreviewConfig,
    "state": StateConfig,
    "simulator": SimulatorConfig,
    "plugins": PluginsConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
}


def _where(path: str) -> str:
    """msgspec's ``$.zmq.router`` -> ``zmq.router``."""
    return path.removeprefix("$").lstrip(".").replace("[...]", ".<name>") or "(top level)"


def _explain(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    match = re.match(r"Object contains unknown field `([^`]+)`(?: - at `([^`]+)`)?", text)
    if match:
        table = _where(match.group(2) or "$")
        where = "at the top level" if table == "(top level)" else f"in [{table}]"
        return f"unknown key '{match.group(1)}' {where}"
    match = re.match(r"Object missing required field `([^`]+)`(?: - at `([^`]+)`)?", text)
    if match:
        table = _where(match.group(2) or "$")
        return f"missing key '{match.group(1)}' in [{table}]"
    match = re.match(r"(.*) - at `([^`]+)`", text)
    if match:
        return f"key '{_where(match.group(2))}': {match.group(1)}"
    return text


def check_url(name: str, url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL", characters that NFKC turns into URL syntax
        raise ConfigError(f"key 'instances.{name}.url': {url!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"key 'instances.{name}.url': {url!r} is not an HTTP base URL like http://127.0.0.1:8188")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(f"key 'instances.{name}.url': {url!r} has a bad port") from exc


def _check(config: BridgeConfig) -> BridgeConfig:
    for name, inst in config.instances.items():
        if not NAME_RE.match(name):
            raise ConfigError(f"instance name {name!r}: use 1-64 letters, digits, '-' or '_'")
        check_url(name, inst.url)
    if not config.previews.store:
        raise ConfigError("key 'previews.store': name a preview store (files, inline, none, or a plugin's)")
    if config.previews.interval_s < 0 or config.previews.keep_per_job < 0 or config.previews.max_total_bytes < 0:
        raise ConfigError("key 'previews': interval_s, keep_per_job and max_total_bytes must not be negative")
    if config.previews.queue_size < 1:
        raise ConfigError("key 'previews.queue_size': must be at least 1")
    if config.backoff.initial_s <= 0 or config.backoff.max_s < config.backoff.initial_s:
        raise ConfigError("key 'backoff': need 0 < initial_s <= max_s")
    if config.zmq.pub_hwm < 1:
        # 0 is "no limit" to ZeroMQ: a subscriber that stops reading would grow the sidecar's memory for ever
        raise ConfigError("key 'zmq.pub_hwm': must be at least 1 (a bound on each subscriber's queue)")
    if not 0.01 <= config.zmq.heartbeat_s <= 60:
        raise ConfigError("key 'zmq.heartbeat_s': must be between 0.01 and 60 seconds")
    if config.backoff.multiplier < 1:
        raise ConfigError("key 'backoff.multiplier': must be at least 1")
    if config.recovery.failover_after_s < 0:
        raise ConfigError("key 'recovery.failover_after_s': must not be negative (0 turns failover off)")
    if config.metrics.listen:
        metrics_address(config)
    return config


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def metrics_address(config: BridgeConfig) -> tuple[str, int] | None:
    """``metrics.listen`` as ``(host, port)``, None when off; a :class:`ConfigError` names what is
    wrong. A host other than loopback needs ``metrics.allow_remote`` (the endpoint has no auth)."""
    listen = config.metrics.listen
    if not listen:
        return None
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"key 'metrics.listen': {listen!r} is not HOST:PORT, e.g. 127.0.0.1:9464")
    if host not in LOOPBACK and not config.metrics.allow_remote:
        raise ConfigError(
            f"key 'metrics.listen': {host!r} is not a loopback address and the endpoint has no authentication; "
            "set metrics.allow_remote = true to serve it beyond this host"
        )
    return host, int(port_text)


def loads(text: str, source: str = "bridge.toml") -> BridgeConfig:
    """Decode and check a config; any problem is a :class:`ConfigError` naming the key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        config = msgspec.convert(raw, BridgeConfig, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_explain(exc)}") from exc
    try:
        return _check(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def load(path: str | Path) -> BridgeConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    return loads(text, str(path))


def parse_instance_flag(flag: str) -> tuple[str, str]:
    """``NAME=URL`` from ``--instance``; a :class:`ConfigError` says what is wrong."""
    name, sep, url = flag.partition("=")
    if not sep or not name or not url:
        raise ConfigError(f"--instance {flag!r}: expected NAME=URL, e.g. local=http://127.0.0.1:8188")
    if not NAME_RE.match(name):
        raise ConfigError(f"--instance {flag!r}: name must be 1-64 letters, digits, '-' or '_'")
    check_url(name, url)
    return name, url


_COMMENTS = {
    "zmq": (
        "ZeroMQ endpoints: requests on the ROUTER, events on the PUB; pub_hwm: each subscriber's own queue,\n"
        "in events (a subscriber that falls further behind loses events, on its connection only);\n"
        "pub_sndbuf_bytes: kernel send buffer per subscriber (0: the OS default);\n"
        "heartbeat_s: an idle PUB socket sends a heartbeat event this often."
    ),
    "backoff": "Reconnect delays to a ComfyUI instance: exponential with full jitter.",
    "submit": (
        "accept_partial: queue a prompt ComfyUI accepted with node_errors (only some outputs valid).\n"
        "history_attempts / history_retry_s: how hard to wait for /history after a prompt ends."
    ),
    "cancel": (
        "confirm_timeout_s: publish job.cancel_unconfirmed when ComfyUI has not confirmed a cancel by then.\n"
        "poll_s: how often the queue is checked while a cancel of a queued job is confirmed."
    ),
    "recovery": (
        "resubmit_lost: how many times a job that ComfyUI lost (a restart) is submitted again.\n"
        "unseen_s: no frame for this long while jobs are unfinished -> read the queue (again every unseen_s);\n"
        "  a job that ended unseen is read from history and the socket replaced.\n"
        "silent_s: no frame for this long while a job runs -> reconnect (the socket is silent).\n"
        "stalled_s: the queue holds work but shows no progress for this long -> the instance is marked degraded.\n"
        "check_s: how often the watchdog looks.\n"
        "failover_after_s: an instance unreachable this long has its unfinished jobs moved to another\n"
        "  connected instance (job.resubmitted), or failed with instance_down when none is; 0 = never."
    ),
    "previews": (
        "store: files (written under dir; events carry the path), inline (bytes as the event's extra frame),\n"
        "none (no preview events), or a store a plugin makes (options go to it).\n"
        "interval_s: at most one preview per job per interval (0: every one; a submit may set its own).\n"
        "keep_per_job / max_total_bytes: retention of the files store (0 keep_per_job: keep all).\n"
        "queue_size: previews waiting to be written; when full the oldest is dropped and counted."
    ),
    "plugins": "Plugins by name (entry-point name or built-in module) that must not be loaded.",
    "state": "Where the sidecar keeps its state (SQLite).",
    "simulator": "The simulated ComfyUI that `run` starts when no instance is configured.",
    "metrics": (
        'listen: HOST:PORT of a Prometheus endpoint (GET /metrics), e.g. "127.0.0.1:9464"; "" = off.\n'
        "allow_remote: serve it on a non-loopback address (it has no authentication)."
    ),
    "log": "Log level: DEBUG, INFO, WARNING, ERROR.",
}


def default_toml() -> str:
    """The commented default ``bridge.toml`` (values written with tomli-w)."""
    config = BridgeConfig()
    lines = [
        "# comfy-bridge configuration. Every key is optional; unknown keys are errors.",
        "# Full reference: README.md, section 'Configuration'.",
        "",
        "# ComfyUI instances, one table each, by name. With none, `comfy-bridge run` starts",
        "# an embedded simulated ComfyUI. `--instance NAME=URL` flags replace this list.",
        "# [instances.local]",
        '# url = "http://127.0.0.1:8188"',
        '# headers = { Authorization = "Bearer ..." }   # optional, sent on every request',
        "",
    ]
    for key, _cls in _TABLES.items():
        for comment in _COMMENTS[key].splitlines():
            lines.append(f"# {comment}")
        table: dict[str, Any] = {key: msgspec.to_builtins(getattr(config, key))}
        lines.append(tomli_w.dumps(table).rstrip())
        lines.append("")
    return "\n".join(lines)
