"""Issue 13, the client side's pure parts: which endpoints a command talks to, which instance of a
fleet a submit goes to, and the proxy's usage errors (real process, no sidecar needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.cli_client import DEFAULT_PUB, DEFAULT_ROUTER, NoSidecar
from sidecar.errors import ConfigError
from sidecar.fleet import endpoints, pick_instance


def args(**values: object) -> argparse.Namespace:
    return argparse.Namespace(**{"router": None, "pub": None, "config": None, **values})


def test_endpoints_come_from_the_flags_else_the_fleet_tables_else_the_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert endpoints(args()) == ([DEFAULT_ROUTER], [DEFAULT_PUB])
    assert endpoints(args(router=["r1", "r2"], pub=["p1", "p2"])) == (["r1", "r2"], ["p1", "p2"])
    assert endpoints(args(router=["r1", "r2"], pub=["proxy"])) == (["r1", "r2"], ["proxy"])
    with pytest.raises(ConfigError, match="one --pub per --router"):
        endpoints(args(router=["r1", "r2", "r3"], pub=["p1", "p2"]))
    with pytest.raises(ConfigError, match="give a --pub for each"):
        endpoints(args(router=["r1", "r2"]), need_pubs=True)
    (tmp_path / "bridge.toml").write_text(
        '[fleet.a]\nrouter = "tcp://a:5555"\npub = "tcp://a:5556"\n[fleet.b]\nrouter = "tcp://b:5555"\npub = "tcp://b:5556"\n'
    )
    assert endpoints(args()) == (["tcp://a:5555", "tcp://b:5555"], ["tcp://a:5556", "tcp://b:5556"])
    assert endpoints(args(pub=["tcp://proxy:7000"])) == (["tcp://a:5555", "tcp://b:5555"], ["tcp://proxy:7000"])


def health(sidecar: str, *instances: tuple[str, str, int, int]) -> dict[str, object]:
    views = [{"name": n, "state": s, "queue_remaining": q, "in_flight": f} for n, s, q, f in instances]
    return {"ok": True, "result": {"sidecar": sidecar, "instances": views}}


def test_a_submit_goes_to_the_least_loaded_connected_instance_of_the_fleet() -> None:
    healths = {
        "ra": health("a", ("a1", "connected", 1, 1), ("a2", "disconnected", 0, 0)),
        "rb": health("b", ("b1", "connected", 0, 1), ("b2", "connected", 1, 1)),
        "rc": NoSidecar("no sidecar at rc"),
    }
    assert pick_instance(healths, None) == ("rb", "b1")  # a2 is idle but not connected; rc is down
    assert pick_instance(healths, "a2") == ("ra", "a2")  # named: its sidecar, whatever its load
    with pytest.raises(ConfigError, match="no sidecar of the fleet has it"):
        pick_instance(healths, "z9")
    with pytest.raises(NoSidecar):
        pick_instance({"rc": NoSidecar("no sidecar at rc")}, None)
    with pytest.raises(ConfigError, match="no instance of the fleet is connected"):
        pick_instance({"ra": health("a", ("a1", "waiting", 0, 0))}, None)


def test_proxy_usage_errors_name_what_is_wrong(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["proxy", "--xpub", "tcp://127.0.0.1:*"]) == 2
    assert "--xsub" in capsys.readouterr().err
    assert main(["proxy", "--xsub", "tcp://127.0.0.1:1", "--xpub", "nonsense"]) == 2
    assert "cannot bind nonsense" in capsys.readouterr().err
