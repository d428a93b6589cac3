"""``/appendable-data``: owned inboxes others append pointers to (controllers/appendable_data.js).

A handle holds a local :class:`~safefs.model.AppendableData` snapshot. The owner's edits
(remove, restore, purge and clear entries, filter keys, toggle the filter) change only that
snapshot until ``POST`` publishes it as the next version, merged with the stored record by
``update_with_other``: entries appended meanwhile by others are kept, entries the owner moved
to deleted data leave ``data``. An append (``PUT /appendable-data/:h/:dataId``) goes to the
store at once, signed with the account's key against the handle's version, so it fails once the
owner has posted a newer version. The snapshot itself never changes by appends: fetch the
record again to see them.

A private AppendableData carries the owner's box public key; appended entries are sealed to
it, so only apps of the owner's account open them (others get -3, anonymous callers -1520).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from safefs.errors import (
    DATA_EXISTS,
    FORBIDDEN_FOR_APP,
    INVALID_INDEX,
    INVALID_SUCCESSOR,
    NO_SUCH_DATA,
    UNSUPPORTED_OPERATION,
    SafeError,
)
from safefs.model import (
    AppendableData,
    AppendedData,
    AppendWrapper,
    DataIdentifier,
    DataKind,
    Filter,
    FilterKind,
    PrivAppendedData,
    apply_append,
    open_private_entry,
    update_with_other,
)

from . import records
from .core import Gateway
from .handles import Kind
from .records import AppKeys
from .routing import Access, ApiError, Call, Routes

log = logging.getLogger(__name__)

routes = Routes()

# The launcher's messages (controllers/appendable_data.js).
NAME_MISSING = "name field is missing"
NAME_INVALID = "Invalid name field"
IS_PRIVATE_INVALID = "Invalid isPrivate field"
KEYS_NOT_A_LIST = "Sign key handles must be a JSON list"

# How metadata spells the filter kinds (routing's Debug names).
FILTER_NAMES = {FilterKind.BLACK_LIST: "BlackList", FilterKind.WHITE_LIST: "WhiteList"}


# -- store operations (worker threads) -----------------------------------------------------------


def _owner_signed(gateway: Gateway, ad: AppendableData) -> AppendableData:
    """The record signed by the account if the account owns it (edits drop the signature)."""
    if ad.owner == gateway.account.public_key:
        return ad.sign(gateway.account.signing_key)
    return ad


def _put(gateway: Gateway, ad: AppendableData) -> AppendableData:
    new = _owner_signed(gateway, ad)
    if not new.verify():
        raise SafeError(INVALID_SUCCESSOR, "AppendableData is not signed by its owner")
    if not all(e.verify(new.identifier) for e in new.data if isinstance(e, AppendedData)):
        raise SafeError(INVALID_SUCCESSOR, "AppendableData holds entries with bad signatures")
    new.validate_size()

    def refuse(value: bytes) -> None:
        raise SafeError(DATA_EXISTS, "AppendableData already stored")

    # Store versions of an AppendableData count every change (appends too), from 0.
    records.put(gateway.store, new, 0, refuse)
    return new


def _posted(gateway: Gateway, ad: AppendableData) -> AppendableData:
    new = ad.successor(gateway.account.signing_key)
    data_id = new.identifier

    def change(value: bytes) -> AppendableData:
        return update_with_other(records.decode_appendable(data_id, value), new)

    return records.update(gateway.store, data_id, change)


def _append(gateway: Gateway, ad: AppendableData, pointer: DataIdentifier) -> None:
    wrapper = AppendWrapper.create(ad, pointer, gateway.account.signing_key)
    data_id = ad.identifier

    def change(value: bytes) -> AppendableData:
        return apply_append(records.decode_appendable(data_id, value), wrapper)

    records.update(gateway.store, data_id, change)


def _opened(ad: AppendableData, index: int, deleted: bool, keys: AppKeys) -> AppendedData:
    """The ``index``-th entry of data (or deleted data), opened with the caller's box key."""
    entry = ad.entry_at(index, deleted)
    if isinstance(entry, PrivAppendedData):
        if keys.box_keypair is None:
            raise SafeError(FORBIDDEN_FOR_APP, "private entries need the owner's keys")
        return open_private_entry(entry, keys.box_keypair, ad.identifier)
    return entry


# -- request helpers ------------------------------------------------------------------------------


def _info(call: Call, ad: AppendableData) -> dict:
    is_owner = call.session is not None and ad.owner == call.gateway.account.public_key
    return {"isOwner": is_owner, "version": ad.version, "filterType": FILTER_NAMES[ad.filter.kind],
            "dataLength": len(ad.data), "deletedDataLength": len(ad.deleted_data)}


def _add(call: Call, ad: AppendableData) -> dict:
    handle = call.gateway.handles.add(Kind.APPENDABLE, call.owner, ad)
    return {"handleId": handle, **_info(call, ad)}


def _keep(call: Call, ad: AppendableData) -> None:
    """Point the path's handle at ``ad``; if it was dropped meanwhile, the change stands."""
    with contextlib.suppress(SafeError):
        call.gateway.handles.replace(Kind.APPENDABLE, call.owner, call.handle(Kind.APPENDABLE), ad)


def _sign_keys(call: Call, handles: Any) -> list[bytes]:
    """The sign keys behind a JSON list of sign-key handles."""
    if not isinstance(handles, list):
        raise ApiError(400, KEYS_NOT_A_LIST)
    keys = []
    for handle in handles:
        if isinstance(handle, bool) or not isinstance(handle, int | str):
            raise Kind.SIGN_KEY.invalid()
        keys.append(call.gateway.handles.get(Kind.SIGN_KEY, call.owner,
                                             Kind.SIGN_KEY.parse(str(handle))))
    return keys


async def _entry(call: Call, deleted: bool) -> AppendedData:
    index = records.path_index(call)
    ad = call.get(Kind.APPENDABLE)
    return await call.gateway.run_sync(_opened, ad, index, deleted, AppKeys.of(call))


def _edit(call: Call, edit: Callable[[AppendableData], AppendableData]) -> None:
    """Apply a local owner edit ``edit(snapshot) -> snapshot`` to the path's handle."""
    _keep(call, edit(call.get(Kind.APPENDABLE)))


# -- encrypt keys ---------------------------------------------------------------------------------


@routes.get("/appendable-data/encrypt-key/{handle}", access=Access.LLA)
async def encrypt_key(call: Call) -> dict:
    """The box public key entries of a private AppendableData are sealed to."""
    ad: AppendableData = call.get(Kind.APPENDABLE)
    if ad.encrypt_key is None:
        raise SafeError(UNSUPPORTED_OPERATION, "a public AppendableData has no encrypt key")
    return {"handleId": call.gateway.handles.add(Kind.ENCRYPT_KEY, call.owner, ad.encrypt_key)}


@routes.delete("/appendable-data/encrypt-key/{handle}", access=Access.LLA)
async def drop_encrypt_key(call: Call) -> None:
    call.drop(Kind.ENCRYPT_KEY)


# -- create, store, fetch -------------------------------------------------------------------------


async def create(call: Call) -> dict:
    """A new local AppendableData owned by the account; nothing is stored until PUT."""
    body = await call.json()
    if not isinstance(body, dict):
        body = {}
    name = records.name_field(body, NAME_MISSING, NAME_INVALID)
    private = body.get("isPrivate") or False
    if not isinstance(private, bool):
        raise ApiError(400, IS_PRIVATE_INVALID)
    kind = FilterKind.WHITE_LIST if body.get("filterType") == "WHITE_LIST" \
        else FilterKind.BLACK_LIST
    keys = _sign_keys(call, body.get("filterKeys") or [])
    account = call.gateway.account
    encrypt_key = account.box_keypair.public_key.encode() if private else None
    ad = AppendableData(name, account.public_key, encrypt_key, filter=Filter(kind, keys))
    ad = await call.gateway.run_sync(ad.sign, account.signing_key)
    return {"handleId": call.gateway.handles.add(Kind.APPENDABLE, call.owner, ad)}


routes.add("POST", "/appendable-data", create, Access.LLA)
routes.add("POST", "/appendable-data/", create, Access.LLA)


@routes.post("/appendable-data/deserialise")
async def deserialise(call: Call) -> dict:
    return _add(call, AppendableData.deserialise(await call.body()))


@routes.post("/appendable-data/{handle}", access=Access.LLA)
async def post(call: Call) -> None:
    """Publish the local edits as the next version, signed by the account."""
    ad = call.get(Kind.APPENDABLE)
    _keep(call, await call.gateway.run_sync(_posted, call.gateway, ad))


@routes.get("/appendable-data/metadata/{handle}")
async def metadata(call: Call) -> dict:
    ad: AppendableData = call.get(Kind.APPENDABLE)
    return {**_info(call, ad), "filterLength": len(ad.filter.keys)}


@routes.get("/appendable-data/handle/{data_id}")
async def fetch(call: Call) -> dict:
    data_id: DataIdentifier = call.get(Kind.DATA_ID, "data_id")
    if data_id.kind not in (DataKind.PUB_APPENDABLE, DataKind.PRIV_APPENDABLE):
        raise SafeError(NO_SUCH_DATA, "not an AppendableData identifier")
    gateway = call.gateway
    ad = await gateway.run_sync(records.fetch, gateway.store, data_id, records.decode_appendable)
    return _add(call, ad)


@routes.get("/appendable-data/serialise/{handle}", access=Access.LLA)
async def serialise(call: Call) -> bytes:
    return call.get(Kind.APPENDABLE).serialise()


@routes.get("/appendable-data/data-id/{handle}")
async def data_id(call: Call) -> dict:
    ad: AppendableData = call.get(Kind.APPENDABLE)
    return {"handleId": call.gateway.handles.add(Kind.DATA_ID, call.owner, ad.identifier)}


