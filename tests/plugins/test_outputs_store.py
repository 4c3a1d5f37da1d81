"""Output stores (``files``, ``none``) and the output fetcher, without a ComfyUI.

The fetcher is driven with a stand-in for the instance's HTTP client (its ``view`` coroutine
answers what each test says); the end-to-end behaviour over real sockets is in
``tests/shell/test_outputs_e2e.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import BridgeConfig, OutputsConfig
from sidecar.core.jobs import Job
from sidecar.core.sequence import Sequencer
from sidecar.outputs import OutputFetcher, file_entries
from sidecar.plugins.api import OutputItem
from sidecar.plugins.builtin.outputs_files import FileOutputStore, NoOutputStore
from sidecar.plugins.manager import PluginError, Plugins, get_plugin_manager
from sidecar.protocol.wire import Event

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 100


def read(path: str | None) -> bytes:
    """A stored file's bytes (a few small files, read after the fact)."""
    return Path(path or "").read_bytes()


def item(job_id: str = "job-1", node: str = "9", filename: str = "a_00001_.png", kind: str = "output") -> OutputItem:
    return OutputItem(
        instance="gpu0",
        job_id=job_id,
        prompt_id="p1",
        node=node,
        filename=filename,
        subfolder="",
        type=kind,
        content_type="image/png",
        size_bytes=len(PNG),
        sha256=hashlib.sha256(PNG).hexdigest(),
        ts_ns=0,
    )


def test_file_entries_are_the_filename_maps_of_every_list_once_each() -> None:
    """Images, gifs, audio...: any {filename, subfolder, type} map in a list; text and flags are not files."""
    output = {
        "images": [{"filename": "a.png", "subfolder": "", "type": "temp"}, {"filename": "a.png", "type": "temp"}],
        "gifs": [{"filename": "b.webp", "subfolder": "anim", "type": "output", "format": "image/webp"}],
        "audio": [{"filename": "c.flac"}],
        "text": ["not a file"],
        "animated": [True],
        "bad": [{"filename": ""}, {"filename": 7}, "x"],
        "scalar": {"filename": "not in a list.png"},
    }
    assert file_entries(output) == [("a.png", "", "temp"), ("b.webp", "anim", "output"), ("c.flac", "", "output")]
    assert file_entries(["images"]) == [] and file_entries(None) == []


async def test_files_store_writes_whole_files_and_never_overwrites(tmp_path: Path) -> None:
    """The path names job, order, node, type and file; a second store (a restart) writing the same
    name gets ``-2``: an earlier copy is never replaced."""
    store = FileOutputStore(str(tmp_path))
    first = await store.put(item(), PNG)
    assert first == str(tmp_path / "job-1" / "001-node9-output-a_00001_.png")
    assert read(first) == PNG
    second = await store.put(item(filename="../../evil.png", kind="temp"), b"other")
    assert Path(second).parent == tmp_path / "job-1" and Path(second).name.startswith("002-node9-temp-")
    again = await FileOutputStore(str(tmp_path)).put(item(), b"newer")  # a restarted sidecar counts from 1
    assert again == str(tmp_path / "job-1" / "001-node9-output-a_00001_-2.png")
    assert read(first) == PNG and read(again) == b"newer"
    assert not [name for name in os.listdir(tmp_path / "job-1") if name.endswith(".part")]


async def test_files_store_deletes_the_oldest_jobs_past_its_cap(tmp_path: Path) -> None:
    """Past max_total_bytes whole job directories go, the oldest first (earlier runs' included);
    the job just written stays whatever its size."""
    (tmp_path / "old-run").mkdir()
    (tmp_path / "old-run" / "001-node1-output-x.png").write_bytes(b"y" * 150)
    store = FileOutputStore(str(tmp_path), max_total_bytes=250)
    await store.put(item(job_id="a"), PNG)  # 108 + 150 > 250: the earlier run's directory goes
    assert not (tmp_path / "old-run").exists() and (tmp_path / "a").is_dir()
    await store.put(item(job_id="b"), PNG)
    assert (tmp_path / "a").is_dir() and store.total_bytes == 2 * len(PNG)
    await store.put(item(job_id="c"), PNG)
    assert not (tmp_path / "a").exists() and (tmp_path / "b").is_dir() and (tmp_path / "c").is_dir()
    await store.put(item(job_id="c", filename="big.png"), b"z" * 1000)
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_the_built_in_stores_are_made_by_name_and_an_unknown_one_is_refused() -> None:
    """``files`` and ``none`` come from the built-in plugin; another name stops start-up, naming them."""
    plugins = Plugins(get_plugin_manager(BridgeConfig()))
    assert isinstance(plugins.make_output_store("files", {}, BridgeConfig()), FileOutputStore)
    assert isinstance(plugins.make_output_store("none", {}, BridgeConfig()), NoOutputStore)
    with pytest.raises(PluginError, match=r"no plugin makes the output store 's3'.*'files', 'none'"):
        plugins.make_output_store("s3", {}, BridgeConfig())


