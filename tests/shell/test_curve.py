"""ZeroMQ CURVE (sidecar/curve.py, ``[zmq.curve]``): who may talk to the sidecar, through real sockets.

A sidecar with CURVE bound beyond loopback; an allowed client submits and follows a job while a
client without keys and one whose key is not listed send a submit and subscribe: they get no reply
and no event, no job of theirs exists, and the refused key is counted in ``health``. Start-up is
refused for an open bind without CURVE, and for bad key files (naming the key, never the secret).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio
import zmq.auth

from sidecar.app import Sidecar
from sidecar.cli import main
from sidecar.config import BridgeConfig, CurveConfig, loads
from sidecar.curve import ClientCurve, ServerCurve, client_curve, read_key_file, write_key_pair
from sidecar.errors import ConfigError

from .conftest import Client, connected, make_config, probe_workflow

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """server + alice (allowed: her public key is in clients/) + mallory (not listed)."""
    made = {}
    for name in ("server", "alice", "mallory"):
        _, made[name] = write_key_pair(tmp_path / "keys", name)
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "alice.key").write_bytes((tmp_path / "keys" / "alice.key").read_bytes())
    made["server.key"] = tmp_path / "keys" / "server.key"
    made["clients"] = tmp_path / "clients"
    return made


def curve_config(keys: dict[str, Path]) -> CurveConfig:
    return CurveConfig(server_secret_key=str(keys["server"]), clients_dir=str(keys["clients"]))


def open_bind(config: BridgeConfig) -> BridgeConfig:
    """Both sockets on every interface (tcp://0.0.0.0, a free port)."""
    zmq_config = msgspec.structs.replace(config.zmq, router="tcp://0.0.0.0:*", pub="tcp://0.0.0.0:*")
    return msgspec.structs.replace(config, zmq=zmq_config)


def as_client(keys: dict[str, Path], name: str) -> ClientCurve:
    found = client_curve(str(keys["server.key"]), str(keys[name]))
    assert found is not None
    return found


def secrets_of(keys: dict[str, Path]) -> list[str]:
    found = []
    for name in ("server", "alice", "mallory"):
        secret = zmq.auth.load_certificate(keys[name])[1]
        assert secret is not None
        found.append(secret.decode())
    return found


def test_keys_generate_writes_pairs_pyzmq_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``keys generate``: NAME.key (public only) and NAME.key_secret (0600), read by zmq.auth.load_certificate;
    the secret is printed nowhere, and an existing pair is kept without --force."""
    assert main(["keys", "generate", str(tmp_path / "k"), "--name", "backend"]) == 0
    public, none = zmq.auth.load_certificate(tmp_path / "k" / "backend.key")
    same, secret = zmq.auth.load_certificate(tmp_path / "k" / "backend.key_secret")
    assert none is None and same == public and secret is not None and len(secret) == 40
    assert zmq.curve_public(secret) == public  # a real pair
    assert stat.S_IMODE(os.stat(tmp_path / "k" / "backend.key_secret").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o700
    out = capsys.readouterr()
    assert public.decode() in out.out and secret.decode() not in out.out + out.err
    assert main(["keys", "generate", str(tmp_path / "k"), "--name", "backend"]) == 2
    assert "exists; use --force" in capsys.readouterr().err
    assert main(["keys", "generate", str(tmp_path / "k"), "--name", "backend", "--force"]) == 0
    assert zmq.auth.load_certificate(tmp_path / "k" / "backend.key_secret")[1] != secret


@pytest.mark.parametrize(
    "zmq_table",
    [
        'router = "tcp://0.0.0.0:5555"',
        'pub = "tcp://*:5556"',
        'router = "tcp://192.168.1.10:5555"',
        'pub = "tcp://eth0:5556"',
        'pub = "udp://127.0.0.1:5556"',
    ],
)
def test_open_bind_without_curve_is_refused(zmq_table: str) -> None:
    """A ROUTER or PUB reachable from other hosts without CURVE: a ConfigError naming the key and endpoint."""
    with pytest.raises(ConfigError) as caught:
        loads(f"[zmq]\n{zmq_table}\n")
    key, endpoint = zmq_table.split(" = ")
    assert f"key 'zmq.{key}': {endpoint.replace(chr(34), chr(39))}" in str(caught.value)
    assert "zmq.allow_open_bind" in str(caught.value)


def test_loopback_binds_pass_and_an_open_bind_needs_curve_or_the_override() -> None:
    """127.0.0.0/8, ::1, localhost, ipc:// and inproc:// pass; an open bind passes with CURVE or allow_open_bind."""
    for router, pub in (
        ("tcp://127.0.0.1:5555", "tcp://127.3.2.1:*"),
        ("tcp://[::1]:5555", "tcp://localhost:5556"),
        ("ipc:///tmp/bridge-router", "inproc://events"),
    ):
        assert loads(f'[zmq]\nrouter = "{router}"\npub = "{pub}"\n').zmq.router == router
    open_bind = '[zmq]\nrouter = "tcp://0.0.0.0:5555"\npub = "tcp://*:5556"\n'
    assert loads(open_bind + "allow_open_bind = true\n").zmq.allow_open_bind
    with_curve = open_bind + '[zmq.curve]\nserver_secret_key = "s.key_secret"\nclients_dir = "clients"\n'
    assert loads(with_curve).zmq.curve.clients_dir == "clients"
    with pytest.raises(ConfigError, match="key 'zmq.curve.clients_dir': required when"):
        loads('[zmq.curve]\nserver_secret_key = "s.key_secret"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'server_key' in \[zmq.curve\]"):
        loads('[zmq.curve]\nserver_key = "s"\n')


def test_run_refuses_an_open_bind_at_start_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``comfy-bridge run --router tcp://0.0.0.0:P`` without CURVE: exit 2 before anything binds."""
    code = main(["run", "--router", "tcp://0.0.0.0:45555", "--instance", "a=http://127.0.0.1:1", "--state", "x"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "config error" in err and "'tcp://0.0.0.0:45555' can be reached from other hosts" in err
    assert not (tmp_path / "x").exists()


async def test_a_sidecar_built_in_code_refuses_an_open_bind_too(tmp_path: Path) -> None:
    """The same rule when the config never went through the loader (a Struct built in code)."""
    config = open_bind(make_config({"a": "http://127.0.0.1:1"}, tmp_path / "s.sqlite3"))
    with pytest.raises(ConfigError, match="key 'zmq.router': 'tcp://0.0.0.0:\\*' can be reached from other hosts"):
        Sidecar(config)
    assert not (tmp_path / "s.sqlite3").exists()


async def test_bad_key_files_refuse_start_naming_the_key_not_the_secret(keys: dict[str, Path], tmp_path: Path) -> None:
    """A public file as the server's secret, an empty clients_dir, a garbled key: ConfigError, no secret shown."""
    base = make_config({"a": "http://127.0.0.1:1"}, tmp_path / "s.sqlite3")
    cases = [
        (CurveConfig(server_secret_key=str(keys["server.key"]), clients_dir=str(keys["clients"])), "holds no secret"),
        (CurveConfig(server_secret_key=str(tmp_path / "nope"), clients_dir=str(keys["clients"])), "cannot read"),
        (CurveConfig(server_secret_key=str(keys["server"]), clients_dir=str(tmp_path / "keys" / "x")), "not a dir"),
        (CurveConfig(server_secret_key=str(keys["server"]), clients_dir=str(tmp_path)), "holds no NAME.key"),
    ]
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "bad.key").write_text('curve\n    public-key = "not-z85"\n')
    cases.append((CurveConfig(server_secret_key=str(keys["server"]), clients_dir=str(garbled)), "not a 40-character"))
    for curve, problem in cases:
        config = msgspec.structs.replace(base, zmq=msgspec.structs.replace(base.zmq, curve=curve))
        with pytest.raises(ConfigError, match="key 'zmq.curve.") as caught:
            Sidecar(config)
        assert problem in str(caught.value)
        assert not any(secret in str(caught.value) for secret in secrets_of(keys))
    assert not (tmp_path / "s.sqlite3").exists()  # refused before the state file was touched
    with pytest.raises(ConfigError, match="--curve-server-key needs --curve-client-key"):
        client_curve(str(keys["server.key"]), None, env=lambda _name: None)
    with pytest.raises(ConfigError, match="--curve-client-key: .* holds no secret key"):
        client_curve(str(keys["server.key"]), str(tmp_path / "keys" / "alice.key"))
    pair = read_key_file(keys["alice"], "x", secret=True)
    assert pair.secret is not None and pair.secret.decode() not in repr(pair) + repr(as_client(keys, "alice"))


async def test_only_an_allowed_key_can_submit_or_receive_events(
    sims: Any, keys: dict[str, Path], tmp_path: Path, zctx: zmq.asyncio.Context, caplog: pytest.LogCaptureFixture
) -> None:
    """CURVE on, bound to 0.0.0.0: alice (listed) submits and follows a job; a client without keys and
    mallory (not listed) send a submit and subscribe meanwhile: no reply, no event, no job; the sidecar
    serves alice throughout, and health counts mallory's refused handshakes (and shows no key)."""
    sim = await sims(step_ms=5)
    sidecar = Sidecar(open_bind(make_config({"a": sim.url}, tmp_path / "state.sqlite3", {"curve": curve_config(keys)})))
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop.wait))
    router = sidecar.router.endpoint.replace("0.0.0.0", "127.0.0.1")
    pub = sidecar.publisher.endpoint.replace("0.0.0.0", "127.0.0.1")
    intruders = [Client(zctx, router, pub), Client(zctx, router, pub, curve=as_client(keys, "mallory"))]
    alice = Client(zctx, router, pub, curve=as_client(keys, "alice"))
    clients = [*intruders, alice]
    asked: list[asyncio.Task[Any]] = []
    try:
        asked += [  # queued in their DEALERs; no handshake ever completes, so no reply can come
            asyncio.create_task(c.request("submit", job_id=f"intruder-{n}", workflow=probe_workflow(steps=2)))
            for n, c in enumerate(intruders)
        ]
        await alice.wait_for(lambda e: True)  # subscribed
        await connected(alice, "a")
        reply = await alice.request("submit", job_id="alice-1", workflow=probe_workflow(steps=3, step_ms=5))
        assert reply["ok"], reply
        final = await alice.job_final("alice-1")
        assert final["type"] == "job.completed", final
        # The bounded wait: alice's whole job, then four more heartbeats (50 ms each) while the
        # intruders' sockets keep trying (ZeroMQ reconnects every 100 ms).
        await alice.tick(4)
        health = (await alice.request("health"))["result"]
        for n, intruder in enumerate(intruders):
            assert intruder.events == [], f"intruder {n} received events"
            assert not asked[n].done(), asked[n]  # no reply (the request waits up to 15 s for one)
            missing = await alice.request("job", job_id=f"intruder-{n}")
            assert missing["error"]["code"] == "job_not_found", missing
        curve = health["curve"]
        assert curve["enabled"] and curve["clients"] == 1 and curve["accepted"] >= 2 and curve["refused"] >= 1, curve
        text = repr(health) + caplog.text
        assert not any(secret in text for secret in secrets_of(keys))
        assert "is not in zmq.curve.clients_dir" in caplog.text  # mallory's key, logged once
    finally:
        for pending in asked:
            pending.cancel()
        for c in clients:
            await c.close()
        stop.set()
        async with asyncio.timeout(10):
            await task


async def test_cli_clients_connect_with_keys_and_say_why_not_without(
    sims: Any, keys: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``submit --wait`` (DEALER and SUB), ``watch`` and ``ping`` with ``--curve-server-key`` and
    ``--curve-client-key`` (or the environment variables); without keys, or with a key not listed:
    exit 3 saying why."""
    sim = await sims(step_ms=5)
    sidecar = Sidecar(make_config({"a": sim.url}, tmp_path / "state.sqlite3", {"curve": curve_config(keys)}))
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop.wait))
    router, pub = sidecar.router.endpoint, sidecar.publisher.endpoint
    workflow = tmp_path / "w.json"
    workflow.write_text(json.dumps(probe_workflow(steps=2, step_ms=5)))
    try:
        flags = ["--curve-server-key", str(keys["server.key"]), "--curve-client-key", str(keys["alice"])]
        assert (
            await asyncio.to_thread(main, ["submit", str(workflow), "--wait", "--router", router, "--pub", pub, *flags])
            == 0
        )
        assert '"state": "completed"' in capsys.readouterr().out
        watch = ["watch", "--until-idle", "--router", router, "--pub", pub, *flags]
        assert await asyncio.to_thread(main, watch) == 0
        assert f"(run {sidecar.run_id}, seq" in capsys.readouterr().out  # its snapshot came over CURVE
        env = {
            "COMFY_BRIDGE_CURVE_SERVER_KEY": str(keys["server.key"]),
            "COMFY_BRIDGE_CURVE_CLIENT_KEY": str(keys["alice"]),
        }
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            assert await asyncio.to_thread(main, ["ping", "--router", router]) == 0
        assert f'"run": "{sidecar.run_id}"' in capsys.readouterr().out
        # Refused: the message says why (the client socket's handshake events), not just "no sidecar".
        assert await asyncio.to_thread(main, ["ping", "--router", router, "--timeout", "0.5"]) == 3
        assert "did not let this client in: the sidecar uses CURVE and this client gave no keys" in (
            capsys.readouterr().err
        )
        mallory = ["--curve-server-key", str(keys["server.key"]), "--curve-client-key", str(keys["mallory"])]
        assert await asyncio.to_thread(main, ["ping", "--router", router, "--timeout", "0.5", *mallory]) == 3
        err = capsys.readouterr().err
        assert "refused this client's CURVE key (it is not in its zmq.curve.clients_dir)" in err, err
        assert not any(secret in err for secret in secrets_of(keys))
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


async def test_no_client_gets_in_while_no_zap_handler_answers(keys: dict[str, Path]) -> None:
    """ZAP_ENFORCE_DOMAIN: before the authenticator runs even an allowed key is kept out (libzmq's
    default would let any key in); once it runs, the same socket's retry gets in."""
    ctx: zmq.Context[Any] = zmq.Context()
    server = ServerCurve(curve_config(keys))
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    try:
        server.apply(router)
        router.bind("tcp://127.0.0.1:*")
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        as_client(keys, "alice").apply(dealer)
        dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
        assert not await asyncio.to_thread(dealer.poll, 500, zmq.POLLOUT)  # handshakes refused meanwhile
        server.start(ctx)
        assert await asyncio.to_thread(dealer.poll, 10_000, zmq.POLLOUT)  # ZeroMQ retried; ZAP said yes
        assert server.accepted >= 1 and server.refused == 0
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
        server.stop()
        ctx.term()


def test_the_proxy_refuses_an_open_xpub_without_curve(capsys: pytest.CaptureFixture[str]) -> None:
    """As a sidecar's PUB: an XPUB other hosts can reach needs CURVE (or the config's override)."""
    assert main(["proxy", "--xsub", "tcp://127.0.0.1:1", "--xpub", "tcp://0.0.0.0:*"]) == 2
    assert "--xpub 'tcp://0.0.0.0:*' can be reached from other hosts and CURVE is off" in capsys.readouterr().err


async def test_the_proxy_with_curve_relays_to_allowed_subscribers_only(
    sims: Any, keys: dict[str, Path], tmp_path: Path, zctx: zmq.asyncio.Context
) -> None:
    """``comfy-bridge proxy --config (with [zmq.curve]) --curve-server-key --curve-client-key``: its XSUB
    joins a CURVE sidecar with alice's pair, its XPUB (bound to 0.0.0.0) serves CURVE with the same
    server key and allowed keys: alice's SUB gets the sidecar's events, mallory's and a keyless one none."""
    import sys

    sim = await sims(step_ms=5)
    sidecar = Sidecar(make_config({"a": sim.url}, tmp_path / "state.sqlite3", {"curve": curve_config(keys)}))
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop.wait))
    config = tmp_path / "proxy.toml"
    config.write_text(
        f"[zmq.curve]\nserver_secret_key = {str(keys['server'])!r}\nclients_dir = {str(keys['clients'])!r}\n"
    )
    proxy = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sidecar", "--log-level", "INFO", "proxy", "--xsub", sidecar.publisher.endpoint),
        *("--xpub", "tcp://0.0.0.0:*", "--config", str(config)),
        *("--curve-server-key", str(keys["server.key"]), "--curve-client-key", str(keys["alice"])),
        stderr=asyncio.subprocess.PIPE,
    )
    subs: list[zmq.asyncio.Socket] = []
    try:
        assert proxy.stderr is not None
        async with asyncio.timeout(20):
            while b"XPUB on" not in (line := await proxy.stderr.readline()):
                assert line, "the proxy ended before it served"
        xpub = line.decode().split("XPUB on ", 1)[1].split(",", 1)[0].replace("0.0.0.0", "127.0.0.1")
        for curve in (as_client(keys, "alice"), as_client(keys, "mallory"), None):
            sub = zctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            if curve is not None:
                curve.apply(sub)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(xpub)
            subs.append(sub)
        alice, *outsiders = subs
        async with asyncio.timeout(20):  # heartbeats every 50 ms once the subscription reached the sidecar
            topic, body = await alice.recv_multipart()
        event = msgspec.msgpack.decode(body)
        assert event["run"] == sidecar.run_id and event["type"] == "heartbeat", event
        for sub in outsiders:  # the bounded wait: a second of alice's heartbeats
            assert await sub.poll(1000) == 0
    finally:
        for sub in subs:
            sub.close(0)
        if proxy.returncode is None:
            proxy.terminate()
        async with asyncio.timeout(10):
            assert await proxy.wait() == 0
        stop.set()
        async with asyncio.timeout(10):
            await task
