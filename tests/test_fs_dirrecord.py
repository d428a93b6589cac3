"""Directory-record codec: deterministic, round-trips, strict on bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safefs.fs.dirrecord import (
    Attrs,
    DirRecord,
    Entry,
    Kind,
    RecordFormatError,
    Ref,
    packed_ref,
    unpack_ref,
)

names = st.binary(min_size=1, max_size=40).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b".."))
xattrs = st.dictionaries(st.binary(max_size=10).map(lambda s: b"user." + s),
                         st.binary(max_size=50), max_size=3).map(lambda d: tuple(sorted(d.items())))
times = st.integers(min_value=-(2**62), max_value=2**62)
modes = st.integers(min_value=0, max_value=0o7777)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    kind = draw(st.sampled_from(Kind))
    if kind == Kind.SYMLINK:
        return Entry.symlink(draw(st.binary(min_size=1, max_size=60)), draw(times), draw(times))
    if kind == Kind.DIR:
        return Entry(Kind.DIR, draw(modes), draw(times), draw(times), 0,
                     draw(st.binary(min_size=32, max_size=32)), Ref.INLINE, draw(xattrs))
    if draw(st.booleans()):
        content = draw(st.binary(max_size=100))
        return Entry(Kind.FILE, draw(modes), draw(times), draw(times), len(content), content,
                     Ref.INLINE, draw(xattrs))
    if draw(st.booleans()):
        return Entry(Kind.FILE, draw(modes), draw(times), draw(times),
                     draw(st.integers(min_value=0, max_value=2**63)),
                     packed_ref(draw(st.integers(min_value=0, max_value=2**64 - 1)),
                                draw(st.binary(min_size=1, max_size=80))),
                     Ref.PACKED, draw(xattrs))
    return Entry(Kind.FILE, draw(modes), draw(times), draw(times),
                 draw(st.integers(min_value=0, max_value=2**63)), draw(st.binary(max_size=80)),
                 Ref.DATA_ID, draw(xattrs))


records = st.builds(DirRecord, st.builds(Attrs, modes, times, times, xattrs),
                    st.dictionaries(names, entries(), max_size=8))


@given(records)
def test_round_trip_and_determinism(record: DirRecord) -> None:
    data = record.encode()
    decoded = DirRecord.decode(data)
    assert decoded == record
    # Insertion order of the mapping does not change the bytes.
    shuffled = DirRecord(record.attrs, dict(reversed(list(record.entries.items()))))
    assert shuffled.encode() == data


def test_known_bytes() -> None:
    record = DirRecord(Attrs(0o755, 1, 2), {
        b"a": Entry(Kind.FILE, 0o644, 3, 4, 2, b"hi"),
        b"l": Entry.symlink(b"a", 5, 6),
    })
    assert record.encode().hex() == (
        "53464431" "000001ed" "0000000000000001" "0000000000000002" "0000" "00000002"
        "0001" "61" "01" "000001a4" "0000000000000003" "0000000000000004" "0000000000000002"
        "00" "00000002" "6869" "0000"
        "0001" "6c" "03" "000001ff" "0000000000000005" "0000000000000006" "0000000000000001"
        "00" "00000001" "61" "0000")


@given(records, st.data())
def test_truncation_and_trailing_bytes_rejected(record: DirRecord, data: st.DataObject) -> None:
    encoded = record.encode()
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(RecordFormatError):
        DirRecord.decode(encoded[:cut])
    with pytest.raises(RecordFormatError):
        DirRecord.decode(encoded + b"\0")


def test_unsorted_and_bad_names_rejected() -> None:
    one = DirRecord(entries={b"b": Entry.symlink(b"x", 0, 0)}).encode()
    swapped = one.replace(b"\x00\x01b", b"\x00\x01/")
    with pytest.raises(RecordFormatError):
        DirRecord.decode(swapped)
    two = DirRecord(entries={b"a": Entry.symlink(b"x", 0, 0),
                             b"b": Entry.symlink(b"y", 0, 0)}).encode()
    with pytest.raises(RecordFormatError):
        DirRecord.decode(two.replace(b"\x00\x01b", b"\x00\x01a"))
    for bad in (b"", b".", b"..", b"a/b", b"a\0", b"x" * 256):
        with pytest.raises(ValueError):
            DirRecord(entries={bad: Entry.symlink(b"x", 0, 0)}).encode()


def test_entry_invariants() -> None:
    with pytest.raises(ValueError):
        Entry(Kind.FILE, 0o644, 0, 0, 3, b"hi")  # inline size mismatch
    with pytest.raises(ValueError):
        Entry(Kind.FILE, 0o644, 0, 0, 3, bytes(8), Ref.PACKED)  # an offset but no pack
    assert unpack_ref(packed_ref(7, b"pack id")) == (7, b"pack id")
    with pytest.raises(ValueError):
        Entry(Kind.DIR, 0o755, 0, 0, 0, b"short")
    with pytest.raises(ValueError):
        Entry(Kind.FILE, 0o100644, 0, 0, 0, b"")  # type bits do not belong in mode
    with pytest.raises(ValueError):
        Entry(Kind.FILE, 0o644, 0, 0, 0, b"", xattrs=((b"trusted.x", b""),))
    with pytest.raises(ValueError):
        Entry(Kind.FILE, 0o644, 0, 0, 0, b"", xattrs=((b"user.b", b""), (b"user.a", b"")))
