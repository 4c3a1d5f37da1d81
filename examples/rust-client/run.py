#!/usr/bin/env python3
"""Run the Rust example client against a simulated ComfyUI and a real sidecar.

    python3 examples/rust-client/run.py [--build] [--client PATH] [--step-ms 25] [--timeout-s 240] [--curve]
    python3 examples/rust-client/run.py --fleet 2 [...]

1. ``rust-client golden tests/golden``: every golden fixture decodes into the client's structs;
2. starts ``comfy-bridge simulate`` on a free port of 127.0.0.1;
3. ``rust-client run``: the client starts the sidecar itself (``comfy-bridge run`` on free
   ports, a state file in a temporary folder), so that it can stop it with SIGTERM mid-job
   and start it again on the same state file.

With ``--curve`` the sidecar runs with ZeroMQ CURVE (``[zmq.curve]``, keys made as ``comfy-bridge
keys generate`` makes them), bound to ``tcp://0.0.0.0`` (allowed because CURVE is on), and the
client connects with an allowed key (``--curve-server-key``, ``--curve-client-key``) after
checking that a client without keys, and one with a key the sidecar does not list, get no reply
and no event. This sidecar is started by run.py itself and there is no restart step (the
restarts are the plain run's).

With ``--fleet N`` it runs ``rust-client fleet`` instead of steps 2-3: N sidecars (``comfy-bridge
run`` with its embedded simulated ComfyUI, each its own ``sidecar.name``) started here, followed
by the client at once (docs/deployment.md, one sidecar per GPU host).

Everything runs in its own process group and is killed at the end, whatever happens; the
whole run is bounded by ``--timeout-s``. Exit status: the client's (0 when every check passed).
The sidecar's log is printed when the client fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
READY = re.compile(r"simulator ready at (http://\S+)")
LISTENING = re.compile(r"(ROUTER on \S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(timeout_s: float) -> float:
    """``cargo build --offline``; returns the seconds it took."""
    cargo = shutil.which("cargo")
    if cargo is None:
        raise SystemExit("run.py: cargo is not on PATH (apt-get install cargo librust-zmq-dev ...)")
    started = time.monotonic()
    subprocess.run([cargo, "build", "--offline", "--quiet"], cwd=HERE, check=True, timeout=timeout_s)
    return time.monotonic() - started


def start_logged(
    argv: list[str], log: Path, ready_re: re.Pattern[str], what: str, timeout_s: float
) -> tuple[subprocess.Popen[str], str]:
    """Start ``argv`` (its stderr copied to ``log``); returned with the first match of ``ready_re``'s
    group 1 once a line of its log matches."""
    proc = subprocess.Popen(
        argv,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    found: list[str] = []
    ready = threading.Event()

    def follow() -> None:  # copy the log to a file; note the match when it appears
        with log.open("w") as out:
            for line in proc.stderr:  # type: ignore[union-attr]
                out.write(line)
                out.flush()
                match = ready_re.search(line)
                if match and not found:
                    found.append(match.group(1))
                    ready.set()
        ready.set()

    threading.Thread(target=follow, daemon=True).start()
    if not ready.wait(timeout_s) or not found:
        kill_group(proc)
        raise SystemExit(f"run.py: {what} did not get ready within {timeout_s} s:\n{log.read_text()}")
    return proc, found[0]


def start_simulator(step_ms: float, log: Path, timeout_s: float) -> tuple[subprocess.Popen[str], str]:
    """``comfy-bridge simulate`` on a free port; returns it once its log says it is ready."""
    argv = [sys.executable, "-m", "sidecar", "simulate", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--step-ms", str(step_ms)]
    return start_logged(argv, log, READY, "the simulator", timeout_s)


def curve_keys(work: Path) -> str:
    """Key pairs as ``comfy-bridge keys generate`` writes them (the same function, in-process: one
    Python start-up less): the server's and the client's (its public key listed in clients/), and
    the ``[zmq.curve]`` table that uses them."""
    from sidecar.curve import write_key_pair

    write_key_pair(work / "keys", "server")
    public, _ = write_key_pair(work / "keys", "rust")
    (work / "clients").mkdir()
    shutil.copy(public, work / "clients" / "rust.key")
    secret, clients = work / "keys" / "server.key_secret", work / "clients"
    return f'\n[zmq.curve]\nserver_secret_key = "{secret}"\nclients_dir = "{clients}"\n'


def start_sidecar(command: str, log: Path, timeout_s: float) -> subprocess.Popen[str]:
    """``comfy-bridge run``; returned once its log says both sockets are bound."""
    return start_logged(command.split(), log, LISTENING, "the sidecar", timeout_s)[0]


def kill_group(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """SIGTERM the process's group, SIGKILL it if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def start_named_sidecar(work: Path, name: str, step_ms: float) -> tuple[subprocess.Popen[str], str, str]:
    """``comfy-bridge run`` named ``name`` with its embedded simulator, on free ports."""
    config = work / f"{name}.toml"
    config.write_text(f'[sidecar]\nname = "{name}"\n[zmq]\nheartbeat_s = 0.2\n[simulator]\nstep_ms = {step_ms}\n')
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "sidecar", "run", "--config", str(config), "--router", router, "--pub", pub]
    command += ["--state", str(work / f"{name}.sqlite3")]
    with (work / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(
            command, cwd=work, stderr=log, stdout=subprocess.DEVNULL, text=True, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    return proc, router, pub


def fleet(client: str, count: int, step_ms: float, timeout_s: float) -> int:
    """``rust-client fleet`` against ``count`` sidecars started here; the client's exit status."""
    with tempfile.TemporaryDirectory(prefix="rust-client-fleet-") as tmp:
        work = Path(tmp)
        sidecars = [start_named_sidecar(work, f"host-{chr(ord('a') + n)}", step_ms) for n in range(count)]
        command = [client, "fleet", "--heartbeat-s", "0.2", "--job-steps", "6", "--timeout-s", "20"]
        for _, router, pub in sidecars:
            command += ["--router", router, "--pub", pub]
        print(f"run.py: fleet of {count} sidecars: {' '.join(r for _, r, _ in sidecars)}", flush=True)
        proc = subprocess.Popen(command, cwd=work, start_new_session=True)
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            print(f"run.py: FAIL: the client did not finish within {timeout_s} s; killed", flush=True)
            code = 124
        finally:
            kill_group(proc)
            for sidecar, _, _ in sidecars:
                kill_group(sidecar)
        if code != 0:
            for log in sorted(work.glob("*.log")):
                lines = log.read_text(errors="replace").splitlines()
                print(f"---- {log.name} (last 30 lines) ----", *lines[-30:], sep="\n", flush=True)
        return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", type=Path, default=HERE / "target" / "debug" / "rust-client")
    parser.add_argument("--build", action="store_true", help="cargo build --offline first")
    parser.add_argument("--step-ms", type=float, default=25.0, help="the simulated sampler's step time")
    parser.add_argument("--timeout-s", type=float, default=240.0, help="bound on the whole run")
    parser.add_argument("--golden", type=Path, default=ROOT / "tests" / "golden")
    parser.add_argument("--curve", action="store_true", help="the sidecar with CURVE, the client with an allowed key")
    parser.add_argument("--fleet", type=int, default=0, metavar="N", help="follow N sidecars at once instead")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.timeout_s
    if args.build:
        print(f"run.py: cargo build --offline: {build(args.timeout_s):.1f} s", flush=True)
    client = str(args.client.resolve())
    if args.fleet:
        return fleet(client, args.fleet, args.step_ms, max(1.0, deadline - time.monotonic()))

    golden = subprocess.run([client, "golden", str(args.golden)], timeout=60)
    if golden.returncode != 0:
        print("run.py: the golden fixtures do not all decode", flush=True)
        return golden.returncode

    with tempfile.TemporaryDirectory(prefix="rust-client-") as tmp:
        work = Path(tmp)
        config = '[zmq]\nheartbeat_s = 0.2\n\n[previews]\nstore = "inline"\n'  # frame 2 of previews, too
        if args.curve:
            config += curve_keys(work)
        (work / "bridge.toml").write_text(config)
        sim, url = start_simulator(args.step_ms, work / "simulator.log", 30.0)
        host = "0.0.0.0" if args.curve else "127.0.0.1"  # an open bind is accepted with CURVE on
        router, pub = f"tcp://{host}:{free_port()}", f"tcp://{host}:{free_port()}"
        sidecar = (
            f"{sys.executable} -m sidecar run --config {work / 'bridge.toml'} --instance sim={url}"
            f" --router {router} --pub {pub} --state {work / 'state.sqlite3'}"
        )
        router, pub = router.replace("0.0.0.0", "127.0.0.1"), pub.replace("0.0.0.0", "127.0.0.1")
        command = [
            client, "run", "--router", router, "--pub", pub, "--instance", "sim", "--heartbeat-s", "0.2",
            "--job-steps", "12", "--cancel-steps", "2000",
        ]  # fmt: skip
        started = None
        if args.curve:  # run.py starts the sidecar: no restart step
            command += ["--curve-server-key", str(work / "keys" / "server.key")]
            command += ["--curve-client-key", str(work / "keys" / "rust.key_secret")]
            started = start_sidecar(sidecar, work / "sidecar.log", 30.0)
        else:
            command += [
                "--sidecar", sidecar, "--sidecar-log", str(work / "sidecar.log"),
                "--restart-steps", str(int(10000 / args.step_ms)), "--restart-at", "0.3", "--kill-at", "0.6",
            ]  # fmt: skip
        print(f"run.py: simulator {url}; sidecar {router} {pub}{' with CURVE' if args.curve else ''}", flush=True)
        proc = subprocess.Popen(command, cwd=work, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            code = proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"run.py: FAIL: the client did not finish within {args.timeout_s} s; killed", flush=True)
            code = 124
        finally:
            kill_group(proc)  # the client and the sidecar it started
            if started is not None:
                kill_group(started)
            kill_group(sim)
        if code != 0:
            for name in ("sidecar.log", "simulator.log"):
                path = work / name
                if path.exists():
                    lines = path.read_text(errors="replace").splitlines()
                    print(f"---- {name} (last 60 lines) ----", *lines[-60:], sep="\n", flush=True)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
