"""``safefs put FILE`` / ``safefs get ID DEST``: one file as ImmutableData, through the gateway.

The commands act as the app "safefs cli" of this account, approved at once with the local admin
secret. ``put`` prints the serialised DataIdentifier in base64; whoever holds it can read a
PLAIN file, while a SYMMETRIC one opens only for this account's ``safefs`` commands.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
from pathlib import Path

from safefs.gateway import read_admin_secret

from .common import QuietError, add_gateway_option, gateway_url, progress_bar, run_async

CLI_APP = {"name": "safefs cli", "id": "safefs.cli", "vendor": "safefs", "version": "1"}


def register(subparsers: argparse._SubParsersAction) -> None:
    put = subparsers.add_parser(
        "put", help="store a file as ImmutableData and print its identifier",
        description="Self-encrypt FILE into the store through the gateway and print its "
        "serialised DataIdentifier (base64).")
    put.add_argument("file", metavar="FILE", type=Path)
    put.add_argument("--cipher", choices=("plain", "symmetric"), default="plain",
                     help="plain: whoever holds the identifier can read the file; symmetric: "
                     "only this account's safefs commands can (default %(default)s)")
    put.add_argument("--json", action="store_true", help="print JSON")
    add_gateway_option(put)
    put.set_defaults(func=lambda args: run_async(_put, args))

    get = subparsers.add_parser(
        "get", help="fetch ImmutableData by its identifier into a file",
        description="Write the data named by ID (as printed by `safefs put`) to DEST.")
    get.add_argument("id", metavar="ID")
    get.add_argument("dest", metavar="DEST", type=Path)
    add_gateway_option(get)
    get.set_defaults(func=lambda args: run_async(_get, args))


async def _client(args: argparse.Namespace, *, need_token: bool):
    from safefs.client import GatewayClient

    client = GatewayClient(gateway_url(args), retries=2)
    secret = read_admin_secret()
    if secret is None:
        if need_token:
            await client.aclose()
            raise QuietError("no admin secret found: run this as the user running the gateway")
        return client
    try:
        await client.authorise(CLI_APP, ("LOW_LEVEL_API",), admin_secret=secret)
    except BaseException:
        await client.aclose()
        raise
    return client


async def _put(args: argparse.Namespace) -> None:
    try:
        size = os.stat(args.file).st_size
    except OSError as exc:
        raise QuietError(f"{args.file}: {exc.strerror}") from None
    if not args.file.is_file():
        raise QuietError(f"{args.file}: not a regular file")
    async with await _client(args, need_token=True) as client:
        with progress_bar(size, f"put {args.file.name}", finishing="encrypting") as progress:
            data_id = await client.put_file(args.file, args.cipher.upper(), progress)
    encoded = base64.b64encode(data_id).decode()
    if args.json:
        print(json.dumps({"id": encoded, "size": size, "cipher": args.cipher.upper()}))
    else:
        print(encoded)


async def _get(args: argparse.Namespace) -> None:
    try:
        data_id = base64.b64decode(args.id, validate=True)
    except binascii.Error:
        raise QuietError(f"{args.id!r} is not an identifier printed by `safefs put`") from None
    if args.dest.is_dir():
        raise QuietError(f"{args.dest} is a directory; give the file name to write")
    if not args.dest.parent.is_dir():
        raise QuietError(f"{args.dest.parent}: no such directory")
    async with await _client(args, need_token=False) as client:
        reader = await client.open_reader(data_id)  # for the size, and to fail before writing
        await reader.close()
        with progress_bar(reader.size, f"get {args.dest.name}") as progress:
            await client.get_file(data_id, args.dest, progress)

