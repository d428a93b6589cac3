"""/structured-data on a real gateway: publication, versions, history, large content, errors."""

from __future__ import annotations

import base64
import dataclasses
import os

import httpx
import pytest
import trio

from safefs.gateway import blobs, structured
from safefs.gateway.blobs import ChunkCache
from safefs.gateway.records import AppKeys
from safefs.model import (
    MAX_STRUCTURED_DATA_SIZE,
    VERSIONS_PER_PAGE,
    CipherOpts,
    DataIdentifier,
    StructuredData,
    encrypt,
)
from safefs.store import open_store

from .conftest import GatewayProcess, another_device

OTHER_APP = {"name": "other app", "id": "other.app", "vendor": "safefs", "version": "1.0"}

INVALID_SD = {"errorCode": -1513, "description": "FfiError::InvalidStructDataHandle"}
NO_SUCH_DATA = {"errorCode": -18, "description": "CoreError::GetFailure::GetError::NoSuchData"}
MUTATION_NO_SUCH_DATA = {"errorCode": -22,
                         "description": "CoreError::MutationFailure::MutationError::NoSuchData"}
DATA_EXISTS = {"errorCode": -23,
               "description": "CoreError::MutationFailure::MutationError::DataExists"}
INVALID_SUCCESSOR = {"errorCode": -25,
                     "description": "CoreError::MutationFailure::MutationError::InvalidSuccessor"}
INVALID_OPERATION = {"errorCode": -26,
                     "description": "CoreError::MutationFailure::MutationError::InvalidOperation"}
