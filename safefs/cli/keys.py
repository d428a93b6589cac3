"""``safefs keys create|list|revoke``: chainAPI API keys.

With a gateway running (or ``--gateway``/``$SAFEFS_GATEWAY`` given) the commands go through its
admin endpoints with the local admin secret. With none running they open the gateway's state
database themselves, with this device's account to seal secrets, so keys can be made before
the gateway first starts; the gateway reads keys from the database on every request, so either
way a change counts at once.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import quote

from safefs.gateway import read_info

from .common import QuietError, add_gateway_option, admin_secret, gateway_url, run_async

if TYPE_CHECKING:
    import httpx


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keys", help="manage chainAPI HMAC API keys",
        description="Create, list and revoke the API keys of the chainAPI (ALTR-style "
        "PutData/GetData). Talks to the running gateway, or edits its state database "
        "directly when no gateway is running.")
    add_gateway_option(parser)
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create", help="create a key and print it with its secret (shown only once)",
        description="Create an API key for an organisation. Without --read or --write the key "
        "may do both. --cap sets the organisation's data cap, shared by all its keys.")
    create.add_argument("--org", required=True, metavar="NAME", help="organisation name")
    create.add_argument("--read", action="store_true", help="the key may read data")
    create.add_argument("--write", action="store_true", help="the key may write data")
    create.add_argument("--cap", type=_byte_count, metavar="BYTES",
                        help="most bytes the organisation may store (default: unchanged; "
                        "none for a new organisation)")
    create.add_argument("--json", action="store_true", help='print {"key", "secret"}')
    create.set_defaults(func=_create)

    listing = actions.add_parser("list", help="keys, their permissions and organisations")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_list)

    revoke = actions.add_parser("revoke", help="revoke a key (its requests fail at once)")
    revoke.add_argument("key", metavar="KEY", help="the key, ALTR-...")
    revoke.set_defaults(func=_revoke)


def _byte_count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of bytes, got {text!r}")
    return int(text)


def _through_gateway(args: argparse.Namespace) -> bool:
    return bool(args.gateway or os.environ.get("SAFEFS_GATEWAY") or read_info())


def _admin(args: argparse.Namespace, method: str, path: str, **kwargs) -> httpx.Response:
    """One request to the gateway's admin endpoints."""
    from safefs.client import GatewayClient

    async def send() -> httpx.Response:
        async with GatewayClient(gateway_url(args), admin_secret=admin_secret(),
                                 retries=2) as client:
            return await client.request(method, path, admin=True, **kwargs)

    return run_async(send)


@contextmanager
def _key_store() -> Iterator:
    """The gateway's key store, opened directly (no gateway running)."""
    from safefs.gateway.apikeys import KeyStore
    from safefs.gateway.state import open_state_db
    from safefs.keys import Account, AccountError

    try:
        account = Account.load()
    except AccountError as exc:
        raise QuietError(str(exc)) from None
    db = open_state_db()
    try:
        yield KeyStore(db, account)
    finally:
        db.close()


def _create(args: argparse.Namespace) -> None:
    from safefs.gateway.apikeys import InvalidKeyRequest

    read, write = (args.read, args.write) if args.read or args.write else (True, True)
    if _through_gateway(args):
        body = {"org": args.org, "read": read, "write": write, "cap": args.cap}
        created = _admin(args, "POST", "/admin/chain-keys", json=body).json()
    else:
        with _key_store() as keys:
            try:
                key = keys.create(args.org, read, write, args.cap)
            except InvalidKeyRequest as exc:
                raise QuietError(str(exc)) from None
            created = {**key.to_json(), "secret": key.secret}
    if args.json:
        print(json.dumps({"key": created["key"], "secret": created["secret"]}))
        return
    cap = "" if args.cap is None else f"; cap {args.cap} bytes"
    print(f"Created a chainAPI key for organisation {created['org']!r} "
          f"({_permissions(created)}{cap}):")
    print(f"  key:    {created['key']}")
    print(f"  secret: {created['secret']}")
    print("The secret is shown only this once: keep it somewhere safe.")


def _list(args: argparse.Namespace) -> None:
    if _through_gateway(args):
        listing = _admin(args, "GET", "/admin/chain-keys").json()
    else:
        with _key_store() as keys:
            listing = {"keys": [key.to_json() for key in keys.all()],
                       "orgs": [org.to_json() for org in keys.orgs()]}
    if args.json:
        print(json.dumps(listing, indent=2))
        return
    if not listing["keys"]:
        print("No chainAPI keys.")
    for key in listing["keys"]:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(key["created"]))
        print(f"{key['key']}  {key['org']}  {_permissions(key)}  created {created}")
    if listing["orgs"]:
        print("Organisations:")
    for org in listing["orgs"]:
        cap = "no cap" if org["cap"] is None else f"cap {org['cap']}"
        print(f"  {org['name']}: {org['used']} bytes stored ({cap})")


def _revoke(args: argparse.Namespace) -> None:
    from safefs.client import NotFound

    if _through_gateway(args):
        try:
            _admin(args, "DELETE", f"/admin/chain-keys/{quote(args.key, safe='')}")
            revoked = True
        except NotFound:
            revoked = False
    else:
        with _key_store() as keys:
            revoked = keys.revoke(args.key)
    if not revoked:
        raise QuietError(f"no chainAPI key {args.key!r} (see `safefs keys list`)")
    print("Revoked", args.key)


def _permissions(key: dict) -> str:
    return ", ".join(name for name in ("read", "write") if key[name]) or "no permissions"
