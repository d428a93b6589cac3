"""chainAPI: ALTR's PutData/GetData API for server-side clients holding HMAC API keys.

Routes (also under the older ``/api/v1/chain`` spelling seen in ALTR client code):

* ``POST /api/v1/single/`` — PutData: the body, streamed to a spool file and self-encrypted
  into the store, becomes a new reference token (:mod:`safefs.gateway.chaindata`);
* ``GET /api/v1/single/:token`` — GetData: the bytes, streamed, with ``X-Expected-Hash`` and
  ``X-ALTR-Metadata``; ``.../metadata`` and ``.../status``;
* ``POST /api/v1/batch`` — PostBatch: a JSON object's values become tokens;
  ``PUT /api/v1/batch`` (as ALTR's docs sign it; ``GET`` with a body is accepted too) —
  GetBatch: tokens become their data again.

Every call is signed with an API key (:mod:`safefs.gateway.apikeys`); the signature covers
the method, the token and the date but **not the body**, so these routes answer 403 on a
listener that is neither loopback nor TLS (``app.state.secure_listener``, set by the server):
anyone on the path could otherwise replace what is stored. Answers use ALTR's envelopes,
``{"success": true, "response": {"data": ...}}`` and
``{"success": false, "response": {"error_type": ..., "error_message": ...}}``.

Tokens belong to the organisation of the key that made them; another organisation's keys get
404 for them, as for a token that does not exist. ``/admin/chain-keys`` lets ``safefs keys``
manage the keys with the local admin secret. docs/chainapi.md is the user-facing description.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from safefs.errors import SafeError
from safefs.streams import read_ahead, regroup

from . import apikeys
from .apikeys import ApiKey, InvalidKeyRequest, KeyStore
from .blobs import Spool
from .chaindata import TOKEN_PATTERN, ChainData, Entry
from .immutable import stream_blob
from .routing import (
    BATCH_BYTES,
    Access,
    ApiError,
    Call,
    Routes,
    RunSync,
    StreamedResponse,
    decimal,
    not_valid,
)

if TYPE_CHECKING:
    from .core import Gateway

log = logging.getLogger(__name__)

T = TypeVar("T")

routes = Routes()

# ALTR's "3 KB": the largest batch value, and what PutData keeps of a body whose
# X-Content-Length-Hint is smaller than this.
SMALL_DATA_BYTES = 3 * 1024
MAX_BATCH_PAIRS = 1024
# ALTR's "500 KB": the largest batch request, and the most data GetBatch answers with.
MAX_BATCH_BYTES = 500 * 1024

DATE_HEADER = "X-ALTR-DATE"
METADATA_HEADER = "X-ALTR-Metadata"
HINT_HEADER = "X-Content-Length-Hint"
EXPECTED_HASH_HEADER = "X-Expected-Hash"
OVERFLOW_HEADER = "X-Overflow-Data"
BYTES_CONSUMED_HEADER = "X-Bytes-Consumed"

AUTHENTICATION_FAILED = "The API key could not be authenticated."
INSECURE_LISTENER = ("chainAPI keys are refused on a listener that is neither loopback nor TLS: "
                     "request signatures do not cover the body. Listen on 127.0.0.1 or pass "
                     "--tls-cert and --tls-key.")
CAP_EXCEEDED = "Organization data cap exceeded."
UNAVAILABLE = "Unable to process request at this time."


class ChainError(Exception):
    """A chainAPI failure: its status, ALTR ``error_type`` and message."""

    def __init__(self, status: int, error_type: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"success": False,
                "response": {"error_type": self.error_type, "error_message": self.message}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def bad_request(message: str) -> ChainError:
    return ChainError(400, "bad_request", message)


def unauthorized(message: str = AUTHENTICATION_FAILED) -> ChainError:
    return ChainError(401, "unauthorized", message)


def forbidden(message: str) -> ChainError:
    return ChainError(403, "forbidden", message)


def not_found() -> ChainError:
    return ChainError(404, "resource_not_found", "The requested resource could not be found.")


def limit_exceeded() -> ChainError:
    return ChainError(509, "limit_exceeded", "Request exceeded 500kb limit.",
                      {OVERFLOW_HEADER: "true"})


def success(data: dict) -> JSONResponse:
    return JSONResponse({"success": True, "response": {"data": data}})


@dataclass
class Services:
    """The chainAPI's keys and data of one gateway (built on first use)."""

    keys: KeyStore
    data: ChainData

    @classmethod
    def of(cls, request: Request) -> Services:
        state = request.app.state
        services = getattr(state, "chain", None)
        if services is None:
            gateway: Gateway = state.gateway
            services = state.chain = cls(
                KeyStore(gateway.state_db, gateway.account),
                ChainData(gateway.store, gateway.account, gateway.chunk_cache,
                          gateway.new_spool, gateway.settings.selfenc))
        return services


