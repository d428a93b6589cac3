"""The data model: names, identifiers, signed mutable records and the cipher wrapper.

These are the 2016 SAFE network's types (DataIdentifier, StructuredData, AppendableData,
AppendedData, cipher options) rebuilt on Ed25519/X25519 (pynacl) and on one small strict binary
codec, so every byte that is stored or signed has exactly one documented encoding
(docs/FORMAT.md, "Data model"). The rules a vault used to enforce -- valid successors, deletion,
re-claim and unclaim, append filters, deleted data, the 100 KiB record limit -- are pure functions
here, so the gateway applies them and the tests prove them without any store or network.

Pure and synchronous: no I/O, no clock, no global state. Rule violations raise
:class:`~safefs.errors.SafeError` with the launcher's code; malformed bytes raise
``SafeError(ENCODE_DECODE)``; constructing a value with an impossible field (wrong key length,
version out of range) is a programming error and raises ``ValueError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import TypeVar

import blake3
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.secret import SecretBox
from nacl.signing import SigningKey, VerifyKey

from safefs.errors import (
    ASYMMETRIC_DECIPHER,
    DATA_EXISTS,
    DATA_TOO_LARGE,
    ENCODE_DECODE,
    FORBIDDEN_FOR_APP,
    INVALID_INDEX,
    INVALID_OPERATION,
    INVALID_SUCCESSOR,
    INVALID_TYPE_TAG,
    INVALID_VERSION_NUMBER,
    SYMMETRIC_DECIPHER,
    SafeError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=IntEnum)

U64_MAX = 2**64 - 1
XOR_NAME_SIZE = 32
PUBLIC_KEY_SIZE = 32  # Ed25519 verify keys and X25519 box public keys alike
SIGNATURE_SIZE = 64
SYMMETRIC_KEY_SIZE = SecretBox.KEY_SIZE

TAG_UNVERSIONED = 500
TAG_VERSIONED = 501
MIN_CUSTOM_TAG = 15000
MAX_STRUCTURED_DATA_SIZE = 102400
MAX_APPENDABLE_DATA_SIZE = 102400
# Owner of an unclaimed StructuredData: a key nobody can sign with.
NO_OWNER = bytes(PUBLIC_KEY_SIZE)
# Pointers per VersionsInfo page: 32 KiB of names, well inside the record limit.
VERSIONS_PER_PAGE = 1024

# Domain separation: every signed message and derived key starts with its own context.
_SD_DOMAIN = b"safefs structured-data v1\x00"
_AD_DOMAIN = b"safefs appendable-data v1\x00"
_APPENDED_DOMAIN = b"safefs appended-data v1\x00"
_WRAPPER_DOMAIN = b"safefs append-wrapper v1\x00"
_RECORD_KEY_CONTEXT = "safefs record key v1"


# --- codec -------------------------------------------------------------------------------------


class Writer:
    """Builds bytes in the model codec: little-endian integers, u64-prefixed byte strings."""

    def __init__(self) -> None:
        self._out = bytearray()

    def u8(self, value: int) -> None:
        self._out.append(value)

    def u32(self, value: int) -> None:
        self._out += value.to_bytes(4, "little")

    def u64(self, value: int) -> None:
        self._out += value.to_bytes(8, "little")

    def flag(self, value: bool) -> None:
        self.u8(1 if value else 0)

    def raw(self, data: bytes) -> None:
        """A fixed-size field (names, keys, signatures): its size is implied, no prefix."""
        self._out += data

    def blob(self, data: bytes) -> None:
        self.u64(len(data))
        self._out += data

    def option(self, value: T | None, write: Callable[[T], None]) -> None:
        if value is None:
            self.u8(0)
        else:
            self.u8(1)
            write(value)

    def seq(self, items: Iterable[T], write: Callable[[T], None]) -> None:
        items = tuple(items)
        self.u64(len(items))
        for item in items:
            write(item)

    def getvalue(self) -> bytes:
        return bytes(self._out)


class Reader:
    """Strict reader of the model codec: any inconsistency is ``SafeError(ENCODE_DECODE)``."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    def raw(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise SafeError(ENCODE_DECODE, f"truncated: {size} bytes wanted at offset {self._pos}")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self) -> int:
        return self.raw(1)[0]

    def u32(self) -> int:
        return int.from_bytes(self.raw(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self.raw(8), "little")

    def flag(self) -> bool:
        value = self.u8()
        if value > 1:
            raise SafeError(ENCODE_DECODE, f"boolean byte {value}")
        return value == 1

    def blob(self) -> bytes:
        return self.raw(self.u64())

    def variant(self, enum_type: type[E]) -> E:
        index = self.u32()
        try:
            return enum_type(index)
        except ValueError:
            raise SafeError(ENCODE_DECODE, f"{enum_type.__name__} variant {index}") from None

    def option(self, read: Callable[[], T]) -> T | None:
        return read() if self.flag() else None

    def seq(self, read: Callable[[], T]) -> tuple[T, ...]:
        return tuple(read() for _ in range(self.u64()))

    def end(self) -> None:
        if self._pos != len(self._data):
            raise SafeError(ENCODE_DECODE, f"{len(self._data) - self._pos} trailing bytes")


def encode(write: Callable[[Writer], None]) -> bytes:
    writer = Writer()
    write(writer)
    return writer.getvalue()


def decode(data: bytes, read: Callable[[Reader], T]) -> T:
    """Decode exactly ``data`` (no trailing bytes); a field the type refuses is malformed too."""
    reader = Reader(data)
    try:
        value = read(reader)
    except ValueError as exc:
        raise SafeError(ENCODE_DECODE, str(exc)) from exc
    reader.end()
    return value


def _check_u64(what: str, value: int) -> None:
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{what} {value} is not a u64")


def _check_size(what: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(value)}")


def _reject(code: int, detail: str) -> SafeError:
    log.debug("refused (%d): %s", code, detail)
    return SafeError(code, detail)


def _signature_ok(public_key: bytes, message: bytes, signature: bytes | None) -> bool:
    if signature is None:
        return False
    try:
        VerifyKey(public_key).verify(message, signature)
    except BadSignatureError:
        return False
    return True


def _sign(signing_key: SigningKey, message: bytes) -> bytes:
    return signing_key.sign(message).signature


# --- names and identifiers ---------------------------------------------------------------------


class XorName(bytes):
    """A 32-byte network name: a content hash, or a name chosen by the creator of a record."""

    def __new__(cls, value: bytes) -> XorName:
        _check_size("XorName", value, XOR_NAME_SIZE)
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"XorName({self.hex()})"


class DataKind(IntEnum):
    """The DataIdentifier variants; the value is the variant index in the codec."""

    STRUCTURED = 0
    IMMUTABLE = 1
    PUB_APPENDABLE = 2
    PRIV_APPENDABLE = 3


@dataclass(frozen=True)
class DataIdentifier:
    """Names one piece of data: its kind, its name and, for StructuredData, its type tag."""

    kind: DataKind
    name: XorName
    type_tag: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", DataKind(self.kind))
        object.__setattr__(self, "name", XorName(self.name))
        if (self.kind is DataKind.STRUCTURED) != (self.type_tag is not None):
            raise ValueError("a type tag belongs to StructuredData identifiers only")
        if self.type_tag is not None:
            _check_u64("type tag", self.type_tag)

    @classmethod
    def structured(cls, name: bytes, type_tag: int) -> DataIdentifier:
        return cls(DataKind.STRUCTURED, XorName(name), type_tag)

    @classmethod
    def immutable(cls, name: bytes) -> DataIdentifier:
        return cls(DataKind.IMMUTABLE, XorName(name))

    @classmethod
    def appendable(cls, name: bytes, private: bool) -> DataIdentifier:
        kind = DataKind.PRIV_APPENDABLE if private else DataKind.PUB_APPENDABLE
        return cls(kind, XorName(name))

    def serialise(self) -> bytes:
        return encode(self._write)

    @classmethod
    def deserialise(cls, data: bytes) -> DataIdentifier:
        return decode(data, cls._read)

    def record_key(self) -> bytes:
        """The store key of the mutable record this identifies: 32 uniformly spread bytes."""
        return blake3.blake3(self.serialise(), derive_key_context=_RECORD_KEY_CONTEXT).digest()

    def _write(self, w: Writer) -> None:
        w.u32(self.kind)
        w.raw(self.name)
        if self.type_tag is not None:
            w.u64(self.type_tag)

    @classmethod
    def _read(cls, r: Reader) -> DataIdentifier:
        kind = r.variant(DataKind)
        name = XorName(r.raw(XOR_NAME_SIZE))
        return cls(kind, name, r.u64() if kind is DataKind.STRUCTURED else None)


# --- StructuredData ----------------------------------------------------------------------------


def validate_type_tag(type_tag: int) -> None:
    """500 (unversioned), 501 (versioned) and custom tags from 15000 up are the valid ones."""
    if type_tag not in (TAG_UNVERSIONED, TAG_VERSIONED) and not (
        MIN_CUSTOM_TAG <= type_tag <= U64_MAX
    ):
        raise SafeError(INVALID_TYPE_TAG, f"type tag {type_tag}: use 500, 501 or >= 15000")


@dataclass(frozen=True)
class StructuredData:
    """A named, versioned record of up to 100 KiB, owned and signed by one Ed25519 key.

    ``signature`` is made by the owner of the *previous* version (by the owner itself for a
    record created by PUT); it covers every other field. A deleted record keeps its owner and
    signature, so the deletion can be verified, and carries no data.
    """

    type_tag: int
    name: XorName
    data: bytes
    version: int
    owner: bytes
    deleted: bool = False
    signature: bytes | None = None

    def __post_init__(self) -> None:
        validate_type_tag(self.type_tag)
        object.__setattr__(self, "name", XorName(self.name))
        _check_u64("version", self.version)
        _check_size("owner", self.owner, PUBLIC_KEY_SIZE)
        if self.signature is not None:
            _check_size("signature", self.signature, SIGNATURE_SIZE)
        if self.deleted and self.data:
            raise ValueError("a deleted StructuredData carries no data")

    @property
    def identifier(self) -> DataIdentifier:
        return DataIdentifier.structured(self.name, self.type_tag)

    @property
    def is_unclaimed(self) -> bool:
        return self.owner == NO_OWNER

    def signed_bytes(self) -> bytes:
        return _SD_DOMAIN + encode(self._write_unsigned)

    def sign(self, signing_key: SigningKey) -> StructuredData:
        return replace(self, signature=_sign(signing_key, self.signed_bytes()))

    def verify(self, public_key: bytes | None = None) -> bool:
        """Whether the signature is valid for ``public_key`` (default: the record's owner).

        An unclaimed record was signed by its last owner: pass that key to check it.
        """
        key = self.owner if public_key is None else public_key
        return _signature_ok(key, self.signed_bytes(), self.signature)

    def serialise(self) -> bytes:
        return encode(self._write)

    @classmethod
    def deserialise(cls, data: bytes) -> StructuredData:
        return decode(data, cls._read)

    def signed_size(self) -> int:
        """Size of the serialised record once signed: what the 100 KiB limit applies to."""
        return len(self.serialise()) + (0 if self.signature is not None else SIGNATURE_SIZE)

    def validate_size(self) -> None:
        size = self.signed_size()
        if size > MAX_STRUCTURED_DATA_SIZE:
            raise SafeError(
                DATA_TOO_LARGE, f"StructuredData of {size} bytes > {MAX_STRUCTURED_DATA_SIZE}"
            )

    def successor(self, data: bytes, signing_key: SigningKey) -> StructuredData:
        """The next version carrying ``data`` (what POST stores), signed by the owner."""
        return replace(self, data=data, version=self.version + 1, deleted=False).sign(signing_key)

    def deleted_successor(self, signing_key: SigningKey) -> StructuredData:
        """The tombstone DELETE stores: next version, no data, deleted, signed by the owner."""
        return replace(self, data=b"", version=self.version + 1, deleted=True).sign(signing_key)

    def unclaimed_successor(self, signing_key: SigningKey) -> StructuredData:
        """Next version owned by nobody (``NO_OWNER``), signed by the last owner."""
        return replace(self, data=b"", version=self.version + 1, owner=NO_OWNER).sign(signing_key)

    def _write_unsigned(self, w: Writer) -> None:
        w.u64(self.type_tag)
        w.raw(self.name)
        w.blob(self.data)
        w.u64(self.version)
        w.raw(self.owner)
        w.flag(self.deleted)

    def _write(self, w: Writer) -> None:
        self._write_unsigned(w)
        w.option(self.signature, w.raw)

    @classmethod
    def _read(cls, r: Reader) -> StructuredData:
        return cls(
            type_tag=r.u64(),
            name=XorName(r.raw(XOR_NAME_SIZE)),
            data=r.blob(),
            version=r.u64(),
            owner=r.raw(PUBLIC_KEY_SIZE),
            deleted=r.flag(),
            signature=r.option(lambda: r.raw(SIGNATURE_SIZE)),
        )


def check_successor(old: StructuredData, new: StructuredData) -> None:
    """Whether ``new`` may replace the stored ``old`` (POST, DELETE, unclaim).

    A deleted or unclaimed record accepts no successor (INVALID_OPERATION); otherwise ``new``
    must keep the name and tag, have version ``old.version + 1``, be signed by old's owner and
    fit the size limit (INVALID_SUCCESSOR / DATA_TOO_LARGE).
    """
    if old.deleted:
        raise _reject(INVALID_OPERATION, "deleted StructuredData: re-claim it with a PUT")
    if old.is_unclaimed:
        raise _reject(INVALID_OPERATION, "unclaimed StructuredData cannot change any more")
    if new.identifier != old.identifier:
        raise _reject(INVALID_SUCCESSOR, "successor has another name or type tag")
    if new.version != old.version + 1:
        raise _reject(
            INVALID_SUCCESSOR, f"successor version {new.version}, expected {old.version + 1}"
        )
    if not new.verify(old.owner):
        raise _reject(INVALID_SUCCESSOR, "successor is not signed by the owner")
    if new.deleted and new.owner != old.owner:
        raise _reject(INVALID_SUCCESSOR, "a deletion keeps the owner")
    new.validate_size()


def check_put(existing: StructuredData | None, new: StructuredData) -> None:
    """Whether ``new`` may be stored by PUT where ``existing`` (or nothing) is stored.

    ``new`` must be live, owned, signed by its owner and within the size limit. Over an
    existing record only a re-claim is allowed: the existing one is deleted and ``new`` has
    the next version, whoever owns it. Anything else is DATA_EXISTS.
    """
    new.validate_size()
    if new.deleted or new.is_unclaimed:
        raise _reject(INVALID_OPERATION, "a PUT stores a live, owned StructuredData")
    if not new.verify():
        raise _reject(INVALID_SUCCESSOR, "StructuredData is not signed by its owner")
    if existing is None:
        return
    if existing.deleted and new.version == existing.version + 1:
        return
    detail = (
        f"re-claim needs version {existing.version + 1}, got {new.version}"
        if existing.deleted
        else "StructuredData already stored"
    )
    raise _reject(DATA_EXISTS, detail)


@dataclass(frozen=True)
class VersionsInfo:
    """The history of a versioned (tag 501) record: a pointer per content version, in order.

    The newest pointers live in this page, inside the record. When a page is full the gateway
    stores it (its serialisation) as ImmutableData and continues with :meth:`next_page`, whose
    ``older`` names the stored page; pages thus form a chain and a record stays small however
    long its history grows. Version ``n`` (0-based) is in this page when ``n >= older_count``.
    """

    versions: tuple[XorName, ...] = ()
    older: XorName | None = None
    older_count: int = 0

    def __post_init__(self) -> None:
        versions = tuple(v if isinstance(v, XorName) else XorName(v) for v in self.versions)
        object.__setattr__(self, "versions", versions)
        if len(self.versions) > VERSIONS_PER_PAGE:
            raise ValueError(f"more than {VERSIONS_PER_PAGE} versions in one page")
        if self.older is not None:
            object.__setattr__(self, "older", XorName(self.older))
        if (self.older is None) != (self.older_count == 0):
            raise ValueError("older pages and their count go together")
        _check_u64("version count", self.total)

    @property
    def total(self) -> int:
        return self.older_count + len(self.versions)

    @property
    def is_full(self) -> bool:
        return len(self.versions) == VERSIONS_PER_PAGE

    def appended(self, pointer: bytes) -> VersionsInfo:
        """With one more version; a full page must first be stored and moved on (next_page)."""
        return replace(self, versions=(*self.versions, XorName(pointer)))

    def next_page(self, stored_as: bytes) -> VersionsInfo:
        """An empty page continuing this one, which was stored as ImmutableData ``stored_as``."""
        return VersionsInfo((), XorName(stored_as), self.total)

    def pointer_at(self, index: int) -> XorName | None:
        """Pointer of version ``index``; None when it lives in the ``older`` pages."""
        if not 0 <= index < self.total:
            raise SafeError(INVALID_VERSION_NUMBER, f"version {index} of {self.total}")
        if index < self.older_count:
            return None
        return self.versions[index - self.older_count]

    def serialise(self) -> bytes:
        return encode(self._write)

    @classmethod
    def deserialise(cls, data: bytes) -> VersionsInfo:
        return decode(data, cls._read)

    def _write(self, w: Writer) -> None:
        w.seq(self.versions, w.raw)
        w.option(self.older, w.raw)
        w.u64(self.older_count)

    @classmethod
    def _read(cls, r: Reader) -> VersionsInfo:
        def read_name() -> XorName:
            return XorName(r.raw(XOR_NAME_SIZE))

        return cls(r.seq(read_name), r.option(read_name), r.u64())


# --- AppendableData ----------------------------------------------------------------------------


class FilterKind(IntEnum):
    """BLACK_LIST: everyone but the listed keys may append; WHITE_LIST: only the listed keys."""

    BLACK_LIST = 0
    WHITE_LIST = 1


@dataclass(frozen=True)
class Filter:
    """Who may append. Owners are not exempt: the filter applies to their key like any other."""

    kind: FilterKind = FilterKind.BLACK_LIST
    keys: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FilterKind(self.kind))
        object.__setattr__(self, "keys", frozenset(self.keys))
        for key in self.keys:
            _check_size("filter key", key, PUBLIC_KEY_SIZE)

    def admits(self, sign_key: bytes) -> bool:
        return (sign_key in self.keys) == (self.kind is FilterKind.WHITE_LIST)

    def toggled(self) -> Filter:
        """The other kind of list, empty (as the launcher's toggle-filter does)."""
        return Filter(FilterKind(1 - self.kind))

    def with_keys(self, keys: Iterable[bytes]) -> Filter:
        return Filter(self.kind, self.keys | frozenset(keys))

    def without_keys(self, keys: Iterable[bytes]) -> Filter:
        return Filter(self.kind, self.keys - frozenset(keys))

    def _write(self, w: Writer) -> None:
        w.u32(self.kind)
        w.seq(sorted(self.keys), w.raw)

    @classmethod
    def _read(cls, r: Reader) -> Filter:
        kind = r.variant(FilterKind)
        keys = r.seq(lambda: r.raw(PUBLIC_KEY_SIZE))
        if list(keys) != sorted(set(keys)):
            raise SafeError(ENCODE_DECODE, "filter keys not in strictly ascending order")
        return cls(kind, frozenset(keys))


