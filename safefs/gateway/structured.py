"""``/structured-data``: named, owned, versioned records (launcher controllers/structured_data.js).

A handle holds a local :class:`~safefs.model.StructuredData` snapshot. Creating one and
``PATCH`` change only that snapshot; ``PUT`` stores it for the first time (or re-claims a
deleted record), ``POST``, ``DELETE`` and ``DELETE …/unclaim`` store the owner-signed successor
(version + 1) and point the handle at it. Fetching by data-id makes a new snapshot that later
changes by others do not touch.

What a record's ``data`` holds depends on its tag (docs/FORMAT.md §5.2):

- 500 (unversioned): the cipher-wrapped content inside the record, or, when that would break
  the 100 KiB record limit, the name of an ImmutableData holding it;
- 501 (versioned): a VersionsInfo page listing one ImmutableData per content version; ``PATCH``
  stores a new version at once (``dataVersionLength`` grows), ``POST`` publishes it (``version``
  grows), and every published version stays readable as ``GET /structured-data/:h/:n``;
- 15000 and up (custom): the cipher-wrapped content as is; the app keeps it under the limit.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from enum import IntEnum
from typing import TYPE_CHECKING

from safefs import model
from safefs.errors import (
    ENCODE_DECODE,
    INVALID_OPERATION,
    INVALID_TYPE_TAG,
    INVALID_VERSION_NUMBER,
    NO_SUCH_DATA,
    SafeError,
)
from safefs.model import (
    MAX_STRUCTURED_DATA_SIZE,
    TAG_UNVERSIONED,
    TAG_VERSIONED,
    CipherOpts,
    DataIdentifier,
    DataKind,
    Reader,
    StructuredData,
    VersionsInfo,
    Writer,
    XorName,
)
from safefs.store.base import MAX_VERSION

from . import blobs, records
from .blobs import ChunkCache
from .core import Gateway
from .handles import Kind
from .misc import cipher_opts_of
from .records import U64_DIGITS, AppKeys
from .routing import Access, ApiError, Call, Routes, b64_field, decimal, not_valid

if TYPE_CHECKING:
    from safefs.store import Store

log = logging.getLogger(__name__)

routes = Routes()

# The launcher's messages (controllers/structured_data.js).
NAME_MISSING = "name is missing in request body"
NAME_INVALID = "Invalid id specified"
TAG_NOT_A_NUMBER = "Tag type must be a valid number"
TAG_INVALID = "Invalid tag type specified"


# -- the content of a record ---------------------------------------------------------------------


class Content(IntEnum):
    """What the ``data`` of a tag 500 or 501 record holds (variant index in the codec)."""

    INLINE = 0  # tag 500: the cipher-wrapped content
    IMMUTABLE = 1  # tag 500: name of the ImmutableData holding the content
    VERSIONS = 2  # tag 501: VersionsInfo, one ImmutableData per content version


_TAG_CONTENTS = {
    TAG_UNVERSIONED: (Content.INLINE, Content.IMMUTABLE),
    TAG_VERSIONED: (Content.VERSIONS,),
}


def _encode_content(kind: Content, payload: bytes) -> bytes:
    w = Writer()
    w.u32(kind)
    if kind is Content.IMMUTABLE:
        w.raw(payload)
    else:
        w.blob(payload)
    return w.getvalue()


def _decode_content(record: StructuredData) -> tuple[Content, bytes]:
    def read(r: Reader) -> tuple[Content, bytes]:
        kind = r.variant(Content)
        return kind, r.raw(model.XOR_NAME_SIZE) if kind is Content.IMMUTABLE else r.blob()

    kind, payload = model.decode(record.data, read)
    if kind not in _TAG_CONTENTS[record.type_tag]:
        raise SafeError(ENCODE_DECODE, f"{kind.name} content in a tag {record.type_tag} record")
    return kind, payload


def _versions(record: StructuredData) -> VersionsInfo:
    return VersionsInfo.deserialise(_decode_content(record)[1])


def empty_data(type_tag: int) -> bytes:
    """The ``data`` of a record before its first content: a 501 starts with no versions."""
    if type_tag == TAG_VERSIONED:
        return _encode_content(Content.VERSIONS, VersionsInfo().serialise())
    return b""


def with_content(store: Store, record: StructuredData, content: bytes,
                 opts: CipherOpts) -> StructuredData:
    """``record`` carrying ``content`` (for 501: as a new newest version), unsigned.

    ImmutableData (large 500 content, 501 versions, full VersionsInfo pages) is stored at once,
    not flushed: only the record names it, and a record write flushes the store first.
    """
    if record.type_tag == TAG_VERSIONED:
        info = _versions(record)
        if info.is_full:
            info = info.next_page(blobs.store_bytes(store, info.serialise(), CipherOpts.plain(),
                                                    flush=False))
        info = info.appended(blobs.store_bytes(store, content, opts, flush=False,
                                               inline_max=blobs.RECORD_INLINE_MAX))
        data = _encode_content(Content.VERSIONS, info.serialise())
    elif record.type_tag == TAG_UNVERSIONED:
        data = None
        if len(content) < MAX_STRUCTURED_DATA_SIZE:  # else it cannot fit: skip the encryption
            data = _encode_content(Content.INLINE, model.encrypt(opts, content))
        if data is None or replace(record, data=data).signed_size() > MAX_STRUCTURED_DATA_SIZE:
            data = _encode_content(Content.IMMUTABLE,
                                   blobs.store_bytes(store, content, opts, flush=False))
    else:
        data = model.encrypt(opts, content)
    return replace(record, data=data, signature=None)


def _read_blob(store: Store, cache: ChunkCache, name: bytes, keys: AppKeys) -> bytes:
    blob = blobs.Blob(store, cache, name, keys.sym_key, keys.box_keypair)
    return blob.read(0, blob.size)


def _pointer(store: Store, cache: ChunkCache, info: VersionsInfo, index: int) -> XorName:
    """The ImmutableData of content version ``index``, following older pages as needed."""
    while (pointer := info.pointer_at(index)) is None:
        info = VersionsInfo.deserialise(_read_blob(store, cache, info.older, AppKeys()))
    return pointer


def read_content(store: Store, cache: ChunkCache, record: StructuredData, keys: AppKeys,
                 version: int | None = None) -> bytes:
    """The plaintext content (of content version ``version``, for tag 501) of ``record``."""
    if record.deleted or record.is_unclaimed:
        raise SafeError(NO_SUCH_DATA, "the StructuredData was deleted")
    if version is not None and record.type_tag != TAG_VERSIONED:
        raise SafeError(INVALID_TYPE_TAG, "only tag 501 keeps content versions")
    if record.type_tag == TAG_VERSIONED:
        info = _versions(record)
        index = info.total - 1 if version is None else version
        return _read_blob(store, cache, _pointer(store, cache, info, index), keys)
    if record.type_tag == TAG_UNVERSIONED:
        kind, payload = _decode_content(record)
        if kind is Content.IMMUTABLE:
            return _read_blob(store, cache, payload, keys)
        return keys.decrypt(payload)
    return keys.decrypt(record.data)


def version_count(record: StructuredData) -> int:
    """``dataVersionLength`` of a 501 record: its content versions (none once deleted)."""
    if record.deleted or record.is_unclaimed:
        return 0
    return _versions(record).total


# -- store operations (worker threads) -----------------------------------------------------------


def _owner_signed(gateway: Gateway, record: StructuredData) -> StructuredData:
    """The record signed by the account if the account owns it (edits drop the signature)."""
    if record.owner == gateway.account.public_key:
        return record.sign(gateway.account.signing_key)
    return record


def _put(gateway: Gateway, record: StructuredData) -> StructuredData:
    new = _owner_signed(gateway, record)
    model.check_put(None, new)
    data_id = new.identifier

    def check_existing(value: bytes) -> None:
        model.check_put(records.decode_structured(data_id, value), new)

    # A record's store versions are its versions: it is created at its own version and every
    # successor (POST, DELETE, unclaim, re-claim) is the next one.
    records.put(gateway.store, new, new.version, check_existing)
    return new


def _store_successor(gateway: Gateway, new: StructuredData) -> StructuredData:
    data_id = new.identifier

    def change(value: bytes) -> StructuredData:
        model.check_successor(records.decode_structured(data_id, value), new)
        return new

    return records.update(gateway.store, data_id, change)


def _posted(gateway: Gateway, record: StructuredData) -> StructuredData:
    new = record.successor(record.data, gateway.account.signing_key)
    return _store_successor(gateway, new)


def _deleted(gateway: Gateway, record: StructuredData) -> StructuredData:
    return _store_successor(gateway, record.deleted_successor(gateway.account.signing_key))


def _unclaimed(gateway: Gateway, record: StructuredData) -> StructuredData:
    return _store_successor(gateway, record.unclaimed_successor(gateway.account.signing_key))


def _created(gateway: Gateway, record: StructuredData, content: bytes,
             opts: CipherOpts) -> StructuredData:
    record = with_content(gateway.store, record, content, opts)
    return record.sign(gateway.account.signing_key)


# -- request helpers ------------------------------------------------------------------------------


def _info(call: Call, record: StructuredData) -> dict:
    """``{"isOwner","version"[,"dataVersionLength"]}``: the count only exists for tag 501."""
    is_owner = call.session is not None and record.owner == call.gateway.account.public_key
    info: dict = {"isOwner": is_owner, "version": record.version}
    if record.type_tag == TAG_VERSIONED:
        info["dataVersionLength"] = version_count(record)
    return info


def _add(call: Call, record: StructuredData) -> dict:
    handle = call.gateway.handles.add(Kind.STRUCTURED, call.owner, record)
    return {"handleId": handle, **_info(call, record)}


def _keep(call: Call, record: StructuredData) -> None:
    """Point the path's handle at ``record``; if it was dropped meanwhile, the change stands."""
    with contextlib.suppress(SafeError):
        call.gateway.handles.replace(Kind.STRUCTURED, call.owner,
                                     call.handle(Kind.STRUCTURED), record)