@dataclass
class ChainCall:
    """One authenticated chainAPI request."""

    request: Request
    gateway: Gateway
    services: Services
    key: ApiKey

    async def entry(self) -> Entry:
        """The entry of the token in the path; 404 unless it exists in the key's organisation."""
        token = self.request.path_params["token"]
        entry = await self.gateway.run_sync(self.services.data.entry, token)
        if entry is None or entry.org != self.key.org:
            raise not_found()
        return entry


ChainHandler = Callable[[ChainCall], Awaitable[Response]]


def chain_route(method: str, paths: Iterable[str], *, read: bool = False,
                write: bool = False) -> Callable[[ChainHandler], ChainHandler]:
    """Declare a chainAPI route: authenticated by API key, needing the given permissions."""

    def register(handler: ChainHandler) -> ChainHandler:
        async def endpoint(request: Request) -> Response:
            try:
                if not getattr(request.app.state, "secure_listener", False):
                    raise forbidden(INSECURE_LISTENER)
                services = Services.of(request)
                key = authenticate(request, services.keys)
                if read and not key.can_read:
                    raise forbidden("API key does not have read permissions.")
                if write and not key.can_write:
                    raise forbidden("API key does not have write permissions.")
                return await handler(ChainCall(request, request.app.state.gateway, services, key))
            except ChainError as exc:
                return exc.response()
            except ClientDisconnect:
                return bad_request("The request body ended early.").response()
            except Exception as exc:  # the caller sees ALTR's 503; the log says why
                _log_failure(exc)
                return ChainError(503, "internal_error", UNAVAILABLE).response()

        endpoint.__name__ = handler.__name__
        for path in paths:
            routes.routes.append(Route(path, endpoint, methods=[method],
                                       name=f"{method} {path}"))
        return handler

    return register


def _log_failure(exc: Exception) -> None:
    from safefs.store import StoreError

    if isinstance(exc, StoreError | SafeError):
        log.error("chainAPI request failed: %s", exc)
    else:
        log.exception("unhandled error in a chainAPI handler")


def authenticate(request: Request, keys: KeyStore) -> ApiKey:
    """The key that signed ``request``, or a 401 saying what is wrong with the request.

    Unknown keys, revoked keys and wrong signatures get the same answer.
    """
    header = request.headers.get("authorization")
    if header is None:
        raise unauthorized("The Authorization header is missing.")
    credentials = apikeys.parse_authorization(header)
    if credentials is None:
        raise unauthorized("The Authorization header is not 'ALTR <key>:<signature>'.")
    date = request.headers.get(DATE_HEADER)
    if date is None:
        raise unauthorized(f"The {DATE_HEADER} header is missing.")
    when = apikeys.parse_date(date)
    if when is None:
        raise unauthorized(f"{DATE_HEADER} is not an HTTP-date, ISO 8601, MM-DD-YYYY HH:MM:SS "
                           "or JavaScript's Date.toString().")
    if not apikeys.date_is_current(when):
        raise unauthorized(f"{DATE_HEADER} is more than 15 minutes from the gateway's clock.")
    key_id, signature = credentials
    key = keys.get(key_id)
    resource = request.path_params.get("token", "")
    if key is None or not apikeys.signature_matches(key, signature, request.method, resource,
                                                    date):
        raise unauthorized()
    return key


# -- PutData / GetData ----------------------------------------------------------------------

SINGLE = ("/api/v1/single", "/api/v1/chain")


@chain_route("POST", [p + suffix for p in SINGLE for suffix in ("", "/")], write=True)
async def put_data(call: ChainCall) -> Response:
    """Stream the body into a spool file, then self-encrypt it under a new token."""
    headers = call.request.headers
    limit = body_limit(headers)
    org = call.key.org
    keys = call.services.keys
    room = keys.room(org)
    if room is not None and int(headers.get("content-length", 0)) > room:
        raise bad_request(CAP_EXCEEDED)
    metadata = header_text(headers, METADATA_HEADER)
    run_sync = call.gateway.run_sync
    spool = await run_sync(call.services.data.new_spool)
    try:
        size = await _spool(call.request.stream(), spool, run_sync, limit, room)
        if not keys.reserve(org, size):
            raise bad_request(CAP_EXCEEDED)
        try:
            entry = await run_sync(call.services.data.put_spool, spool, org, metadata)
        except BaseException:
            keys.release(org, size)
            raise
    finally:
        call.gateway.release_spool(spool)
    return success({"referenceToken": entry.token})


