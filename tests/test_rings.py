"""The pure rings (``sidecar/protocol``, ``sidecar/core``) import no I/O, clock or randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE_RINGS = ("protocol", "core")
FORBIDDEN = frozenset(
    {
        "asyncio",
        "websockets",
        "zmq",
        "aiohttp",
        "aiofiles",
        "sqlite3",
        "socket",
        "time",
        "random",
        "os",
        "pathlib",
        "io",
        "threading",
    }
)
PURE_FILES = sorted(p for ring in PURE_RINGS for p in (ROOT / "sidecar" / ring).rglob("*.py"))


def _imported(source: str, package: tuple[str, ...]) -> list[tuple[int, str]]:
    """``(line, absolute name)`` of every module or ``from`` name imported; relative ones resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join(base + ((node.module,) if node.module else ()))
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def forbidden_imports(source: str, package: tuple[str, ...]) -> list[str]:
    """Imports of a forbidden module, or of any ``sidecar`` module outside the pure rings."""
    problems = []
    for line, name in _imported(source, package):
        parts = name.split(".")
        if parts[0] in FORBIDDEN:
            problems.append(f"line {line}: {name}")
        elif parts[0] == "sidecar" and len(parts) > 1 and parts[1] not in PURE_RINGS:
            problems.append(f"line {line}: {name} (outside the pure rings)")
    return problems


def test_pure_rings_exist_and_have_modules() -> None:
    """The check below really looks at the protocol and core packages."""
    assert {p.parent.name for p in PURE_FILES} == set(PURE_RINGS)
    assert len(PURE_FILES) >= 8


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_imports_nothing_impure(path: Path) -> None:
    """No asyncio, sockets, files, clock, randomness or threads, and no import of the shell."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    assert forbidden_imports(path.read_text(encoding="utf-8"), package) == []


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("import asyncio", True),
        ("import os.path", True),
        ("from time import monotonic", True),
        ("from random import random as rnd", True),
        ("import json, pathlib", True),
        ("def f():\n    import threading", True),
        ("from ..instance import InstanceLoop", True),
        ("from .. import app", True),
        ("from sidecar import comfy_http", True),
        ("from ..protocol import comfy", False),
        ("from . import graph", False),
        ("from sidecar.protocol.wire import Event", False),
        ("import json, re, msgspec", False),
        ("from typing import Any", False),
    ],
)
def test_the_import_check_catches_every_form(source: str, bad: bool) -> None:
    """Plain, dotted, nested, ``from`` and relative imports (as if in ``sidecar/core``) are judged."""
    assert bool(forbidden_imports(source, ("sidecar", "core"))) is bad
