"""Start-up stays light (issue 9: `ping` answered within 1 s of process start): what `comfy-bridge run`
imports before its sockets serve leaves out aiohttp (its client imports in 0.15-0.25 s, loaded at an
instance's first HTTP call), the simulated ComfyUI's server and the Prometheus endpoint."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("aiohttp", "sidecar.simulator.server", "sidecar.metrics", "prometheus_client")


def test_the_sidecar_imports_no_heavy_module_before_it_serves() -> None:
    code = (
        "import json, sys\n"
        "import sidecar.cli, sidecar.app, sidecar.instance\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == []


def test_the_simulator_package_still_offers_its_server_on_first_use() -> None:
    from sidecar import simulator

    assert simulator.SimServer.__name__ == "SimServer"
    assert callable(simulator.serve)