def header_text(headers: Headers, name: str) -> str | None:
    """A header's bytes read as UTF-8, which is how clients send text that is not ASCII."""
    value = headers.get(name)
    try:
        return None if value is None else value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"{name} must be UTF-8 text.") from None


def body_limit(headers: Headers) -> int | None:
    """How much of a PutData body is kept (``None``: all of it).

    Content-Length, when given, wins: the whole body. Otherwise an ``X-Content-Length-Hint``
    under 3 KB keeps at most 3 KB, and any other hint (or none) keeps everything.
    """
    hint = headers.get(HINT_HEADER)
    if "content-length" in headers or hint is None:
        return None
    hint_bytes = decimal(hint)
    if hint_bytes is None:
        raise bad_request(f"{HINT_HEADER} must be a number of bytes.")
    return SMALL_DATA_BYTES if hint_bytes < SMALL_DATA_BYTES else None


async def _spool(body: AsyncIterator[bytes], spool: Spool, run_sync: RunSync,
                 limit: int | None, room: int | None) -> int:
    """Append up to ``limit`` bytes of ``body`` to ``spool`` (draining the rest); the size.

    Stops with the cap error as soon as the data outgrows ``room``.
    """
    size = 0
    async with read_ahead(regroup(body, BATCH_BYTES)) as batches:
        async for batch in batches:
            if limit is not None:
                batch = batch[:limit - size]
            if not batch:
                continue
            size += len(batch)
            if room is not None and size > room:
                raise bad_request(CAP_EXCEEDED)
            await run_sync(spool.write, batch)
    return size


@chain_route("GET", [p + "/{token}" for p in SINGLE], read=True)
async def get_data(call: ChainCall) -> Response:
    entry = await call.entry()
    content = await call.gateway.run_sync(call.services.data.open, entry)
    body = await stream_blob(call.gateway, content.blob, content.offset,
                             content.offset + content.size)
    headers = {"Content-Length": str(content.size), EXPECTED_HASH_HEADER: entry.md5}
    if entry.metadata is not None:
        # The UTF-8 bytes as they came, in the Latin-1 form headers are written in.
        headers[METADATA_HEADER] = entry.metadata.encode("utf-8").decode("latin-1")
    return StreamedResponse(body, headers=headers)


@chain_route("GET", [p + "/{token}/metadata" for p in SINGLE], read=True)
async def get_metadata(call: ChainCall) -> Response:
    entry = await call.entry()
    return JSONResponse({"success": True, "metadata": entry.metadata})


@chain_route("GET", [p + "/{token}/status" for p in SINGLE])
async def token_status(call: ChainCall) -> Response:
    """Any key of the organisation may ask; data is protected and available once PutData
    has answered, and tokens are never deactivated."""
    await call.entry()
    return success({"token_active": True, "data_protected": True, "data_available": True})


# -- PostBatch / GetBatch -------------------------------------------------------------------

BATCH = ("/api/v1/batch", "/api/v1/batch/")


@chain_route("POST", BATCH, write=True)
async def put_batch(call: ChainCall) -> Response:
    """Each value (a string as UTF-8, anything else as its JSON text) under a new token;
    values over 3 KB become ``null`` with ``X-Overflow-Data: true``."""
    pairs = await _batch_body(call.request)
    values = {name: _value_bytes(value) for name, value in pairs.items()}
    small = {name: data for name, data in values.items() if len(data) <= SMALL_DATA_BYTES}
    consumed = sum(len(data) for data in small.values())
    org = call.key.org
    keys = call.services.keys
    if not keys.reserve(org, consumed):
        raise bad_request(CAP_EXCEEDED)
    try:
        entries = await call.gateway.run_sync(call.services.data.put_values,
                                              list(small.values()), org)
    except BaseException:
        keys.release(org, consumed)
        raise
    tokens = {name: entry.token for name, entry in zip(small, entries, strict=True)}
    headers = {BYTES_CONSUMED_HEADER: str(consumed)}
    if len(small) < len(values):
        headers[OVERFLOW_HEADER] = "true"
    return JSONResponse({name: tokens.get(name) for name in pairs}, headers=headers)


