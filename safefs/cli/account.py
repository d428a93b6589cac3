"""``safefs account init|show|login``: the account secret of this device."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from safefs import paths
from safefs.gateway import read_info

from .common import QuietError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "account", help="create, show or attach the account",
        description="The account is one secret from which every key derives; it lives in "
        f"{paths.account_key_file()} (mode 0600).")
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="create a new account and print its recovery secret")
    init.add_argument("--json", action="store_true", help="print JSON")
    init.set_defaults(func=_init)
    show = actions.add_parser("show", help="print the account's public id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_show)
    login = actions.add_parser(
        "login", help="attach this device to an existing account from its recovery secret",
        description="Reads the recovery secret from a prompt on a terminal, else from stdin.")
    login.add_argument("--force", action="store_true",
                       help="replace a different account already on this device")
    login.set_defaults(func=_login)


def _load_existing():
    from safefs.keys import Account, AccountError

    if not paths.account_key_file().exists():
        return None
    try:
        return Account.load()
    except AccountError as exc:
        raise QuietError(str(exc)) from None


def _init(args: argparse.Namespace) -> None:
    from safefs.keys import Account

    existing = _load_existing()
    if existing is not None:
        raise QuietError(f"this device already has account {existing.public_id} "
                         f"({paths.account_key_file()})")
    account = Account.generate()
    account.save()
    if args.json:
        print(json.dumps({"public_id": account.public_id,
                          "recovery_secret": account.recovery_string,
                          "key_file": str(paths.account_key_file())}))
        return
    print(f"Created account {account.public_id}.")
    print("Recovery secret (write it down and keep it safe; it is shown only this once):")
    print(f"  {account.recovery_string}")


def _show(args: argparse.Namespace) -> None:
    account = _load_existing()
    if account is None:
        raise QuietError("no account on this device: create one with `safefs account init` "
                         "or attach one with `safefs account login`")
    if args.json:
        print(json.dumps({"public_id": account.public_id,
                          "key_file": str(paths.account_key_file())}))
    else:
        print(account.public_id)


def _login(args: argparse.Namespace) -> None:
    from safefs.keys import Account, AccountError

    if sys.stdin.isatty():
        text = getpass.getpass("Recovery secret: ")
    else:
        text = sys.stdin.readline()
    if not text.strip():
        raise QuietError("no recovery secret given")
    try:
        account = Account.from_recovery(text)
    except AccountError as exc:
        raise QuietError(str(exc)) from None
    existing = _load_existing()
    if existing is not None and existing.public_id != account.public_id and not args.force:
        raise QuietError(f"this device already has account {existing.public_id}; "
                         "pass --force to replace it")
    account.save()
    print(f"Attached account {account.public_id}.")
    if read_info():
        print("Restart the gateway to use it.")
