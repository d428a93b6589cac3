"""The client library against a real gateway, plus its retry and error rules (fault injection)."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest
import trio

from safefs import client as client_module
from safefs.client import (
    Conflict,
    GatewayClient,
    GatewayError,
    GatewayUnavailable,
    NotFound,
    Unauthorized,
    error_from_response,
)
from safefs.model import DataIdentifier


@pytest.fixture
async def client(module_gateway):
    """A LOW_LEVEL_API client of the module's shared gateway."""
    async with module_gateway.client(module_gateway.authorise()) as client:
        yield client


async def test_bytes_round_trip(client):
    for size in (0, 1, 2, 3, 1000, client_module.SEGMENT_SIZE + 1):
        data = os.urandom(size)
        data_id = await client.put_bytes(data)
        assert DataIdentifier.deserialise(data_id).kind.name == "IMMUTABLE"
        assert await client.get_bytes(data_id) == data


async def test_symmetric_round_trip_and_other_apps(module_gateway, client):
    gateway = module_gateway
    data = os.urandom(5000)
    data_id = await client.put_bytes(data, cipher="SYMMETRIC")
    assert await client.get_bytes(data_id) == data
    other_app = {"name": "other", "id": "other", "vendor": "v", "version": "1"}
    async with gateway.client(gateway.authorise(app=other_app)) as other:
        with pytest.raises(GatewayError) as info:
            await other.get_bytes(data_id)
    assert info.value.code == -4
    async with gateway.client() as anonymous:
        with pytest.raises(GatewayError) as info:
            await anonymous.get_bytes(data_id)
    assert info.value.code == -1520


async def test_cipher_handle_is_kept_and_replaced_when_gone(client, monkeypatch):
    """One cipher-opts handle serves every upload of a session; a handle the gateway dropped
    (evicted, restarted) is replaced once, and the upload still succeeds."""
    made = []
    real = client.cipher_opts

    async def counting(kind, key_handle=None):
        made.append(await real(kind, key_handle))
        return made[-1]

    monkeypatch.setattr(client, "cipher_opts", counting)
    first = await client.put_bytes(b"a" * 5000, cipher="SYMMETRIC")
    second = await client.put_bytes(b"b" * 5000, cipher="SYMMETRIC")
    assert len(made) == 1
    await client.drop_cipher_opts(made[0])  # gone at the gateway, still kept by the client
    third = await client.put_bytes(b"c" * 5000, cipher="SYMMETRIC")
    assert len(made) == 2
    for data_id, byte in ((first, b"a"), (second, b"b"), (third, b"c")):
        assert await client.get_bytes(data_id) == byte * 5000


async def test_file_round_trip_20mib(client, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    source, dest = folder / "source", folder / "dest"
    with open(source, "wb") as file:
        for _ in range(20):
            file.write(os.urandom(1024 * 1024))
    uploaded: list[int] = []
    downloaded: list[int] = []
    data_id = await client.put_file(source, progress=uploaded.append)
    await client.get_file(data_id, dest, progress=downloaded.append)
    assert sum(uploaded) == sum(downloaded) == 20 * 1024 * 1024
    assert hashlib.sha256(dest.read_bytes()).digest() == \
        hashlib.sha256(source.read_bytes()).digest()
    assert sorted(p.name for p in folder.iterdir()) == ["dest", "source"]  # no partial file


async def test_reader_ranges(client):
    data = os.urandom(300_000)
    reader = await client.open_reader(await client.put_bytes(data))
    try:
        assert reader.size == len(data)
        for start, end in ((0, 1), (5, 5), (1000, 200_000), (299_999, None), (0, 10**9)):
            assert await reader.read(start, end) == data[start:end]
        pieces = [p async for p in reader.iter_range(10, 250_000)]
        assert b"".join(pieces) == data[10:250_000]
        with pytest.raises(ValueError):
            await reader.read(20, 10)
    finally:
        await reader.close()


async def test_reader_survives_gateway_restart(gateway):
    """The reader handle dies with the gateway; the reader opens a new one by itself."""
    async with gateway.client(gateway.authorise()) as client:
        data = os.urandom(10_000)
        reader = await client.open_reader(await client.put_bytes(data))
        assert await reader.read(0, 10) == data[:10]
        await trio.to_thread.run_sync(gateway.restart)
        assert await reader.read(100, 200) == data[100:200]
        await reader.close()


async def test_put_stream_checks_the_size(client):
    async def stream():
        yield b"abc"
        yield b"def"

    with pytest.raises(ValueError):
        await client.put_stream(stream(), 5)
    with pytest.raises(ValueError):
        await client.put_stream(stream(), 7)
    assert await client.get_bytes(await client.put_stream(stream(), 6)) == b"abcdef"


async def test_append_retry_is_idempotent(client):
    writer = await client.new_writer()
    await client.append(writer, b"abc", offset=0)
    await client.append(writer, b"abc", offset=0)  # as a retry would
    await client.append(writer, b"de", offset=3)
    with pytest.raises(GatewayError) as info:
        await client.append(writer, b"x", offset=1)
    assert info.value.status == 409
    data_id = await client.close_writer(writer)
    serialised = await client.serialise_data_id(data_id)
    await client.drop_data_id(data_id)
    await client.drop_writer(writer)
    assert await client.get_bytes(serialised) == b"abcde"


async def test_missing_data(client):
    with pytest.raises(NotFound):
        await client.get_bytes(DataIdentifier.immutable(os.urandom(32)).serialise())


async def test_gateway_down(gateway):
    async with gateway.client() as client:
        assert await client.health()
        await trio.to_thread.run_sync(gateway.stop)
        assert not await client.health()
    async with GatewayClient(gateway.url, retries=1) as down:
        with pytest.raises(GatewayUnavailable) as info:
            await down.put_bytes(b"data")
    assert gateway.url in info.value.description


async def test_retries_bridge_a_restart(gateway):
    token = gateway.authorise()
    await trio.to_thread.run_sync(gateway.stop)
    async with gateway.client(token, retries=8) as client, trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, gateway.start, gateway.port)
        assert await client.token_valid()


