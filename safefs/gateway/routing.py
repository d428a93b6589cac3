"""How a gateway route is declared, authorised and answered.

A route module builds a :class:`Routes` table and decorates plain async functions that take a
:class:`Call` (the request, the gateway, the caller's session) and return a result::

    routes = Routes()

    @routes.get("/immutable-data/writer", access=Access.LLA)
    async def new_writer(call: Call) -> dict:
        return {"handleId": call.gateway.handles.add(Kind.WRITER, call.owner, ...)}

Results become responses the way the launcher's ``ResponseHandler`` sent them: ``None`` → 200
text ``OK``; a dict or list → JSON; ``bytes`` → ``application/octet-stream``; a ``Response`` is
sent as is. Errors: raise :class:`ApiError` for the launcher's validation/permission messages
(``{"errorCode": 400, "description": ...}`` with the given HTTP status) or
:class:`~safefs.errors.SafeError` for native codes (400, or 404 for "not found" descriptions).
Anything else is logged and answered 500 without taking the server down.

Tables are matched in declaration order, so declare literal paths (``/immutable-data/writer``)
before parameterised ones (``/immutable-data/{handle}``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from safefs import errors
from safefs.errors import SafeError
from safefs.gateway import ADMIN_HEADER
from safefs.store import StoreFull, StoreUnavailable

if TYPE_CHECKING:
    from .core import Gateway
    from .handles import Kind
    from .sessions import Session

log = logging.getLogger(__name__)

# The launcher's messages (app/server/controllers/*.js, test/constants.js).
UNAUTHORISED_ACCESS = "Unauthorised access"
LLA_NOT_GRANTED = "Low level api access is not granted"
UNAUTHORISED = "Unauthorised"
ADMIN_REQUIRED = "The gateway's admin secret is required"
FIELD_NOT_VALID = "Invalid request. '%s' not a valid input"
_NETWORK_FULL = -28  # errors.DESCRIPTIONS: MutationError::NetworkFull


class Access(enum.Enum):
    """What a route demands of the caller before its handler runs."""

    ANON = "anon"  # a token is optional (a bad one is still a bare 401)
    SESSION = "session"  # any valid token
    LLA = "lla"  # a token whose app was granted LOW_LEVEL_API
    ADMIN = "admin"  # the local admin secret in the ADMIN_HEADER header


class ApiError(Exception):
    """A launcher-style validation or permission failure: ``{"errorCode": 400, ...}``."""

    def __init__(self, status: int, description: str, error_code: int = 400) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.error_code = error_code


def not_valid(field: str) -> ApiError:
    """The launcher's 400 for a body field of the wrong type or shape."""
    return ApiError(400, FIELD_NOT_VALID % field)


def decimal(text: str) -> int | None:
    """A non-negative decimal number written in ASCII digits, else ``None``.

    ``str.isdigit`` alone is not enough: it accepts digits such as "²" that ``int`` refuses.
    """
    text = text.strip()
    if not text or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def b64_field(body: Any, field: str, size: int | None = None) -> bytes:
    """A base64 field of a JSON body (of ``size`` bytes when given), else :func:`not_valid`."""
    value = body.get(field) if isinstance(body, dict) else None
    if not isinstance(value, str):
        raise not_valid(field)
    try:
        data = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise not_valid(field) from None
    if size is not None and len(data) != size:
        raise not_valid(field)
    return data


RunSync = Callable[..., Awaitable[Any]]

# Request bodies arrive in pieces of whatever the socket had ready; work on them in pieces of
# this size (each thread hand-off or spool write moves a useful amount of data).
BATCH_BYTES = 1024 * 1024


def error_json(status: int, code: int, description: str) -> JSONResponse:
    return JSONResponse({"errorCode": code, "description": description}, status_code=status)


def error_response(exc: Exception) -> Response:
    """The response for an exception raised by a handler (logged when it is a bug)."""
    if isinstance(exc, ApiError):
        return error_json(exc.status, exc.error_code, exc.description)
    if isinstance(exc, SafeError):
        return JSONResponse(exc.to_json(), status_code=exc.http_status)
    if isinstance(exc, StoreUnavailable):
        log.warning("store unavailable: %s", exc)
        return JSONResponse(SafeError(errors.NETWORK_OTHER).to_json(), status_code=503)
    if isinstance(exc, StoreFull):
        log.error("store full: %s", exc)
        return JSONResponse(SafeError(_NETWORK_FULL).to_json(), status_code=507)
    log.exception("unhandled error in a gateway handler")
    return error_json(500, 500, "Internal server error")


def bare_unauthorised() -> Response:
    """What express's ``res.sendStatus(401)`` sent for a bad token: no JSON body."""
    return PlainTextResponse("Unauthorized", status_code=401)


