"""Preview stores (``files``, ``inline``, ``none``), their hook, and the preview writer.

Real files under ``tmp_path`` through real aiofiles. The tests wait on the writer (a
``job_finished`` that returns once the job's previews are written, or ``aclose``) under
``asyncio.timeout``, never by sleeping.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import tracemalloc
from pathlib import Path

import pytest

from sidecar.config import BridgeConfig
from sidecar.plugins.api import PreviewItem, PreviewStore
from sidecar.plugins.builtin import previews_files
from sidecar.plugins.builtin.previews_files import FileStore, safe_name
from sidecar.plugins.builtin.previews_inline import InlineStore, NoStore
from sidecar.plugins.manager import PluginError, Plugins, get_plugin_manager
from sidecar.previews import PreviewWriter

JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000") + bytes(range(256)) + b"\xff\xd9"
WAIT_S = 5.0  # a generous bound: every wait below ends as soon as the writer has done its work


def preview(
    index: int = 0,
    job: str = "job-1",
    node: str | None = "7",
    fmt: str = "jpeg",
    image: bytes | memoryview = JPEG,
    instance: str = "local",
) -> PreviewItem:
    return PreviewItem(instance=instance, job_id=job, node=node, index=index, format=fmt, image=image, ts_ns=index)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def contents(path: str | Path) -> bytes:
    return Path(path).read_bytes()


async def store_all(store: FileStore, *items: PreviewItem) -> None:
    for item in items:
        await store.put(item, store.ref(item))


class RecordingStore:
    """Records every call; ``put`` raises for the indexes in ``fail``, and waits while ``gate`` is clear."""

    name = "recording"
    inline = False

    def __init__(self, fail: tuple[int, ...] = (), gate: asyncio.Event | None = None) -> None:
        self.fail = fail
        self.gate = gate
        self.calls: list[tuple[str, object]] = []
        self.entered = asyncio.Event()  # set when a put starts

    def ref(self, item: PreviewItem) -> str | None:
        return None

    async def put(self, item: PreviewItem, ref: str | None) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if item.index in self.fail:
            raise OSError(28, "No space left on device")
        self.calls.append(("put", item.index))

    async def job_finished(self, job_id: str) -> None:
        self.calls.append(("job_finished", job_id))

    async def aclose(self) -> None:
        self.calls.append(("aclose", None))


# The files store: naming


async def test_file_is_named_by_instance_job_order_and_node(tmp_path: Path) -> None:
    """``<dir>/<instance>/<job>/<index:05d>-node<node>.jpg`` holds exactly the JPEG bytes."""
    store = FileStore(str(tmp_path / "previews"))
    item = preview(index=3, image=memoryview(JPEG))
    ref = store.ref(item)
    assert ref == str(tmp_path / "previews" / "local" / "job-1" / "00003-node7.jpg")
    await store.put(item, ref)
    assert contents(ref) == JPEG
    assert names(Path(ref).parent) == ["00003-node7.jpg"]  # no .part file left behind


@pytest.mark.parametrize(
    ("fmt", "ext"), [("jpeg", "jpg"), ("png", "png"), ("webp", "webp"), ("PNG", "png"), ("gif", "bin")]
)
def test_extension_follows_the_format(tmp_path: Path, fmt: str, ext: str) -> None:
    """jpeg is written as .jpg, png and webp as themselves, anything else as .bin."""
    assert FileStore(str(tmp_path)).ref(preview(fmt=fmt)).endswith(f"00000-node7.{ext}")


def test_unknown_node_and_subgraph_node_are_readable(tmp_path: Path) -> None:
    """A missing node is ``node_``; a subgraph id like ``5:3`` becomes ``node5_3``."""
    store = FileStore(str(tmp_path))
    assert store.ref(preview(node=None)).endswith("00000-node_.jpg")
    assert store.ref(preview(node="5:3")).endswith("00000-node5_3.jpg")


def test_ref_does_no_io(tmp_path: Path) -> None:
    """``ref`` only names the file: the directory is not created."""
    FileStore(str(tmp_path / "previews")).ref(preview())
    assert names(tmp_path) == []


async def test_path_traversal_is_refused(tmp_path: Path) -> None:
    """Ids like ``../../x`` stay one directory level each, inside the store's directory."""
    root = tmp_path / "a" / "b" / "previews"
    store = FileStore(str(root))
    item = preview(job="../../x", node="../../../etc/passwd", instance="..")
    ref = Path(store.ref(item))
    assert ".." not in ref.parts and ref.is_relative_to(root)
    assert len(ref.relative_to(root).parts) == 3
    await store.put(item, str(ref))
    assert contents(ref) == JPEG
    assert files_under(tmp_path) == [ref]


