"""``safefs keys create|list|revoke``, through a running gateway and straight to its database.

The first test runs the real command in child processes; the others call the same entry point
in this process (the ``safefs_env`` fixture points this process at the test's folders too),
which keeps the file fast.
"""

from __future__ import annotations

import json
import re

import pytest

from safefs.cli import main

from .test_chain import ChainKey, assert_error


def keys(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run ``safefs keys ARGS`` in this process: (exit status, stdout, stderr)."""
    try:
        status = main(["keys", *args])
    except SystemExit as exc:  # argparse rejected the flags
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def keys_json(capsys: pytest.CaptureFixture, *args: str):
    status, out, err = keys(capsys, *args, "--json")
    assert status == 0, err
    return json.loads(out)


def test_create_list_revoke_through_the_gateway(gateway, safefs_env):
    result = safefs_env.run_cli("keys", "create", "--org", "acme", "--json")
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert set(created) == {"key", "secret"}
    assert re.fullmatch(r"ALTR-[0-9A-F]{32}", created["key"])
    assert re.fullmatch(r"[0-9a-f]{64}", created["secret"])
    key = ChainKey(gateway.url, created["key"], created["secret"])
    token = key.put_token(b"made with a CLI key")
    assert key.get(token).content == b"made with a CLI key"

    result = safefs_env.run_cli("keys", "list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    [entry] = listing["keys"]
    assert entry["key"] == created["key"] and entry["org"] == "acme"
    assert entry["read"] is True and entry["write"] is True
    assert listing["orgs"] == [{"name": "acme", "cap": None, "used": len(b"made with a CLI key")}]
    assert created["secret"] not in result.stdout

    result = safefs_env.run_cli("keys", "revoke", created["key"])
    assert result.returncode == 0, result.stderr
    assert created["key"] in result.stdout
    assert_error(key.put(b"after revocation"), 401, "unauthorized")

    again = safefs_env.run_cli("keys", "revoke", created["key"])
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "no chainAPI key" in again.stderr


def test_permissions_and_cap_flags(gateway, capsys):
    status, out, err = keys(capsys, "create", "--org", "reader co", "--read", "--cap", "1000")
    assert status == 0, err
    key_id = re.search(r"ALTR-[0-9A-F]{32}", out)[0]
    secret = re.search(r"\b[0-9a-f]{64}\b", out)[0]
    assert "shown only this once" in out
    writer = keys_json(capsys, "create", "--org", "reader co", "--write")

    listing = keys_json(capsys, "list")
    permissions = {k["key"]: (k["read"], k["write"]) for k in listing["keys"]}
    assert permissions == {key_id: (True, False), writer["key"]: (False, True)}
    assert listing["orgs"] == [{"name": "reader co", "cap": 1000, "used": 0}]

    assert_error(ChainKey(gateway.url, key_id, secret).put(b"x"), 403, "forbidden")
    writer_key = ChainKey(gateway.url, writer["key"], writer["secret"])
    assert_error(writer_key.put(b"y" * 1001), 400, "bad_request")

    status, out, _ = keys(capsys, "list")
    assert status == 0
    assert key_id in out and "reader co: 0 bytes stored (cap 1000)" in out
    assert secret not in out


def test_keys_made_before_the_gateway_starts(gateway_factory, safefs_env, capsys):
    """With no gateway running, the commands write the state database themselves."""
    assert main(["account", "init", "--json"]) == 0
    capsys.readouterr()
    created = keys_json(capsys, "create", "--org", "early")
    doomed = keys_json(capsys, "create", "--org", "early", "--read")
    status, _, err = keys(capsys, "revoke", doomed["key"])
    assert status == 0, err
    assert [k["key"] for k in keys_json(capsys, "list")["keys"]] == [created["key"]]

    gateway = gateway_factory()
    key = ChainKey(gateway.url, created["key"], created["secret"])
    token = key.put_token(b"early bird")
    assert key.get(token).content == b"early bird"
    assert_error(ChainKey(gateway.url, doomed["key"], doomed["secret"]).get(token),
                 401, "unauthorized")


def test_user_errors_are_one_line(gateway, capsys):
    status, _, err = keys(capsys, "create", "--org", "x", "--cap", "-5")
    assert status == 2 and err.count("\n") == 1
    status, _, err = keys(capsys, "create", "--org", " ")
    assert status == 1 and err.count("\n") == 1 and "organisation name" in err
    status, _, err = keys(capsys, "revoke", "ALTR-NOPE")
    assert status == 1 and err.count("\n") == 1 and "no chainAPI key" in err


def test_no_account_and_no_gateway(safefs_env, capsys):
    status, _, err = keys(capsys, "list")
    assert status == 1 and err.count("\n") == 1 and "account" in err
