"""docs/plugins.md stays in step with the hookspecs and the Protocols (datasette's test_docs).

Hookspecs are found the way pluggy finds them (the ``comfy_bridge_spec`` marker), not from
a list kept by hand, so a new hook without a docs section fails here. Signatures are
rendered by :func:`inspect.signature` with each annotation shown as the string that
``from __future__ import annotations`` keeps (``name: str``, not ``name: 'str'``).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sidecar.core.versions import Capabilities
from sidecar.plugins import NAME, api, hookspecs

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ROOT / "sidecar"
DOC = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
SPEC_ATTR = f"{NAME}_spec"


class _Annotation:
    """An annotation string that :func:`inspect.formatannotation` prints without quotes."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def rendered(function: Any) -> str:
    """``(a: T, b: U) -> R``: ``inspect.signature`` with the annotation strings as written."""
    signature = inspect.signature(function)
    for param in signature.parameters.values():
        if param.annotation is not inspect.Parameter.empty:
            assert isinstance(param.annotation, str), f"{function.__qualname__}: annotations must stay strings"
    params = [
        p if p.annotation is inspect.Parameter.empty else p.replace(annotation=_Annotation(p.annotation))
        for p in signature.parameters.values()
    ]
    returns = signature.return_annotation
    if returns is not inspect.Signature.empty:
        returns = _Annotation(returns)
    return str(signature.replace(parameters=params, return_annotation=returns))


def hookspec_functions() -> dict[str, Any]:
    """Every function in ``sidecar.plugins.hookspecs`` that carries the hookspec marker."""
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if getattr(function, SPEC_ATTR, None) is not None
    }


HOOKS = hookspec_functions()


def section(heading: str) -> str:
    """The text under the ``## heading`` line, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", DOC, flags=re.MULTILINE | re.DOTALL)
    assert match is not None, f"docs/plugins.md has no '## {heading}' section"
    return match.group(1)


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def protocol_methods(protocol: type) -> dict[str, Any]:
    """The methods a Protocol class declares itself (not those of ``Protocol``/``object``)."""
    return {
        name: value for name, value in vars(protocol).items() if not name.startswith("_") and inspect.isfunction(value)
    }


def test_hookspecs_are_found() -> None:
    """The marker lookup finds exactly the hooks hookspecs.__all__ exports, all prefixed."""
    assert set(HOOKS) == set(hookspecs.__all__)
    assert HOOKS, "no hookspec found: the marker name changed?"
    assert all(name.startswith("bridge_") for name in HOOKS)


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_section_with_its_exact_signature(name: str) -> None:
    """``## <hook>`` exists and its code block shows the marker and ``def`` line exactly."""
    function = HOOKS[name]
    text = section(name)
    opts = getattr(function, SPEC_ATTR)
    decorator = "@hookspec(firstresult=True)" if opts["firstresult"] else "@hookspec"
    expected = f"{decorator}\ndef {name}{rendered(function)}:"
    blocks = code_blocks(text)
    assert blocks, f"## {name} has no python code block"
    assert any(expected in block for block in blocks), (
        f"## {name}: signature out of date; the docs must show\n{expected}"
    )


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_section_says_how_results_combine(name: str) -> None:
    """A firstresult hook's section says so; a collected hook's section says it collects."""
    text = section(name)
    if getattr(HOOKS[name], SPEC_ATTR)["firstresult"]:
        assert "**firstresult**" in text
    else:
        assert "**Collected**" in text
    assert "**When it runs:**" in text and "**Returns**" in text


def test_docs_document_no_hook_that_does_not_exist() -> None:
    """Every ``## bridge_*`` section is a real hook (a renamed hook leaves no stale section)."""
    documented = set(re.findall(r"^## (bridge_\w+)$", DOC, flags=re.MULTILINE))
    assert documented == set(HOOKS)


def test_rendering_matches_the_source_text() -> None:
    """The rendered signature is what the source says (so the test compares like with like)."""
    source = inspect.getsource(hookspecs.bridge_make_preview_store)
    assert f"def bridge_make_preview_store{rendered(hookspecs.bridge_make_preview_store)}:" in source


@pytest.mark.parametrize("protocol", [api.PreviewStore, api.OutputStore, api.ProtocolAdapter], ids=lambda p: p.__name__)
def test_every_protocol_member_is_documented(protocol: type) -> None:
    """Each method appears with its signature (``async`` where it is), and each attribute by name."""
    text = section(f"The {protocol.__name__} protocol")
    methods = protocol_methods(protocol)
    assert methods, f"{protocol.__name__} declares no methods?"
    for name, function in methods.items():
        prefix = "async def" if inspect.iscoroutinefunction(function) else "def"
        line = f"{prefix} {name}{rendered(function)}"
        assert line in text, f"{protocol.__name__}.{name}: the docs must show `{line}`"
        assert f"- `{name}(" in text, f"{protocol.__name__}.{name}: no bullet says when it is called"
    for attribute in protocol.__annotations__:
        assert f"    {attribute}: " in text and f"- `{attribute}`" in text, (
            f"{protocol.__name__}.{attribute} is not documented"
        )


