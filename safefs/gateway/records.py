"""Signed records (StructuredData, AppendableData) in the store, and the caller's keys.

A record lives under its identifier's record key (``DataIdentifier.record_key()``); every
store version of it holds one whole encoded record (docs/FORMAT.md §5.2). Writers
never overwrite: a first store is ``create_record`` and every change is a compare-and-swap on
the version they read, re-read and re-checked against the data model's rules after a lost
race. Two gateways sharing one store therefore never lose an update: the loser either applies
its change on top of the winner's (an append) or is refused by the rules (a stale successor:
InvalidSuccessor).

Records are verified when they are read: a record that does not decode, names another
identifier or is not signed by its owner is reported as malformed, never handed on.

The store functions are synchronous and blocking; route handlers call them through
``Gateway.run_sync``. The request helpers at the end are shared by the two route modules.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from nacl.public import PrivateKey

from safefs import model
from safefs.errors import (
    ENCODE_DECODE,
    INVALID_INDEX,
    MUTATION_NO_SUCH_DATA,
    NO_SUCH_DATA,
    SafeError,
)
from safefs.model import AppendableData, DataIdentifier, StructuredData
from safefs.store import RecordExists, RecordNotFound, VersionConflict

from .routing import ApiError, Call

if TYPE_CHECKING:
    from safefs.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
Record = StructuredData | AppendableData
R = TypeVar("R", StructuredData, AppendableData)


@dataclass(frozen=True)
class AppKeys:
    """The decryption keys of the calling app; anonymous callers have none."""

    sym_key: bytes | None = None
    box_keypair: PrivateKey | None = None

    @classmethod
    def of(cls, call: Call) -> AppKeys:
        if call.session is None:
            return cls()
        return cls(call.gateway.app_key(call.session), call.gateway.account.box_keypair)

    def decrypt(self, wrapped: bytes) -> bytes:
        """The bytes inside a cipher wrapper (-1520 / -4 / -3 when these keys cannot open it)."""
        return model.decrypt(wrapped, self.sym_key, self.box_keypair)


def _malformed(data_id: DataIdentifier, why: str) -> SafeError:
    log.warning("record %s in the store is malformed: %s", data_id.record_key().hex(), why)
    return SafeError(ENCODE_DECODE, f"stored record is malformed: {why}")


def decode_structured(data_id: DataIdentifier, value: bytes) -> StructuredData:
    """A stored StructuredData, checked against its identifier and its owner's signature.

    An unclaimed record was signed by its last owner and carries nothing, so it is only
    checked for its identity.
    """
    record = StructuredData.deserialise(value)
    if record.identifier != data_id:
        raise _malformed(data_id, "it names another record")
    if not record.is_unclaimed and not record.verify():
        raise _malformed(data_id, "its signature does not match its owner")
    return record


def decode_appendable(data_id: DataIdentifier, value: bytes) -> AppendableData:
    """A stored AppendableData, checked against its identifier and its owner's signature."""
    record = AppendableData.deserialise(value)
    if record.identifier != data_id:
        raise _malformed(data_id, "it names another record")
    if not record.verify():
        raise _malformed(data_id, "its signature does not match its owner")
    return record


def fetch(store: Store, data_id: DataIdentifier,
          decode: Callable[[DataIdentifier, bytes], T]) -> T:
    """The latest stored version of a record (-18 NoSuchData if there is none)."""
    try:
        _, value = store.get_record(data_id.record_key())
    except RecordNotFound:
        raise SafeError(NO_SUCH_DATA, "no such record") from None
    return decode(data_id, value)


def put(store: Store, record: Record, first_version: int,
        check_existing: Callable[[bytes], None]) -> None:
    """Store ``record`` as a new record (store version ``first_version``).

    If its key already holds a record, ``check_existing(latest value)`` decides: it raises to
    refuse (DataExists), or returns to let ``record`` follow the latest version (a re-claim).
    """
    key = record.identifier.record_key()
    value = record.serialise()
    while True:
        try:
            store.create_record(key, first_version, value)
            return
        except RecordExists:
            pass
        version, current = store.get_record(key)
        check_existing(current)
        try:
            store.cas_record(key, version, value)
            return
        except VersionConflict:
            log.debug("record %s changed during a PUT; checking again", key.hex())


def update(store: Store, data_id: DataIdentifier, change: Callable[[bytes], R]) -> R:
    """Replace the latest version of a record by ``change(latest value)``; the record stored.

    ``change`` applies the data model's rules and raises to refuse. When another writer got
    in first, the new latest version is read and ``change`` applied to it again; every lost
    race means someone else's update was stored, so this always ends. A missing record is
    -22 (MutationFailure NoSuchData).
    """
    key = data_id.record_key()
    while True:
        try:
            version, current = store.get_record(key)
        except RecordNotFound:
            raise SafeError(MUTATION_NO_SUCH_DATA, "no such record") from None
        record = change(current)
        try:
            store.cas_record(key, version, record.serialise())
            return record
        except VersionConflict:
            log.debug("record %s changed during an update; applying it again", key.hex())


# -- request helpers -------------------------------------------------------------------------

INDEX_NOT_A_NUMBER = "index must be a valid number"
# Decimal digits of the largest u64: longer numbers in a path are out of range, whatever they say.
U64_DIGITS = 20


def name_field(body: dict, missing: str, invalid: str) -> bytes:
    """The 32-byte ``name`` of a create request, with the route's launcher messages."""
    value = body.get("name")
    if not value:
        raise ApiError(400, missing)
    try:
        name = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except binascii.Error:
        name = b""
    if len(name) != model.XOR_NAME_SIZE:
        raise ApiError(400, invalid)
    return name


def path_index(call: Call, name: str = "index") -> int:
    """A 0-based index from the path (the launcher's 400 when it is not a number)."""
    text = call.param(name)
    if not text.isascii() or not text.isdigit():
        raise ApiError(400, INDEX_NOT_A_NUMBER)
    if len(text) > U64_DIGITS:
        raise SafeError(INVALID_INDEX, f"index {text[:30]}...")
    return int(text)
