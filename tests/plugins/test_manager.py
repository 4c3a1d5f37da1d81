"""The plugin manager: registration, blocking, failures that name the plugin, the listing.

Plugins installed for one test are real distributions: a ``*.dist-info`` folder with
``METADATA`` and ``entry_points.txt`` next to a module, on ``sys.path`` for that test
only, so ``importlib.metadata`` finds them exactly as it finds a pip-installed plugin.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

from sidecar.config import BridgeConfig, InstanceConfig, PluginsConfig, PreviewConfig
from sidecar.core.versions import Capabilities, select_adapter
from sidecar.plugins import NAME, hookimpl
from sidecar.plugins.api import PreviewItem, PreviewStore, ProtocolAdapter, ServerInfo
from sidecar.plugins.builtin.adapters import BUILTIN_ADAPTERS
from sidecar.plugins.listing import describe
from sidecar.plugins.manager import BUILTIN_PLUGINS, PluginError, Plugins, get_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 60.0  # a backstop only: the process is expected to exit at start-up


# A throwaway plugin (datasette's testing_plugins pattern) -------------------------------


class ThrowawayStore:
    """A PreviewStore that keeps what it is given in memory."""

    name = "throwaway"
    inline = False

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.items: list[tuple[PreviewItem, str | None]] = []
        self.finished: list[str] = []
        self.closed = 0

    def ref(self, item: PreviewItem) -> str:
        return f"mem://{item.job_id}/{item.index}"

    async def put(self, item: PreviewItem, ref: str | None) -> None:
        self.items.append((item, ref))

    async def job_finished(self, job_id: str) -> None:
        self.finished.append(job_id)

    async def aclose(self) -> None:
        self.closed += 1


class ForkAdapter:
    """An adapter for a ComfyUI fork that marks itself in /system_stats."""

    name = "throwaway-fork"
    since = (0, 7, 0)
    priority = 1

    def __init__(self) -> None:
        self._base = BUILTIN_ADAPTERS[-1]

    def accepts(self, info: ServerInfo) -> bool:
        return isinstance(info.system_stats, dict) and info.system_stats.get("fork") == "throwaway"

    def capabilities(self, info: ServerInfo) -> Capabilities:
        return self._base.capabilities(info)

    def message_types(self) -> dict[str, Any]:
        return self._base.message_types()

    def read_prompt_response(self, status: int, body: Any, accept_partial: bool) -> Any:
        return self._base.read_prompt_response(status, body, accept_partial)


class ThrowawayPlugin:
    """Implements both hooks; registered for one test by the ``plugin_manager`` fixture."""

    PREVIEW_STORES = ("throwaway",)

    @hookimpl
    def bridge_make_preview_store(self, name: str, options: dict[str, Any]) -> ThrowawayStore | None:
        return ThrowawayStore(options) if name == "throwaway" else None

    @hookimpl
    def bridge_protocol_adapters(self) -> list[ForkAdapter]:
        return [ForkAdapter()]


@pytest.fixture
def plugin_manager() -> Iterator[pluggy.PluginManager]:
    """The sidecar's plugin manager with :class:`ThrowawayPlugin` registered as ``throwaway``."""
    pm = get_plugin_manager(BridgeConfig())
    plugin = ThrowawayPlugin()
    pm.register(plugin, name="throwaway")
    pm.check_pending()
    try:
        yield pm
    finally:
        pm.unregister(name="throwaway")
    assert pm.get_plugin("throwaway") is None
    assert all(impl.plugin is not plugin for impl in pm.hook.bridge_protocol_adapters.get_hookimpls())
    pm.check_pending()