def _type_tag(value: object) -> int:
    """The launcher's ``typeTag`` rules: a number (or numeric string), 500, 501 or ≥ 15000."""
    if isinstance(value, str):
        value = decimal(value) if decimal(value) is not None else value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, TAG_NOT_A_NUMBER)
    try:
        model.validate_type_tag(value)
    except SafeError:
        raise ApiError(400, TAG_INVALID) from None
    return value


def _optional_b64(body: dict, field: str) -> bytes:
    """An optional base64 field: absent, null or empty means no bytes."""
    return b64_field(body, field) if body.get(field) else b""


# -- routes ---------------------------------------------------------------------------------------


async def create(call: Call) -> dict:
    """A new local record owned by the account; nothing is stored until PUT."""
    body = await call.json()
    if not isinstance(body, dict):
        body = {}
    name = records.name_field(body, NAME_MISSING, NAME_INVALID)
    type_tag = _type_tag(body.get("typeTag") or TAG_UNVERSIONED)
    opts = cipher_opts_of(call, body.get("cipherOpts"))
    content = _optional_b64(body, "data")
    version = body.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int) \
            or not 0 <= version < MAX_VERSION:
        raise not_valid("version")
    gateway = call.gateway
    record = StructuredData(type_tag, name, empty_data(type_tag), version,
                            gateway.account.public_key)
    record = await gateway.run_sync(_created, gateway, record, content, opts)
    return {"handleId": gateway.handles.add(Kind.STRUCTURED, call.owner, record)}


