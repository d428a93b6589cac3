"""``/cipher-opts``, ``/data-id`` and ``/sign-key`` (launcher controllers cipher_opts.js,
data_id.js and the sign-key part of appendable_data.js).

A cipher-opts handle holds a :class:`~safefs.model.CipherOpts` resolved for the session that
made it: SYMMETRIC carries that app's key, ASYMMETRIC the box public key behind an encrypt-key
handle. Encrypt-key handles (``Kind.ENCRYPT_KEY``, 32-byte box public keys) are made by the
appendable-data routes from a private AppendableData; this module only consumes them.
"""

from __future__ import annotations

from typing import Any

from safefs import model
from safefs.errors import ENCODE_DECODE, SafeError
from safefs.model import CipherOpts, DataIdentifier

from .handles import Kind
from .routing import Access, ApiError, Call, Routes, b64_field, decimal, not_valid

routes = Routes()

ENCRYPTION_TYPES = ("PLAIN", "SYMMETRIC", "ASYMMETRIC")


# -- /cipher-opts ---------------------------------------------------------------------------


async def _new_cipher_opts(call: Call, enc_type: str, key_handle: str | None) -> dict:
    enc_type = enc_type.upper()
    session = call.require_lla() if enc_type != "PLAIN" else None
    if enc_type not in ENCRYPTION_TYPES:
        raise not_valid("encType")
    if session is None:
        opts = CipherOpts.plain()
    else:
        if enc_type == "SYMMETRIC":
            opts = CipherOpts.symmetric(call.gateway.app_key(session))
        else:
            if key_handle is None:
                raise ApiError(400, "'key' must be specified for Asymmetric encryption")
            key = call.gateway.handles.get(Kind.ENCRYPT_KEY, call.owner,
                                           Kind.ENCRYPT_KEY.parse(key_handle))
            opts = CipherOpts.asymmetric(key)
    return {"handleId": call.gateway.handles.add(Kind.CIPHER_OPT, call.owner, opts)}


@routes.get("/cipher-opts/{enc_type}")
async def new_cipher_opts(call: Call) -> dict:
    return await _new_cipher_opts(call, call.param("enc_type"), None)


@routes.get("/cipher-opts/{enc_type}/{key_handle}")
async def new_asymmetric_cipher_opts(call: Call) -> dict:
    return await _new_cipher_opts(call, call.param("enc_type"), call.param("key_handle"))


@routes.delete("/cipher-opts/{handle}")
async def drop_cipher_opts(call: Call) -> None:
    call.drop(Kind.CIPHER_OPT)


def cipher_opts_of(call: Call, handle: Any) -> CipherOpts:
    """The cipher options behind a handle given in a path or JSON body.

    A handle that is not a number means PLAIN, as the launcher's close-writer read it.
    """
    if handle is None or (isinstance(handle, str) and decimal(handle) is None):
        return CipherOpts.plain()
    if isinstance(handle, bool) or not isinstance(handle, int | str):
        raise Kind.CIPHER_OPT.invalid()
    return call.gateway.handles.get(Kind.CIPHER_OPT, call.owner, Kind.CIPHER_OPT.parse(str(handle)))


# -- /data-id -------------------------------------------------------------------------------


@routes.post("/data-id/structured-data")
async def structured_data_id(call: Call) -> dict:
    body = await call.json()
    name = b64_field(body, "name", model.XOR_NAME_SIZE)
    type_tag = body.get("typeTag", model.TAG_UNVERSIONED)
    if isinstance(type_tag, bool) or not isinstance(type_tag, int) \
            or not 0 <= type_tag <= model.U64_MAX:
        raise ApiError(400, "Tag type must be a valid number")
    data_id = DataIdentifier.structured(name, type_tag)
    return {"handleId": call.gateway.handles.add(Kind.DATA_ID, call.owner, data_id)}


@routes.post("/data-id/appendable-data")
async def appendable_data_id(call: Call) -> dict:
    body = await call.json()
    name = b64_field(body, "name", model.XOR_NAME_SIZE)
    private = body.get("isPrivate", False)
    if not isinstance(private, bool):
        raise not_valid("isPrivate")
    data_id = DataIdentifier.appendable(name, private)
    return {"handleId": call.gateway.handles.add(Kind.DATA_ID, call.owner, data_id)}


@routes.get("/data-id/{handle}", access=Access.LLA)
async def serialise_data_id(call: Call) -> bytes:
    return call.get(Kind.DATA_ID).serialise()


@routes.post("/data-id")
async def deserialise_data_id(call: Call) -> dict:
    body = await call.body()
    if not body:
        raise ApiError(400, "Body can not be empty")
    data_id = DataIdentifier.deserialise(body)
    return {"handleId": call.gateway.handles.add(Kind.DATA_ID, call.owner, data_id)}


@routes.delete("/data-id/{handle}")
async def drop_data_id(call: Call) -> None:
    call.drop(Kind.DATA_ID)


# -- /sign-key ------------------------------------------------------------------------------


async def user_sign_key(call: Call) -> dict:
    """The user's public signing key (the same for every app of the account)."""
    key = call.gateway.account.public_key
    return {"handleId": call.gateway.handles.add(Kind.SIGN_KEY, call.owner, key)}


routes.add("GET", "/sign-key/", user_sign_key, Access.LLA)
routes.add("GET", "/sign-key", user_sign_key, Access.LLA)


@routes.get("/sign-key/serialise/{handle}", access=Access.LLA)
async def serialise_sign_key(call: Call) -> bytes:
    return call.get(Kind.SIGN_KEY)


@routes.post("/sign-key/deserialise", access=Access.LLA)
async def deserialise_sign_key(call: Call) -> dict:
    key = await call.body()
    if len(key) != model.PUBLIC_KEY_SIZE:
        raise SafeError(ENCODE_DECODE, f"a sign key is {model.PUBLIC_KEY_SIZE} bytes")
    return {"handleId": call.gateway.handles.add(Kind.SIGN_KEY, call.owner, key)}


@routes.delete("/sign-key/{handle}", access=Access.LLA)
async def drop_sign_key(call: Call) -> None:
    call.drop(Kind.SIGN_KEY)