# Installing a distribution for one test ---------------------------------------------------


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """``install_plugin(dist, entry_name, module, source)``: a real distribution on ``sys.path``."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def install(dist: str, entry_name: str, module: str, source: str, version: str = "0.0.1") -> Path:
        (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[{NAME}]\n{entry_name} = {module}\n", encoding="utf-8")
        modules.append(module)
        importlib.invalidate_caches()
        return site

    yield install
    for module in modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


BROKEN = (
    "comfy-bridge-broken",
    "broken_thing",
    "comfy_bridge_broken_mod",
    "raise RuntimeError('the broken plugin refuses to import')\n",
)


def _entry(name: str) -> importlib.metadata.EntryPoint:
    return next(ep for ep in importlib.metadata.entry_points(group=NAME) if ep.name == name)


# Registration ---------------------------------------------------------------------------


def test_builtins_are_registered_under_their_module_names() -> None:
    """Every BUILTIN_PLUGINS module is registered, listed as built-in."""
    pm = get_plugin_manager(BridgeConfig())
    listing = dict(Plugins(pm).listing())
    for module_name in BUILTIN_PLUGINS:
        assert pm.get_plugin(module_name) is importlib.import_module(module_name)
        assert listing[module_name] == "built-in"
    assert {"files", "inline", "none"} <= set(Plugins(pm).store_names())
    assert {a.name for a in Plugins(pm).protocol_adapters()} >= {a.name for a in BUILTIN_ADAPTERS}


def test_without_config_the_manager_still_loads_everything() -> None:
    """``get_plugin_manager()`` with no config blocks nothing."""
    pm = get_plugin_manager()
    assert not [name for name, plugin in pm.list_name_plugin() if plugin is None]
    assert set(BUILTIN_PLUGINS) <= {name for name, _ in pm.list_name_plugin()}


def test_each_call_builds_a_new_manager() -> None:
    """No module-global manager: registering on one leaves the next untouched."""
    first = get_plugin_manager()
    first.register(ThrowawayPlugin(), name="throwaway")
    assert get_plugin_manager().get_plugin("throwaway") is None


def test_throwaway_plugin_store_is_made_and_others_still_answer(plugin_manager: pluggy.PluginManager) -> None:
    """firstresult: the throwaway makes its own store only; the built-ins keep theirs."""
    plugins = Plugins(plugin_manager)
    store = plugins.make_preview_store("throwaway", {"k": 1}, BridgeConfig())
    assert isinstance(store, ThrowawayStore) and isinstance(store, PreviewStore)
    assert store.options == {"k": 1}
    assert plugins.make_preview_store("inline", {}, BridgeConfig()).inline is True
    assert "throwaway" in plugins.store_names()


def test_throwaway_adapter_is_collected_and_chosen_for_its_fork(plugin_manager: pluggy.PluginManager) -> None:
    """Collected with the built-ins; select_adapter picks it only for a server it accepts."""
    adapters = Plugins(plugin_manager).protocol_adapters()
    fork = next(a for a in adapters if a.name == "throwaway-fork")
    assert isinstance(fork, ProtocolAdapter)
    assert len(adapters) == len(Plugins(get_plugin_manager()).protocol_adapters()) + 1  # + the installed ones
    forked = ServerInfo("0.12.1", True, True, False, {"fork": "throwaway"})
    stock = ServerInfo("0.12.1", True, True, False, {"system": {}})
    assert select_adapter(adapters, forked)[0] is fork
    assert select_adapter(adapters, stock)[0].name == "comfyui-0.7"


def test_unknown_store_names_the_known_ones(plugin_manager: pluggy.PluginManager) -> None:
    """A store no plugin makes is a PluginError that lists what exists."""
    with pytest.raises(PluginError, match=r"'nope'.*throwaway"):
        Plugins(plugin_manager).make_preview_store("nope", {}, BridgeConfig())


# Blocking ------------------------------------------------------------------------------


def test_disabled_blocks_an_entry_point_plugin_by_name() -> None:
    """``[plugins] disabled`` keeps an installed entry-point plugin out, and its store with it."""
    config = BridgeConfig(plugins=PluginsConfig(disabled=["contact_sheet"]))
    pm = get_plugin_manager(config)
    assert pm.is_blocked("contact_sheet") and pm.get_plugin("contact_sheet") is None
    assert "contact_sheet" not in Plugins(pm).store_names()
    with pytest.raises(PluginError, match="contact_sheet"):
        Plugins(pm).make_preview_store("contact_sheet", {}, config)
    assert get_plugin_manager(BridgeConfig()).get_plugin("contact_sheet") is not None  # control


def test_disabled_blocks_a_builtin_by_module_name() -> None:
    """A built-in is disabled by its module name; its stores go, the others stay."""
    config = BridgeConfig(plugins=PluginsConfig(disabled=["sidecar.plugins.builtin.previews_inline"]))
    pm = get_plugin_manager(config)
    assert pm.get_plugin("sidecar.plugins.builtin.previews_inline") is None
    stores = Plugins(pm).store_names()
    assert "inline" not in stores and "none" not in stores and "files" in stores
    with pytest.raises(PluginError, match="'inline'"):
        Plugins(pm).make_preview_store("inline", {}, config)


def test_a_disabled_plugin_is_not_even_imported(install_plugin: Callable[..., Path]) -> None:
    """Disabling a broken plugin lets the sidecar start: its module is never imported."""
    dist, entry_name, module, source = BROKEN
    install_plugin(dist, entry_name, module, source)
    pm = get_plugin_manager(BridgeConfig(plugins=PluginsConfig(disabled=[entry_name])))
    assert pm.is_blocked(entry_name)
    assert module not in sys.modules


# Failures name the plugin ------------------------------------------------------------------


def test_a_plugin_that_fails_to_import_names_itself_and_its_distribution(
    install_plugin: Callable[..., Path],
) -> None:
    """A module raising on import: PluginError with the entry point, distribution and cause."""
    dist, entry_name, module, source = BROKEN
    install_plugin(dist, entry_name, module, source)
    assert _entry(entry_name).dist.name == dist  # type: ignore[union-attr]
    with pytest.raises(PluginError) as caught:
        get_plugin_manager(BridgeConfig())
    message = str(caught.value)
    assert f"'{entry_name}'" in message
    assert f"{dist} 0.0.1" in message
    assert "refuses to import" in message
    assert isinstance(caught.value.__cause__, RuntimeError)


TYPO = (
    "comfy-bridge-typo",
    "typo_plugin",
    "comfy_bridge_typo_mod",
    """
    from sidecar.plugins import hookimpl

    @hookimpl
    def bridge_make_preview_stor(name, options, config):
        return None
    """,
)


def test_a_misspelled_hook_stops_the_manager_naming_hook_and_module(install_plugin: Callable[..., Path]) -> None:
    """A hookimpl for a hook that does not exist fails check_pending: PluginError, not pluggy's error."""
    install_plugin(*TYPO)
    with pytest.raises(PluginError) as caught:
        get_plugin_manager(BridgeConfig())
    message = str(caught.value)
    assert "unknown hook 'bridge_make_preview_stor'" in message
    assert "comfy_bridge_typo_mod" in message
    assert isinstance(caught.value.__cause__, pluggy.PluginValidationError)


