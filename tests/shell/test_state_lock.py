"""One state file, one sidecar (issue 11, section 2): a second sidecar on the same file refuses to start.

Real processes: two `comfy-bridge run` on one `--state`; the kernel's lock dies with its holder, even
under SIGKILL, so the next start on that file works.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from .conftest import CLI_ENV, LogLines, connected, spawn_sidecar, stop


async def second_run(state, url: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "run",
        "--router",
        "tcp://127.0.0.1:*",
        "--pub",
        "tcp://127.0.0.1:*",
        "--state",
        str(state),
        "--instance",
        f"a={url}",
        env=CLI_ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20):
            _, err = await proc.communicate()
    finally:
        await stop(proc)
    return proc.returncode or 0, err.decode()


async def test_a_second_sidecar_on_the_same_state_file_refuses_to_start(tmp_path, sims, zctx):
    """The second `run` exits 2, naming the file and the pid that holds it, and touches no job; after
    the first is SIGKILLed, a new sidecar starts on the same file."""
    sim = await sims("0.12.1")
    state = tmp_path / "bridge.sqlite3"
    proc, c = await spawn_sidecar(zctx, state, f"a={sim.url}", seen=LogLines())
    try:
        await connected(c, "a")
        code, err = await second_run(state, sim.url)
        assert code == 2, err
        assert str(state) in err and f"pid {proc.pid}" in err, err
        assert "Traceback" not in err
        assert not any("restored" in line for line in err.splitlines()), err
        assert (await c.request("ping"))["ok"]  # the first one is untouched
        await c.close()
        await stop(proc, signal.SIGKILL)
        again, c2 = await spawn_sidecar(zctx, state, f"a={sim.url}")
        try:
            await connected(c2, "a")
        finally:
            await c2.close()
            assert await stop(again, signal.SIGTERM) == 0
    finally:
        await stop(proc)


async def test_in_process_sidecars_share_the_lock(tmp_path, sims, sidecars):
    """The lock is the OS's (flock), so it holds within one process too, and is freed by close()."""
    import pytest

    from sidecar.statelock import StateLocked

    sim = await sims("0.12.1")
    state = tmp_path / "bridge.sqlite3"
    first = await sidecars({"a": sim.url}, state=state)
    with pytest.raises(StateLocked, match=r"pid \d+"):
        await sidecars({"a": sim.url}, state=state)
    await first.close()
    second = await sidecars({"a": sim.url}, state=state)
    await second.close()
