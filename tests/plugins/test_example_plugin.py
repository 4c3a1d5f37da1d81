"""The example distribution ``plugins/contact-sheet``: discovered, loaded, and working.

It must be installed (``pip install -e ./plugins/contact-sheet``): these tests prove that
entry-point discovery works end to end, so they find it through ``importlib.metadata``,
never by importing it from the source tree. Files are real, under ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sidecar.config import BridgeConfig, PreviewConfig
from sidecar.plugins import NAME
from sidecar.plugins.api import PreviewItem, PreviewStore
from sidecar.plugins.manager import PluginError, Plugins, get_plugin_manager
from sidecar.previews import PreviewWriter

DIST = "comfy-bridge-contact-sheet"
WAIT_S = 10.0

JPEG = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\nfake-png"


class Sheet(HTMLParser):
    """The parts of ``index.html`` a reader sees: image sources, captions, the title."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.captions: list[str] = []
        self.title = ""
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values["src"] or "")
        elif tag == "a":
            self.links.append(values["href"] or "")
        elif tag in ("figcaption", "title"):
            self._in = tag
            if tag == "figcaption":
                self.captions.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "figcaption":
            self.captions[-1] += data
        elif self._in == "title":
            self.title += data


def item(
    job_id: str, index: int, node: str | None = "3", image_format: str = "jpeg", image: bytes | memoryview = JPEG
) -> PreviewItem:
    return PreviewItem("local", job_id, node, index, image_format, image, 1_700_000_000_000_000_000 + index)


@pytest.fixture
def config(tmp_path: Path) -> BridgeConfig:
    return BridgeConfig(previews=PreviewConfig(store="contact_sheet", dir=str(tmp_path / "default")))


@pytest.fixture
def store(tmp_path: Path, config: BridgeConfig) -> PreviewStore:
    """The store as the sidecar makes it: through the plugin manager, by name."""
    options = {"dir": str(tmp_path / "sheets")}
    return Plugins(get_plugin_manager(config)).make_preview_store("contact_sheet", options, config)


def sheet_of(folder: Path) -> Sheet:
    return Sheet(read_text(folder / "index.html"))


def read_text(path: Path) -> str:
    """Checks read files synchronously, outside the code under test (which must not)."""
    return path.read_text(encoding="utf-8")


def read_bytes(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def is_inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


# Discovery -------------------------------------------------------------------------------


def test_entry_point_is_installed() -> None:
    """The distribution declares ``contact_sheet`` in the ``comfy_bridge`` group."""
    entry = next((ep for ep in importlib.metadata.entry_points(group=NAME) if ep.name == "contact_sheet"), None)
    assert entry is not None, f"not installed: python3 -m pip install -e ./plugins/contact-sheet ({NAME} group)"
    assert entry.value == "comfy_bridge_contact_sheet"
    assert entry.dist is not None and entry.dist.name == DIST
    requires = importlib.metadata.requires(DIST) or []
    assert any(r.startswith("comfy-bridge") for r in requires) and any(r.startswith("aiofiles") for r in requires)


def test_manager_lists_it_with_its_distribution() -> None:
    """Registered under the entry-point name, origin naming distribution and version."""
    pm = get_plugin_manager(BridgeConfig())
    version = importlib.metadata.version(DIST)
    assert ("contact_sheet", f"entry point of {DIST} {version}") in Plugins(pm).listing()
    plugin = pm.get_plugin("contact_sheet")
    assert plugin.__name__ == "comfy_bridge_contact_sheet"
    assert [c.name for c in pm.get_hookcallers(plugin) or ()] == ["bridge_make_preview_store"]
    assert "contact_sheet" in Plugins(pm).store_names()


# Making the store ------------------------------------------------------------------------


def test_store_implements_the_protocol(store: PreviewStore, tmp_path: Path) -> None:
    """name, inline=False, and ref() is pure: it names a path under dir and creates nothing."""
    assert isinstance(store, PreviewStore)
    assert store.name == "contact_sheet" and store.inline is False
    ref = store.ref(item("job-1", 7, node="12"))
    assert ref == str(tmp_path / "sheets" / "job-1" / "00007-node12.jpg")
    assert not (tmp_path / "sheets").exists()


def test_dir_defaults_to_previews_dir(tmp_path: Path, config: BridgeConfig) -> None:
    """Without ``options.dir`` the store writes under ``previews.dir``."""
    made = Plugins(get_plugin_manager(config)).make_preview_store("contact_sheet", {}, config)
    assert made.ref(item("j", 0)).startswith(str(tmp_path / "default" / "j") + "/")


@pytest.mark.parametrize(
    ("options", "complaint"),
    [({"dri": "x"}, "unknown option"), ({"columns": 0}, "columns"), ({"dir": 3}, "dir")],
)
def test_bad_options_stop_start_up(options: dict[str, object], complaint: str, config: BridgeConfig) -> None:
    """A wrong option is a PluginError naming the store, with the plugin's reason."""
    with pytest.raises(PluginError, match=rf"'contact_sheet'.*{complaint}"):
        Plugins(get_plugin_manager(config)).make_preview_store("contact_sheet", options, config)


def test_other_store_names_are_left_to_other_plugins(config: BridgeConfig) -> None:
    """firstresult: the plugin answers None for names it does not make."""
    pm = get_plugin_manager(config)
    plugin = pm.get_plugin("contact_sheet")
    assert plugin.bridge_make_preview_store(name="files", options={}, config=config) is None
    assert Plugins(pm).make_preview_store("files", {}, config).name == "files"


# Writing ---------------------------------------------------------------------------------


async def test_writes_previews_and_a_sheet_listing_each_in_order(store: PreviewStore, tmp_path: Path) -> None:
    """Each image lands at its ref; index.html shows every one, in index order, with its node."""
    items = [
        item("job-1", 0, node="3"),
        item("job-1", 1, node="3", image=memoryview(b"xx" + JPEG)[2:]),
        item("job-1", 2, node="9", image_format="png", image=PNG),
        item("job-1", 3, node=None),
    ]
    refs = [store.ref(i) for i in items]
    for i, ref in zip(reversed(items), reversed(refs), strict=True):  # arrival order does not matter
        await store.put(i, ref)
    folder = tmp_path / "sheets" / "job-1"
    assert [Path(r).name for r in refs] == ["00000-node3.jpg", "00001-node3.jpg", "00002-node9.png", "00003-node_.jpg"]
    for i, ref in zip(items, refs, strict=True):
        assert read_bytes(ref) == bytes(i.image)
    assert not (folder / "index.html").exists()

    await store.job_finished("job-1")

    sheet = sheet_of(folder)
    assert sheet.images == [Path(r).name for r in refs]
    assert sheet.links == sheet.images
    assert [c.split("·")[-1].strip() for c in sheet.captions] == ["node 3", "node 3", "node 9", "node unknown"]
    assert [c.split()[0] for c in sheet.captions] == ["#1", "#2", "#3", "#4"]
    assert all((folder / src).is_file() for src in sheet.images)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*sheet.images, "index.html"])  # no .part left
    await store.aclose()


