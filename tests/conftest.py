"""Fixtures shared by every test package: simulated ComfyUI servers on 127.0.0.1:0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sidecar.simulator import SimServer

SimFactory = Callable[..., Awaitable[SimServer]]


@pytest.fixture
async def sims() -> AsyncIterator[SimFactory]:
    """Factory: ``await sims(version, step_ms=10, **options)`` starts a simulator closed after the test."""
    started: list[SimServer] = []

    async def start(version: str = "0.12.1", step_ms: float | None = 10, **options: Any) -> SimServer:
        sim = SimServer(version, step_ms=step_ms, **options)
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.close()


#: The Rust example client's output (tests/test_rust_client.py), printed at the end of the session.
RUST_CLIENT_OUTPUT = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Show what the Rust client checked, so a CI log shows it whether it passed or failed."""
    output = config.stash.get(RUST_CLIENT_OUTPUT, None)
    if output:
        terminalreporter.write_sep("-", "Rust example client (examples/rust-client/run.py)")
        for line in output.splitlines():
            if not line.startswith("ok    "):  # the golden files, one line each: the count follows
                terminalreporter.write_line(line)