@chain_route("PUT", BATCH, read=True)
async def get_batch(call: ChainCall) -> Response:
    return await _get_batch(call)


@chain_route("GET", BATCH, read=True)
async def get_batch_by_get(call: ChainCall) -> Response:
    return await _get_batch(call)


async def _get_batch(call: ChainCall) -> Response:
    """Tokens of the key's organisation become their data (as text), other values come back
    as they are; data over 3 KB and unknown tokens become ``null``."""
    pairs = await _batch_body(call.request)
    tokens = {name: value for name, value in pairs.items()
              if isinstance(value, str) and TOKEN_PATTERN.fullmatch(value)}
    data = call.services.data
    found = await _gather(call.gateway, {name: (data.entry, token)
                                         for name, token in tokens.items()})
    readable = {name: entry for name, entry in found.items()
                if entry is not None and entry.org == call.key.org}
    small = {name: entry for name, entry in readable.items() if entry.size <= SMALL_DATA_BYTES}
    if sum(entry.size for entry in small.values()) > MAX_BATCH_BYTES:
        raise limit_exceeded()
    contents = await _gather(call.gateway, {name: (_read_all, data, entry)
                                            for name, entry in small.items()})
    result = {name: contents[name].decode("utf-8", "replace") if name in contents
              else None if name in tokens else value
              for name, value in pairs.items()}
    headers = {OVERFLOW_HEADER: "true"} if len(small) < len(readable) else None
    return JSONResponse(result, headers=headers)


def _read_all(data: ChainData, entry: Entry) -> bytes:
    return data.open(entry).read(0, entry.size)


def _value_bytes(value: Any) -> bytes:
    """What a batch value stores: ALTR writes "the string representation of the data"."""
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def _batch_body(request: Request) -> dict[str, Any]:
    """The JSON object of a batch request: at most 500 KB (else 509) and 1024 pairs."""
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > MAX_BATCH_BYTES:
        raise limit_exceeded()
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_BATCH_BYTES:
            raise limit_exceeded()
    try:
        pairs = json.loads(body)
    except ValueError:
        raise bad_request("The body is not JSON.") from None
    if not isinstance(pairs, dict):
        raise bad_request("The body must be a JSON object.")
    if len(pairs) > MAX_BATCH_PAIRS:
        raise bad_request(f"A batch holds at most {MAX_BATCH_PAIRS} key-value pairs.")
    return pairs


async def _gather(gateway: Gateway, calls: dict[str, tuple]) -> dict[str, Any]:
    """Run ``{name: (fn, *args)}`` in the gateway's worker threads at once; ``{name: result}``."""
    results: dict[str, Any] = {}

    async def run(name: str, fn: Callable[..., T], *args: Any) -> None:
        results[name] = await gateway.run_sync(fn, *args)

    async with trio.open_nursery() as nursery:
        for name, (fn, *args) in calls.items():
            nursery.start_soon(run, name, fn, *args)
    return results


# -- /admin/chain-keys: key management for `safefs keys` ------------------------------------


@routes.post("/admin/chain-keys", access=Access.ADMIN)
async def create_key(call: Call) -> dict:
    """``{"org", "read", "write", "cap"}`` → the new key and, this once, its secret."""
    body = await call.json()
    if not isinstance(body, dict) or not isinstance(body.get("org"), str):
        raise not_valid("org")
    flags = {}
    for flag in ("read", "write"):
        if not isinstance(body.get(flag, True), bool):
            raise not_valid(flag)
        flags[flag] = body.get(flag, True)
    cap = body.get("cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool)):
        raise not_valid("cap")
    try:
        key = Services.of(call.request).keys.create(body["org"], flags["read"], flags["write"],
                                                    cap)
    except InvalidKeyRequest as exc:
        raise ApiError(400, str(exc)) from None
    return {**key.to_json(), "secret": key.secret}


@routes.get("/admin/chain-keys", access=Access.ADMIN)
async def list_keys(call: Call) -> dict:
    keys = Services.of(call.request).keys
    return {"keys": [key.to_json() for key in keys.all()],
            "orgs": [org.to_json() for org in keys.orgs()]}


@routes.delete("/admin/chain-keys/{key}", access=Access.ADMIN)
async def revoke_key(call: Call) -> None:
    if not Services.of(call.request).keys.revoke(call.param("key")):
        raise ApiError(404, "No such chainAPI key", error_code=404)