@pytest.mark.parametrize("text", ["..", ".", "", "/", "a/../..", "..\\..\\x", ".hidden", "x\x00y"])
def test_safe_name_is_one_harmless_component(text: str) -> None:
    """No separator, no leading dot, never empty."""
    name = safe_name(text)
    assert name and not name.startswith(".") and "/" not in name and "\\" not in name and "\x00" not in name


def test_changed_ids_do_not_collide() -> None:
    """``a/b`` and ``a_b`` get different directories; a safe id is kept as it is."""
    assert safe_name("a_b") == "a_b"
    assert safe_name("a/b") != safe_name("a_b")
    assert safe_name("4c1e9a6e-3f2b-4d0e-9a51-2b7c9d0e8f11") == "4c1e9a6e-3f2b-4d0e-9a51-2b7c9d0e8f11"


# The files store: retention


async def test_keep_per_job_keeps_the_newest_files_of_each_job(tmp_path: Path) -> None:
    """With keep_per_job 2, a job keeps its two newest previews; other jobs are untouched."""
    store = FileStore(str(tmp_path), keep_per_job=2)
    await store_all(store, preview(0, job="other"), *(preview(i) for i in range(5)))
    assert names(tmp_path / "local" / "job-1") == ["00003-node7.jpg", "00004-node7.jpg"]
    assert names(tmp_path / "local" / "other") == ["00000-node7.jpg"]
    assert store.total_bytes == 3 * len(JPEG)


async def test_max_total_bytes_deletes_the_oldest_files_of_any_job(tmp_path: Path) -> None:
    """The cap holds across jobs; the oldest go first, and an emptied job directory goes too."""
    image = b"x" * 100
    store = FileStore(str(tmp_path), max_total_bytes=250)
    await store_all(store, preview(0, job="a", image=image), preview(1, job="a", image=image))
    await store_all(store, preview(0, job="b", image=image))
    assert names(tmp_path / "local" / "a") == ["00001-node7.jpg"]
    await store_all(store, preview(1, job="b", image=image))
    assert names(tmp_path / "local") == ["b"]
    assert names(tmp_path / "local" / "b") == ["00000-node7.jpg", "00001-node7.jpg"]
    assert store.total_bytes == 200


async def test_a_preview_larger_than_the_cap_is_still_kept(tmp_path: Path) -> None:
    """The file just written is never deleted: the event that names it must stay true."""
    store = FileStore(str(tmp_path), max_total_bytes=10)
    await store_all(store, preview(0), preview(1))
    assert names(tmp_path / "local" / "job-1") == ["00001-node7.jpg"]


async def test_files_of_an_earlier_run_count_towards_the_cap(tmp_path: Path) -> None:
    """Old previews are found once, oldest first, and deleted before newer ones; stray .part files go."""
    old = tmp_path / "local" / "old-job"
    old.mkdir(parents=True)
    for index in range(3):
        (old / f"{index:05d}-node7.jpg").write_bytes(b"o" * 100)
        os.utime(old / f"{index:05d}-node7.jpg", ns=(index * 10**9, index * 10**9))
    (old / "00003-node7.jpg.part").write_bytes(b"half")
    store = FileStore(str(tmp_path), max_total_bytes=300)
    await store_all(store, preview(0, image=b"n" * 100))
    assert names(old) == ["00001-node7.jpg", "00002-node7.jpg"]
    assert store.total_bytes == 300


async def test_the_files_store_keeps_no_memory_per_file(tmp_path: Path) -> None:
    """Hundreds of previews (with and without retention) leave only a record per job directory."""
    for store in (FileStore(str(tmp_path / "all")), FileStore(str(tmp_path / "capped"), max_total_bytes=50_000)):
        await store_all(store, *(preview(0, job=f"job-{j}") for j in range(3)))  # every directory exists
        gc.collect()
        tracemalloc.start(25)
        try:
            await store_all(store, *(preview(i, job=f"job-{i % 3}") for i in range(1, 601)))
            gc.collect()
            mine = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, previews_files.__file__, all_frames=True)]
            )
            kept = sum(stat.size for stat in mine.statistics("filename"))
        finally:
            tracemalloc.stop()
        assert kept < 8 * 1024, f"{store!r} holds {kept} bytes after 600 previews"
        assert store.total_bytes == sum(p.stat().st_size for p in files_under(Path(store.root)))


async def test_closed_file_store_refuses_puts(tmp_path: Path) -> None:
    """``aclose`` is idempotent; a put after it raises."""
    store = FileStore(str(tmp_path))
    await store.aclose()
    await store.aclose()
    with pytest.raises(RuntimeError):
        await store.put(preview(), None)


# The preview writer


async def test_full_queue_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    """10 offers into a queue of 3 with no writer running: the 3 newest are written, 7 dropped."""
    store = FileStore(str(tmp_path))
    writer = PreviewWriter(store, queue_size=3)
    for index in range(10):
        item = preview(index)
        writer.offer(item, store.ref(item))
    assert writer.stats() == {"queued": 3, "written": 0, "dropped": 7, "failed": 0}
    async with asyncio.TaskGroup() as group:
        task = group.create_task(writer.run())
        async with asyncio.timeout(WAIT_S):
            await writer.job_finished("job-1")
        task.cancel()
    assert names(tmp_path / "local" / "job-1") == ["00007-node7.jpg", "00008-node7.jpg", "00009-node7.jpg"]
    assert writer.stats() == {"queued": 0, "written": 3, "dropped": 7, "failed": 0}


async def test_a_failing_put_is_logged_and_counted_and_the_writer_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """put raising for one preview: failed 1, the others written, the error logged with its traceback."""
    store = RecordingStore(fail=(1,))
    writer = PreviewWriter(store, queue_size=8)
    task = asyncio.create_task(writer.run())
    for index in range(3):
        writer.offer(preview(index), None)
    with caplog.at_level(logging.ERROR, logger="sidecar.previews"):
        async with asyncio.timeout(WAIT_S):
            await writer.job_finished("job-1")
    assert store.calls == [("put", 0), ("put", 2), ("job_finished", "job-1")]
    assert writer.stats() == {"queued": 0, "written": 2, "dropped": 0, "failed": 1}
    [record] = caplog.records
    assert record.exc_info is not None and "job-1" in record.getMessage()
    assert not task.done()
    async with asyncio.timeout(WAIT_S):
        await writer.aclose()
        await task  # run() returns once the writer is closed


async def test_job_finished_reaches_the_store_after_the_jobs_previews() -> None:
    """The store hears of a job's end only after the previews queued before it are written."""
    store = RecordingStore()
    writer = PreviewWriter(store, queue_size=8)
    writer.offer(preview(0), None)
    writer.offer(preview(1), None)
    async with asyncio.TaskGroup() as group:
        finished = group.create_task(writer.job_finished("job-1"))
        run = group.create_task(writer.run())
        async with asyncio.timeout(WAIT_S):
            await finished
        run.cancel()
    assert store.calls == [("put", 0), ("put", 1), ("job_finished", "job-1")]


async def test_a_job_end_is_never_dropped_from_a_full_queue() -> None:
    """Job ends take no room and survive drops; the oldest image around them goes."""
    store = RecordingStore()
    writer = PreviewWriter(store, queue_size=2)
    writer.offer(preview(0), None)
    async with asyncio.TaskGroup() as group:
        finished = group.create_task(writer.job_finished("job-1"))
        await asyncio.sleep(0)  # not a wait for the writer: lets job_finished queue its marker
        for index in (1, 2, 3):
            writer.offer(preview(index, job="next"), None)
        run = group.create_task(writer.run())
        async with asyncio.timeout(WAIT_S):
            await finished
            await writer.job_finished("next")
        run.cancel()
    assert store.calls == [("job_finished", "job-1"), ("put", 2), ("put", 3), ("job_finished", "next")]
    assert writer.stats()["dropped"] == 2