routes.add("POST", "/structured-data", create, Access.LLA)
routes.add("POST", "/structured-data/", create, Access.LLA)


@routes.post("/structured-data/deserialise")
async def deserialise(call: Call) -> dict:
    record = StructuredData.deserialise(await call.body())
    return _add(call, record)


@routes.post("/structured-data/{handle}", access=Access.LLA)
async def post(call: Call) -> None:
    record = call.get(Kind.STRUCTURED)
    _keep(call, await call.gateway.run_sync(_posted, call.gateway, record))


@routes.get("/structured-data/metadata/{handle}")
async def metadata(call: Call) -> dict:
    return _info(call, call.get(Kind.STRUCTURED))


@routes.get("/structured-data/handle/{data_id}")
async def fetch(call: Call) -> dict:
    data_id: DataIdentifier = call.get(Kind.DATA_ID, "data_id")
    if data_id.kind is not DataKind.STRUCTURED:
        raise SafeError(NO_SUCH_DATA, "not a StructuredData identifier")
    gateway = call.gateway
    record = await gateway.run_sync(records.fetch, gateway.store, data_id,
                                    records.decode_structured)
    return _add(call, record)


@routes.get("/structured-data/data-id/{handle}")
async def data_id(call: Call) -> dict:
    record: StructuredData = call.get(Kind.STRUCTURED)
    return {"handleId": call.gateway.handles.add(Kind.DATA_ID, call.owner, record.identifier)}


