"""``safefs apps``: approve, reject and revoke apps at the local gateway."""

from __future__ import annotations

import argparse
import json
import time

from .common import QuietError, add_gateway_option, admin_secret, gateway_url, run_async


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "apps", help="manage app authorisation requests and tokens",
        description="List apps waiting for authorisation and authorised apps; approve, reject "
        "or revoke them. Talks to the running gateway with its local admin secret.")
    add_gateway_option(parser)
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="pending requests and authorised apps")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=lambda args: run_async(_list, args))
    for name, helptext in (("approve", "approve a pending request"),
                           ("reject", "reject a pending request"),
                           ("revoke", "revoke an authorised app (its tokens stop working)")):
        action = actions.add_parser(name, help=helptext)
        action.add_argument("id", metavar="ID", help="id shown by `safefs apps list`")
        action.set_defaults(func=lambda args, name=name: run_async(_decide, args, name))


def _client(args: argparse.Namespace):
    from safefs.client import GatewayClient

    return GatewayClient(gateway_url(args), admin_secret=admin_secret(), retries=2)


async def _list(args: argparse.Namespace) -> None:
    async with _client(args) as client:
        pending, apps = await client.auth_requests(), await client.apps()
    if args.json:
        print(json.dumps({"pending": pending, "apps": apps}, indent=2))
        return
    if pending:
        print("Waiting for approval:")
        for request in pending:
            print(f"  {request['id']}  {_describe(request)}  "
                  f"asked {_ago(request['created'])}")
    else:
        print("No app is waiting for approval.")
    if apps:
        print("Authorised apps:")
        for app in apps:
            print(f"  {app['id']}  {_describe(app)}")
    else:
        print("No authorised apps.")


async def _decide(args: argparse.Namespace, action: str) -> None:
    from safefs.client import NotFound

    async with _client(args) as client:
        try:
            if action == "revoke":
                await client.revoke_app(args.id)
            else:
                await client.decide(args.id, approve=action == "approve")
        except NotFound:
            what = "authorised app" if action == "revoke" else "pending request"
            raise QuietError(f"no {what} with id {args.id!r} (see `safefs apps list`)") from None
    print({"approve": "Approved", "reject": "Rejected", "revoke": "Revoked"}[action], args.id)


def _describe(entry: dict) -> str:
    app = entry["app"]
    permissions = ", ".join(entry["permissions"]) or "no permissions"
    return f"{app['name']} {app['version']} by {app['vendor']} ({app['id']}): {permissions}"


def _ago(created: float) -> str:
    seconds = max(0, int(time.time() - created))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}min ago"
