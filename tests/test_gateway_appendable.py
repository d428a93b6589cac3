"""/appendable-data on a real gateway: appends, private entries, filters, deleted data."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import GatewayProcess, isolated_env
from tests.test_gateway_structured import INVALID_SUCCESSOR, OTHER_APP, Api, b64, new_name

INVALID_AD = {"errorCode": -1515, "description": "FfiError::InvalidAppendableDataHandle"}
INVALID_INDEX = {"errorCode": -1524, "description": "FfiError::InvalidIndex"}
DATA_EXISTS = {"errorCode": -23,
               "description": "CoreError::MutationFailure::MutationError::DataExists"}


class AdApi(Api):
    async def ad_create(self, name: str, private: bool = False, filter_type: str | None = None,
                        keys: tuple[int, ...] = ()) -> int:
        body: dict = {"name": name, "isPrivate": private, "filterKeys": list(keys)}
        if filter_type:
            body["filterType"] = filter_type
        return await self.handle("POST", "/appendable-data", json=body)

    async def ad_new(self, private: bool = False, filter_type: str | None = None,
                     keys: tuple[int, ...] = ()) -> tuple[str, int]:
        """A stored AppendableData: (name, handle)."""
        name = new_name()
        handle = await self.ad_create(name, private, filter_type, keys)
        await self.ok("PUT", f"/appendable-data/{handle}")
        return name, handle

    async def ad_fetch(self, name: str, private: bool = False) -> dict:
        data_id = await self.handle("POST", "/data-id/appendable-data",
                                    json={"name": name, "isPrivate": private})
        body = (await self.ok("GET", f"/appendable-data/handle/{data_id}")).json()
        await self.ok("DELETE", f"/data-id/{data_id}")
        return body

    async def ad_meta(self, handle: int) -> dict:
        return (await self.ok("GET", f"/appendable-data/metadata/{handle}")).json()

    async def sd_id(self, content: bytes) -> int:
        """The data-id handle of a new, stored StructuredData holding ``content``."""
        _, handle = await self.sd_new(content)
        data_id = await self.handle("GET", f"/structured-data/data-id/{handle}")
        await self.ok("DELETE", f"/structured-data/handle/{handle}")
        return data_id

    async def append(self, handle: int, content: bytes) -> httpx.Response:
        return await self.call("PUT", f"/appendable-data/{handle}/{await self.sd_id(content)}")

    async def pointed_content(self, path: str) -> bytes:
        """Content of the StructuredData an entry (``/appendable-data/...``) points to."""
        data_id = await self.handle("GET", path)
        sd = (await self.ok("GET", f"/structured-data/handle/{data_id}")).json()["handleId"]
        return await self.sd_read(sd)

    async def entries(self, handle: int, deleted: bool = False) -> set[bytes]:
        meta = await self.ad_meta(handle)
        count = meta["deletedDataLength" if deleted else "dataLength"]
        prefix = "/appendable-data/deleted-data" if deleted else "/appendable-data"
        return {await self.pointed_content(f"{prefix}/{handle}/{i}") for i in range(count)}

    async def sign_key(self) -> int:
        return await self.handle("GET", "/sign-key/")


@pytest.fixture
async def http(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        yield http


@pytest.fixture
def api(gateway, http) -> AdApi:
    return AdApi(http, gateway.authorise())


@pytest.fixture
def anonymous(http) -> AdApi:
    return AdApi(http, None)


@pytest.fixture
def other_account(gateway, tmp_path) -> Iterator[GatewayProcess]:
    """A gateway of another account (its own HOME) on the same store."""
    other = GatewayProcess(isolated_env(tmp_path / "other-account"), gateway.store_url, [])
    other.start()
    yield other
    other.stop()


async def test_create_append_read(api, anonymous):
    name = new_name()
    handle = await api.ad_create(name)
    assert (await api.ok("GET", f"/appendable-data/validate-size/{handle}")).json() == {
        "isValid": True}
    await api.ok("PUT", f"/appendable-data/{handle}")
    assert await api.error(400, "PUT", f"/appendable-data/{handle}") == DATA_EXISTS
    data_id = await api.handle("GET", f"/appendable-data/data-id/{handle}")
    await api.ok("DELETE", f"/appendable-data/handle/{handle}")
    assert await api.error(400, "DELETE", f"/appendable-data/handle/{handle}") == INVALID_AD

    fetched = (await api.ok("GET", f"/appendable-data/handle/{data_id}")).json()
    handle = fetched.pop("handleId")
    assert fetched == {"isOwner": True, "version": 0, "filterType": "BlackList",
                       "dataLength": 0, "deletedDataLength": 0}
    contents = {b"first", b"second", b"third"}
    for content in contents:
        assert (await api.append(handle, content)).text == "OK"
    # The handle is a snapshot: appends show after fetching again.
    assert (await api.ad_meta(handle))["dataLength"] == 0
    info = await anonymous.ad_fetch(name)
    assert {k: v for k, v in info.items() if k != "handleId"} == {
        "isOwner": False, "version": 0, "filterType": "BlackList", "dataLength": 3,
        "deletedDataLength": 0}
    assert await anonymous.entries(info["handleId"]) == contents
    assert await anonymous.error(400, "GET", f"/appendable-data/{info['handleId']}/3") \
        == INVALID_INDEX

    mine = (await api.ad_fetch(name))["handleId"]
    assert await api.ad_meta(mine) == {
        "isOwner": True, "version": 0, "filterType": "BlackList", "filterLength": 0,
        "dataLength": 3, "deletedDataLength": 0}
    # Every entry was signed with the account's key, the one GET /sign-key/ gives.
    own_key = (await api.ok("GET", f"/sign-key/serialise/{await api.sign_key()}")).content
    signer = await api.handle("GET", f"/appendable-data/sign-key/{mine}/0")
    assert (await api.ok("GET", f"/sign-key/serialise/{signer}")).content == own_key
    # Appending the same pointer twice is refused.
    pointer = await api.handle("GET", f"/appendable-data/{mine}/0")
    assert (await api.error(400, "PUT", f"/appendable-data/{mine}/{pointer}"))["errorCode"] \
        == -23


async def test_serialise_deserialise_and_errors(api, anonymous):
    name, handle = await api.ad_new()
    await api.append(handle, b"entry")
    handle = (await api.ad_fetch(name))["handleId"]
    serialised = (await api.ok("GET", f"/appendable-data/serialise/{handle}")).content
    assert (await anonymous.call("GET", f"/appendable-data/serialise/{handle}")).status_code \
        == 401
    copy = (await anonymous.ok("POST", "/appendable-data/deserialise", content=serialised,
                               headers={"Content-Type": "text/plain"})).json()
    assert {k: v for k, v in copy.items() if k != "handleId"} == {
        "isOwner": False, "version": 0, "filterType": "BlackList", "dataLength": 1,
        "deletedDataLength": 0}
    assert await anonymous.entries(copy["handleId"]) == {b"entry"}

    for method, path in (("PUT", "/appendable-data/1234"), ("POST", "/appendable-data/1234"),
                         ("GET", "/appendable-data/metadata/1234"),
                         ("GET", "/appendable-data/validate-size/1234"),
                         ("GET", "/appendable-data/1234/0"),
                         ("DELETE", "/appendable-data/1234/0"),
                         ("PUT", "/appendable-data/toggle-filter/1234")):
        assert await api.error(400, method, path) == INVALID_AD, (method, path)
    assert await api.error(400, "POST", "/appendable-data/deserialise", content=b"junk") \
        == {"errorCode": -2, "description": "CoreError::UnsuccessfulEncodeDecode"}
    assert await api.error(400, "PUT", f"/appendable-data/restore/{handle}/x") == {
        "errorCode": 400, "description": "index must be a valid number"}
    for path in (f"/appendable-data/{handle}/5", f"/appendable-data/deleted-data/{handle}/0",
                 f"/appendable-data/{handle}/{'9' * 5000}"):
        assert await api.error(400, "DELETE", path) == INVALID_INDEX
    assert await api.error(400, "GET", f"/appendable-data/filter/{handle}/0") == INVALID_INDEX
    assert await api.error(400, "GET", f"/appendable-data/encrypt-key/{handle}") == {
        "errorCode": -1525, "description": "FfiError::UnsupportedOperation"}
    # Creation checks its fields.
    for body, message in (({}, "name field is missing"),
                          ({"name": b64(b"short")}, "Invalid name field"),
                          ({"name": new_name(), "isPrivate": "yes"}, "Invalid isPrivate field")):
        assert await api.error(400, "POST", "/appendable-data", json=body) == {
            "errorCode": 400, "description": message}
    assert (await api.error(400, "POST", "/appendable-data",
                            json={"name": new_name(), "filterKeys": [4321]}))["errorCode"] \
        == -1519
    # A POST of a record that was never stored finds nothing.
    fresh = await api.ad_create(new_name())
    assert (await api.error(404, "POST", f"/appendable-data/{fresh}"))["errorCode"] == -22


async def test_private_entries(gateway, http, api, anonymous, other_account):
    name, handle = await api.ad_new(private=True)
    same_account_app = AdApi(http, gateway.authorise(app=OTHER_APP))
    assert (await api.append(handle, b"from the owner app")).status_code == 200
    theirs = (await same_account_app.ad_fetch(name, private=True))["handleId"]
    assert (await same_account_app.append(theirs, b"from another app")).status_code == 200

    # Another account's gateway on the same store may append too, but not read.
    async with httpx.AsyncClient(base_url=other_account.url, timeout=60) as other_http:
        stranger = AdApi(other_http, other_account.authorise())
        theirs = (await stranger.ad_fetch(name, private=True))["handleId"]
        assert (await stranger.append(theirs, b"from a stranger")).status_code == 200
        theirs = (await stranger.ad_fetch(name, private=True))["handleId"]
        assert (await stranger.ad_meta(theirs))["isOwner"] is False
        for path in (f"/appendable-data/{theirs}/0", f"/appendable-data/sign-key/{theirs}/0"):
            assert await stranger.error(400, "GET", path) == {
                "errorCode": -3, "description": "CoreError::AsymmetricDecipherFailure"}

    info = await api.ad_fetch(name, private=True)
    assert info["dataLength"] == 3
    expected = {b"from the owner app", b"from another app", b"from a stranger"}
    assert await api.entries(info["handleId"]) == expected
    # The entries are sealed to the account's box key: every app of the account opens them.
    same = (await same_account_app.ad_fetch(name, private=True))["handleId"]
    assert await same_account_app.entries(same) == expected
    public = (await anonymous.ad_fetch(name, private=True))["handleId"]
    assert (await anonymous.error(400, "GET", f"/appendable-data/{public}/0"))["errorCode"] \
        == -1520

    # The encrypt key seals data for the owner: ASYMMETRIC content only the account reads.
    key = await api.handle("GET", f"/appendable-data/encrypt-key/{info['handleId']}")
    sd_name, _ = await api.sd_new(b"sealed", cipher=f"ASYMMETRIC/{key}")
    await api.ok("DELETE", f"/appendable-data/encrypt-key/{key}")
    assert await api.error(400, "DELETE", f"/appendable-data/encrypt-key/{key}") == {
        "errorCode": -1518, "description": "FfiError::InvalidEncryptKeyHandle"}
    assert await api.sd_read((await api.sd_fetch(sd_name))["handleId"]) == b"sealed"
    sealed = (await anonymous.sd_fetch(sd_name))["handleId"]
    assert (await anonymous.error(400, "GET", f"/structured-data/{sealed}"))["errorCode"] \
        == -1520


async def test_filters(api):
    own_key = await api.sign_key()
    _, blacklisted = await api.ad_new(keys=(own_key,))
    assert await api.ad_meta(blacklisted) == {
        "isOwner": True, "version": 0, "filterType": "BlackList", "filterLength": 1,
        "dataLength": 0, "deletedDataLength": 0}
    assert (await api.append(blacklisted, b"refused")).json() == INVALID_SUCCESSOR

    # safe-js spells it "BlackList"; anything but WHITE_LIST is a blacklist.
    name, whitelist = await api.ad_new(filter_type="WHITE_LIST")
    assert (await api.append(whitelist, b"refused")).json() == INVALID_SUCCESSOR
    await api.ok("PUT", f"/appendable-data/filter/{whitelist}", json=[own_key])
    await api.ok("POST", f"/appendable-data/{whitelist}")
    assert (await api.append(whitelist, b"admitted")).status_code == 200
    fetched = (await api.ad_fetch(name))["handleId"]
    assert await api.ad_meta(fetched) == {
        "isOwner": True, "version": 1, "filterType": "WhiteList", "filterLength": 1,
        "dataLength": 1, "deletedDataLength": 0}
    key = await api.handle("GET", f"/appendable-data/filter/{fetched}/0")
    assert (await api.ok("GET", f"/sign-key/serialise/{key}")).content == \
        (await api.ok("GET", f"/sign-key/serialise/{own_key}")).content

    # Toggling switches the kind and empties the list; removing keys edits it.
    await api.ok("PUT", f"/appendable-data/toggle-filter/{fetched}")
    assert (await api.ad_meta(fetched))["filterType"] == "BlackList"
    assert (await api.ad_meta(fetched))["filterLength"] == 0
    await api.ok("PUT", f"/appendable-data/filter/{fetched}", json=[own_key])
    await api.ok("DELETE", f"/appendable-data/filter/{fetched}", json=[own_key])
    assert (await api.ad_meta(fetched))["filterLength"] == 0
    assert (await api.error(400, "PUT", f"/appendable-data/filter/{fetched}",
                            json={"keys": []}))["errorCode"] == 400
    assert (await api.error(400, "PUT", f"/appendable-data/filter/{fetched}",
                            json=[9999]))["errorCode"] == -1519


async def test_remove_restore_and_clear(api):
    name, handle = await api.ad_new()
    for content in (b"a", b"b", b"c"):
        await api.append(handle, content)
    handle = (await api.ad_fetch(name))["handleId"]

    # Local edits: remove, look at deleted data, restore.
    await api.ok("DELETE", f"/appendable-data/{handle}/0")
    removed = (await api.entries(handle, deleted=True))
    assert len(removed) == 1
    assert await api.entries(handle) == {b"a", b"b", b"c"} - removed
    await api.ok("PUT", f"/appendable-data/restore/{handle}/0")
    assert await api.entries(handle) == {b"a", b"b", b"c"}
    assert (await api.ad_meta(handle))["deletedDataLength"] == 0

    # Published: the removed entry leaves data, and a later restore brings it back.
    await api.ok("DELETE", f"/appendable-data/{handle}/0")
    await api.ok("POST", f"/appendable-data/{handle}")
    stored = (await api.ad_fetch(name))["handleId"]
    assert await api.entries(stored, deleted=True) == removed
    assert await api.entries(stored) == {b"a", b"b", b"c"} - removed
    await api.ok("PUT", f"/appendable-data/restore/{stored}/0")
    await api.ok("POST", f"/appendable-data/{stored}")
    assert await api.entries((await api.ad_fetch(name))["handleId"]) == {b"a", b"b", b"c"}

    # Purging an entry before a POST has taken it out of the stored data keeps it there...
    await api.ok("DELETE", f"/appendable-data/{stored}/0")
    await api.ok("DELETE", f"/appendable-data/deleted-data/{stored}/0")
    await api.ok("POST", f"/appendable-data/{stored}")
    info = await api.ad_fetch(name)
    assert (info["version"], info["dataLength"], info["deletedDataLength"]) == (3, 3, 0)
    # ... purging it afterwards forgets it for good.
    await api.ok("DELETE", f"/appendable-data/{stored}/0")
    await api.ok("POST", f"/appendable-data/{stored}")
    await api.ok("DELETE", f"/appendable-data/deleted-data/{stored}/0")
    await api.ok("POST", f"/appendable-data/{stored}")
    info = await api.ad_fetch(name)
    assert (info["version"], info["dataLength"], info["deletedDataLength"]) == (5, 2, 0)

    # Clear everything into deleted data, then clear deleted data.
    await api.ok("DELETE", f"/appendable-data/clear-data/{stored}")
    await api.ok("POST", f"/appendable-data/{stored}")
    info = await api.ad_fetch(name)
    assert (info["dataLength"], info["deletedDataLength"]) == (0, 2)
    await api.ok("DELETE", f"/appendable-data/clear-deleted-data/{stored}")
    await api.ok("POST", f"/appendable-data/{stored}")
    info = await api.ad_fetch(name)
    assert (info["version"], info["dataLength"], info["deletedDataLength"]) == (7, 0, 0)


async def test_append_against_a_stale_version_fails(api):
    name, _ = await api.ad_new()
    stale, current = [(await api.ad_fetch(name))["handleId"] for _ in range(2)]
    await api.append(current, b"before the post")
    # The owner posts from a handle that has not seen that append: the append survives.
    await api.ok("PUT", f"/appendable-data/toggle-filter/{current}")
    await api.ok("PUT", f"/appendable-data/toggle-filter/{current}")
    await api.ok("POST", f"/appendable-data/{current}")
    assert (await api.append(stale, b"too late")).json() == INVALID_SUCCESSOR
    assert (await api.error(400, "POST", f"/appendable-data/{stale}")) == INVALID_SUCCESSOR
    assert (await api.append(current, b"after the post")).status_code == 200
    info = await api.ad_fetch(name)
    assert info["version"] == 1
    assert await api.entries(info["handleId"]) == {b"before the post", b"after the post"}


async def test_handles_belong_to_their_session(gateway, http, api, anonymous):
    other = AdApi(http, gateway.authorise(app=OTHER_APP))
    name, mine = await api.ad_new()
    for who in (other, anonymous):
        assert await who.error(400, "GET", f"/appendable-data/metadata/{mine}") == INVALID_AD
    shared = (await anonymous.ad_fetch(name))["handleId"]
    assert (await other.ad_meta(shared))["isOwner"] is True
