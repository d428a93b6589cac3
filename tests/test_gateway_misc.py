"""/cipher-opts, /data-id and /sign-key on a real gateway."""

from __future__ import annotations

import base64
import os

import httpx
import pytest

from safefs.keys import Account
from safefs.model import DataIdentifier


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def error(code: int, description: str) -> dict:
    return {"errorCode": code, "description": description}


UNAUTHORISED = error(400, "Unauthorised access")
NOT_GRANTED = error(400, "Low level api access is not granted")


@pytest.fixture
async def http(module_gateway):
    async with httpx.AsyncClient(base_url=module_gateway.url) as http:
        yield http


@pytest.fixture
def lla(module_gateway) -> dict[str, str]:
    return bearer(module_gateway.authorise())


@pytest.fixture
def no_lla(module_gateway) -> dict[str, str]:
    return bearer(module_gateway.authorise(permissions=()))


async def test_cipher_opts(http, lla, no_lla):
    for enc_type, headers in (("PLAIN", {}), ("plain", lla), ("SYMMETRIC", lla),
                              ("Symmetric", lla)):
        response = await http.get(f"/cipher-opts/{enc_type}", headers=headers)
        assert response.status_code == 200, enc_type
        handle = response.json()["handleId"]
        assert (await http.delete(f"/cipher-opts/{handle}", headers=headers)).text == "OK"
        again = await http.delete(f"/cipher-opts/{handle}", headers=headers)
        assert (again.status_code, again.json()) == (
            400, error(-1517, "FfiError::InvalidCipherOptHandle"))
    for enc_type in ("SYMMETRIC", "ASYMMETRIC/0", "BOGUS"):
        anonymous = await http.get(f"/cipher-opts/{enc_type}")
        assert (anonymous.status_code, anonymous.json()) == (401, UNAUTHORISED), enc_type
        forbidden = await http.get(f"/cipher-opts/{enc_type}", headers=no_lla)
        assert (forbidden.status_code, forbidden.json()) == (403, NOT_GRANTED), enc_type
    missing_key = await http.get("/cipher-opts/ASYMMETRIC", headers=lla)
    assert missing_key.json() == error(400, "'key' must be specified for Asymmetric encryption")
    bad_key = await http.get("/cipher-opts/ASYMMETRIC/77", headers=lla)
    assert bad_key.json() == error(-1518, "FfiError::InvalidEncryptKeyHandle")
    bogus = await http.get("/cipher-opts/BOGUS", headers=lla)
    assert bogus.json() == error(400, "Invalid request. 'encType' not a valid input")


async def test_data_id_round_trips(http, lla):
    name = os.urandom(32)
    cases = [
        ({"name": base64.b64encode(name).decode(), "typeTag": 501}, "structured-data",
         DataIdentifier.structured(name, 501)),
        ({"name": base64.b64encode(name).decode()}, "structured-data",
         DataIdentifier.structured(name, 500)),
        ({"name": base64.b64encode(name).decode(), "isPrivate": True}, "appendable-data",
         DataIdentifier.appendable(name, True)),
        ({"name": base64.b64encode(name).decode()}, "appendable-data",
         DataIdentifier.appendable(name, False)),
    ]
    for body, kind, expected in cases:
        # A handle made without a token is anyone's.
        anonymous = (await http.post(f"/data-id/{kind}", json=body)).json()["handleId"]
        serialised = await http.get(f"/data-id/{anonymous}", headers=lla)
        assert serialised.content == expected.serialise()
        handle = (await http.post(f"/data-id/{kind}", json=body, headers=lla)).json()["handleId"]
        serialised = await http.get(f"/data-id/{handle}", headers=lla)
        assert serialised.headers["content-type"] == "application/octet-stream"
        assert serialised.content == expected.serialise()
        copy = (await http.post("/data-id", content=serialised.content,
                                headers={**lla, "Content-Type": "text/plain"})).json()["handleId"]
        assert (await http.get(f"/data-id/{copy}", headers=lla)).content == serialised.content
        for h in (handle, copy):
            assert (await http.delete(f"/data-id/{h}", headers=lla)).text == "OK"
        again = await http.delete(f"/data-id/{handle}", headers=lla)
        assert again.json() == error(-1514, "FfiError::InvalidDataIdHandle")


async def test_data_id_validation(http, lla, no_lla):
    name = base64.b64encode(os.urandom(32)).decode()
    for path, body, expected in (
        ("/data-id/structured-data", {}, error(400, "Invalid request. 'name' not a valid input")),
        ("/data-id/structured-data", {"name": "not base64!"},
         error(400, "Invalid request. 'name' not a valid input")),
        ("/data-id/structured-data", {"name": base64.b64encode(b"short").decode()},
         error(400, "Invalid request. 'name' not a valid input")),
        ("/data-id/structured-data", {"name": name, "typeTag": "500"},
         error(400, "Tag type must be a valid number")),
        ("/data-id/structured-data", {"name": name, "typeTag": -1},
         error(400, "Tag type must be a valid number")),
        ("/data-id/appendable-data", {"name": name, "isPrivate": "yes"},
         error(400, "Invalid request. 'isPrivate' not a valid input")),
    ):
        response = await http.post(path, json=body)
        assert (response.status_code, response.json()) == (400, expected), body
    empty = await http.post("/data-id", content=b"")
    assert empty.json() == error(400, "Body can not be empty")
    garbage = await http.post("/data-id", content=b"\xff" * 10)
    assert garbage.status_code == 400
    assert garbage.json() == error(-2, "CoreError::UnsuccessfulEncodeDecode")
    handle = (await http.post("/data-id/structured-data", json={"name": name},
                              headers=lla)).json()["handleId"]
    anonymous = await http.get(f"/data-id/{handle}")
    assert (anonymous.status_code, anonymous.json()) == (401, UNAUTHORISED)
    forbidden = await http.get(f"/data-id/{handle}", headers=no_lla)
    assert (forbidden.status_code, forbidden.json()) == (403, NOT_GRANTED)


async def test_sign_keys(http, lla, no_lla):
    account = Account.load()
    for path in ("/sign-key/", "/sign-key", "/0.5/sign-key/"):
        handle = (await http.get(path, headers=lla)).json()["handleId"]
        key = await http.get(f"/sign-key/serialise/{handle}", headers=lla)
        assert key.content == account.public_key
    copy = (await http.post("/sign-key/deserialise", content=key.content,
                            headers=lla)).json()["handleId"]
    assert (await http.get(f"/sign-key/serialise/{copy}", headers=lla)).content == key.content
    assert (await http.delete(f"/sign-key/{copy}", headers=lla)).text == "OK"
    gone = await http.delete(f"/sign-key/{copy}", headers=lla)
    assert gone.json() == error(-1519, "FfiError::InvalidSignKeyHandle")
    short = await http.post("/sign-key/deserialise", content=b"abc", headers=lla)
    assert short.json() == error(-2, "CoreError::UnsuccessfulEncodeDecode")
    assert (await http.get("/sign-key/")).json() == UNAUTHORISED
    assert (await http.get("/sign-key/", headers=no_lla)).json() == NOT_GRANTED
