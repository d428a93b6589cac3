"""The route framework in process: result conversion, error envelopes, failures that are bugs."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette

from safefs.errors import NO_SUCH_DATA, SafeError
from safefs.gateway.app import create_app
from safefs.gateway.core import Gateway, GatewaySettings
from safefs.gateway.routing import Access, ApiError, Call, Routes, StreamedResponse
from safefs.gateway.state import open_state_db
from safefs.keys import Account
from safefs.store import MemoryStore, StoreFull, StoreUnavailable

routes = Routes()


@routes.get("/t/none")
async def none(call: Call) -> None:
    return None


@routes.get("/t/json")
async def as_json(call: Call) -> dict:
    return {"a": 1}


@routes.get("/t/bytes")
async def as_bytes(call: Call) -> bytes:
    return b"\x00\x01"


@routes.get("/t/stream")
async def stream(call: Call) -> StreamedResponse:
    async def pieces():
        for piece in (b"ab", b"cd"):
            yield piece

    return StreamedResponse(pieces(), headers={"Content-Length": "4"})


@routes.get("/t/bug")
async def bug(call: Call) -> None:
    raise RuntimeError("a bug")


@routes.get("/t/api-error")
async def api_error(call: Call) -> None:
    raise ApiError(403, "nope")


@routes.get("/t/missing")
async def missing(call: Call) -> None:
    raise SafeError(NO_SUCH_DATA)


@routes.get("/t/unavailable")
async def unavailable(call: Call) -> None:
    raise StoreUnavailable("try later")


@routes.get("/t/full")
async def full(call: Call) -> None:
    raise StoreFull("disk full")


@routes.get("/t/admin", access=Access.ADMIN)
async def admin_only(call: Call) -> None:
    return None


@pytest.fixture
async def http(tmp_path, safefs_env):
    gateway = Gateway(MemoryStore(), Account.generate(), GatewaySettings(),
                      open_state_db(tmp_path / "state.sqlite"), tmp_path, "secret")
    app: Starlette = create_app(gateway)
    app.router.routes.extend(routes.routes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gateway") as http:
        yield http
    gateway.close()


async def test_results(http):
    assert (await http.get("/t/none")).text == "OK"
    assert (await http.get("/t/json")).json() == {"a": 1}
    response = await http.get("/t/bytes")
    assert (response.content, response.headers["content-type"]) == (
        b"\x00\x01", "application/octet-stream")
    response = await http.get("/t/stream")
    assert (response.content, response.headers["content-length"]) == (b"abcd", "4")


async def test_errors(http, caplog):
    cases = {
        "/t/bug": (500, {"errorCode": 500, "description": "Internal server error"}),
        "/t/api-error": (403, {"errorCode": 400, "description": "nope"}),
        "/t/missing": (404, {"errorCode": -18,
                             "description": "CoreError::GetFailure::GetError::NoSuchData"}),
        "/t/unavailable": (503, {"errorCode": -27, "description":
                                 "CoreError::MutationFailure::MutationError::NetworkOther"}),
        "/t/full": (507, {"errorCode": -28, "description":
                          "CoreError::MutationFailure::MutationError::NetworkFull"}),
        "/t/admin": (401, {"errorCode": 400,
                           "description": "The gateway's admin secret is required"}),
    }
    for path, (status, body) in cases.items():
        response = await http.get(path)
        assert (response.status_code, response.json()) == (status, body), path
    assert "a bug" in caplog.text  # bugs are logged with their traceback
    # The server keeps serving after a failing handler.
    assert (await http.get("/t/admin", headers={"X-Safefs-Admin": "secret"})).text == "OK"
