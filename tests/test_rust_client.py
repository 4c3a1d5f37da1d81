"""The Rust example client (examples/rust-client) builds offline and keeps the contract live.

It is what the platform's Rust backend would write from docs/PROTOCOL.md: a DEALER and a SUB,
typed serde structs for every reply and event. These tests build it with ``cargo build
--offline`` from Debian's packaged crates and run it:

- ``cargo test``: its decoding unit tests;
- ``rust-client golden tests/golden``: every golden fixture decodes into its structs;
- ``examples/rust-client/run.py``: against ``comfy-bridge simulate`` and a sidecar the client
  starts itself (join and snapshot, submit, cancel, bad requests, restarts mid-job);
- ``run.py --curve``: the same without the restarts, against a sidecar with ZeroMQ CURVE bound to
  ``0.0.0.0``: a client without keys and one with a key not listed get nothing; the client, with an
  allowed key, does the rest.
- ``examples/rust-client/run.py --fleet 2``: ``rust-client fleet`` follows two sidecars at once
  (docs/deployment.md), a job on each, each stream by its own snapshot procedure.

Without cargo or Debian's crates they are skipped with the reason; under CI (``CI=true``)
they fail instead, so CI cannot lose them silently (``.ci/run`` installs the packages).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import RUST_CLIENT_OUTPUT

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DIR = ROOT / "examples" / "rust-client"
REGISTRY = Path("/usr/share/cargo/registry")
CRATES = ("zmq-0.9", "rmp-serde-1.", "serde-1.", "serde_derive-1.", "serde_json-1.", "libc-0.2")
PACKAGES = "cargo librust-zmq-dev librust-rmp-serde-dev librust-serde-json-dev libzmq3-dev pkg-config"
BUILD_TIMEOUT_S = 600
RUN_TIMEOUT_S = 240


def missing_toolchain() -> str | None:
    """Why the client cannot be built here, or None."""
    if shutil.which("cargo") is None:
        return "cargo is not on PATH"
    absent = [crate for crate in CRATES if not any(REGISTRY.glob(crate + "*"))]
    if absent:
        return f"Debian's packaged crates {absent} are not in {REGISTRY}"
    if shutil.which("pkg-config") is None or subprocess.run(["pkg-config", "--exists", "libzmq"]).returncode:
        return "libzmq's pkg-config file is missing (libzmq3-dev, pkg-config)"
    return None


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(scope="module")
def rust_client() -> Path:
    """The client, built with ``cargo build --offline --locked`` (a cold build takes ~25-45 s)."""
    reason = missing_toolchain()
    if reason is not None:
        message = f"Rust example client not built: {reason} (apt-get install {PACKAGES})"
        if under_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    started = time.monotonic()
    build = subprocess.run(
        ["cargo", "build", "--offline", "--locked"],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, f"cargo build failed:\n{build.stderr}"
    print(f"cargo build --offline: {time.monotonic() - started:.1f} s")
    return CLIENT_DIR / "target" / "debug" / "rust-client"


@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)
def test_rust_client_unit_tests_pass(rust_client: Path) -> None:
    """``cargo test``: what a newer sidecar may send (unknown keys and types, job_seq, node.text)
    still decodes, and absent keys read as their documented defaults."""
    test = subprocess.run(
        ["cargo", "test", "--offline", "--locked"],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "test result: ok" in test.stdout, test.stdout


@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)
def test_rust_client_decodes_every_golden_fixture(rust_client: Path) -> None:
    """Every request, reply and event in tests/golden decodes into the client's typed structs."""
    golden = subprocess.run(
        [str(rust_client), "golden", str(ROOT / "tests" / "golden")], capture_output=True, text=True, timeout=60
    )
    assert golden.returncode == 0, golden.stdout + golden.stderr
    assert "0 failure(s)" in golden.stdout, golden.stdout


@pytest.mark.timeout(BUILD_TIMEOUT_S + RUN_TIMEOUT_S + 60)
def test_rust_client_runs_the_backend_scenario(rust_client: Path, request: pytest.FixtureRequest) -> None:
    """Join with a snapshot, submit and follow, a job with an input file (``files``, MessagePack bin),
    cancel, pause and resume, bad requests, SIGTERM/SIGKILL restarts mid-job: the client's checks all
    pass (its output is printed at the end of the session)."""
    run = subprocess.run(
        [sys.executable, str(CLIENT_DIR / "run.py"), "--client", str(rust_client), "--timeout-s", str(RUN_TIMEOUT_S)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 30,
    )
    output = run.stdout + run.stderr
    request.config.stash[RUST_CLIENT_OUTPUT] = output
    print(output)
    assert run.returncode == 0, output
    assert "rust-client: all 8 steps passed" in output, output
    assert "job.completed: LoadImage read the uploaded file; 1 output file(s) in the output store" in output, output


@pytest.mark.timeout(BUILD_TIMEOUT_S + RUN_TIMEOUT_S + 60)
def test_rust_client_connects_to_a_curve_sidecar_with_an_allowed_key(
    rust_client: Path, request: pytest.FixtureRequest
) -> None:
    """``run.py --curve``: keys as ``comfy-bridge keys generate`` writes them; outsiders (no keys, a key not listed)
    never connect and receive no event; the client with its listed key joins, submits, cancels, and
    health says CURVE is on."""
    run = subprocess.run(
        [sys.executable, str(CLIENT_DIR / "run.py"), "--client", str(rust_client), "--curve"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 30,
    )
    output = run.stdout + run.stderr
    previous = request.config.stash.get(RUST_CLIENT_OUTPUT, "")
    request.config.stash[RUST_CLIENT_OUTPUT] = previous + "\n--- run.py --curve ---\n" + output
    assert run.returncode == 0, output
    assert "rust-client: all 9 steps passed" in output, output  # the usual 8 and CURVE
    assert "no keys: DEALER writable false, 0 event(s)" in output, output
    assert "a key not listed: DEALER writable false, 0 event(s)" in output, output
    assert "CURVE: enabled true clients 1" in output, output


@pytest.mark.timeout(BUILD_TIMEOUT_S + 120)
def test_rust_client_follows_two_sidecars_at_once(rust_client: Path) -> None:
    """Two named sidecars, a DEALER and a SUB for each: both joined, a job submitted to each, both
    followed together to job.completed; every event carries the sidecar name of its stream."""
    run = subprocess.run(
        [
            sys.executable,
            str(CLIENT_DIR / "run.py"),
            "--client",
            str(rust_client),
            "--fleet",
            "2",
            "--step-ms",
            "10",
            "--timeout-s",
            "90",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    print(output)
    assert run.returncode == 0, output
    assert "rust-client: fleet: followed 2 sidecars at once, all 3 steps passed" in output, output
    assert 'sidecar "host-a"' in output and 'sidecar "host-b"' in output, output