def _appended_message(append_to: DataIdentifier, pointer: DataIdentifier, sign_key: bytes) -> bytes:
    return _APPENDED_DOMAIN + append_to.serialise() + pointer.serialise() + sign_key


@dataclass(frozen=True)
class AppendedData:
    """One entry of an AppendableData: a pointer, signed by whoever appended it.

    The signature also covers the AppendableData it was made for, so an entry cannot be
    replayed into another one.
    """

    pointer: DataIdentifier
    sign_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_size("sign key", self.sign_key, PUBLIC_KEY_SIZE)
        _check_size("signature", self.signature, SIGNATURE_SIZE)

    @classmethod
    def create(
        cls, append_to: DataIdentifier, pointer: DataIdentifier, signing_key: SigningKey
    ) -> AppendedData:
        sign_key = signing_key.verify_key.encode()
        message = _appended_message(append_to, pointer, sign_key)
        return cls(pointer, sign_key, _sign(signing_key, message))

    def verify(self, append_to: DataIdentifier) -> bool:
        message = _appended_message(append_to, self.pointer, self.sign_key)
        return _signature_ok(self.sign_key, message, self.signature)

    def serialise(self) -> bytes:
        return encode(self._write)

    @classmethod
    def deserialise(cls, data: bytes) -> AppendedData:
        return decode(data, cls._read)

    def _write(self, w: Writer) -> None:
        self.pointer._write(w)
        w.raw(self.sign_key)
        w.raw(self.signature)

    @classmethod
    def _read(cls, r: Reader) -> AppendedData:
        return cls(DataIdentifier._read(r), r.raw(PUBLIC_KEY_SIZE), r.raw(SIGNATURE_SIZE))


@dataclass(frozen=True)
class PrivAppendedData:
    """An entry of a private AppendableData: a serialised AppendedData sealed to its owner."""

    sealed: bytes

    def serialise(self) -> bytes:
        return encode(self._write)

    def _write(self, w: Writer) -> None:
        w.blob(self.sealed)

    @classmethod
    def _read(cls, r: Reader) -> PrivAppendedData:
        return cls(r.blob())


Entry = AppendedData | PrivAppendedData


def _entry_set(entries: Iterable[Entry]) -> tuple[Entry, ...]:
    """The canonical order of an entry set: ascending serialisation, no duplicates."""
    return tuple(sorted(set(entries), key=lambda entry: entry.serialise()))


@dataclass(frozen=True)
class AppendableData:
    """An owned inbox: anyone the filter admits appends pointers; the owner edits the rest.

    ``data`` and ``deleted_data`` are sets kept in ascending order of their entries'
    serialisation; index ``n`` is the ``n``-th entry in that order (an append may shift
    indices). A private AppendableData has an ``encrypt_key`` (the owner's box public key) and
    holds sealed entries. The owner's signature covers everything except ``data``, which
    grows by appends that the owner never signs.
    """

    name: XorName
    owner: bytes
    encrypt_key: bytes | None = None
    version: int = 0
    filter: Filter = Filter()
    data: tuple[Entry, ...] = ()
    deleted_data: tuple[Entry, ...] = ()
    signature: bytes | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", XorName(self.name))
        _check_size("owner", self.owner, PUBLIC_KEY_SIZE)
        if self.encrypt_key is not None:
            _check_size("encrypt key", self.encrypt_key, PUBLIC_KEY_SIZE)
        _check_u64("version", self.version)
        if self.signature is not None:
            _check_size("signature", self.signature, SIGNATURE_SIZE)
        entry_type = PrivAppendedData if self.is_private else AppendedData
        for attr in ("data", "deleted_data"):
            entries = _entry_set(getattr(self, attr))
            if not all(isinstance(entry, entry_type) for entry in entries):
                raise ValueError(f"{attr} of this AppendableData holds {entry_type.__name__}")
            object.__setattr__(self, attr, entries)

    @property
    def is_private(self) -> bool:
        return self.encrypt_key is not None

    @property
    def identifier(self) -> DataIdentifier:
        return DataIdentifier.appendable(self.name, self.is_private)

    def signed_bytes(self) -> bytes:
        return _AD_DOMAIN + encode(self._write_signed_part)

    def sign(self, signing_key: SigningKey) -> AppendableData:
        return replace(self, signature=_sign(signing_key, self.signed_bytes()))

    def verify(self, public_key: bytes | None = None) -> bool:
        key = self.owner if public_key is None else public_key
        return _signature_ok(key, self.signed_bytes(), self.signature)

    def serialise(self) -> bytes:
        return encode(self._write)

    @classmethod
    def deserialise(cls, data: bytes) -> AppendableData:
        return decode(data, cls._read)

    def validate_size(self) -> None:
        size = len(self.serialise()) + (0 if self.signature is not None else SIGNATURE_SIZE)
        if size > MAX_APPENDABLE_DATA_SIZE:
            raise SafeError(
                DATA_TOO_LARGE, f"AppendableData of {size} bytes > {MAX_APPENDABLE_DATA_SIZE}"
            )

    def successor(self, signing_key: SigningKey) -> AppendableData:
        """What POST sends for the owner's local edits: next version, signed.

        It carries this snapshot's ``data``, so entries restored from ``deleted_data`` come
        back; entries appended meanwhile by others survive through :func:`update_with_other`.
        """
        return replace(self, version=self.version + 1).sign(signing_key)

    # Owner edits of a local snapshot; they drop the (now stale) signature until POST.

    def entry_at(self, index: int, deleted: bool = False) -> Entry:
        entries = self.deleted_data if deleted else self.data
        if not 0 <= index < len(entries):
            raise SafeError(INVALID_INDEX, f"index {index} of {len(entries)} entries")
        return entries[index]

    def removed(self, index: int) -> AppendableData:
        """The ``index``-th entry moved from ``data`` to ``deleted_data``."""
        entry = self.entry_at(index)
        return self._edited(
            data=tuple(e for e in self.data if e != entry),
            deleted_data=(*self.deleted_data, entry),
        )

    def restored(self, index: int) -> AppendableData:
        """The ``index``-th deleted entry moved back to ``data``."""
        entry = self.entry_at(index, deleted=True)
        return self._edited(
            data=(*self.data, entry),
            deleted_data=tuple(e for e in self.deleted_data if e != entry),
        )

    def purged(self, index: int) -> AppendableData:
        """The ``index``-th deleted entry forgotten for good."""
        entry = self.entry_at(index, deleted=True)
        return self._edited(deleted_data=tuple(e for e in self.deleted_data if e != entry))

    def all_removed(self) -> AppendableData:
        return self._edited(data=(), deleted_data=(*self.deleted_data, *self.data))

    def all_purged(self) -> AppendableData:
        return self._edited(deleted_data=())

    def with_filter(self, new_filter: Filter) -> AppendableData:
        return self._edited(filter=new_filter)

    def _edited(self, **changes: object) -> AppendableData:
        return replace(self, signature=None, **changes)

    def _write_signed_part(self, w: Writer) -> None:
        w.raw(self.name)
        w.u64(self.version)
        self.filter._write(w)
        w.raw(self.owner)
        w.option(self.encrypt_key, w.raw)
        w.seq(self.deleted_data, lambda entry: entry._write(w))

    def _write(self, w: Writer) -> None:
        self._write_signed_part(w)
        w.option(self.signature, w.raw)
        w.seq(self.data, lambda entry: entry._write(w))

    @classmethod
    def _read(cls, r: Reader) -> AppendableData:
        name = XorName(r.raw(XOR_NAME_SIZE))
        version = r.u64()
        entry_filter = Filter._read(r)
        owner = r.raw(PUBLIC_KEY_SIZE)
        encrypt_key = r.option(lambda: r.raw(PUBLIC_KEY_SIZE))
        entry_type = AppendedData if encrypt_key is None else PrivAppendedData

        def read_entries() -> tuple[Entry, ...]:
            entries = r.seq(lambda: entry_type._read(r))
            encoded = [entry.serialise() for entry in entries]
            if encoded != sorted(set(encoded)):
                raise SafeError(ENCODE_DECODE, "entries not in strictly ascending order")
            return entries

        deleted_data = read_entries()
        signature = r.option(lambda: r.raw(SIGNATURE_SIZE))
        data = read_entries()
        return cls(name, owner, encrypt_key, version, entry_filter, data, deleted_data, signature)


def _wrapper_message(
    append_to: DataIdentifier, entry: Entry, version: int, sign_key: bytes
) -> bytes:
    def write(w: Writer) -> None:
        append_to._write(w)
        entry._write(w)
        w.u64(version)
        w.raw(sign_key)

    return _WRAPPER_DOMAIN + encode(write)


@dataclass(frozen=True)
class AppendWrapper:
    """An append request: one entry for ``append_to`` at its ``version``, signed by the appender."""

    append_to: DataIdentifier
    data: Entry
    version: int
    sign_key: bytes
    signature: bytes

    @classmethod
    def create(
        cls, ad: AppendableData, pointer: DataIdentifier, signing_key: SigningKey
    ) -> AppendWrapper:
        """Append ``pointer`` to (the current version of) ``ad``; sealed if ``ad`` is private."""
        entry: Entry = AppendedData.create(ad.identifier, pointer, signing_key)
        if ad.encrypt_key is not None:
            sealed = SealedBox(PublicKey(ad.encrypt_key)).encrypt(entry.serialise())
            entry = PrivAppendedData(sealed)
        return cls.signed(ad.identifier, entry, ad.version, signing_key)

    @classmethod
    def signed(
        cls, append_to: DataIdentifier, entry: Entry, version: int, signing_key: SigningKey
    ) -> AppendWrapper:
        """A wrapper around a ready-made ``entry``, signed by ``signing_key``."""
        sign_key = signing_key.verify_key.encode()
        message = _wrapper_message(append_to, entry, version, sign_key)
        return cls(append_to, entry, version, sign_key, _sign(signing_key, message))

    def verify(self) -> bool:
        message = _wrapper_message(self.append_to, self.data, self.version, self.sign_key)
        return _signature_ok(self.sign_key, message, self.signature)


def apply_append(ad: AppendableData, wrapper: AppendWrapper) -> AppendableData:
    """``ad`` with the wrapper's entry added, if the vault rules allow it.

    The wrapper must be for this AppendableData and its current version, signed by a key the
    filter admits, with an entry of the right kind (public entries signed by that same key)
    that the owner has not deleted: INVALID_SUCCESSOR otherwise. An entry already present is
    DATA_EXISTS; a result over the size limit DATA_TOO_LARGE. Sealed entries differ at every
    sealing, so duplicates and deleted entries are only recognised in public AppendableData.
    """
    entry = wrapper.data
    if wrapper.append_to != ad.identifier:
        raise _reject(INVALID_SUCCESSOR, "append meant for another AppendableData")
    if not wrapper.verify():
        raise _reject(INVALID_SUCCESSOR, "append wrapper signature is invalid")
    if wrapper.version != ad.version:
        raise _reject(
            INVALID_SUCCESSOR, f"append against version {wrapper.version}, current {ad.version}"
        )
    if not ad.filter.admits(wrapper.sign_key):
        raise _reject(INVALID_SUCCESSOR, "the filter refuses this sign key")
    if isinstance(entry, AppendedData):
        if ad.is_private:
            raise _reject(INVALID_SUCCESSOR, "a private AppendableData takes sealed entries")
        if entry.sign_key != wrapper.sign_key or not entry.verify(ad.identifier):
            raise _reject(INVALID_SUCCESSOR, "entry is not signed by the appender")
    elif not ad.is_private:
        raise _reject(INVALID_SUCCESSOR, "a public AppendableData takes plain entries")
    if entry in ad.deleted_data:
        raise _reject(INVALID_SUCCESSOR, "entry was deleted by the owner")
    if entry in ad.data:
        raise _reject(DATA_EXISTS, "entry already appended")
    result = replace(ad, data=(*ad.data, entry))
    result.validate_size()
    return result


def update_with_other(old: AppendableData, new: AppendableData) -> AppendableData:
    """The stored result of POSTing ``new`` over the stored ``old``.

    ``new`` must be a valid successor (same identity and encrypt key, version + 1, signed by
    old's owner; new public entries signed by their appenders), else INVALID_SUCCESSOR. The
    result takes new's filter, owner, deleted data, version and signature; its data is the
    union of both data sets minus every entry in new's deleted data.
    """
    if new.identifier != old.identifier or new.encrypt_key != old.encrypt_key:
        raise _reject(INVALID_SUCCESSOR, "successor has another name, kind or encrypt key")
    if new.version != old.version + 1:
        raise _reject(
            INVALID_SUCCESSOR, f"successor version {new.version}, expected {old.version + 1}"
        )
    if not new.verify(old.owner):
        raise _reject(INVALID_SUCCESSOR, "successor is not signed by the owner")
    added = set(new.data) - set(old.data)
    if any(isinstance(e, AppendedData) and not e.verify(old.identifier) for e in added):
        raise _reject(INVALID_SUCCESSOR, "successor brings entries with bad signatures")
    deleted = set(new.deleted_data)
    merged = {*old.data, *new.data} - deleted
    result = replace(new, data=tuple(merged))
    result.validate_size()
    return result


def open_private_entry(
    entry: PrivAppendedData, box_key: PrivateKey, append_to: DataIdentifier
) -> AppendedData:
    """The AppendedData sealed in ``entry`` of the private AppendableData ``append_to``.

    Only the owner's box key opens it (ASYMMETRIC_DECIPHER otherwise, and for an entry whose
    inner signature does not hold).
    """
    try:
        plain = SealedBox(box_key).decrypt(entry.sealed)
    except CryptoError:
        raise SafeError(ASYMMETRIC_DECIPHER, "entry is sealed to another key") from None
    opened = AppendedData.deserialise(plain)
    if not opened.verify(append_to):
        raise SafeError(ASYMMETRIC_DECIPHER, "sealed entry has a bad signature")
    return opened


# --- cipher options ----------------------------------------------------------------------------


class CipherKind(IntEnum):
    """Variant index of the cipher wrapper."""

    PLAIN = 0
    SYMMETRIC = 1
    ASYMMETRIC = 2


@dataclass(frozen=True)
class CipherOpts:
    """How to wrap bytes: as they are, in a secretbox (app key) or sealed to a box public key."""

    kind: CipherKind
    key: bytes | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", CipherKind(self.kind))
        if self.kind is CipherKind.PLAIN:
            if self.key is not None:
                raise ValueError("PLAIN cipher options take no key")
        else:
            size = SYMMETRIC_KEY_SIZE if self.kind is CipherKind.SYMMETRIC else PUBLIC_KEY_SIZE
            _check_size(f"{self.kind.name} key", self.key or b"", size)

    @classmethod
    def plain(cls) -> CipherOpts:
        return cls(CipherKind.PLAIN)

    @classmethod
    def symmetric(cls, key: bytes) -> CipherOpts:
        return cls(CipherKind.SYMMETRIC, key)

    @classmethod
    def asymmetric(cls, public_key: bytes) -> CipherOpts:
        return cls(CipherKind.ASYMMETRIC, public_key)


def encrypt(opts: CipherOpts, data: bytes) -> bytes:
    """``data`` in the self-describing wrapper: readers need keys, never the options."""
    w = Writer()
    w.u32(opts.kind)
    if opts.kind is CipherKind.PLAIN:
        w.blob(data)
    elif opts.kind is CipherKind.SYMMETRIC:
        box = SecretBox(opts.key).encrypt(data)
        w.raw(box.nonce)
        w.blob(box.ciphertext)
    else:
        w.blob(SealedBox(PublicKey(opts.key)).encrypt(data))
    return w.getvalue()


def decrypt(
    blob: bytes, sym_key: bytes | None = None, box_keypair: PrivateKey | None = None
) -> bytes:
    """The bytes inside a wrapper made by :func:`encrypt`.

    Needs ``sym_key`` for SYMMETRIC and ``box_keypair`` for ASYMMETRIC wrappers
    (FORBIDDEN_FOR_APP without it, SYMMETRIC_DECIPHER / ASYMMETRIC_DECIPHER with a wrong one).
    """

    def read(r: Reader) -> tuple[CipherKind, bytes | None, bytes]:
        kind = r.variant(CipherKind)
        nonce = r.raw(SecretBox.NONCE_SIZE) if kind is CipherKind.SYMMETRIC else None
        return kind, nonce, r.blob()

    kind, nonce, payload = decode(blob, read)
    if kind is CipherKind.PLAIN:
        return payload
    if kind is CipherKind.SYMMETRIC:
        if sym_key is None:
            raise SafeError(FORBIDDEN_FOR_APP, "SYMMETRIC data needs the app's key")
        try:
            return SecretBox(sym_key).decrypt(payload, nonce)
        except CryptoError:
            raise SafeError(SYMMETRIC_DECIPHER, "wrong key or altered data") from None
    if box_keypair is None:
        raise SafeError(FORBIDDEN_FOR_APP, "ASYMMETRIC data needs the app's box key")
    try:
        return SealedBox(box_keypair).decrypt(payload)
    except CryptoError:
        raise SafeError(ASYMMETRIC_DECIPHER, "sealed to another key or altered") from None
