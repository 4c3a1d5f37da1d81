"""``bridge.toml``: msgspec Structs, strict decoding, and the commented default.

Every Struct forbids unknown fields, so a typo is an error naming the key
(``ConfigError: bridge.toml: unknown key 'rotuer' in [zmq]``) rather than a
setting silently ignored. Units are in the names: ``*_s`` seconds, ``*_ms``
milliseconds, ``*_bytes`` sizes.
"""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from .endpoints import check_binds
from .errors import ConfigError

__all__ = [
    "BackoffConfig",
    "BridgeConfig",
    "CancelConfig",
    "CurveConfig",
    "FleetMember",
    "RecoveryConfig",
    "InstanceConfig",
    "LimitsConfig",
    "LogConfig",
    "OutputsConfig",
    "PluginsConfig",
    "PreviewConfig",
    "SidecarConfig",
    "SimulatorConfig",
    "StateConfig",
    "SubmitConfig",
    "ZmqConfig",
    "default_toml",
    "load",
    "loads",
    "parse_instance_flag",
    "sidecar_name",
    "validate",
]

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# The rules are the types: msgspec refuses a value outside them while decoding, and _explain names the
# key, the rule and the value. README's configuration table shows each rule (tests/test_docs_readme.py).
Positive = Annotated[float, msgspec.Meta(gt=0)]  # a duration that must pass: 0 would make a busy loop
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
InstanceName = Annotated[str, msgspec.Meta(pattern=NAME_RE.pattern)]
SIDECAR_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{0,253}$")  # a host name fits (dots); "" = the host name
SidecarName = Annotated[str, msgspec.Meta(pattern=SIDECAR_NAME_RE.pattern)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
SimVersion = Literal["0.0.2", "0.3.44", "0.12.1"]  # sidecar.simulator.versions.VERSIONS (a test keeps them equal)


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class InstanceConfig(_Strict):
    """One ComfyUI instance; ``url`` is its HTTP base URL (``http://127.0.0.1:8188``).

    Credentials and TLS (:mod:`.credentials`): each secret is literal or named by an environment
    variable (``*_env``); the repr masks them, and the URL's userinfo and query values.
    """

    url: str
    headers: dict[str, str] = {}
    client_id: str | None = None
    headers_env: dict[str, str] = {}  # header name -> environment variable holding its value
    token: str = ""  # bearer token: Authorization: Bearer <token>
    token_env: str = ""
    username: str = ""  # basic auth, with password or password_env
    password: str = ""
    password_env: str = ""
    query_token: str = ""  # sent as ?<query_param>=<token> on every request and the WebSocket URL
    query_token_env: str = ""
    query_param: NonEmpty = "token"
    ca_file: str = ""  # CA bundle (PEM) that signs an https:// instance's certificate; "" = the system's
    tls_verify: bool = True  # false: no certificate verification (logged as a WARNING)

    def __repr__(self) -> str:
        return f"InstanceConfig({', '.join(f'{k}={v!r}' for k, v in self.__rich_repr__())})"

    def __rich_repr__(self) -> Any:
        from .credentials import Secret, mask_url

        for key in self.__struct_fields__:
            value = getattr(self, key)
            if key == "url":
                value = mask_url(value)
            elif key == "headers":
                value = {k: Secret(v) for k, v in value.items()}
            elif key in _SECRET_KEYS and value:
                value = Secret(value)
            yield key, value


_SECRET_KEYS = frozenset({"token", "password", "query_token"})


class CurveConfig(_Strict):
    """ZeroMQ CURVE on both sockets (sidecar/curve.py): on when ``server_secret_key`` is set."""

    server_secret_key: str = ""  # the server's NAME.key_secret (`comfy-bridge keys generate`); "" = off
    clients_dir: str = ""  # the allowed clients' public keys, one NAME.key file each; required when on


class SidecarConfig(_Strict):
    """This sidecar's identity in a fleet: ``name`` is in ``health``, ``snapshot`` and every event."""

    name: SidecarName = ""  # "" = the host name (socket.gethostname())


class FleetMember(_Strict):
    """One sidecar a client talks to (``[fleet.NAME]``): its ROUTER and PUB endpoints.

    Read by the client commands (``watch``, ``submit``, ``job``, ...), not by ``run``.
    """

    router: NonEmpty
    pub: NonEmpty


class ZmqConfig(_Strict):
    router: str = "tcp://127.0.0.1:5555"
    pub: str = "tcp://127.0.0.1:5556"
    pub_hwm: AtLeastOne = 10_000  # each subscriber's own send queue, in events (bench/README.md: why 10000)
    pub_sndbuf_bytes: Count = 0  # kernel send buffer per subscriber connection; 0 = the OS default
    heartbeat_s: Annotated[float, msgspec.Meta(ge=0.01, le=60)] = 1.0
    allow_open_bind: bool = False  # bind beyond loopback without CURVE: only by this explicit choice
    curve: CurveConfig = msgspec.field(default_factory=CurveConfig)


class BackoffConfig(_Strict):
    initial_s: Positive = 0.1
    max_s: Positive = 1.5  # and at least initial_s
    multiplier: Annotated[float, msgspec.Meta(ge=1)] = 2.0


class SubmitConfig(_Strict):
    accept_partial: bool = False
    http_timeout_s: Positive = 10.0
    history_attempts: AtLeastOne = 8
    history_retry_s: NonNegative = 0.1


class CancelConfig(_Strict):
    confirm_timeout_s: Positive = 10.0
    poll_s: Positive = 0.05


class RecoveryConfig(_Strict):
    resubmit_lost: Count = 1
    unseen_s: Positive = 5.0
    silent_s: Positive = 30.0
    stalled_s: Positive = 60.0
    check_s: Positive = 1.0
    failover_after_s: NonNegative = 30.0  # README: why 30; 0 = never move jobs


class PreviewConfig(_Strict):
    store: NonEmpty = "files"
    dir: str = "state/previews"
    interval_s: NonNegative = 0.0
    keep_per_job: Count = 0
    max_total_bytes: Count = 512 * 1024 * 1024
    queue_size: AtLeastOne = 256
    options: dict[str, Any] = {}


class OutputsConfig(_Strict):
    """The output store: where the file outputs of jobs are copied from ComfyUI (``GET /view``)."""

    store: NonEmpty = "files"
    dir: str = "state/outputs"
    max_total_bytes: Count = 4 * 1024 * 1024 * 1024  # files store: oldest jobs' outputs deleted past it; 0 = no cap
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    queue_size: AtLeastOne = 1024
    max_file_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 512 * 1024 * 1024
    attempts: AtLeastOne = 4
    retry_s: NonNegative = 0.5
    final_wait_s: NonNegative = 10.0
    options: dict[str, Any] = {}


class PluginsConfig(_Strict):
    disabled: list[str] = []


class StateConfig(_Strict):
    path: NonEmpty = "state/bridge.sqlite3"


class SimulatorConfig(_Strict):
    version: SimVersion = "0.12.1"
    step_ms: Positive = 100.0


class MetricsConfig(_Strict):
    listen: str = ""  # HOST:PORT of the Prometheus endpoint; "" = off
    allow_remote: bool = False  # a non-loopback HOST is refused unless this is true


class LimitsConfig(_Strict):
    """Bounds on what one client or one ComfyUI can make the sidecar hold; each refusal names its key."""

    request_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024 * 1024
    workflow_nodes: AtLeastOne = 10_000
    jobs_per_instance: AtLeastOne = 1_000
    jobs_total: AtLeastOne = 10_000
    ws_frame_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024 * 1024
    preview_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024 * 1024
    upload_file_bytes: AtLeastOne = 32 * 1024 * 1024  # one input file of a submit
    upload_request_bytes: Count = 64 * 1024 * 1024  # all input files of one submit, on top of request_bytes


class LogConfig(_Strict):
    level: LogLevel = "INFO"


class BridgeConfig(_Strict):
    instances: dict[InstanceName, InstanceConfig] = {}
    sidecar: SidecarConfig = msgspec.field(default_factory=SidecarConfig)
    zmq: ZmqConfig = msgspec.field(default_factory=ZmqConfig)
    backoff: BackoffConfig = msgspec.field(default_factory=BackoffConfig)
    submit: SubmitConfig = msgspec.field(default_factory=SubmitConfig)
    cancel: CancelConfig = msgspec.field(default_factory=CancelConfig)
    recovery: RecoveryConfig = msgspec.field(default_factory=RecoveryConfig)
    previews: PreviewConfig = msgspec.field(default_factory=PreviewConfig)
    outputs: OutputsConfig = msgspec.field(default_factory=OutputsConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    simulator: SimulatorConfig = msgspec.field(default_factory=SimulatorConfig)
    plugins: PluginsConfig = msgspec.field(default_factory=PluginsConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    fleet: dict[InstanceName, FleetMember] = {}


_TABLES = {
    "sidecar": SidecarConfig,
    "zmq": ZmqConfig,
    "backoff": BackoffConfig,
    "submit": SubmitConfig,
    "cancel": CancelConfig,
    "recovery": RecoveryConfig,
    "previews": PreviewConfig,
    "outputs": OutputsConfig,
    "state": StateConfig,
    "simulator": SimulatorConfig,
    "plugins": PluginsConfig,
    "metrics": MetricsConfig,
    "limits": LimitsConfig,
    "log": LogConfig,
}


def sidecar_name(config: BridgeConfig) -> str:
    """``sidecar.name``, or the host name when it is empty."""
    return config.sidecar.name or socket.gethostname()


def _where(path: str) -> str:
    """msgspec's ``$.zmq.router`` -> ``zmq.router``."""
    return path.removeprefix("$").lstrip(".").replace("[...]", ".<name>") or "(top level)"


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def rule(kind: Any) -> str | None:
    """The allowed values of a msgspec type (``msgspec.inspect``) in words, None when it has no rule."""
    if isinstance(kind, msgspec.inspect.LiteralType):
        return "one of " + ", ".join(repr(v) for v in kind.values)
    if isinstance(kind, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
        low = [f">= {_num(kind.ge)}"] if kind.ge is not None else [f"> {_num(kind.gt)}"] if kind.gt is not None else []
        high = [f"<= {_num(kind.le)}"] if kind.le is not None else [f"< {_num(kind.lt)}"] if kind.lt is not None else []
        return " and ".join(low + high) or None
    if isinstance(kind, msgspec.inspect.StrType):
        if kind.pattern is not None:
            return f"matching {kind.pattern}"
        if kind.min_length is not None:
            return f"at least {kind.min_length} character{'s' if kind.min_length > 1 else ''} long"
    return None


def key_types() -> dict[str, Any]:
    """Every key of bridge.toml (``zmq.pub_hwm``, ``instances.<name>.url``, ``zmq.curve.clients_dir``)
    -> its msgspec type; a table inside a table (``[zmq.curve]``) gives its keys, not itself."""
    keys: dict[str, Any] = {}
    top = msgspec.inspect.type_info(BridgeConfig)
    assert isinstance(top, msgspec.inspect.StructType)
    for table in top.fields:
        kind, prefix = table.type, table.encode_name
        if isinstance(kind, msgspec.inspect.DictType):  # [instances.NAME]
            kind, prefix = kind.value_type, f"{prefix}.<name>"
        assert isinstance(kind, msgspec.inspect.StructType)
        for field in kind.fields:
            if isinstance(field.type, msgspec.inspect.StructType):  # [zmq.curve]
                for inner in field.type.fields:
                    keys[f"{prefix}.{field.encode_name}.{inner.encode_name}"] = inner.type
            else:
                keys[f"{prefix}.{field.encode_name}"] = field.type
    return keys


def _value_at(raw: Any, key: str) -> Any:
    for part in key.split("."):
        if part == "<name>" and isinstance(raw, dict) and len(raw) == 1:
            raw = next(iter(raw.values()))
        elif isinstance(raw, dict) and part in raw:
            raw = raw[part]
        else:
            return msgspec.UNSET
    return raw


def _explain(exc: msgspec.ValidationError, raw: Any) -> str:
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
    if text.endswith(" - at `key` in `$.instances`"):
        bad = [name for name in raw.get("instances", {}) if isinstance(name, str) and not NAME_RE.match(name)]
        return f"instance name {bad[0] if bad else '?'!r}: use 1-64 letters, digits, '-' or '_'"
    match = re.match(r"(.*) - at `([^`]+)`", text)
    if match:
        key = _where(match.group(2))
        allowed = rule(key_types().get(key))
        if allowed and ", got `" not in match.group(1):  # a value of the right type outside its rule
            return f"key '{key}': must be {allowed} (got {_value_at(raw, key)!r})"
        return f"key '{key}': {match.group(1)}" + (f"; must be {allowed}" if allowed else "")
    return text


def check_url(name: str, url: str) -> None:
    from .credentials import mask_url

    shown = mask_url(url)  # a URL may carry a password or a query token
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL", characters that NFKC turns into URL syntax
        reason = "a host name with characters that are not allowed" if "netloc" in str(exc) else exc  # quotes it
        raise ConfigError(f"key 'instances.{name}.url': {shown!r} is not a valid URL: {reason}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"key 'instances.{name}.url': {shown!r} is not an HTTP base URL like http://127.0.0.1:8188")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"key 'instances.{name}.url': {shown!r} has a bad port") from None


def _check(config: BridgeConfig) -> BridgeConfig:
    """What a type cannot say: relations between keys, URLs, addresses."""
    from .credentials import resolve

    for name, inst in config.instances.items():
        check_url(name, inst.url)
        resolve(name, inst)  # a variable not set, a CA file not readable, keys that clash
    if config.backoff.max_s < config.backoff.initial_s:
        raise ConfigError(
            f"key 'backoff.max_s': must be >= backoff.initial_s ({config.backoff.initial_s:g})"
            f" (got {config.backoff.max_s:g})"
        )
    if config.metrics.listen:
        metrics_address(config)
    curve = config.zmq.curve
    if curve.server_secret_key and not curve.clients_dir:
        raise ConfigError(
            "key 'zmq.curve.clients_dir': required when zmq.curve.server_secret_key is set"
            " (a directory of the allowed clients' public NAME.key files)"
        )
    if curve.clients_dir and not curve.server_secret_key:
        raise ConfigError("key 'zmq.curve.server_secret_key': required when zmq.curve.clients_dir is set")
    check_binds(config)
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
    return _decode(raw, source)


def _decode(raw: Any, source: str) -> BridgeConfig:
    try:
        config = msgspec.convert(raw, BridgeConfig, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_explain(exc, raw)}") from exc
    try:
        return _check(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def validate(config: BridgeConfig, source: str) -> BridgeConfig:
    """Check a config built in code (the file with flags on top) by the same rules as a file:
    a Struct made by its constructor or ``structs.replace`` is not checked by msgspec."""
    return _decode(msgspec.to_builtins(config), source)


def load(path: str | Path) -> BridgeConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    return loads(text, str(path))


def parse_instance_flag(flag: str) -> tuple[str, str]:
    """``NAME=URL`` from ``--instance``; a :class:`ConfigError` says what is wrong."""
    from .credentials import mask_url

    name, sep, url = flag.partition("=")
    shown = mask_url(flag)
    if not sep or not name or not url:
        raise ConfigError(f"--instance {shown!r}: expected NAME=URL, e.g. local=http://127.0.0.1:8188")
    if not NAME_RE.match(name):
        raise ConfigError(f"--instance {shown!r}: name must be 1-64 letters, digits, '-' or '_'")
    check_url(name, url)
    return name, url


def default_toml() -> str:
    """The commented default config, as ``config init`` writes it (:mod:`.configfile`)."""
    from .configfile import render

    return render()
