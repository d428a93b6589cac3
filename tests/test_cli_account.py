"""``safefs account init|show|login`` in temporary HOMEs."""

from __future__ import annotations

import json
import os
import stat

import httpx

from safefs import paths

from .test_cli_gateway import one_line_error


def test_init_show_login(safefs_env, tmp_path):
    assert "safefs account init" in one_line_error(safefs_env.run_cli("account", "show"))
    init = safefs_env.run_cli("account", "init", "--json")
    assert init.returncode == 0, init.stderr
    created = json.loads(init.stdout)
    key_file = paths.account_key_file()
    assert created["key_file"] == str(key_file)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert safefs_env.run_cli("account", "show").stdout.strip() == created["public_id"]
    assert json.loads(safefs_env.run_cli("account", "show", "--json").stdout)["public_id"] == \
        created["public_id"]
    assert "already has account" in one_line_error(safefs_env.run_cli("account", "init"))

    # The recovery secret attaches another device (another HOME) to the same account.
    other = dict(safefs_env.env)
    for var in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        other[var] = str(tmp_path / "device2" / var)
    device2 = type(safefs_env)(tmp_path, other)
    secret = created["recovery_secret"]
    login = device2.run_cli("account", "login", input=secret + "\n")
    assert login.returncode == 0, login.stderr
    assert device2.run_cli("account", "show").stdout.strip() == created["public_id"]

    typo = secret[:-1] + ("q" if secret[-1] != "q" else "p")
    assert "typo" in one_line_error(device2.run_cli("account", "login", input=typo + "\n"))
    assert "no recovery secret" in one_line_error(device2.run_cli("account", "login", input=""))


def test_login_does_not_silently_replace(safefs_env, tmp_path):
    first = json.loads(safefs_env.run_cli("account", "init", "--json").stdout)
    other = dict(safefs_env.env, XDG_CONFIG_HOME=str(tmp_path / "elsewhere"))
    second = json.loads(type(safefs_env)(tmp_path, other).run_cli("account", "init",
                                                                  "--json").stdout)
    replace = safefs_env.run_cli("account", "login", input=second["recovery_secret"])
    assert "--force" in one_line_error(replace)
    assert safefs_env.run_cli("account", "show").stdout.strip() == first["public_id"]
    forced = safefs_env.run_cli("account", "login", "--force", input=second["recovery_secret"])
    assert forced.returncode == 0
    assert safefs_env.run_cli("account", "show").stdout.strip() == second["public_id"]


def test_gateway_uses_the_account(gateway, safefs_env):
    """The gateway creates the account on first use; sign keys are that account's."""
    shown = safefs_env.run_cli("account", "show").stdout.strip()
    token = gateway.authorise()
    headers = {"Authorization": f"Bearer {token}"}
    handle = httpx.get(f"{gateway.url}/sign-key/", headers=headers).json()["handleId"]
    key = httpx.get(f"{gateway.url}/sign-key/serialise/{handle}", headers=headers).content
    assert key.hex() == shown
