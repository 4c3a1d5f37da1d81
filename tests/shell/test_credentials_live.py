"""Simulated ComfyUIs behind credentials and TLS, through real sockets on 127.0.0.1.

One sidecar reaches a simulator behind a bearer token, one behind basic auth, one behind a query
token (with an extra header from the environment) and one over TLS with a certificate made by the
test, and a job completes on each; wrong credentials give a clear instance error and a backoff.
Everything such a run says (DEBUG logs, every event, every reply, ``plugins`` output, the state
file) is searched for the secrets.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import _parser, _probe, _sim_security
from sidecar.config import InstanceConfig
from sidecar.plugins.listing import describe
from sidecar.plugins.manager import Plugins, get_plugin_manager
from sidecar.simulator.auth import SimAuth

from .conftest import connected, probe_workflow
from .tlscerts import TlsFiles, make_tls_files

TOKEN = "tok-7f3a9c-bearer-secret"
PASSWORD = "pw-51d0e2-basic-secret"
QUERY = "qt-88b1c4-query-secret"
HEADER = "hk-2c6e77-header-secret"
WRONG = "wrong-0e9d13-refused-secret"
SECRETS = (TOKEN, PASSWORD, QUERY, HEADER, WRONG, base64.b64encode(f"me:{PASSWORD}".encode()).decode())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def status_error(name: str) -> Callable[[dict[str, Any]], bool]:
    """An ``instance.status`` event of ``name`` that carries an error."""
    return lambda e: e["instance"] == name and e["type"] == "instance.status" and bool(e["data"]["error"])


def state_files(state: Path) -> str:
    """The state file and its WAL, as text to search."""
    return "".join(p.read_bytes().decode("latin-1") for p in state.parent.glob(state.name + "*"))


async def test_jobs_complete_behind_each_credential_and_no_secret_leaks(
    sims, sidecars, client, tls, tmp_path, caplog, monkeypatch
):
    """Bearer (from the environment), basic, query token + env header, TLS + token: each job completes;
    no log line (DEBUG), event, reply, ``plugins`` output or state-file byte carries a secret."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CB_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("CB_TEST_QUERY", QUERY)
    monkeypatch.setenv("CB_TEST_HEADER", HEADER)
    bearer = await sims(auth=SimAuth(token=TOKEN))
    basic = await sims(auth=SimAuth(basic=("me", PASSWORD)))
    query = await sims(auth=SimAuth(query_token=QUERY, query_param="auth"))
    secure = await sims(auth=SimAuth(token=TOKEN), ssl_context=tls.server_context())
    refusing = await sims(auth=SimAuth(token=TOKEN))
    assert secure.url.startswith("https://")
    instances = {
        "bearer": InstanceConfig(url=bearer.url, token_env="CB_TEST_TOKEN"),
        "basic": InstanceConfig(url=basic.url.replace("//", f"//me:{PASSWORD}@")),  # = username/password keys
        "query": InstanceConfig(
            url=query.url, query_token_env="CB_TEST_QUERY", query_param="auth", headers_env={"X-Key": "CB_TEST_HEADER"}
        ),
        "tls": InstanceConfig(url=secure.url, token_env="CB_TEST_TOKEN", ca_file=str(tls.ca)),
        "refused": InstanceConfig(url=refusing.url, token=WRONG),
    }
    state = tmp_path / "state.sqlite3"
    running = await sidecars(instances, state=state)
    c = await client(running)
    good = ("bearer", "basic", "query", "tls")
    await connected(c, *good)

    replies = [await c.request("ping"), await c.request("health"), await c.request("snapshot")]
    for name in good:
        reply = await c.request("submit", job_id=f"job-{name}", instance=name, workflow=probe_workflow(steps=2))
        assert reply["ok"], reply
        replies.append(reply)
    for name in good:
        assert (await c.job_final(f"job-{name}"))["type"] == "job.completed", name
    refused = await c.wait_for(status_error("refused"))
    assert "authentication refused by ComfyUI (HTTP 401)" in refused["data"]["error"]
    not_taken = await c.request("submit", instance="refused", workflow=probe_workflow(steps=2))
    assert not not_taken["ok"] and not_taken["error"]["code"] == "instance_unavailable"
    replies += [not_taken, await c.request("jobs"), await c.request("job", job_id="job-tls"), await c.request("health")]
    assert {i["name"]: i["state"] for i in replies[-1]["result"]["instances"]}["tls"] == "connected"
    assert bearer.auth.refused == basic.auth.refused == query.auth.refused == secure.auth.refused == {}
    assert refusing.auth.refused.get("bearer", 0) >= 1

    config = running.sidecar.config
    plugins_text = describe(config, await _probe(config, Plugins(get_plugin_manager(config)).protocol_adapters()))
    assert "authentication refused by ComfyUI (HTTP 401)" in plugins_text  # the probe used the credentials
    assert plugins_text.count("(ComfyUI 0.12.1)") == 4
    await running.close()

    logs = [caplog.handler.format(record) for record in caplog.records]
    # The capture really saw the WebSocket library's header lines and every instance's events.
    assert any("> Authorization: Bearer ***" in line for line in logs), "no websockets DEBUG header line"
    assert any("> X-Key: ***" in line for line in logs)
    assert {e["instance"] for e in c.events} >= set(instances)
    everything = {
        "log lines": "\n".join(logs),
        "events": repr(c.events) + repr(c.topics),
        "replies": repr(replies),
        "plugins output": plugins_text,
        "config repr": repr(config),
        "state files": state_files(state),
    }
    assert {where: leaks(text) for where, text in everything.items() if leaks(text)} == {}