@routes.get("/appendable-data/validate-size/{handle}")
async def validate_size(call: Call) -> dict:
    ad: AppendableData = call.get(Kind.APPENDABLE)
    try:
        ad.validate_size()
    except SafeError:
        return {"isValid": False}
    return {"isValid": True}


# -- entries and filter keys ----------------------------------------------------------------------


@routes.get("/appendable-data/sign-key/deleted-data/{handle}/{index}", access=Access.LLA)
async def deleted_entry_sign_key(call: Call) -> dict:
    entry = await _entry(call, deleted=True)
    return {"handleId": call.gateway.handles.add(Kind.SIGN_KEY, call.owner, entry.sign_key)}


@routes.get("/appendable-data/sign-key/{handle}/{index}", access=Access.LLA)
async def entry_sign_key(call: Call) -> dict:
    entry = await _entry(call, deleted=False)
    return {"handleId": call.gateway.handles.add(Kind.SIGN_KEY, call.owner, entry.sign_key)}


@routes.get("/appendable-data/deleted-data/{handle}/{index}")
async def deleted_entry(call: Call) -> dict:
    entry = await _entry(call, deleted=True)
    return {"handleId": call.gateway.handles.add(Kind.DATA_ID, call.owner, entry.pointer)}


@routes.get("/appendable-data/filter/{handle}/{index}", access=Access.LLA)
async def filter_key(call: Call) -> dict:
    index = records.path_index(call)
    ad: AppendableData = call.get(Kind.APPENDABLE)
    keys = sorted(ad.filter.keys)
    if index >= len(keys):
        raise SafeError(INVALID_INDEX, f"filter key {index} of {len(keys)}")
    return {"handleId": call.gateway.handles.add(Kind.SIGN_KEY, call.owner, keys[index])}


@routes.get("/appendable-data/{handle}/{index}")
async def entry(call: Call) -> dict:
    """The DataIdentifier of the ``index``-th entry (private: only the owner's apps)."""
    entry = await _entry(call, deleted=False)
    return {"handleId": call.gateway.handles.add(Kind.DATA_ID, call.owner, entry.pointer)}


# -- owner edits (local until POST) and appends ---------------------------------------------------


@routes.put("/appendable-data/toggle-filter/{handle}", access=Access.LLA)
async def toggle_filter(call: Call) -> None:
    """Switch between black and white list; the new list is empty."""
    _edit(call, lambda ad: ad.with_filter(ad.filter.toggled()))


@routes.put("/appendable-data/filter/{handle}", access=Access.LLA)
async def add_filter_keys(call: Call) -> None:
    keys = _sign_keys(call, await call.json())
    _edit(call, lambda ad: ad.with_filter(ad.filter.with_keys(keys)))


@routes.put("/appendable-data/restore/{handle}/{index}", access=Access.LLA)
async def restore(call: Call) -> None:
    index = records.path_index(call)
    _edit(call, lambda ad: ad.restored(index))


@routes.put("/appendable-data/{handle}/{data_id}", access=Access.LLA)
async def append(call: Call) -> None:
    """Append a pointer, signed by the account, to the version this handle holds."""
    ad = call.get(Kind.APPENDABLE)
    pointer = call.get(Kind.DATA_ID, "data_id")
    await call.gateway.run_sync(_append, call.gateway, ad, pointer)


@routes.put("/appendable-data/{handle}", access=Access.LLA)
async def put(call: Call) -> None:
    """First store (DataExists if the name is taken)."""
    ad = call.get(Kind.APPENDABLE)
    _keep(call, await call.gateway.run_sync(_put, call.gateway, ad))


@routes.delete("/appendable-data/filter/{handle}", access=Access.LLA)
async def remove_filter_keys(call: Call) -> None:
    keys = _sign_keys(call, await call.json())
    _edit(call, lambda ad: ad.with_filter(ad.filter.without_keys(keys)))


@routes.delete("/appendable-data/deleted-data/{handle}/{index}", access=Access.LLA)
async def purge(call: Call) -> None:
    """Forget the ``index``-th deleted entry for good."""
    index = records.path_index(call)
    _edit(call, lambda ad: ad.purged(index))


@routes.delete("/appendable-data/clear-data/{handle}", access=Access.LLA)
async def clear_data(call: Call) -> None:
    """Move every entry to deleted data."""
    _edit(call, AppendableData.all_removed)


@routes.delete("/appendable-data/clear-deleted-data/{handle}", access=Access.LLA)
async def clear_deleted_data(call: Call) -> None:
    _edit(call, AppendableData.all_purged)


@routes.delete("/appendable-data/handle/{handle}")
async def drop(call: Call) -> None:
    call.drop(Kind.APPENDABLE)


@routes.delete("/appendable-data/{handle}/{index}", access=Access.LLA)
async def remove(call: Call) -> None:
    """Move the ``index``-th entry to deleted data."""
    index = records.path_index(call)
    _edit(call, lambda ad: ad.removed(index))