class FakeHttp:
    """Answers ``view`` from a list of (status or exception) per call."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def view(self, filename: str, subfolder: str, type_: str, max_bytes: int) -> tuple[int, bytes, str | None]:
        self.calls += 1
        await self.gate.wait()
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer, PNG if answer == 200 else b"", "image/png"


def fetcher(tmp_path: Path, store: Any = None, **options: Any) -> tuple[OutputFetcher, list[Event], Job]:
    events: list[Event] = []
    seq = Sequencer("run")
    config = OutputsConfig(**{"dir": str(tmp_path), "retry_s": 0.0, **options})
    out = OutputFetcher(store or FileOutputStore(str(tmp_path)), config, events.append, seq)
    job = Job("job-1", "gpu0", {}, None, 0)
    job.prompt_id = "p1"
    return out, events, job


IMAGES = {"images": [{"filename": "a.png", "subfolder": "", "type": "temp"}, {"filename": "b.png", "type": "output"}]}


async def test_fetcher_retries_5xx_fails_404_at_once_and_settles(tmp_path: Path) -> None:
    """503 then 200: stored after a retry; 404: failed on the first answer. settle() returns when both ended."""
    out, events, job = fetcher(tmp_path, concurrency=1, attempts=3)
    http = FakeHttp([503, 200, 404])
    out.start()
    try:
        assert out.offer(job, "9", IMAGES, "gpu0", http, 0) == 2  # type: ignore[arg-type]
        assert out.offer(job, "9", IMAGES, "gpu0", http, 0) == 0  # the same files again (history): once
        assert [e.state for e in job.stored] == ["pending", "pending"]
        assert await out.settle("job-1", timeout_s=5)
    finally:
        await out.aclose()
    first, second = job.stored
    assert (first.state, first.attempts, first.sha256) == ("stored", 2, hashlib.sha256(PNG).hexdigest())
    assert read(first.ref) == PNG
    assert (second.state, second.attempts, second.ref) == ("failed", 1, None) and "HTTP 404" in (second.error or "")
    assert [e.type for e in events] == ["output.stored", "output.failed"]
    stats = out.stats()
    assert (stats.fetched, stats.failed, stats.pending, stats.retries, stats.bytes) == (1, 1, 0, 1, len(PNG))


async def test_fetcher_reports_a_full_queue_a_failing_store_and_a_slow_fetch(tmp_path: Path) -> None:
    """Past queue_size a file fails at once; a store that raises fails its file; settle() gives up
    after its timeout, leaving the entry pending until it ends."""

    class Broken(FileOutputStore):
        async def put(self, item: OutputItem, data: bytes) -> str:
            raise OSError("disk full")

    out, events, job = fetcher(tmp_path, Broken(str(tmp_path)), concurrency=1, queue_size=1)
    http = FakeHttp([200])
    http.gate.clear()  # the first fetch hangs
    out.start()
    three = {"images": [{"filename": f"{n}.png"} for n in "abc"]}
    assert out.offer(job, "9", three, "gpu0", http, 0) == 1  # type: ignore[arg-type]  # "a" waits: the queue is full
    assert [e.state for e in job.stored] == ["pending", "failed", "failed"]
    assert "outputs.queue_size = 1" in (job.stored[1].error or "") and len(events) == 2
    assert not await out.settle("job-1", timeout_s=0.05)
    http.gate.set()
    assert await out.settle("job-1", timeout_s=5)
    assert "disk full" in (job.stored[0].error or "")
    await out.aclose()
    assert all(e.state == "failed" for e in job.stored) and len(events) == 3
    assert out.stats().failed == 3 and out.stats().pending == 0 and out.stats().fetched == 0


async def test_the_none_store_fetches_nothing(tmp_path: Path) -> None:
    """With ``none`` nothing is offered, no worker runs, no event is made."""
    out, events, job = fetcher(tmp_path, NoOutputStore())
    http = FakeHttp([200])
    out.start()
    assert out.offer(job, "9", IMAGES, "gpu0", http, 0) == 0  # type: ignore[arg-type]
    assert await out.settle("job-1")
    await out.aclose()
    assert job.stored == [] and events == [] and http.calls == 0


async def test_a_shutdown_fails_what_is_left_of_a_finished_job_and_publishes_it(tmp_path: Path) -> None:
    """A retry's wait (60 s here) is cut short by aclose, which fails what is left of a job that
    ended, published; a file offered after it fails at once."""
    out, events, job = fetcher(tmp_path, concurrency=1, attempts=5, retry_s=60.0)
    job.state = "completed"  # its final event went out with the fetches still pending
    http = FakeHttp([503])
    out.start()
    out.offer(job, "9", IMAGES, "gpu0", http, 0)  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        await out.aclose(timeout_s=5)
    assert [e.state for e in job.stored] == ["failed", "failed"]
    assert all("shut down" in (e.error or "") for e in job.stored) and len(events) == 2
    out.offer(job, "9", {"images": [{"filename": "late.png"}]}, "gpu0", http, 0)  # type: ignore[arg-type]
    assert job.stored[-1].state == "failed" and "shutting down" in (job.stored[-1].error or "")
    assert out.stats().pending == 0 and out.stats().failed == 3


async def test_a_shutdown_leaves_an_unfinished_jobs_files_pending_and_the_next_run_fetches_them(
    tmp_path: Path,
) -> None:
    """An unfinished job's entries (one waiting to retry, one queued, one offered during the stop)
    stay pending, as saved, with no event; a fetcher of the next run given the job back
    (``resume``) fetches each once. Every change of an entry is handed to ``save``."""
    saved: list[tuple[str, str]] = []
    out, events, job = fetcher(tmp_path, concurrency=1, attempts=5, retry_s=60.0)
    out.save = lambda job_, entry: saved.append((entry.filename, entry.state))
    http = FakeHttp([503])
    out.start()
    out.offer(job, "9", IMAGES, "gpu0", http, 0)  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        await out.aclose(timeout_s=5)
    out.offer(job, "9", {"images": [{"filename": "late.png"}]}, "gpu0", http, 0)  # type: ignore[arg-type]
    assert [e.state for e in job.stored] == ["pending"] * 3 and events == []
    assert saved == [("a.png", "pending"), ("b.png", "pending"), ("late.png", "pending")]

    again, events, _ = fetcher(tmp_path / "next")
    again.save = out.save
    job.stored[1].state, job.stored[1].ref = "stored", "/kept/b.png"  # stored before the stop: not fetched again
    again.start()
    assert again.resume(job, "gpu0", FakeHttp([200]), 1) == 2  # type: ignore[arg-type]
    assert await again.settle("job-1", timeout_s=5)
    assert [(e.filename, e.state) for e in job.stored] == [
        ("a.png", "stored"),
        ("b.png", "stored"),
        ("late.png", "stored"),
    ]
    assert job.stored[1].ref == "/kept/b.png" and [e.type for e in events] == ["output.stored"] * 2
    assert sorted(saved[3:]) == [("a.png", "stored"), ("late.png", "stored")]  # fetched side by side
    await again.aclose()


async def test_giving_up_fails_only_the_pending_entries_and_publishes_each(tmp_path: Path) -> None:
    """A restored job whose instance is gone: its pending entries fail (published, saved), a stored one stays."""
    saved: list[str] = []
    out, events, job = fetcher(tmp_path)
    out.save = lambda job_, entry: saved.append(entry.filename)
    out.offer(job, "9", IMAGES, "gpu0", FakeHttp([200]), 0)  # type: ignore[arg-type]  # no worker: both pending
    job.stored[1].state = "stored"
    out.give_up(job, "gpu0", "not fetched: instance 'gpu0' is no longer configured")
    assert [e.state for e in job.stored] == ["failed", "stored"]
    assert "no longer configured" in (job.stored[0].error or "")
    assert [e.type for e in events] == ["output.failed"] and saved == ["a.png", "b.png", "a.png"]
    await out.aclose()