async def test_revoke(gateway):
    async with gateway.client(gateway.authorise()) as client:
        await client.revoke()
        assert client.token is None


async def test_structured_data_calls(client):
    name = os.urandom(32)
    await client.sd_create(name, 501, b"first", cipher="SYMMETRIC")
    assert await client.sd_info(name, 501) == {"version": 0, "dataVersionLength": 1,
                                               "isOwner": True}
    assert await client.sd_read(name, 501) == (0, b"first")
    assert await client.sd_update(name, 501, b"second", 0, cipher="SYMMETRIC") == 1
    assert await client.sd_read(name, 501) == (1, b"second")
    assert await client.sd_read(name, 501, version=0) == (1, b"first")
    with pytest.raises(Conflict):
        await client.sd_update(name, 501, b"stale", 0)
    with pytest.raises(Conflict):
        await client.sd_create(name, 501, b"again")
    with pytest.raises(NotFound):
        await client.sd_read(os.urandom(32), 500)
    plain = os.urandom(32)
    await client.sd_create(plain, 500, b"x" * 200_000)
    assert await client.sd_read(plain, 500) == (0, b"x" * 200_000)
    assert await client.sd_info(plain, 500) == {"version": 0, "isOwner": True}


# -- fault injection: the retry and error rules, without a gateway ---------------------------


def faulty_client(responses: list, retries: int = 3) -> tuple[GatewayClient, list]:
    """A client whose transport plays ``responses`` (an int status or an exception) in turn."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        outcome = responses.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return httpx.Response(outcome, json={"errorCode": -10, "description": "x"})

    client = GatewayClient("http://gateway.invalid", retries=retries)
    client._http = httpx.AsyncClient(base_url="http://gateway.invalid",
                                     transport=httpx.MockTransport(handler))
    return client, seen


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(client_module.random, "uniform", lambda a, b: 0.0)


async def test_retries_connection_errors_and_503(fast_backoff):
    client, seen = faulty_client([httpx.ConnectError("refused"), 503, 200])
    async with client:
        response = await client.request("POST", "/anything")
    assert response.status_code == 200 and len(seen) == 3


async def test_no_blind_retry_after_a_request_was_sent(fast_backoff):
    client, seen = faulty_client([httpx.ReadError("reset"), 200])
    async with client:
        with pytest.raises(GatewayUnavailable):
            await client.request("POST", "/auth")
        assert len(seen) == 1
        await client.request("GET", "/health")  # idempotent: retried
    assert len(seen) == 2


async def test_gives_up_after_the_retries(fast_backoff):
    client, seen = faulty_client([503, 503, 503], retries=2)
    async with client:
        with pytest.raises(GatewayUnavailable):
            await client.request("GET", "/x")
    assert len(seen) == 3


@pytest.mark.parametrize(("status", "body", "cls", "code"), [
    (400, {"errorCode": -23, "description": "DataExists"}, Conflict, -23),
    (400, {"errorCode": -25, "description": "InvalidSuccessor"}, Conflict, -25),
    (404, {"errorCode": -18, "description": "NoSuchData"}, NotFound, -18),
    (401, None, Unauthorized, 401),
    (403, {"errorCode": 400, "description": "Low level api access is not granted"},
     Unauthorized, 400),
    (503, {"errorCode": -27, "description": "NetworkOther"}, GatewayUnavailable, -27),
    (400, {"errorCode": -1516, "description": "InvalidSelfEncryptorHandle"}, GatewayError, -1516),
])
def test_error_classes(status, body, cls, code):
    response = httpx.Response(status, json=body) if body else httpx.Response(status, text="no")
    error = error_from_response(response)
    assert type(error) is cls
    assert (error.status, error.code) == (status, code)