def test_a_misspelled_hook_names_the_entry_point_and_distribution(install_plugin: Callable[..., Path]) -> None:
    """The message gives the name ``[plugins] disabled`` takes, and where the plugin came from."""
    install_plugin(*TYPO)
    with pytest.raises(PluginError) as caught:
        get_plugin_manager(BridgeConfig())
    message = str(caught.value)
    assert "'typo_plugin'" in message and "comfy-bridge-typo 0.0.1" in message, message


def test_a_hookimpl_with_an_unknown_argument_names_plugin_and_distribution(
    install_plugin: Callable[..., Path],
) -> None:
    """An implementation asking for an argument the spec lacks fails at registration."""
    install_plugin(
        "comfy-bridge-badargs",
        "badargs",
        "comfy_bridge_badargs_mod",
        """
        from sidecar.plugins import hookimpl

        @hookimpl
        def bridge_make_preview_store(name, options, config, loop):
            return None
        """,
    )
    with pytest.raises(PluginError) as caught:
        get_plugin_manager(BridgeConfig())
    message = str(caught.value)
    assert "'badargs'" in message and "comfy-bridge-badargs 0.0.1" in message and "loop" in message


@pytest.mark.parametrize(
    "command", [["run", "--instance", "x=http://127.0.0.1:9"], ["plugins", "--no-probe"]], ids=["run", "plugins"]
)
def test_a_broken_plugin_stops_the_cli_naming_it(
    command: list[str], install_plugin: Callable[..., Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``python -m sidecar run`` (and ``plugins``) exits non-zero at start-up, naming the plugin."""

    dist, entry_name, module, source = BROKEN
    site = install_plugin(dist, entry_name, module, source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    workdir = tmp_path / "cwd"  # no bridge.toml here
    workdir.mkdir()
    state = ["--state", str(workdir / "state.sqlite3")] if command[0] == "run" else []
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", *command, *state],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode != 0
    assert f"'{entry_name}'" in proc.stderr and dist in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


# The listing (comfy-bridge plugins) ------------------------------------------------------


def test_describe_lists_plugins_with_origin_and_hooks() -> None:
    """Every plugin with where it came from and the hooks it implements."""
    dist = importlib.metadata.distribution("comfy-bridge-contact-sheet")
    text = describe(BridgeConfig())
    assert f"contact_sheet  [entry point of comfy-bridge-contact-sheet {dist.version}]" in text
    assert "sidecar.plugins.builtin.adapters  [built-in]\n    hooks: bridge_protocol_adapters\n" in text
    assert (
        "sidecar.plugins.builtin.previews_inline  [built-in]\n    hooks: bridge_make_preview_store\n"
        "    preview stores: inline, none\n"
    ) in text
    assert "disabled: (none)" in text


def test_describe_shows_stores_adapters_and_instances() -> None:
    """Stores and the configured one; adapters with since; each instance's adapter or 'not probed'."""
    config = BridgeConfig(
        instances={"a": InstanceConfig(url="http://127.0.0.1:8188"), "b": InstanceConfig(url="http://10.0.0.2:8188")},
        previews=PreviewConfig(store="contact_sheet"),
    )
    text = describe(config, {"a": "comfyui-0.7"})
    # other plugins installed in the environment may add their stores: only these are this test's
    stores = re.search(r"^preview stores: (.*)\n  configured: contact_sheet\n", text, re.MULTILINE)
    assert stores and {"contact_sheet", "files", "inline", "none"} <= set(stores.group(1).split(", ")), text
    for adapter in BUILTIN_ADAPTERS:
        assert f"{adapter.name}" in text and f"since {'.'.join(map(str, adapter.since))}" in text
    lines = text.splitlines()
    assert any(line.split() == ["a", "http://127.0.0.1:8188", "comfyui-0.7"] for line in lines)
    assert any(line.split() == ["b", "http://10.0.0.2:8188", "not", "probed"] for line in lines)
    assert text.index("comfyui-0.0 ") < text.index("comfyui-0.3.45") < text.index("comfyui-0.7")


def test_describe_flags_disabled_plugins_and_a_store_nobody_makes() -> None:
    """A disabled plugin is listed as such; a configured store no plugin lists is called out."""
    config = BridgeConfig(
        plugins=PluginsConfig(disabled=["contact_sheet"]), previews=PreviewConfig(store="contact_sheet")
    )
    text = describe(config)
    assert "disabled: contact_sheet" in text
    assert "[entry point of comfy-bridge-contact-sheet" not in text  # other installed plugins may be listed
    assert "configured: contact_sheet  (no plugin lists it" in text
    assert "instances: (none configured" in text


def test_describe_raises_what_run_would(install_plugin: Callable[..., Path]) -> None:
    """A broken plugin fails the listing with the same PluginError."""
    install_plugin(*BROKEN)
    with pytest.raises(PluginError, match="broken_thing"):
        describe(BridgeConfig())
