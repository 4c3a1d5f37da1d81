"""Credentials and TLS of an instance (``sidecar.credentials``): resolving, masking, refusing.

Fast unit tests, no sockets; the live ones (a simulated ComfyUI behind each kind of credential,
over TLS) are in ``test_credentials_live.py``.
"""

from __future__ import annotations

import base64
import logging
import ssl

import pytest

from sidecar.cli import main
from sidecar.config import BridgeConfig, InstanceConfig, loads, parse_instance_flag, validate
from sidecar.credentials import RedactingLogger, Secret, mask_url, resolve
from sidecar.errors import ConfigError
from sidecar.simulator.auth import SimAuth

SECRET = "s3cr3t-value-42"


def one(url: str = "http://127.0.0.1:8188", **keys: object) -> InstanceConfig:
    return InstanceConfig(url=url, **keys)  # type: ignore[arg-type]


def test_bearer_token_literal_and_from_the_environment():
    """``token`` and ``token_env`` both make ``Authorization: Bearer``; the secret is kept for masking."""
    literal = resolve("a", one(token=SECRET))
    from_env = resolve("a", one(token_env="COMFY_TOKEN"), {"COMFY_TOKEN": SECRET})
    for creds in (literal, from_env):
        assert creds.headers == {"Authorization": f"Bearer {SECRET}"}
        assert creds.redact(f"x {SECRET} y") == "x *** y"


@pytest.mark.parametrize(
    ("keys", "environ", "message"),
    [
        ({"token_env": "COMFY_TOKEN"}, {}, "'instances.a.token_env': environment variable COMFY_TOKEN is not set"),
        ({"token_env": "COMFY_TOKEN"}, {"COMFY_TOKEN": ""}, "environment variable COMFY_TOKEN is empty"),
        ({"token": SECRET, "token_env": "T"}, {"T": SECRET}, "set token or token_env, not both"),
        ({"username": "me"}, {}, "'instances.a.password': basic auth needs password (or password_env) too"),
        ({"password": SECRET}, {}, "'instances.a.username': basic auth needs username too"),
        ({"token": SECRET, "username": "me", "password": SECRET}, {}, "set token or username/password, not both"),
        ({"token": SECRET, "headers": {"authorization": SECRET}}, {}, "Authorization is also made by token"),
        ({"headers_env": {"X-Key": "NOPE"}}, {}, "'instances.a.headers_env': environment variable NOPE is not set"),
        ({"query_token": SECRET, "query_param": "clientId"}, {}, "'clientId' is already used"),
        ({"headers_env": {"X-Key": "K"}}, {"K": f"{SECRET}\r\nX: y"}, "header 'X-Key': empty, or a line break"),
        ({"ca_file": "ca.pem"}, {}, "'instances.a.ca_file': only for an https:// URL"),
        ({"tls_verify": False}, {}, "'instances.a.tls_verify': only for an https:// URL"),
    ],
)
def test_bad_credentials_are_config_errors_naming_the_key_never_the_secret(keys, environ, message):
    with pytest.raises(ConfigError) as caught:
        resolve("a", one(**keys), environ)
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_missing_variable_stops_loading_the_file_naming_the_variable(monkeypatch):
    monkeypatch.delenv("COMFY_BRIDGE_TEST_TOKEN", raising=False)
    text = '[instances.gpu]\nurl = "https://comfy.example.net"\ntoken_env = "COMFY_BRIDGE_TEST_TOKEN"\n'
    with pytest.raises(ConfigError, match="instances.gpu.token_env': environment variable COMFY_BRIDGE_TEST_TOKEN"):
        loads(text)
    monkeypatch.setenv("COMFY_BRIDGE_TEST_TOKEN", SECRET)
    assert loads(text).instances["gpu"].token_env == "COMFY_BRIDGE_TEST_TOKEN"


def test_basic_auth_from_keys_and_from_the_urls_userinfo():
    pair = base64.b64encode(f"me:{SECRET}".encode()).decode()
    by_keys = resolve("a", one(username="me", password_env="PW"), {"PW": SECRET})
    by_url = resolve("a", one(url=f"http://me:{SECRET}@127.0.0.1:8188/"))
    for creds in (by_keys, by_url):
        assert creds.headers == {"Authorization": f"Basic {pair}"}
        assert creds.base_url == "http://127.0.0.1:8188"
        assert SECRET not in creds.url and pair not in creds.redact(f"> Authorization: Basic {pair}")


def test_query_token_goes_on_every_request_and_the_websocket_url():
    creds = resolve("a", one(url="https://h.example:8443", query_token_env="Q", query_param="auth"), {"Q": SECRET})
    assert creds.params == {"auth": SECRET}
    assert creds.ws_url("cid") == f"wss://h.example:8443/ws?clientId=cid&auth={SECRET}"
    assert SECRET not in creds.url and SECRET not in repr(creds)


def test_special_characters_are_decoded_from_the_url_and_masked_in_both_forms():
    creds = resolve("a", one(url="http://me:p%40ss@h:1/", query_token="a b&c"))
    assert creds.headers["Authorization"] == "Basic " + base64.b64encode(b"me:p@ss").decode()
    assert creds.redact(creds.ws_url("cid")) == "ws://h:1/ws?clientId=cid&token=***"


def test_a_query_in_the_url_is_moved_to_every_request_and_masked():
    creds = resolve("a", one(url=f"http://127.0.0.1:8188/?token={SECRET}"))
    assert creds.base_url == "http://127.0.0.1:8188" and creds.params == {"token": SECRET}
    assert creds.redact(f"GET /ws?token={SECRET}") == "GET /ws?token=***"