async def test_wrong_credentials_give_a_clear_instance_error_and_back_off(sims, sidecars, client):
    """A 401 on REST and on the WebSocket upgrade: ``last_error`` says so, retries are spaced out
    by the backoff, and the other instance keeps serving."""
    rest = await sims(auth=SimAuth(token=TOKEN))
    upgrade = await sims(auth=SimAuth(query_token=QUERY, websocket_only=True))
    fine = await sims()
    running = await sidecars(
        {
            "rest": InstanceConfig(url=rest.url, token=WRONG),
            "upgrade": InstanceConfig(url=upgrade.url, query_token=WRONG),
            "fine": fine.url,
        }
    )
    c = await client(running)
    await connected(c, "fine")
    reply = await c.request("submit", job_id="ok", instance="fine", workflow=probe_workflow(steps=2))
    assert reply["ok"], reply

    def waiting(name: str, n: int):
        return lambda e: (
            e["type"] == "instance.status"
            and e["instance"] == name
            and e["data"]["state"] == "waiting"
            and sum(1 for x in c.events if x["instance"] == name and x["data"].get("state") == "waiting") >= n
        )

    for name in ("rest", "upgrade"):
        await c.wait_for(waiting(name, 3))
    health = {i["name"]: i for i in (await c.request("health"))["result"]["instances"]}
    assert health["rest"]["last_error"].startswith("authentication refused by ComfyUI (HTTP 401) on GET /system_stats")
    assert health["upgrade"]["last_error"].startswith(
        "authentication refused by ComfyUI (HTTP 401) on the WebSocket upgrade"
    )
    for name, sim, kind in (("rest", rest, "bearer"), ("upgrade", upgrade, "query")):
        attempts = sim.auth.refused[kind]  # one refused request per attempt
        await c.wait_for(waiting(name, attempts))  # and a wait of the backoff after each: no busy loop
        waits = [e for e in c.events if e["instance"] == name and e["data"].get("state") == "waiting"]
        assert attempts >= 3 and all(e["data"]["next_attempt_ns"] > e["ts"] for e in waits)
        assert health[name]["state"] != "connected"
    assert (await c.job_final("ok"))["type"] == "job.completed"


async def test_tls_needs_the_ca_unless_verification_is_off_explicitly(sims, sidecars, client, tls, caplog):
    """Without ``ca_file`` the test's certificate is refused (a clear error); ``tls_verify = false``
    connects, with one WARNING."""
    caplog.set_level(logging.WARNING)
    secure = await sims(ssl_context=tls.server_context())
    running = await sidecars(
        {
            "noca": InstanceConfig(url=secure.url),
            "insecure": InstanceConfig(url=secure.url, tls_verify=False),
        }
    )
    c = await client(running)
    await connected(c, "insecure")
    status = await c.wait_for(status_error("noca"))
    assert "certificate verify failed" in status["data"]["error"].lower()
    reply = await c.request("submit", job_id="x", instance="insecure", workflow=probe_workflow(steps=2))
    assert reply["ok"], reply
    assert (await c.job_final("x"))["type"] == "job.completed"
    warned = [r.getMessage() for r in caplog.records if "TLS certificate verification is off" in r.getMessage()]
    assert warned == [f"{secure.url}: TLS certificate verification is off (tls_verify = false)"]


async def test_simulate_flags_make_credentials_and_tls(tls):
    """``comfy-bridge simulate --token/--basic-auth/--query-token/--tls-cert`` become SimServer options."""
    args = _parser().parse_args(
        ["simulate", "--basic-auth", f"me:{PASSWORD}", "--query-token", QUERY, "--query-param", "k"]
        + ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    )
    security = _sim_security(args)
    auth = security["auth"]
    assert (auth.token, auth.basic, auth.query_token, auth.query_param) == (None, ("me", PASSWORD), QUERY, "k")
    assert security["ssl_context"] is not None
    plain = _sim_security(_parser().parse_args(["simulate", "--token", TOKEN]))
    assert plain["auth"].token == TOKEN and plain["ssl_context"] is None
    assert _sim_security(_parser().parse_args(["simulate"])) == {"auth": None, "ssl_context": None}


async def test_a_sidecar_start_with_a_missing_variable_names_it(sidecars, monkeypatch):
    from sidecar.errors import ConfigError

    monkeypatch.delenv("CB_TEST_ABSENT", raising=False)
    with pytest.raises(ConfigError, match="'instances.a.token_env': environment variable CB_TEST_ABSENT is not set"):
        await sidecars({"a": InstanceConfig(url="http://127.0.0.1:9", token_env="CB_TEST_ABSENT")})
