"""README.md stays in step with the code: the configuration table and the test command.

The table must name every key of every ``bridge.toml`` table (walked from the msgspec
Structs of ``BridgeConfig``) with its real default, and nothing else; the quick start's
test command must be the one ``.ci/run`` runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_args, get_origin

import msgspec
import pytest

from sidecar.config import BridgeConfig

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")

REQUIRED = "—"  # a key without a default
UNSET = "unset"  # a key whose default is to leave it out (None)


def readme_section(title: str) -> str:
    """The text under ``## <title>`` up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def documented() -> dict[str, str]:
    """Configuration table rows: key -> default cell, as written."""
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+?) \|", readme_section("Configuration: `bridge.toml`"), re.MULTILINE)
    keys = [key for key, _ in rows]
    assert len(keys) == len(set(keys)), f"keys listed twice: {sorted({k for k in keys if keys.count(k) > 1})}"
    return dict(rows)


def render(value: Any) -> str:
    """A default as the README writes it: a TOML value in backticks."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, dict) and not value:
        text = "{}"
    elif isinstance(value, list) and not value:
        text = "[]"
    else:
        raise AssertionError(f"no README rendering for default {value!r}")
    return f"`{text}`"


def default_of(field: msgspec.structs.FieldInfo) -> str:
    if field.required:
        return REQUIRED
    value = field.default if field.default is not msgspec.NODEFAULT else field.default_factory()
    return UNSET if value is None else render(value)


def config_keys() -> dict[str, str]:
    """Every key of every table of bridge.toml -> its default as the README must show it."""
    keys: dict[str, str] = {}
    for table in msgspec.structs.fields(BridgeConfig):
        kind = table.type
        if get_origin(kind) is dict:  # [instances.NAME]: a table per name
            struct, prefix = get_args(kind)[1], f"{table.encode_name}.NAME"
        else:
            struct, prefix = kind, table.encode_name
        assert isinstance(struct, type) and issubclass(struct, msgspec.Struct), table.name
        for field in msgspec.structs.fields(struct):
            if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):  # [zmq.curve]
                for inner in msgspec.structs.fields(field.type):
                    keys[f"{prefix}.{field.encode_name}.{inner.encode_name}"] = default_of(inner)
            else:
                keys[f"{prefix}.{field.encode_name}"] = default_of(field)
    return keys


CONFIG = config_keys()


def test_walk_finds_the_tables() -> None:
    """Guards the walk itself: the tables and keys the design names are seen."""
    assert {"instances.NAME.url", "zmq.router", "backoff.max_s", "recovery.resubmit_lost", "state.path"} <= set(CONFIG)
    assert "zmq.curve.clients_dir" in CONFIG and "zmq.curve" not in CONFIG  # a table inside [zmq]


@pytest.mark.parametrize("key", list(CONFIG))
def test_every_config_key_is_in_the_readme_table_with_its_default(key: str) -> None:
    table = documented()
    assert key in table, f"README.md configuration table lacks `{key}`"
    assert table[key] == CONFIG[key], f"`{key}`: README says {table[key]}, the code's default is {CONFIG[key]}"


def test_readme_table_lists_no_key_the_config_lacks() -> None:
    extra = set(documented()) - set(CONFIG)
    assert not extra, f"README.md documents keys bridge.toml does not have: {sorted(extra)}"


def allowed_cells() -> dict[str, str]:
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+? \| ([^|]+?) \|", readme_section("Configuration: `bridge.toml`"), re.M)
    return dict(rows)


@pytest.mark.parametrize("key", list(CONFIG))
def test_readme_table_shows_each_keys_allowed_values(key: str) -> None:
    """The "allowed" column says the rule the key's type declares (sidecar.config.rule)."""
    from sidecar.config import key_types, rule

    kind = key_types()[key.replace(".NAME.", ".<name>.")]
    allowed, cell = rule(kind), allowed_cells()[key]
    if isinstance(kind, msgspec.inspect.LiteralType):
        assert all(f"`{value}`" in cell for value in kind.values), cell
    elif isinstance(kind, msgspec.inspect.StrType) and kind.min_length:
        assert "non-empty" in cell, cell
    elif allowed is not None:
        assert f"`{allowed}`" in cell, f"`{key}`: README says {cell}, the type says {allowed}"


def test_readme_table_follows_the_code_order() -> None:
    """Rows come in the order of the Structs, so the table reads like bridge.toml."""
    assert [k for k in documented() if k in CONFIG] == list(CONFIG)


def ci_command() -> str:
    """The last command line of .ci/run (comments, blank lines and shell setup skipped)."""
    lines = [
        line.strip()
        for line in CI.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and not re.match(r"(set|cd) ", line.strip())
    ]
    assert lines, ".ci/run runs nothing"
    return lines[-1]


def test_readme_quick_start_runs_the_ci_test_command() -> None:
    """The README's test command is, character for character, the one CI runs."""
    command = ci_command()
    assert "pytest" in command, command
    blocks = re.findall(r"```sh\n(.*?)\n```", readme_section("Quick start (fresh clone, Python ≥ 3.11)"), re.DOTALL)
    assert any(command in block.splitlines() for block in blocks), f"README quick start lacks {command!r}"


def test_readme_quick_start_keeps_the_run_command() -> None:
    """CI greps the two quick-start commands; the first one is checked here too."""
    assert "\npython3 -m pip install -e . && comfy-bridge run\n" in readme_section(
        "Quick start (fresh clone, Python ≥ 3.11)"
    )


def test_readme_exit_codes_are_the_clis() -> None:
    """The exit-code table under "Command line" lists exactly the codes the CLI uses, with their meaning."""
    from sidecar.cli_client import EXIT_CODES

    section = readme_section("Command line").split("### Exit codes", 1)
    assert len(section) == 2, "README.md's Command line section has no '### Exit codes' table"
    rows = dict(re.findall(r"^\| `(\d+)` \| (.+?) \|$", section[1], re.MULTILINE))
    assert {int(code) for code in rows} == set(EXIT_CODES)


def test_ci_runs_pinned_linters_before_the_suite() -> None:
    """.ci/run runs `ruff check` and `mypy --strict sidecar/`, at versions pinned in the dev extra."""
    import tomllib

    lines = [line.strip() for line in CI.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    test_line = lines.index(ci_command())
    for command in ("ruff check sidecar tests bench", "mypy --strict sidecar/"):
        assert command in lines[:test_line], f".ci/run does not run {command!r} before the suite"
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    pins = {re.split(r"[=<>~!]", spec)[0]: spec for spec in dev["dev"]}
    for tool in ("ruff", "mypy"):
        assert "==" in pins.get(tool, ""), f"{tool} is not pinned in the dev extra: {pins.get(tool)}"