@pytest.mark.parametrize(
    "needle",
    [
        "[project.entry-points.comfy_bridge]",
        "## Quick start",
        "## How an adapter is chosen",
        "## Disabling plugins",
        "[plugins]\ndisabled = [",
        "## Testing your plugin",
        "check_pending()",
        "comfy-bridge simulate",
        "## Compatibility policy",
        "warn_on_impl",
    ],
)
def test_required_topics_are_covered(needle: str) -> None:
    """The guide has what STYLE.md §26 asks of it."""
    assert needle in DOC


def test_quick_start_is_short() -> None:
    """The quick start stays a quick start: its code fits in about ten lines of config and code."""
    text = section("Quick start")
    code = [
        line
        for block in re.findall(r"^```\w*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
        for line in block.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(code) <= 14, code  # complete enough to install and load as written (issue 11)


def _capabilities_read() -> set[str]:
    """Capabilities fields the sidecar reads (``<...>.caps.<field>``), outside the adapters that make them."""
    makers = {SIDECAR / "plugins" / "builtin" / "adapters.py", SIDECAR / "core" / "versions.py"}
    read: set[str] = set()
    for path in SIDECAR.rglob("*.py"):
        if path in makers:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                owner = node.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
                if name == "caps":
                    read.add(node.attr)
    return read


def test_what_an_adapter_decides_lists_every_capability_and_the_code_reads_exactly_those_it_says_decide():
    """Each Capabilities field has a row; a field the doc calls deprecated is never read, every other one is."""
    text = section("What an adapter decides")
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", text, flags=re.MULTILINE))
    fields = [f.name for f in msgspec.structs.fields(Capabilities)]
    assert sorted(rows) == sorted(fields), "the table must have one row per Capabilities field"
    deprecated = {name for name, meaning in rows.items() if meaning.startswith("deprecated")}
    read = _capabilities_read()
    assert read & deprecated == set(), f"documented as deprecated but read: {sorted(read & deprecated)}"
    assert set(fields) - deprecated <= read, (
        f"documented as deciding but never read: {sorted(set(fields) - deprecated - read)}"
    )
    for name in deprecated:  # a deprecated field must have a default, so adapters may leave it out
        field = next(f for f in msgspec.structs.fields(Capabilities) if f.name == name)
        assert field.default is not msgspec.NODEFAULT, name


def test_the_built_in_adapters_named_in_the_docs_are_the_built_in_adapters():
    """docs/plugins.md names every built-in adapter, and no other."""
    from sidecar.plugins.builtin.adapters import BUILTIN_ADAPTERS

    text = section("bridge_protocol_adapters")
    named = set(re.findall(r"`(comfyui-[\d.]+)`", text))
    assert named == {a.name for a in BUILTIN_ADAPTERS}


def quick_start_files() -> dict[str, str]:
    """The quick start's code blocks, by the file each one's first comment names."""
    section = DOC.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    files = {}
    for text in re.findall(r"```(?:toml|python)\n(.*?)```", section, re.DOTALL):
        first = text.splitlines()[0]
        match = re.match(r"# (\S+\.(?:toml|py))\b", first)
        assert match, f"a quick-start block does not name its file: {first!r}"
        files[match.group(1)] = text
    return files


def test_the_quick_start_example_installs_as_written_and_the_suite_passes_with_it(tmp_path: Path) -> None:
    """docs/plugins.md's pyproject.toml and module, pip-installed as written (issue 11: it had no
    version and did not install) into a venv over this environment: `comfy-bridge plugins` lists it
    with its store, and the plugin manager's tests still pass with a third-party plugin installed."""
    import os
    import subprocess
    import sys

    files = quick_start_files()
    assert set(files) == {"pyproject.toml", "comfy_bridge_myplugin/__init__.py"}, set(files)
    project = tmp_path / "myplugin"
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text, encoding="utf-8")
    venv = tmp_path / "venv"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def run(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)

    made = run(sys.executable, "-m", "venv", "--system-site-packages", str(venv))
    assert made.returncode == 0, made.stderr
    python = str(venv / "bin" / "python")
    installed = run(python, "-m", "pip", "install", "-q", "-e", ".", cwd=project)  # the doc's command
    assert installed.returncode == 0, installed.stderr
    listing = run(python, "-m", "sidecar", "plugins", "--no-probe")
    assert listing.returncode == 0, listing.stderr
    assert "myplugin  [entry point of comfy-bridge-myplugin 0.1.0]" in listing.stdout, listing.stdout
    assert re.search(r"^preview stores: .*\bmine\b", listing.stdout, re.MULTILINE), listing.stdout
    one_worker = ("-n", "0")  # the suite's addopts ask for two; this nested run is small
    test_file = "tests/plugins/test_manager.py"
    suite = run(python, "-m", "pytest", "-q", *one_worker, "-p", "no:cacheprovider", test_file, cwd=ROOT)
    assert suite.returncode == 0, suite.stdout[-3000:]