async def test_aclose_writes_what_is_pending_then_closes_the_store(tmp_path: Path) -> None:
    """aclose with no writer task running still writes every pending preview; a second aclose is a no-op."""
    store = FileStore(str(tmp_path))
    writer = PreviewWriter(store, queue_size=8)
    for index in range(3):
        item = preview(index)
        writer.offer(item, store.ref(item))
    async with asyncio.timeout(WAIT_S):
        await writer.aclose()
        await writer.aclose()
    assert names(tmp_path / "local" / "job-1") == ["00000-node7.jpg", "00001-node7.jpg", "00002-node7.jpg"]
    assert writer.stats() == {"queued": 0, "written": 3, "dropped": 0, "failed": 0}
    writer.offer(preview(9), None)  # too late: counted, not written
    assert writer.stats()["dropped"] == 1
    with pytest.raises(RuntimeError):
        await store.put(preview(4), None)


async def test_a_put_cancelled_with_the_writer_task_is_written_by_aclose() -> None:
    """Shutdown cancels the writer task mid-put: the preview goes back to the queue and aclose writes it."""
    gate = asyncio.Event()
    store = RecordingStore(gate=gate)
    writer = PreviewWriter(store, queue_size=8)
    writer.offer(preview(0), None)
    writer.offer(preview(1), None)
    run = asyncio.create_task(writer.run())
    async with asyncio.timeout(WAIT_S):
        await store.entered.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert writer.stats()["queued"] == 2
    gate.set()
    async with asyncio.timeout(WAIT_S):
        await writer.aclose()
    assert store.calls == [("put", 0), ("put", 1), ("aclose", None)]
    assert writer.stats() == {"queued": 0, "written": 2, "dropped": 0, "failed": 0}


async def test_aclose_is_bounded_by_its_timeout() -> None:
    """A put that never finishes: aclose gives up at the deadline, counts the rest, closes the store."""
    store = RecordingStore(gate=asyncio.Event())  # never set
    writer = PreviewWriter(store, queue_size=8)
    writer.offer(preview(0), None)
    writer.offer(preview(1), None)
    async with asyncio.timeout(WAIT_S):
        await writer.aclose(timeout_s=0.05)
    assert writer.stats() == {"queued": 0, "written": 0, "dropped": 2, "failed": 0}
    assert store.calls == [("aclose", None)]


def test_queue_size_must_be_positive() -> None:
    """A writer that could hold nothing is a configuration mistake."""
    with pytest.raises(ValueError):
        PreviewWriter(NoStore(), 0)


# Inline and none, and the hook


def test_inline_and_none_store_attributes() -> None:
    """inline: bytes ride the event, no ref; none: not inline, no ref."""
    inline, none = InlineStore(), NoStore()
    assert (inline.name, inline.inline, inline.ref(preview())) == ("inline", True, None)
    assert (none.name, none.inline, none.ref(preview())) == ("none", False, None)


async def test_inline_and_none_stores_do_nothing() -> None:
    """Their async methods complete without effect."""
    for store in (InlineStore(), NoStore()):
        await store.put(preview(), None)
        await store.job_finished("job-1")
        await store.aclose()


@pytest.mark.parametrize(("name", "cls"), [("files", FileStore), ("inline", InlineStore), ("none", NoStore)])
def test_the_builtin_plugins_make_each_store(name: str, cls: type) -> None:
    """The plugin manager's built-ins make files, inline and none from a default config."""
    config = BridgeConfig()
    store = Plugins(get_plugin_manager(config)).make_preview_store(name, {}, config)
    assert isinstance(store, cls) and isinstance(store, PreviewStore)
    assert store.name == name


def test_the_files_store_takes_its_settings_from_the_config() -> None:
    """dir, keep_per_job and max_total_bytes come from [previews]."""
    config = BridgeConfig()
    store = Plugins(get_plugin_manager(config)).make_preview_store("files", {}, config)
    assert isinstance(store, FileStore)
    assert store.root == os.path.abspath(config.previews.dir)
    assert store.keep_per_job == config.previews.keep_per_job
    assert store.max_total_bytes == config.previews.max_total_bytes


def test_an_unknown_store_name_is_an_error_naming_it() -> None:
    """No plugin makes 'nosuch': PluginError names it and lists the known stores."""
    config = BridgeConfig()
    plugins = Plugins(get_plugin_manager(config))
    with pytest.raises(PluginError, match="'nosuch'") as info:
        plugins.make_preview_store("nosuch", {}, config)
    assert "files" in str(info.value) and "inline" in str(info.value) and "none" in str(info.value)