INVALID_TYPE_TAG = {"errorCode": -1521, "description": "FfiError::InvalidStructuredDataTypeTag"}
INVALID_VERSION = {"errorCode": -1522, "description": "FfiError::InvalidVersionNumber"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_name() -> str:
    return b64(os.urandom(32))


class Api:
    """Raw launcher calls with one token (or none), returning httpx responses."""

    def __init__(self, http: httpx.AsyncClient, token: str | None) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def call(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **kwargs)

    async def ok(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = await self.call(method, path, **kwargs)
        assert response.status_code == 200, f"{method} {path}: {response.text}"
        return response

    async def handle(self, method: str, path: str, **kwargs) -> int:
        return (await self.ok(method, path, **kwargs)).json()["handleId"]

    async def error(self, status: int, method: str, path: str, **kwargs) -> dict:
        response = await self.call(method, path, **kwargs)
        assert response.status_code == status, f"{method} {path}: {response.text}"
        return response.json()

    # -- structured data

    async def sd_create(self, name: str, data: bytes = b"", tag: int = 500, version: int = 0,
                        cipher: str = "PLAIN") -> int:
        body = {"name": name, "typeTag": tag, "data": b64(data), "version": version}
        if cipher != "PLAIN":
            body["cipherOpts"] = await self.handle("GET", f"/cipher-opts/{cipher}")
        return await self.handle("POST", "/structured-data", json=body)

    async def sd_new(self, data: bytes = b"", tag: int = 500, cipher: str = "PLAIN") -> tuple:
        """A stored record: (name, handle)."""
        name = new_name()
        handle = await self.sd_create(name, data, tag, cipher=cipher)
        await self.ok("PUT", f"/structured-data/{handle}")
        return name, handle

    async def sd_fetch(self, name: str, tag: int = 500) -> dict:
        data_id = await self.handle("POST", "/data-id/structured-data",
                                    json={"name": name, "typeTag": tag})
        body = (await self.ok("GET", f"/structured-data/handle/{data_id}")).json()
        await self.ok("DELETE", f"/data-id/{data_id}")
        return body

    async def sd_read(self, handle: int, version: int | str | None = None) -> bytes:
        suffix = "" if version is None else f"/{version}"
        return (await self.ok("GET", f"/structured-data/{handle}{suffix}")).content

    async def sd_patch(self, handle: int, data: bytes) -> None:
        await self.ok("PATCH", f"/structured-data/{handle}", json={"data": b64(data)})

    async def metadata(self, handle: int) -> dict:
        return (await self.ok("GET", f"/structured-data/metadata/{handle}")).json()


@pytest.fixture
async def http(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        yield http


@pytest.fixture
def api(gateway, http) -> Api:
    return Api(http, gateway.authorise())


@pytest.fixture
def anonymous(http) -> Api:
    return Api(http, None)


async def test_create_put_fetch_round_trip(api, anonymous):
    name = new_name()
    handle = await api.sd_create(name, b"first content")
    assert (await api.ok("GET", f"/structured-data/validate-size/{handle}")).json() == {
        "isValid": True}
    assert (await api.ok("PUT", f"/structured-data/{handle}")).text == "OK"
    data_id = await api.handle("GET", f"/structured-data/data-id/{handle}")
    await api.ok("DELETE", f"/structured-data/handle/{handle}")
    assert await api.error(400, "DELETE", f"/structured-data/handle/{handle}") == INVALID_SD

    fetched = (await api.ok("GET", f"/structured-data/handle/{data_id}")).json()
    assert fetched.keys() == {"handleId", "isOwner", "version"}  # no dataVersionLength for 500
    assert (fetched["isOwner"], fetched["version"]) == (True, 0)
    assert await api.sd_read(fetched["handleId"]) == b"first content"
    assert await api.metadata(fetched["handleId"]) == {"isOwner": True, "version": 0}

    # Reading public data needs no token; an anonymous caller owns nothing.
    info = await anonymous.sd_fetch(name)
    assert (info["isOwner"], info["version"]) == (False, 0)
    assert await anonymous.sd_read(info["handleId"]) == b"first content"
    # Writing does.
    assert (await anonymous.call("POST", f"/structured-data/{info['handleId']}")).status_code \
        == 401


async def test_versioned_history(api, anonymous):
    name = new_name()
    handle = await api.sd_create(name, b"version 0", tag=501)
    await api.ok("PUT", f"/structured-data/{handle}")
    assert await api.metadata(handle) == {"isOwner": True, "version": 0, "dataVersionLength": 1}

    # PATCH stores a content version at once; POST publishes it as the next record version.
    await api.sd_patch(handle, b"version 1")
    assert await api.metadata(handle) == {"isOwner": True, "version": 0, "dataVersionLength": 2}
    await api.ok("POST", f"/structured-data/{handle}")
    assert await api.metadata(handle) == {"isOwner": True, "version": 1, "dataVersionLength": 2}
    await api.sd_patch(handle, b"")
    await api.ok("POST", f"/structured-data/{handle}")

    info = await anonymous.sd_fetch(name, 501)
    assert (info["version"], info["dataVersionLength"]) == (2, 3)
    reader = info["handleId"]
    assert [await anonymous.sd_read(reader, n) for n in range(3)] == [
        b"version 0", b"version 1", b""]
    assert await anonymous.sd_read(reader) == b""
    assert await anonymous.error(400, "GET", f"/structured-data/{reader}/3") == INVALID_VERSION
    assert await anonymous.error(400, "GET", f"/structured-data/{reader}/{'9' * 5000}") \
        == INVALID_VERSION
    # As in the launcher, a version that is not a number reads the latest (safe-js relies on it).
    assert await anonymous.sd_read(reader, "undefined") == b""

    _, unversioned = await api.sd_new(b"x")
    assert await api.error(400, "GET", f"/structured-data/{unversioned}/0") == INVALID_TYPE_TAG
    assert await api.sd_read(unversioned, "latest") == b"x"


async def test_large_content_is_stored_as_immutable_data(api):
    large = os.urandom(MAX_STRUCTURED_DATA_SIZE + 50_000)
    for tag in (500, 501):
        name = new_name()
        handle = await api.sd_create(name, large, tag, cipher="SYMMETRIC")
        assert (await api.ok("GET", f"/structured-data/validate-size/{handle}")).json() == {
            "isValid": True}
        await api.ok("PUT", f"/structured-data/{handle}")
        info = await api.sd_fetch(name, tag)
        assert await api.sd_read(info["handleId"]) == large
        # Back to small content: inline again for 500, a second version for 501.
        await api.sd_patch(info["handleId"], b"small")
        await api.ok("POST", f"/structured-data/{info['handleId']}")
        assert await api.sd_read((await api.sd_fetch(name, tag))["handleId"]) == b"small"

    # Custom tags keep the content in the record: the app must stay under the limit.
    handle = await api.sd_create(new_name(), large, 15000)
    assert (await api.ok("GET", f"/structured-data/validate-size/{handle}")).json() == {
        "isValid": False}
    assert (await api.error(400, "PUT", f"/structured-data/{handle}"))["errorCode"] == -29


async def test_create_validation(api):
    name = new_name()
    for tag in (15000, "501", 2**64 - 1):
        await api.handle("POST", "/structured-data", json={"name": name, "typeTag": tag})
    for tag, message in ((14999, "Invalid tag type specified"), (502, "Invalid tag type specified"),
                         (2**64, "Invalid tag type specified"),
                         ("abc", "Tag type must be a valid number"),
                         (True, "Tag type must be a valid number")):
        assert await api.error(400, "POST", "/structured-data",
                               json={"name": name, "typeTag": tag}) == {
            "errorCode": 400, "description": message}
    assert (await api.error(400, "POST", "/structured-data", json={}))["description"] == \
        "name is missing in request body"
    assert (await api.error(400, "POST", "/structured-data", json={"name": b64(b"short")}))[
        "description"] == "Invalid id specified"
    assert await api.error(400, "POST", "/structured-data",
                           json={"name": name, "cipherOpts": 123456}) == {
        "errorCode": -1517, "description": "FfiError::InvalidCipherOptHandle"}
    for field, value in (("data", 11), ("data", "not base64!"), ("version", -1),
                         ("version", "1")):
        assert (await api.error(400, "POST", "/structured-data",
                                json={"name": name, field: value}))["errorCode"] == 400
    # Tag 501 and custom tags work for a fresh record with no data at all.
    handle = await api.handle("POST", "/structured-data", json={"name": name, "typeTag": 501})
    assert await api.sd_read(handle) == b""


async def test_serialise_deserialise(api, anonymous):
    name = new_name()
    handle = await api.sd_create(name, b"serialised", tag=501)
    serialised = (await api.ok("GET", f"/structured-data/serialise/{handle}")).content
    copy = (await api.ok("POST", "/structured-data/deserialise", content=serialised,
                         headers={"Content-Type": "text/plain"})).json()
    assert {k: v for k, v in copy.items() if k != "handleId"} == {
        "isOwner": True, "version": 0, "dataVersionLength": 1}
    # The copy is the same record: storing it stores the original.
    await api.ok("PUT", f"/structured-data/{copy['handleId']}")
    assert await api.error(400, "PUT", f"/structured-data/{handle}") == DATA_EXISTS
    assert await anonymous.sd_read((await anonymous.sd_fetch(name, 501))["handleId"]) \
        == b"serialised"
    anonymous_copy = (await anonymous.ok("POST", "/structured-data/deserialise",
                                         content=serialised)).json()
    assert anonymous_copy["isOwner"] is False
    assert (await api.error(400, "POST", "/structured-data/deserialise", content=b"junk"))[
        "errorCode"] == -2


async def test_error_codes(api):
    name = new_name()
    handle = await api.sd_create(name, b"a")
    assert await api.error(404, "POST", f"/structured-data/{handle}") == MUTATION_NO_SUCH_DATA
    assert await api.error(404, "DELETE", f"/structured-data/{handle}") == MUTATION_NO_SUCH_DATA
    assert await api.error(404, "GET", "/structured-data/handle/" + str(
        await api.handle("POST", "/data-id/structured-data", json={"name": name}))) \
        == NO_SUCH_DATA
    await api.ok("PUT", f"/structured-data/{handle}")
    assert await api.error(400, "PUT", f"/structured-data/{handle}") == DATA_EXISTS

    # A second handle on the same record goes stale once the first one is posted.
    stale = (await api.sd_fetch(name))["handleId"]
    await api.sd_patch(handle, b"b")
    await api.ok("POST", f"/structured-data/{handle}")
    await api.sd_patch(stale, b"c")
    assert await api.error(400, "POST", f"/structured-data/{stale}") == INVALID_SUCCESSOR
    assert await api.error(400, "DELETE", f"/structured-data/{stale}") == INVALID_SUCCESSOR
    assert await api.sd_read((await api.sd_fetch(name))["handleId"]) == b"b"

    for method, path in (("PUT", "/structured-data/1234"), ("POST", "/structured-data/1234"),
                         ("GET", "/structured-data/1234"), ("GET", "/structured-data/abc"),
                         ("GET", "/structured-data/metadata/1234"),
                         ("GET", "/structured-data/serialise/1234"),
                         ("GET", "/structured-data/data-id/1234"),
                         ("PATCH", "/structured-data/1234"),
                         ("DELETE", "/structured-data/unclaim/1234")):
        kwargs = {"json": {"data": b64(b"x")}} if method == "PATCH" else {}
        assert await api.error(400, method, path, **kwargs) == INVALID_SD, (method, path)


async def test_delete_and_reclaim(api, anonymous):
    name, handle = await api.sd_new(b"to delete")
    await api.ok("DELETE", f"/structured-data/{handle}")
    assert await api.error(404, "GET", f"/structured-data/{handle}") == NO_SUCH_DATA
    assert await api.error(400, "POST", f"/structured-data/{handle}") == INVALID_OPERATION
    assert await api.error(400, "DELETE", f"/structured-data/{handle}") == INVALID_OPERATION

    deleted = await anonymous.sd_fetch(name)
    assert deleted["version"] == 1
    assert await anonymous.error(404, "GET", f"/structured-data/{deleted['handleId']}") \
        == NO_SUCH_DATA
    # Only the next version re-claims the name, and anyone may do it.
    for version in (0, 1, 3):
        wrong = await api.sd_create(name, b"claimed", version=version)
        assert await api.error(400, "PUT", f"/structured-data/{wrong}") == DATA_EXISTS
    claimed = await api.sd_create(name, b"claimed", version=2)
    await api.ok("PUT", f"/structured-data/{claimed}")
    info = await anonymous.sd_fetch(name)
    assert info["version"] == 2
    assert await anonymous.sd_read(info["handleId"]) == b"claimed"


async def test_unclaim(api):
    name, handle = await api.sd_new(b"mine", tag=501)
    await api.ok("DELETE", f"/structured-data/unclaim/{handle}")
    info = await api.sd_fetch(name, 501)
    assert info["isOwner"] is False
    assert (info["version"], info["dataVersionLength"]) == (1, 0)
    assert await api.error(400, "POST", f"/structured-data/{info['handleId']}") \
        == INVALID_OPERATION
    assert await api.error(400, "PATCH", f"/structured-data/{info['handleId']}",
                           json={"data": b64(b"x")}) == INVALID_OPERATION
    for version in (0, 2):
        again = await api.sd_create(name, b"again", tag=501, version=version)
        assert await api.error(400, "PUT", f"/structured-data/{again}") == DATA_EXISTS


async def test_symmetric_content_is_private_to_its_app(gateway, http, api, anonymous):
    other = Api(http, gateway.authorise(app=OTHER_APP))
    for tag, content in ((500, b"secret"), (501, b"secret"), (15000, b"secret"),
                         (500, os.urandom(MAX_STRUCTURED_DATA_SIZE + 1))):
        name, _ = await api.sd_new(content, tag, cipher="SYMMETRIC")
        assert await api.sd_read((await api.sd_fetch(name, tag))["handleId"]) == content
        theirs = (await other.sd_fetch(name, tag))["handleId"]
        assert await other.error(400, "GET", f"/structured-data/{theirs}") == {
            "errorCode": -4, "description": "CoreError::SymmetricDecipherFailure"}
        public = (await anonymous.sd_fetch(name, tag))["handleId"]
        assert (await anonymous.error(400, "GET", f"/structured-data/{public}"))["errorCode"] \
            == -1520


async def test_handles_belong_to_their_session(gateway, http, api, anonymous):
    other = Api(http, gateway.authorise(app=OTHER_APP))
    name, mine = await api.sd_new(b"x")
    for who in (other, anonymous):
        assert await who.error(400, "GET", f"/structured-data/{mine}") == INVALID_SD
        assert await who.error(400, "DELETE", f"/structured-data/handle/{mine}") == INVALID_SD
    # A handle made without a token carries nothing private: anyone may use it.
    public = (await anonymous.sd_fetch(name))["handleId"]
    assert await other.sd_read(public) == b"x"
    assert await other.metadata(public) == {"isOwner": True, "version": 0}


async def test_racing_posts_one_wins(gateway_factory, tmp_path):
    """Two gateways of one account on one store POST successors of the same version: exactly
    one wins."""
    gateways = [gateway_factory(), None]
    gateways[1] = GatewayProcess(another_device(gateways[0].env, tmp_path / "device2"),
                                 gateways[0].store_url, [])
    gateways[1].start()
    async with httpx.AsyncClient(base_url=gateways[0].url, timeout=60) as first, \
            httpx.AsyncClient(base_url=gateways[1].url, timeout=60) as second:
        apis = [Api(first, gateways[0].authorise()), Api(second, gateways[1].authorise())]
        name, _ = await apis[0].sd_new(b"base", tag=501)
        handles = [(await a.sd_fetch(name, 501))["handleId"] for a in apis]
        for a, handle, content in zip(apis, handles, (b"one", b"two"), strict=True):
            await a.sd_patch(handle, content)
        results: list[httpx.Response] = []

        async def post(a: Api, handle: int) -> None:
            results.append(await a.call("POST", f"/structured-data/{handle}"))

        async with trio.open_nursery() as nursery:
            for a, handle in zip(apis, handles, strict=True):
                nursery.start_soon(post, a, handle)
        assert sorted(r.status_code for r in results) == [200, 400]
        loser = next(r for r in results if r.status_code == 400)
        assert loser.json() == INVALID_SUCCESSOR

        info = await apis[1].sd_fetch(name, 501)
        assert (info["version"], info["dataVersionLength"]) == (1, 2)
        winner = await apis[1].sd_read(info["handleId"])
        assert winner in (b"one", b"two")
        assert await apis[1].sd_read(info["handleId"], 0) == b"base"
    gateways[1].stop()


def test_history_spans_versions_info_pages():
    """Past 1024 versions the oldest page moves to ImmutableData; every version stays readable."""
    store = open_store("memory://")
    cache = ChunkCache(1 << 20)
    record = StructuredData(501, bytes(32), structured.empty_data(501), 0, b"\x01" * 32)
    total = VERSIONS_PER_PAGE * 2 + 3

    def content(n: int) -> bytes:
        return n.to_bytes(2, "little")  # under 3 bytes: stored inline, no self-encryption

    for n in range(total):
        record = structured.with_content(store, record, content(n), CipherOpts.plain())
    assert structured.version_count(record) == total
    assert record.signed_size() < MAX_STRUCTURED_DATA_SIZE // 2
    for n in (0, 1, VERSIONS_PER_PAGE - 1, VERSIONS_PER_PAGE, 2 * VERSIONS_PER_PAGE, total - 1):
        assert structured.read_content(store, cache, record, AppKeys(), n) == content(n)
    assert structured.read_content(store, cache, record, AppKeys()) == content(total - 1)


def test_small_versions_travel_in_their_root_chunk():
    """A directory-sized version is one chunk (its content wrapped inside the root chunk); PLAIN
    content and content over RECORD_INLINE_MAX are self-encrypted (three chunks and a root)."""
    store = open_store("memory://")
    cache = ChunkCache(1 << 20)
    keys = AppKeys(sym_key=bytes(range(32)))
    symmetric = CipherOpts.symmetric(keys.sym_key)
    record = StructuredData(501, bytes(32), structured.empty_data(501), 0, b"\x01" * 32)
    large = os.urandom(blobs.RECORD_INLINE_MAX + 1)
    for content, opts, chunks in ((b"directory" * 500, symmetric, 1),
                                  (os.urandom(blobs.RECORD_INLINE_MAX), symmetric, 1),
                                  (large, symmetric, 4),
                                  (b"public" * 500, CipherOpts.plain(), 4)):
        before = store.stats().chunk_count
        record = structured.with_content(store, record, content, opts)
        store.flush()
        assert store.stats().chunk_count - before == chunks
        assert structured.read_content(store, cache, record, keys) == content
    first_root = structured._versions(record).pointer_at(0)
    assert b"directory" * 2 not in store.get_chunk(first_root)  # wrapped, not in the clear
    assert structured.read_content(store, cache, record, keys, 0) == b"directory" * 500


def test_content_encodings_match_the_format_document():
    """The example encodings of docs/FORMAT.md §5.2.4."""
    inline = structured._encode_content(structured.Content.INLINE,
                                        encrypt(CipherOpts.plain(), b"hi"))
    assert inline.hex() == "00000000" "0e00000000000000" "00000000" "0200000000000000" "6869"
    assert structured.empty_data(501).hex() == (
        "02000000" "1100000000000000" "0000000000000000" "00" "0000000000000000")
    immutable = structured._encode_content(structured.Content.IMMUTABLE, bytes(range(32)))
    assert immutable == bytes.fromhex("01000000") + bytes(range(32))
    assert structured.empty_data(500) == structured.empty_data(15000) == b""


async def test_tampered_records_are_refused(gateway, api):
    """A record altered in the store, or moved under another name, is never handed on."""
    name, _ = await api.sd_new(b"genuine")
    other_name, _ = await api.sd_new(b"other")
    data_id = DataIdentifier.structured(base64.b64decode(name), 500)
    with open_store(gateway.store_url) as store:
        version, value = store.get_record(data_id.record_key())
        record = StructuredData.deserialise(value)
        forged = dataclasses.replace(record, data=record.data.replace(b"genuine", b"forged!"))
        store.cas_record(data_id.record_key(), version, forged.serialise())
        other_key = DataIdentifier.structured(base64.b64decode(other_name), 500).record_key()
        store.cas_record(other_key, 0, value)
    for tampered in (name, other_name):
        data_id = await api.handle("POST", "/data-id/structured-data", json={"name": tampered})
        assert (await api.error(400, "GET", f"/structured-data/handle/{data_id}"))[
            "errorCode"] == -2
