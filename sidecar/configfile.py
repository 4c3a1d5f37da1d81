"""The commented default config that ``comfy-bridge config init`` writes (and ``bridge.toml`` is):
every table of :mod:`.config` with its defaults, each key explained in a comment."""

from __future__ import annotations

from typing import Any

import msgspec
import tomli_w

from .config import _TABLES, BridgeConfig

__all__ = ["render"]

_COMMENTS = {
    "sidecar": (
        "name: this sidecar's name in a fleet, sent in health, snapshot and every event's envelope\n"
        '(key "sidecar"); "" = the host name. Give each sidecar of a fleet its own (docs/deployment.md).'
    ),
    "zmq": (
        "ZeroMQ endpoints: requests on the ROUTER, events on the PUB; pub_hwm: each subscriber's own queue,\n"
        "in events (a subscriber that falls further behind loses events, on its connection only);\n"
        "pub_sndbuf_bytes: kernel send buffer per subscriber (0: the OS default);\n"
        "heartbeat_s: an idle PUB socket sends a heartbeat event this often.\n"
        "allow_open_bind: bind router or pub beyond loopback (not 127.0.0.0/8, ::1, localhost, ipc://)\n"
        "  without CURVE; refused at start unless true: anyone reaching them could submit and read."
    ),
    "zmq.curve": (
        "ZeroMQ CURVE (authentication and encryption) on both sockets, on when server_secret_key is set.\n"
        "server_secret_key: the server's NAME.key_secret file; clients_dir: the allowed clients' public\n"
        "NAME.key files (read at start). `comfy-bridge keys generate DIR --name NAME` writes a pair;\n"
        "give clients the server's NAME.key, keep the .key_secret files private."
    ),
    "backoff": "Reconnect delays to a ComfyUI instance: exponential with full jitter.",
    "submit": (
        "accept_partial: queue a prompt ComfyUI accepted with node_errors (only some outputs valid).\n"
        "history_attempts / history_retry_s: how hard to wait for /history after a prompt ends."
    ),
    "cancel": (
        "confirm_timeout_s: publish job.cancel_unconfirmed (job.pause_unconfirmed) when ComfyUI has not\n"
        "confirmed a cancel (a pause) by then.\n"
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
    "outputs": (
        "store: files (each file output of a job - {filename, subfolder, type} - is copied from ComfyUI's\n"
        "/view under dir as soon as its node finishes; events carry the path), none (nothing is copied),\n"
        "or a store a plugin makes (options go to it).\n"
        "max_total_bytes: the files store deletes the oldest jobs' outputs past this total (0: no cap).\n"
        "concurrency: fetches at once; queue_size: fetches waiting (past it a fetch fails, reported);\n"
        "max_file_bytes: a larger file is not fetched (reported as failed).\n"
        "attempts / retry_s: tries per file, with backoff from retry_s (ComfyUI unreachable, 5xx).\n"
        "final_wait_s: how long a job's final event waits for its fetches still running."
    ),
    "plugins": "Plugins by name (entry-point name or built-in module) that must not be loaded.",
    "state": "Where the sidecar keeps its state (SQLite).",
    "simulator": "The simulated ComfyUI that `run` starts when no instance is configured.",
    "metrics": (
        'listen: HOST:PORT of a Prometheus endpoint (GET /metrics), e.g. "127.0.0.1:9464"; "" = off.\n'
        "allow_remote: serve it on a non-loopback address (it has no authentication)."
    ),
    "limits": (
        "request_bytes: a request larger than this (its input files not counted) is answered limit_exceeded.\n"
        "workflow_nodes: a submit with more nodes is answered limit_exceeded.\n"
        "jobs_per_instance / jobs_total: unfinished jobs; a submit past either is answered limit_exceeded.\n"
        "ws_frame_bytes: a larger ComfyUI WebSocket message closes that socket (1009); it is reconnected.\n"
        "preview_bytes: a larger preview image is dropped, not published (counted in health's previews.too_big).\n"
        "upload_file_bytes / upload_request_bytes: one input file of a submit, and all of them together\n"
        "  (allowed on top of request_bytes; 0 refuses files); a submit past either is answered limit_exceeded."
    ),
    "log": "Log level: DEBUG, INFO, WARNING or ERROR.",
}


def render() -> str:
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
        "# Credentials (optional; sent on every HTTP request and the WebSocket upgrade). A secret is",
        "# literal or, better, read from the environment variable a *_env key names:",
        '# token_env = "COMFY_TOKEN"           # Authorization: Bearer $COMFY_TOKEN (or token = "...")',
        '# username = "me"                     # or basic auth: with password_env = "..." (or password = "...")',
        '# query_token_env = "COMFY_TOKEN"     # ?token=... on every request, the WebSocket URL included',
        '# query_param = "token"',
        '# headers = { "X-Extra" = "..." }     # extra headers; headers_env = { "X-Api-Key" = "VARIABLE" }',
        "# TLS, for an https:// URL: a private CA, or (only if you must) no verification at all:",
        '# ca_file = "certs/ca.pem"',
        "# tls_verify = false                  # logged as a WARNING",
        "",
    ]
    for key, _cls in _TABLES.items():
        values = msgspec.to_builtins(getattr(config, key))
        inner = {name: values.pop(name) for name in list(values) if f"{key}.{name}" in _COMMENTS}
        for name, table in [(key, values), *((f"{key}.{n}", v) for n, v in inner.items())]:
            for comment in _COMMENTS[name].splitlines():
                lines.append(f"# {comment}")
            lines.append(tomli_w.dumps(_nest(name, table)).rstrip())
            lines.append("")
    lines += [
        "# The sidecars the client commands (watch, submit, job, jobs, cancel, health) talk to,",
        "# one table each, by name; `--router`/`--pub` flags replace this list (docs/deployment.md).",
        "# [fleet.gpu-a]",
        '# router = "tcp://gpu-a:5555"',
        '# pub = "tcp://gpu-a:5556"',
        "",
    ]
    return "\n".join(lines)


def _nest(dotted: str, table: dict[str, Any]) -> dict[str, Any]:
    """``("zmq.curve", {...})`` -> ``{"zmq": {"curve": {...}}}`` (tomli-w writes ``[zmq.curve]``)."""
    for part in reversed(dotted.split(".")):
        table = {part: table}
    return table