@routes.get("/structured-data/serialise/{handle}")
async def serialise(call: Call) -> bytes:
    record = call.get(Kind.STRUCTURED)
    await call.gateway.run_sync(call.gateway.store.flush)  # the app holds the names from now on
    return record.serialise()


@routes.get("/structured-data/validate-size/{handle}")
async def validate_size(call: Call) -> dict:
    record: StructuredData = call.get(Kind.STRUCTURED)
    return {"isValid": record.signed_size() <= MAX_STRUCTURED_DATA_SIZE}


async def _read(call: Call, version: int | None) -> bytes:
    record = call.get(Kind.STRUCTURED)
    gateway = call.gateway
    return await gateway.run_sync(read_content, gateway.store, gateway.chunk_cache, record,
                                  AppKeys.of(call), version)


@routes.get("/structured-data/{handle}")
async def read(call: Call) -> bytes:
    """The content (for 501: the newest version) as raw bytes."""
    return await _read(call, None)


@routes.get("/structured-data/{handle}/{version}")
async def read_version(call: Call) -> bytes:
    """Content version ``n`` (0-based) of a 501 record.

    A version that is not a number reads the latest content, as the launcher's ``isNaN``
    check did: safe-js's ``readData(token, handle)`` asks for ``/structured-data/:h/undefined``.
    """
    text = call.param("version")
    if not text.isascii() or not text.isdigit():
        return await _read(call, None)
    if len(text) > U64_DIGITS:
        raise SafeError(INVALID_VERSION_NUMBER, f"version {text[:30]}...")
    return await _read(call, int(text))


@routes.put("/structured-data/{handle}", access=Access.LLA)
async def put(call: Call) -> None:
    """First store, or re-claim of a deleted record (version = deleted version + 1)."""
    record = call.get(Kind.STRUCTURED)
    _keep(call, await call.gateway.run_sync(_put, call.gateway, record))


@routes.patch("/structured-data/{handle}", access=Access.LLA)
async def patch(call: Call) -> None:
    """Replace the content of the local record (501: add a content version)."""
    body = await call.json()
    if not isinstance(body, dict):
        body = {}
    record: StructuredData = call.get(Kind.STRUCTURED)
    opts = cipher_opts_of(call, body.get("cipherOpts"))
    content = b64_field(body, "data")
    if record.deleted or record.is_unclaimed:
        raise SafeError(INVALID_OPERATION, "the StructuredData was deleted")
    gateway = call.gateway
    _keep(call, await gateway.run_sync(with_content, gateway.store, record, content, opts))


@routes.delete("/structured-data/handle/{handle}")
async def drop(call: Call) -> None:
    call.drop(Kind.STRUCTURED)


@routes.delete("/structured-data/unclaim/{handle}", access=Access.LLA)
async def unclaim(call: Call) -> None:
    """Hand the record to nobody: it can never change again, and a PUT gives DataExists."""
    record = call.get(Kind.STRUCTURED)
    _keep(call, await call.gateway.run_sync(_unclaimed, call.gateway, record))


@routes.delete("/structured-data/{handle}", access=Access.LLA)
async def delete(call: Call) -> None:
    """Store the deleted successor; anyone may re-claim the name with the next version."""
    record = call.get(Kind.STRUCTURED)
    _keep(call, await call.gateway.run_sync(_deleted, call.gateway, record))

