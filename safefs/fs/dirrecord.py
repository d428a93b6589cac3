"""Directory records: the deterministic encoding of one directory's content.

Every directory of the mount is a StructuredData record of type tag 501, SYMMETRIC (the mount's
app key), owned by the account; this module is the codec of its plaintext content. The same
directory always encodes to the same bytes, so unchanged directories publish nothing and two
devices can compare records byte for byte.

Format 1, all integers big-endian, ``bytes16``/``bytes32`` = u16/u32 length then the bytes::

    record = "SFD1" attrs u32:count entry*count      entries strictly ascending by name
    attrs  = u32:mode i64:mtime_ns i64:ctime_ns xattrs
    xattrs = u16:count (bytes16:name bytes32:value)*count        strictly ascending by name
    entry  = bytes16:name u8:kind u32:mode i64:mtime_ns i64:ctime_ns u64:size u8:ref
             bytes32:data xattrs

``attrs`` are the directory's own mode, times and xattrs. They matter for the root only, which has
no parent entry; other directories' attributes live in their parent's entry (so a change inside a
directory republishes the directory alone, not its parents) and their records carry zeros there.

``mode`` holds the permission bits (``0o7777``), never the file type, which ``kind`` gives:

- kind 1, file: ``ref`` 0 = ``data`` is the content itself (tiny files; ``len(data) == size``),
  ``ref`` 1 = ``data`` is the serialised DataIdentifier of the content (ImmutableData),
  ``ref`` 2 = ``data`` is ``u64:offset`` and the serialised DataIdentifier of a *pack*, an
  ImmutableData holding several files' contents: this one is bytes ``[offset, offset + size)``.
- kind 2, directory: ``data`` is the 32-byte name of the child's record; size 0, ref 0.
- kind 3, symlink: ``data`` is the target, ``size == len(data)``, mode 0o777, ref 0, no xattrs.

Names are 1..255 bytes without ``/`` or NUL and are not ``.`` or ``..``; xattr names start with
``user.`` and values are at most 64 KiB. A decoder rejects anything else, including trailing bytes,
so one directory has exactly one encoding.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

MAGIC = b"SFD1"
XATTR_VALUE_MAX = 65536
NAME_MAX = 255
CHILD_NAME_LEN = 32


class RecordFormatError(ValueError):
    """Bytes that are not a valid directory record (format 1)."""


class Kind(enum.IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3


class Ref(enum.IntEnum):
    INLINE = 0
    DATA_ID = 1
    PACKED = 2


#: References whose content lives at the gateway as ImmutableData: a local copy of it may be
#: dropped and fetched again (an inline one is the record's own).
AT_GATEWAY = (Ref.DATA_ID, Ref.PACKED)


PACK_OFFSET = struct.Struct(">Q")


def packed_ref(offset: int, data_id: bytes) -> bytes:
    """``data`` of a file stored at ``offset`` of the pack ``data_id`` (``Ref.PACKED``)."""
    return PACK_OFFSET.pack(offset) + data_id


def unpack_ref(data: bytes) -> tuple[int, bytes]:
    """(offset, serialised DataIdentifier of the pack) of ``Ref.PACKED`` data."""
    return PACK_OFFSET.unpack_from(data)[0], data[PACK_OFFSET.size:]


XAttrs = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Attrs:
    """A directory's own attributes, as the root's record carries them."""

    mode: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    xattrs: XAttrs = ()


@dataclass(frozen=True, slots=True)
class Entry:
    """One name of a directory (the name is the key it is stored under)."""

    kind: Kind
    mode: int
    mtime_ns: int
    ctime_ns: int
    size: int
    data: bytes
    ref: Ref = Ref.INLINE
    xattrs: XAttrs = ()

    def __post_init__(self) -> None:
        _check_entry(self)

    @classmethod
    def symlink(cls, target: bytes, mtime_ns: int, ctime_ns: int) -> Entry:
        return cls(Kind.SYMLINK, 0o777, mtime_ns, ctime_ns, len(target), target)


@dataclass(frozen=True, slots=True)
class DirRecord:
    attrs: Attrs = Attrs()
    entries: Mapping[bytes, Entry] = field(default_factory=dict)

    def encode(self) -> bytes:
        out = bytearray(MAGIC)
        _put_attrs(out, self.attrs)
        out += struct.pack(">I", len(self.entries))
        for name in sorted(self.entries):
            check_name(name)
            entry = self.entries[name]
            out += struct.pack(">H", len(name)) + name
            out += struct.pack(">BIqqQB", entry.kind, entry.mode, entry.mtime_ns, entry.ctime_ns,
                               entry.size, entry.ref)
            out += struct.pack(">I", len(entry.data)) + entry.data
            _put_xattrs(out, entry.xattrs)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> DirRecord:
        reader = _Reader(data)
        if reader.take(4) != MAGIC:
            raise RecordFormatError("not a safefs directory record (format 1)")
        attrs = Attrs(*reader.unpack(">Iqq"), _get_xattrs(reader))
        entries: dict[bytes, Entry] = {}
        previous = b""
        for _ in range(reader.unpack(">I")[0]):
            name = reader.bytes16()
            try:
                check_name(name)
                if previous and name <= previous:
                    raise ValueError("entries are not strictly ascending by name")
                kind, mode, mtime_ns, ctime_ns, size, ref = reader.unpack(">BIqqQB")
                entries[name] = Entry(Kind(kind), mode, mtime_ns, ctime_ns, size,
                                      reader.bytes32(), Ref(ref), _get_xattrs(reader))
            except ValueError as exc:
                raise RecordFormatError(f"entry {name!r}: {exc}") from None
            previous = name
        if not reader.at_end():
            raise RecordFormatError("trailing bytes after the last entry")
        return cls(attrs, entries)


def check_name(name: bytes) -> None:
    """Raise ValueError for a name no directory entry may have."""
    if not 0 < len(name) <= NAME_MAX or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise ValueError(f"invalid entry name {name!r}")


def _check_entry(entry: Entry) -> None:
    if entry.mode & ~0o7777 or entry.size < 0:
        raise ValueError("mode holds permission bits only; size is not negative")
    if entry.kind == Kind.FILE:
        if entry.ref == Ref.INLINE and len(entry.data) != entry.size:
            raise ValueError("inline content does not match the size")
        if entry.ref == Ref.PACKED and len(entry.data) <= PACK_OFFSET.size:
            raise ValueError("a packed file needs an offset and a pack")
    elif entry.kind == Kind.DIR:
        if len(entry.data) != CHILD_NAME_LEN or entry.size or entry.ref != Ref.INLINE:
            raise ValueError("a directory entry holds a 32-byte child record name only")
    elif (entry.ref != Ref.INLINE or entry.size != len(entry.data) or entry.mode != 0o777
          or entry.xattrs):
        raise ValueError("a symlink entry holds its target only")
    _check_xattrs(entry.xattrs)


def _check_xattrs(xattrs: XAttrs) -> None:
    previous = b""
    for name, value in xattrs:
        if not name.startswith(b"user.") or len(name) > NAME_MAX or len(value) > XATTR_VALUE_MAX:
            raise ValueError(f"invalid xattr {name!r}")
        if previous and name <= previous:
            raise ValueError("xattrs are not strictly ascending by name")
        previous = name


def _put_attrs(out: bytearray, attrs: Attrs) -> None:
    out += struct.pack(">Iqq", attrs.mode, attrs.mtime_ns, attrs.ctime_ns)
    _put_xattrs(out, attrs.xattrs)


def _put_xattrs(out: bytearray, xattrs: XAttrs) -> None:
    _check_xattrs(xattrs)
    out += struct.pack(">H", len(xattrs))
    for name, value in xattrs:
        out += struct.pack(">H", len(name)) + name + struct.pack(">I", len(value)) + value


def _get_xattrs(reader: _Reader) -> XAttrs:
    xattrs = tuple((reader.bytes16(), reader.bytes32()) for _ in range(reader.unpack(">H")[0]))
    try:
        _check_xattrs(xattrs)
    except ValueError as exc:
        raise RecordFormatError(str(exc)) from None
    return xattrs


class _Reader:
    """Bounds-checked cursor over the record bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def take(self, length: int) -> bytes:
        end = self._pos + length
        if end > len(self._data):
            raise RecordFormatError("record is truncated")
        chunk = bytes(self._data[self._pos:end])
        self._pos = end
        return chunk

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def bytes16(self) -> bytes:
        return self.take(self.unpack(">H")[0])

    def bytes32(self) -> bytes:
        return self.take(self.unpack(">I")[0])

    def at_end(self) -> bool:
        return self._pos == len(self._data)