@dataclass
class Call:
    """One request as a handler sees it."""

    request: Request
    gateway: Gateway
    session: Session | None

    @property
    def owner(self) -> str | None:
        """The handle owner for objects this call creates (``None`` for anonymous callers)."""
        return self.session.id if self.session else None

    def require_session(self) -> Session:
        if self.session is None:
            raise ApiError(401, UNAUTHORISED_ACCESS)
        return self.session

    def require_lla(self) -> Session:
        session = self.require_session()
        if not session.low_level_api:
            raise ApiError(403, LLA_NOT_GRANTED)
        return session

    def require_admin(self) -> None:
        if not self.is_admin:
            raise ApiError(401, ADMIN_REQUIRED)

    @property
    def is_admin(self) -> bool:
        """Whether the request carries the gateway's local admin secret."""
        return self.gateway.is_admin(self.request.headers.get(ADMIN_HEADER))

    def param(self, name: str) -> str:
        return self.request.path_params[name]

    def handle(self, kind: Kind, name: str = "handle") -> int:
        """A handle from the path; anything that is not a u64 is the kind's invalid handle."""
        return kind.parse(self.request.path_params[name])

    def get(self, kind: Kind, name: str = "handle") -> Any:
        """The object behind a handle in the path, checked against the caller's session."""
        return self.gateway.handles.get(kind, self.owner, self.handle(kind, name))

    def drop(self, kind: Kind, name: str = "handle") -> None:
        self.gateway.handles.drop(kind, self.owner, self.handle(kind, name))

    async def json(self) -> Any:
        """The JSON body; ``{}`` unless the request says ``application/json`` (body-parser)."""
        content_type = self.request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            return {}
        body = await self.request.body()
        if not body:
            return {}
        try:
            return json.loads(body)
        except ValueError:
            raise ApiError(400, "Invalid JSON body") from None

    async def body(self) -> bytes:
        return await self.request.body()


class StreamedResponse(Response):
    """A response whose body comes from an async iterator, in bounded memory.

    Use it instead of Starlette's ``StreamingResponse``: that one cancels its disconnect
    listener from inside the server's own send path, and under Hypercorn's HTTP/1.1 protocol
    the cancellation lands before the connection is marked idle, so a keep-alive connection
    that served a stream is never closed (and graceful shutdown waits its full timeout). Here
    the listener only raises a flag, and ends by itself when the server reports the stream
    closed. A client that goes away stops the iteration at the next piece.
    """

    def __init__(self, chunks: AsyncIterator[bytes], status_code: int = 200,
                 headers: dict[str, str] | None = None,
                 media_type: str = "application/octet-stream") -> None:
        self.chunks = chunks
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.body = b""
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in {**(headers or {}), "content-type": media_type}.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = False

        async def watch_disconnect() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True

        async with trio.open_nursery() as nursery, aclosing(self.chunks) as chunks:
            nursery.start_soon(watch_disconnect)
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async for chunk in chunks:
                if disconnected:
                    log.debug("client went away during a streamed response")
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


Result = Response | dict | list | bytes | None
Handler = Callable[[Call], Awaitable[Result]]


def to_response(result: Result) -> Response:
    if isinstance(result, Response):
        return result
    if result is None:
        return PlainTextResponse("OK")
    if isinstance(result, bytes):
        return Response(result, media_type="application/octet-stream")
    return JSONResponse(result)


class Routes:
    """An ordered table of routes; ``routes.routes`` goes into the Starlette router."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, path: str, handler: Handler, access: Access) -> None:
        self.routes.append(Route(path, _endpoint(handler, access), methods=[method],
                                 name=f"{method} {path}"))

    def _decorator(self, method: str, path: str, access: Access) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(method, path, handler, access)
            return handler

        return register

    def get(self, path: str, access: Access = Access.ANON) -> Callable[[Handler], Handler]:
        return self._decorator("GET", path, access)

    def post(self, path: str, access: Access = Access.ANON) -> Callable[[Handler], Handler]:
        return self._decorator("POST", path, access)

    def put(self, path: str, access: Access = Access.ANON) -> Callable[[Handler], Handler]:
        return self._decorator("PUT", path, access)

    def patch(self, path: str, access: Access = Access.ANON) -> Callable[[Handler], Handler]:
        return self._decorator("PATCH", path, access)

    def delete(self, path: str, access: Access = Access.ANON) -> Callable[[Handler], Handler]:
        return self._decorator("DELETE", path, access)


# What a handler left unread of a request body (an early error, a retried append the gateway
# already has) is read and dropped up to this much, so that the connection can carry the next
# request; past it the connection is closed after the answer instead.
DRAIN_LIMIT = 4 * 1024 * 1024


async def drain(request: Request) -> bool:
    """Consume the rest of the request body; False if more than ``DRAIN_LIMIT`` was left."""
    if "content-length" not in request.headers and "transfer-encoding" not in request.headers:
        return True
    received = 0
    try:
        async for piece in request.stream():
            received += len(piece)
            if received > DRAIN_LIMIT:
                return False
    except ClientDisconnect:
        return False
    except RuntimeError:  # Starlette: the stream was read without keeping the body
        return True
    return True


def _endpoint(handler: Handler, access: Access) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        session = None
        if "authorization" in request.headers:
            session = gateway.sessions.from_authorization(request.headers["authorization"])
            if session is None:
                return bare_unauthorised()
        call = Call(request, gateway, session)
        try:
            if access is Access.SESSION:
                call.require_session()
            elif access is Access.LLA:
                call.require_lla()
            elif access is Access.ADMIN:
                call.require_admin()
            response = to_response(await handler(call))
        except Exception as exc:  # every failure becomes a response; the server keeps serving
            response = error_response(exc)
        if not await drain(request):
            response.headers["connection"] = "close"
        return response

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint
