"""Config values are checked by the rules their types declare (msgspec ``Meta``/``Literal``).

The bad values are generated from the Structs (``sidecar.config.key_types``), not listed by hand,
so a key added later is covered as soon as it exists; a numeric key without a rule fails here.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec
import pytest
import tomli_w

from sidecar.config import BridgeConfig, RecoveryConfig, SimVersion, key_types, loads, rule, validate
from sidecar.errors import ConfigError
from sidecar.simulator.versions import VERSIONS

from .test_cli import run_cli

KEYS = key_types()
Inspect = msgspec.inspect


def bad_values(kind: Any) -> list[tuple[Any, bool]]:
    """Values outside a key's rule (True) and of a wrong type (False)."""
    out: list[tuple[Any, bool]] = []
    if isinstance(kind, (Inspect.IntType, Inspect.FloatType)):
        step = 1 if isinstance(kind, Inspect.IntType) else 0.001
        if kind.gt is not None:
            out.append((kind.gt, True))
        if kind.ge is not None:
            out.append((kind.ge - step, True))
        if kind.lt is not None:
            out.append((kind.lt, True))
        if kind.le is not None:
            out.append((kind.le + step, True))
        out.append(("many", False))
    elif isinstance(kind, Inspect.LiteralType):
        out += [("LOUD", True), (3, False)]
    elif isinstance(kind, Inspect.StrType):
        if kind.min_length is not None:
            out.append(("", True))
        out.append((7, False))
    elif isinstance(kind, Inspect.BoolType):
        out.append(("yes", False))
    else:  # tables and lists
        out.append((7, False))
    return out


def document(key: str, value: Any) -> dict[str, Any]:
    """A config dict that sets ``key`` to ``value`` (an instance gets its required url, a fleet member
    its endpoints)."""
    parts = key.split(".")
    if parts[0] == "instances":
        inst = {"url": "http://127.0.0.1:8188", parts[2]: value}
        return {"instances": {"a": inst}}
    if parts[0] == "fleet":  # a member needs both endpoints
        member = {"router": "tcp://127.0.0.1:5555", "pub": "tcp://127.0.0.1:5556", parts[2]: value}
        return {"fleet": {"a": member}}
    for part in reversed(parts):  # zmq.curve.clients_dir -> {"zmq": {"curve": {"clients_dir": value}}}
        value = {part: value}
    return dict(value)


CASES = [
    pytest.param(key, value, ruled, id=f"{key}={value!r}")
    for key, kind in KEYS.items()
    for value, ruled in bad_values(kind)
]


def test_every_numeric_key_declares_its_range():
    """A number without a rule would take 0 or -1 silently (check_s = 0 was a busy loop)."""
    numeric = [k for k, t in KEYS.items() if isinstance(t, (Inspect.IntType, Inspect.FloatType))]
    assert len(numeric) > 15
    assert [k for k in numeric if rule(KEYS[k]) is None] == []


def test_simulated_versions_are_the_simulators():
    assert set(get_args(SimVersion)) == set(VERSIONS)


@pytest.mark.parametrize(("key", "value", "ruled"), CASES)
def test_every_key_refuses_a_bad_value_naming_key_and_rule(key, value, ruled):
    with pytest.raises(ConfigError) as caught:
        loads(tomli_w.dumps(document(key, value)), "bridge.toml")
    message = str(caught.value)
    assert message.startswith(f"bridge.toml: key '{key}': "), message
    allowed = rule(KEYS[key])
    if allowed:
        assert f"must be {allowed}" in message, message
    if ruled:
        assert f"(got {value!r})" in message, message


def test_the_issues_examples_read_well():
    for text, said in [
        ("[recovery]\ncheck_s = 0", "key 'recovery.check_s': must be > 0 (got 0)"),
        ("[zmq]\nheartbeat_s = 100", "key 'zmq.heartbeat_s': must be >= 0.01 and <= 60 (got 100)"),
        ('[log]\nlevel = "LOUD"', "key 'log.level': must be one of 'DEBUG', 'ERROR', 'INFO', 'WARNING' (got 'LOUD')"),
        ("[backoff]\nmax_s = 0.01", "key 'backoff.max_s': must be >= backoff.initial_s (0.1) (got 0.01)"),
        ('[instances."a b"]\nurl = "http://127.0.0.1:1"', "instance name 'a b': use 1-64 letters"),
    ]:
        with pytest.raises(ConfigError) as caught:
            loads(text)
        assert said in str(caught.value)


def test_the_defaults_keep_the_rules():
    assert validate(BridgeConfig(), "defaults") == BridgeConfig()


def test_a_config_built_in_code_is_checked_by_the_same_rules():
    """Flags are laid over the file with ``structs.replace``, which msgspec does not check: validate does."""
    bad = msgspec.structs.replace(BridgeConfig(), recovery=RecoveryConfig(check_s=0))
    with pytest.raises(ConfigError) as caught:
        validate(bad, "--router")
    assert str(caught.value) == "--router: key 'recovery.check_s': must be > 0 (got 0)"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[recovery]\ncheck_s = 0\n", "key 'recovery.check_s': must be > 0 (got 0)"),
        ("[cancel]\npoll_s = 0\n", "key 'cancel.poll_s': must be > 0 (got 0)"),
        ("[submit]\nhttp_timeout_s = 0\n", "key 'submit.http_timeout_s': must be > 0 (got 0)"),
        ("[submit]\nhistory_attempts = -3\n", "key 'submit.history_attempts': must be >= 1 (got -3)"),
        ("[cancel]\nconfirm_timeout_s = -5\n", "key 'cancel.confirm_timeout_s': must be > 0 (got -5)"),
        ("[zmq]\npub_hwm = -1\n", "key 'zmq.pub_hwm': must be >= 1 (got -1)"),
        ('[log]\nlevel = "LOUD"\n', "key 'log.level': must be one of"),
        ('[simulator]\nversion = "9.9"\n', "key 'simulator.version': must be one of '0.0.2'"),
    ],
)
async def test_run_refuses_the_issues_bad_values(tmp_path, text, said):
    """`run --config FILE` exits 2 naming the key, the rule and the value (each was accepted before)."""
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    code, _, err = await run_cli("run", "--config", str(path))
    assert code == 2, err
    assert f"comfy-bridge: config error: {path}: {said}" in err


@pytest.mark.parametrize(
    ("flag", "said"),
    [
        ("a b=http://127.0.0.1:8188", "name must be 1-64 letters, digits, '-' or '_'"),
        ("a=ftp://127.0.0.1:8188", "key 'instances.a.url'"),
        ("a=http://127.0.0.1:99999", "has a bad port"),
    ],
)
async def test_run_refuses_bad_instance_flags(tmp_path, flag, said):
    code, _, err = await run_cli("run", "--instance", flag, cwd=tmp_path)
    assert code == 2 and said in err, err


async def test_log_level_flag_is_the_configs_rule(tmp_path):
    code, _, err = await run_cli("--log-level", "LOUD", "run", cwd=tmp_path)
    assert code == 2 and "DEBUG" in err and "WARNING" in err, err