async def test_everything_on_the_page_is_escaped_and_ids_cannot_leave_dir(store: PreviewStore, tmp_path: Path) -> None:
    """Hostile job and node ids: the folder stays under dir, the page shows them as text."""
    job = '../<script>alert("job")</script>'
    node = '"><img src=x onerror=alert(1)>'
    ref = store.ref(item(job, 0, node=node))
    assert is_inside(ref, tmp_path / "sheets")
    await store.put(item(job, 0, node=node), ref)
    await store.job_finished(job)
    page = read_text(Path(ref).parent / "index.html")
    assert "<script>" not in page and "<img src=x" not in page
    sheet = Sheet(page)
    assert sheet.images == [Path(ref).name]
    assert sheet.title == f"Previews of job {job}"
    assert sheet.captions[0].endswith(f"node {node}")
    assert store.ref(item("a/b", 0)) != store.ref(item("a_b", 0))  # sanitised ids stay apart


async def test_a_job_without_previews_gets_no_sheet(store: PreviewStore, tmp_path: Path) -> None:
    """job_finished for a job the store never saw writes nothing."""
    await store.job_finished("never-seen")
    assert not (tmp_path / "sheets").exists()


async def test_a_preview_after_the_sheet_is_added_to_it(store: PreviewStore, tmp_path: Path) -> None:
    """A late put (a resubmitted job) rewrites the finished job's sheet."""
    await store.put(item("job-2", 0), None)
    await store.job_finished("job-2")
    assert len(sheet_of(tmp_path / "sheets" / "job-2").images) == 1
    await store.put(item("job-2", 1, node="4"), None)
    assert sheet_of(tmp_path / "sheets" / "job-2").images == ["00000-node3.jpg", "00001-node4.jpg"]


async def test_aclose_writes_sheets_of_unfinished_jobs_and_refuses_later_puts(
    store: PreviewStore, tmp_path: Path
) -> None:
    """Nothing written goes unlisted; close is idempotent; put after close raises."""
    await store.put(item("running", 0), None)
    await store.aclose()
    await store.aclose()
    assert sheet_of(tmp_path / "sheets" / "running").images == ["00000-node3.jpg"]
    with pytest.raises(RuntimeError, match="closed"):
        await store.put(item("running", 1), None)


async def test_sheet_includes_previews_from_before_a_restart(tmp_path: Path, config: BridgeConfig) -> None:
    """The sheet lists the job's folder, so a new process still shows what the old one wrote."""
    plugins = Plugins(get_plugin_manager(config))
    options = {"dir": str(tmp_path / "sheets")}
    first = plugins.make_preview_store("contact_sheet", options, config)
    await first.put(item("job-3", 0, node="5:2"), None)  # a subgraph node id
    second = plugins.make_preview_store("contact_sheet", options, config)
    await second.put(item("job-3", 1, node="6"), None)
    await second.job_finished("job-3")
    sheet = sheet_of(tmp_path / "sheets" / "job-3")
    assert sheet.images == ["00000-node5_2.jpg", "00001-node6.jpg"]
    assert sheet.captions[1].endswith("node 6")


async def test_through_the_sidecars_preview_writer(store: PreviewStore, tmp_path: Path) -> None:
    """Driven the way the sidecar drives it: offer() on the read loop, job end through the queue."""
    writer = PreviewWriter(store, queue_size=8)
    task = asyncio.create_task(writer.run())
    items = [item("job-4", n, node=str(n % 2)) for n in range(5)]
    for i in items:
        writer.offer(i, store.ref(i))
    async with asyncio.timeout(WAIT_S):
        await writer.job_finished("job-4")  # returns once the store was told, after the job's images
    assert sheet_of(tmp_path / "sheets" / "job-4").images == [Path(store.ref(i)).name for i in items]
    async with asyncio.timeout(WAIT_S):
        await writer.aclose()
        await task
    assert writer.stats() == {"queued": 0, "written": 5, "dropped": 0, "failed": 0}