def test_extra_headers_literal_and_from_the_environment_are_secrets():
    creds = resolve("a", one(headers={"X-One": "literal-1"}, headers_env={"X-Two": "TWO"}), {"TWO": SECRET})
    assert creds.headers == {"X-One": "literal-1", "X-Two": SECRET}
    assert creds.redact(f"literal-1 {SECRET}") == "*** ***"


def test_tls_ca_file_and_verification_off(tmp_path):
    """An https:// URL gets a context from ``ca_file``; ``tls_verify = false`` turns checking off."""
    assert resolve("a", one(url="https://h.example")).ssl is None  # the system's CAs, aiohttp's default
    off = resolve("a", one(url="https://h.example", tls_verify=False))
    assert off.insecure and off.ssl is not None and off.ssl.verify_mode == ssl.CERT_NONE
    with pytest.raises(ConfigError, match="'instances.a.ca_file': cannot load '.*missing.pem'"):
        resolve("a", one(url="https://h.example", ca_file=str(tmp_path / "missing.pem")))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8188", "http://127.0.0.1:8188"),
        (f"http://me:{SECRET}@h:1/x", "http://***@h:1/x"),
        (f"https://h/?token={SECRET}&a=b", "https://h/?token=***&a=***"),
        (f"http://[::1/?token={SECRET}", "http://[::1/?token=***"),  # does not parse: masked all the same
    ],
)
def test_mask_url(url, shown):
    assert mask_url(url) == shown


def test_config_reprs_mask_every_secret():
    """``repr`` of the instance table, of the whole config and of a Secret show no secret."""
    inst = one(url=f"http://u:{SECRET}@h:1/?t={SECRET}", token=SECRET, headers={"X-Key": SECRET}, query_token=SECRET)
    config = BridgeConfig(instances={"a": inst})
    for text in (repr(inst), repr(config), str(config), repr(Secret(SECRET)), str(Secret(SECRET))):
        assert SECRET not in text
    assert "token=Secret('***')" in repr(inst)
    assert Secret(SECRET).reveal() == SECRET


def test_url_errors_do_not_quote_the_secret():
    for text in (f'url = "ftp://u:{SECRET}@h/"', f'url = "http://u:{SECRET}@h:99999/"'):
        with pytest.raises(ConfigError) as caught:
            loads(f"[instances.a]\n{text}\n")
        assert SECRET not in str(caught.value) and "instances.a.url" in str(caught.value)


def test_the_websocket_librarys_log_lines_are_redacted(caplog):
    creds = resolve("a", one(token=SECRET))
    log = RedactingLogger(logging.getLogger("test.redacting"), creds)
    with caplog.at_level(logging.DEBUG, logger="test.redacting"):
        log.debug("> %s: %s", "Authorization", creds.headers["Authorization"])
    assert [r.getMessage() for r in caplog.records] == ["> Authorization: Bearer ***"]


@pytest.mark.parametrize(
    ("auth", "header", "query", "refused"),
    [
        (SimAuth(token="t"), "Bearer t", None, None),
        (SimAuth(token="t"), "Bearer x", None, "bearer"),
        (SimAuth(token="t"), None, None, "bearer"),
        (SimAuth(basic=("u", "p")), "Basic " + base64.b64encode(b"u:p").decode(), None, None),
        (SimAuth(basic=("u", "p")), "Basic " + base64.b64encode(b"u:x").decode(), None, "basic"),
        (SimAuth(basic=("u", "p")), "Basic !!", None, "basic"),
        (SimAuth(query_token="q"), None, "q", None),
        (SimAuth(query_token="q"), None, "x", "query"),
    ],
)
def test_simulator_checks_each_credential(auth, header, query, refused):
    assert auth.check(header, query) == refused


def test_a_file_with_every_credential_key_loads_and_survives_the_flag_check(monkeypatch):
    """Every new key in TOML; ``validate`` (run when flags are given) decodes the same values again."""
    monkeypatch.setenv("CB_UNIT_TOKEN", SECRET)
    text = (
        '[instances.a]\nurl = "http://127.0.0.1:8188"\ntoken_env = "CB_UNIT_TOKEN"\nquery_token = "q-1"\n'
        'query_param = "auth"\nheaders = { "X-One" = "1" }\nheaders_env = { "X-Two" = "CB_UNIT_TOKEN" }\n'
        '[instances.b]\nurl = "https://127.0.0.1:8443"\nusername = "me"\npassword_env = "CB_UNIT_TOKEN"\n'
        "tls_verify = false\n"
    )
    config = loads(text)
    assert validate(config, "--router") == config
    assert resolve("b", config.instances["b"]).insecure


def test_cli_names_the_missing_variable_and_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("CB_UNIT_ABSENT", raising=False)
    path = tmp_path / "bridge.toml"
    path.write_text('[instances.a]\nurl = "http://127.0.0.1:8188"\ntoken_env = "CB_UNIT_ABSENT"\n', encoding="utf-8")
    assert main(["plugins", "--config", str(path), "--no-probe"]) == 2
    assert "key 'instances.a.token_env': environment variable CB_UNIT_ABSENT is not set" in capsys.readouterr().err


def test_instance_flags_with_credentials_are_masked_in_errors():
    with pytest.raises(ConfigError) as caught:
        parse_instance_flag(f"a b=http://me:{SECRET}@h:1/?token={SECRET}")
    assert SECRET not in str(caught.value) and "name must be" in str(caught.value)
    assert parse_instance_flag(f"a=http://me:{SECRET}@h:1") == ("a", f"http://me:{SECRET}@h:1")
