"""/immutable-data on a real gateway: writers, readers, ranges, errors, session-owned handles."""

from __future__ import annotations

import os
import signal

import httpx
import pytest
import trio

from safefs.gateway.blobs import SPOOL_HEAD_IN_MEMORY
from safefs.model import DataIdentifier

CONTENT = b"Test sample"
INVALID_SE = {"errorCode": -1516, "description": "FfiError::InvalidSelfEncryptorHandle"}
INVALID_DATA_ID = {"errorCode": -1514, "description": "FfiError::InvalidDataIdHandle"}
INVALID_RANGE = {"errorCode": 400, "description": "Invalid range specified"}


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class Api:
    """Raw launcher calls with one token, returning httpx responses."""

    def __init__(self, http: httpx.AsyncClient, token: str | None) -> None:
        self.http = http
        self.headers = bearer(token)

    async def call(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **kwargs)

    async def handle(self, method: str, path: str, **kwargs) -> int:
        response = await self.call(method, path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()["handleId"]

    async def store(self, content: bytes, cipher: str = "PLAIN") -> int:
        """Write, close and drop a writer; the data-id handle."""
        writer = await self.handle("GET", "/immutable-data/writer")
        if content:
            response = await self.call("POST", f"/immutable-data/{writer}", content=content)
            assert (response.status_code, response.text) == (200, "OK")
        if cipher == "PLAIN":
            data_id = await self.handle("PUT", f"/immutable-data/{writer}/plain")
        else:
            opts = await self.handle("GET", f"/cipher-opts/{cipher}")
            data_id = await self.handle("PUT", f"/immutable-data/{writer}/{opts}")
            assert (await self.call("DELETE", f"/cipher-opts/{opts}")).status_code == 200
        assert (await self.call("DELETE", f"/immutable-data/writer/{writer}")).text == "OK"
        return data_id

    async def reader(self, data_id: int) -> tuple[int, int]:
        response = await self.call("GET", f"/immutable-data/reader/{data_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        return body["handleId"], body["size"]


@pytest.fixture
async def http(module_gateway):
    async with httpx.AsyncClient(base_url=module_gateway.url, timeout=60) as http:
        yield http


@pytest.fixture
def api(module_gateway, http) -> Api:
    return Api(http, module_gateway.authorise())


@pytest.fixture
async def own_api(gateway):
    """An Api on a gateway of the test's own (for tests that stop it or set flags)."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        yield Api(http, gateway.authorise())


async def test_write_close_read(api, http):
    data_id = await api.store(CONTENT)
    serialised = (await api.call("GET", f"/data-id/{data_id}")).content
    # Reading needs no token.
    anonymous = Api(http, None)
    reader, size = await anonymous.reader(
        await anonymous.handle("POST", "/data-id", content=serialised))
    assert size == len(CONTENT)
    response = await anonymous.call("GET", f"/immutable-data/{reader}")
    assert response.status_code == 200
    assert response.content == CONTENT
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-range"] == f"bytes 0-{size}/{size}"
    assert response.headers["content-length"] == str(size)
    assert response.headers["content-type"] == "application/octet-stream"
    assert (await anonymous.call("DELETE", f"/immutable-data/reader/{reader}")).text == "OK"
    assert (await anonymous.call("DELETE", f"/immutable-data/reader/{reader}")
            ).json() == INVALID_SE


async def test_sizes_round_trip(api):
    """Inline (under 3 bytes) and self-encrypted data alike."""
    for size in (0, 1, 2, 3, 4, 1000):
        content = os.urandom(size)
        reader, reported = await api.reader(await api.store(content))
        assert reported == size
        assert (await api.call("GET", f"/immutable-data/{reader}")).content == content


RANGE_CASES = [
    ("bytes=0-5", 206, CONTENT[0:5], "bytes 0-5/11"),  # the end is exclusive
    ("bytes=2-", 206, CONTENT[2:], "bytes 2-11/11"),
    ("bytes=0-", 206, CONTENT, "bytes 0-11/11"),
    ("bytes=0-21", 206, CONTENT, "bytes 0-11/11"),  # an end past the size is clamped
    ("bytes=3-3", 206, b"", "bytes 3-3/11"),
    ("bytes=11-", 206, b"", "bytes 11-11/11"),
    ("BYTES=1-4", 206, CONTENT[1:4], "bytes 1-4/11"),
]


async def test_ranges(api):
    reader, _ = await api.reader(await api.store(CONTENT))
    for header, status, body, content_range in RANGE_CASES:
        response = await api.call("GET", f"/immutable-data/{reader}", headers={"Range": header})
        assert response.status_code == status, header
        assert response.content == body, header
        assert response.headers["content-range"] == content_range, header
        assert response.headers["content-length"] == str(len(body)), header


async def test_bad_ranges(api):
    reader, _ = await api.reader(await api.store(CONTENT))
    for header in ("bytes=5-2", "bytes=a-b", "bytes=12-", "bytes=-3", "bytes=1-2,4-5"):
        response = await api.call("GET", f"/immutable-data/{reader}", headers={"Range": header})
        assert (response.status_code, response.json()) == (416, INVALID_RANGE), header
    response = await api.call("GET", f"/immutable-data/{reader}", headers={"Range": "items=0-1"})
    assert response.status_code == 400
    assert response.json() == {"errorCode": 400, "description": "invalid range specified"}


async def test_appends_accumulate_and_alias_close(api):
    writer = await api.handle("GET", "/immutable-data/writer")
    for piece in (b"one ", b"", b"two ", b"three"):
        response = await api.call("POST", f"/immutable-data/{writer}", content=piece)
        assert response.status_code == 200
    # The seed's spelling of close; closing does not drop the writer.
    data_id = await api.handle("DELETE", f"/immutable-data/writer/{writer}/nothing")
    reader, size = await api.reader(data_id)
    assert (await api.call("GET", f"/immutable-data/{reader}")).content == b"one two three"
    assert (await api.call("DELETE", f"/immutable-data/writer/{writer}")).status_code == 200


async def test_content_length_required(api):
    writer = await api.handle("GET", "/immutable-data/writer")

    async def chunked():
        yield b"abc"

    response = await api.call("POST", f"/immutable-data/{writer}", content=chunked())
    assert response.status_code == 400
    assert response.json() == {"errorCode": 400,
                               "description": "Content-Length header is not present"}


async def test_offset_header_makes_appends_idempotent(api):
    writer = await api.handle("GET", "/immutable-data/writer")
    path = f"/immutable-data/{writer}"
    assert (await api.call("POST", path, content=b"abc",
                           headers={"X-Safefs-Offset": "0"})).status_code == 200
    # A retry of the same append is acknowledged, not appended again.
    assert (await api.call("POST", path, content=b"abc",
                           headers={"X-Safefs-Offset": "0"})).status_code == 200
    mismatch = await api.call("POST", path, content=b"xyz", headers={"X-Safefs-Offset": "1"})
    assert mismatch.status_code == 409
    bad = await api.call("POST", path, content=b"xyz", headers={"X-Safefs-Offset": "-1"})
    assert bad.status_code == 400
    assert (await api.call("POST", path, content=b"def",
                           headers={"X-Safefs-Offset": "3"})).status_code == 200
    reader, _ = await api.reader(await api.handle("PUT", f"{path}/PLAIN"))
    assert (await api.call("GET", f"/immutable-data/{reader}")).content == b"abcdef"


async def test_invalid_handles(api, http):
    for method, path in (("POST", "/immutable-data/1234"), ("PUT", "/immutable-data/1234/0"),
                         ("DELETE", "/immutable-data/writer/1234"),
                         ("GET", "/immutable-data/1234"), ("DELETE", "/immutable-data/reader/1234"),
                         ("GET", "/immutable-data/abc"), ("POST", "/immutable-data/-1"),
                         ("GET", f"/immutable-data/{2**64}")):
        response = await api.call(method, path, content=b"x")
        assert (response.status_code, response.json()) == (400, INVALID_SE), (method, path)
    response = await api.call("GET", "/immutable-data/reader/1234")
    assert (response.status_code, response.json()) == (400, INVALID_DATA_ID)
    writer = await api.handle("GET", "/immutable-data/writer")
    response = await api.call("PUT", f"/immutable-data/{writer}/987654")
    assert response.json() == {"errorCode": -1517,
                               "description": "FfiError::InvalidCipherOptHandle"}


async def test_missing_data_is_404(api):
    missing = DataIdentifier.immutable(os.urandom(32)).serialise()
    data_id = await api.handle("POST", "/data-id", content=missing)
    response = await api.call("GET", f"/immutable-data/reader/{data_id}")
    assert response.status_code == 404
    assert response.json() == {"errorCode": -18,
                               "description": "CoreError::GetFailure::GetError::NoSuchData"}
    structured = DataIdentifier.structured(os.urandom(32), 500).serialise()
    data_id = await api.handle("POST", "/data-id", content=structured)
    assert (await api.call("GET", f"/immutable-data/reader/{data_id}")).status_code == 404


async def test_symmetric_data_opens_only_for_its_app(module_gateway, api, http):
    data_id = await api.store(CONTENT, "SYMMETRIC")
    serialised = (await api.call("GET", f"/data-id/{data_id}")).content
    reader, _ = await api.reader(data_id)
    assert (await api.call("GET", f"/immutable-data/{reader}")).content == CONTENT

    anonymous = Api(http, None)
    anonymous_id = await anonymous.handle("POST", "/data-id", content=serialised)
    response = await anonymous.call("GET", f"/immutable-data/reader/{anonymous_id}")
    assert response.json() == {"errorCode": -1520,
                               "description": "FfiError::OperationForbiddenForApp"}

    other_app = {"name": "other", "id": "other.app", "vendor": "x", "version": "1"}
    other = Api(http, module_gateway.authorise(app=other_app))
    other_id = await other.handle("POST", "/data-id", content=serialised)
    response = await other.call("GET", f"/immutable-data/reader/{other_id}")
    assert response.json() == {"errorCode": -4,
                               "description": "CoreError::SymmetricDecipherFailure"}


async def test_handles_belong_to_their_session(module_gateway, http):
    api = Api(http, module_gateway.authorise(app={"name": "a", "id": "a", "vendor": "a",
                                                  "version": "1"}))
    other = Api(http, module_gateway.authorise(app={"name": "b", "id": "b", "vendor": "b",
                                                    "version": "1"}))
    writer = await api.handle("GET", "/immutable-data/writer")
    for method, path in (("POST", f"/immutable-data/{writer}"),
                         ("PUT", f"/immutable-data/{writer}/PLAIN"),
                         ("DELETE", f"/immutable-data/writer/{writer}")):
        response = await other.call(method, path, content=b"x")
        assert response.json() == INVALID_SE, (method, path)
    data_id = await api.store(CONTENT)
    assert (await other.call("GET", f"/immutable-data/reader/{data_id}")
            ).json() == INVALID_DATA_ID
    reader, _ = await api.reader(data_id)
    anonymous = Api(http, None)
    assert (await anonymous.call("GET", f"/immutable-data/{reader}")).json() == INVALID_SE
    # Handles made without a token are anyone's.
    public_reader, _ = await anonymous.reader(
        await anonymous.handle("POST", "/data-id",
                               content=(await api.call("GET", f"/data-id/{data_id}")).content))
    assert (await other.call("GET", f"/immutable-data/{public_reader}")).content == CONTENT
    # Revoking an app drops its handles.
    assert (await api.call("DELETE", "/auth")).status_code == 200
    other_token_api = Api(http, module_gateway.authorise())
    assert (await other_token_api.call("GET", f"/immutable-data/{reader}")).json() == INVALID_SE


BIG = b"a" * (SPOOL_HEAD_IN_MEMORY + 1)


@pytest.mark.gateway_args("--handle-capacity", "3")
async def test_lru_eviction(gateway, own_api):
    api = own_api
    writers = [await api.handle("GET", "/immutable-data/writer") for _ in range(3)]
    # Using the oldest makes the second the least recently used.
    assert (await api.call("POST", f"/immutable-data/{writers[0]}", content=BIG)
            ).status_code == 200
    fourth = await api.handle("GET", "/immutable-data/writer")
    assert (await api.call("POST", f"/immutable-data/{writers[1]}", content=BIG)
            ).json() == INVALID_SE
    for handle in (writers[0], writers[2], fourth):
        assert (await api.call("POST", f"/immutable-data/{handle}", content=BIG)
                ).status_code == 200
    # Evicting a writer deletes its spool file (BIG is too much to keep in memory).
    assert len(os.listdir(gateway.env.data_dir / "spool")) == 3


@pytest.mark.gateway_args("--shared-handles")
async def test_shared_handles_mode(own_api):
    """The launcher's behaviour, for its test suite: any caller may use any handle."""
    reader, _ = await own_api.reader(await own_api.store(CONTENT))
    anonymous = Api(own_api.http, None)
    assert (await anonymous.call("GET", f"/immutable-data/{reader}")).content == CONTENT


async def test_streamed_reads_do_not_hold_up_shutdown(gateway, own_api):
    api = own_api
    """A keep-alive connection that served a stream closes as soon as the gateway stops."""
    reader, _ = await api.reader(await api.store(CONTENT))
    assert (await api.call("GET", f"/immutable-data/{reader}")).content == CONTENT
    gateway.proc.send_signal(signal.SIGTERM)
    # The graceful timeout is 30 s; an idle connection must not make the gateway wait for it.
    assert await trio.to_thread.run_sync(gateway.proc.wait, 15) == 0


async def test_shutdown_lets_an_upload_finish(gateway, own_api):
    api = own_api
    """SIGTERM during an append: the append completes, then the gateway exits cleanly."""
    writer = await api.handle("GET", "/immutable-data/writer")
    half_sent, resume = trio.Event(), trio.Event()
    result = {}

    async def body():
        yield b"a" * 1000
        half_sent.set()
        await resume.wait()
        yield b"b" * 1000

    async def upload():
        result["response"] = await api.call("POST", f"/immutable-data/{writer}", content=body(),
                                            headers={"Content-Length": "2000"})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(upload)
        await half_sent.wait()
        gateway.proc.send_signal(signal.SIGTERM)
        while "finishing in-flight requests" not in gateway.log():
            await trio.sleep(0.05)
        resume.set()
    assert (result["response"].status_code, result["response"].text) == (200, "OK")
    assert await trio.to_thread.run_sync(gateway.proc.wait, 15) == 0


async def test_handles_of_a_previous_run_stay_invalid(gateway, own_api):
    """Tokens survive a restart, so stale handle numbers must not reach new objects."""
    api = own_api
    reader, _ = await api.reader(await api.store(b"before the restart"))
    await trio.to_thread.run_sync(gateway.restart)
    for _ in range(5):
        await api.reader(await api.store(os.urandom(100)))
    response = await api.call("GET", f"/immutable-data/{reader}")
    assert (response.status_code, response.json()) == (400, INVALID_SE)
