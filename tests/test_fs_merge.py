"""Three-way merge rules of a directory and conflict names."""

from __future__ import annotations

from safefs.fs.dirrecord import Entry, Kind, Ref
from safefs.fs.merge import Copy, Local, Take, conflict_name, merge


def file(data: bytes, mode: int = 0o644, mtime: int = 1) -> Entry:
    return Entry(Kind.FILE, mode, mtime, mtime, 100, data, Ref.DATA_ID)


def directory(child: bytes, mtime: int = 1) -> Entry:
    return Entry(Kind.DIR, 0o755, mtime, mtime, 0, child.ljust(32, b"\0"))


A, B, C = file(b"id-a"), file(b"id-b"), file(b"id-c")


def clean(entry: Entry) -> Local:
    return Local(entry, changed=False)


def test_only_remote_changed_takes_remote() -> None:
    base = {b"same": A, b"edited": A, b"removed": A}
    remote = {b"same": A, b"edited": B, b"added": C}
    local = {name: clean(entry) for name, entry in base.items()}
    assert merge(base, remote, local) == [Take(b"added", C), Take(b"edited", B),
                                          Take(b"removed", None)]


def test_only_local_changed_keeps_local() -> None:
    base = {b"x": A}
    local = {b"x": Local(A, changed=True), b"new": Local(None, changed=True)}
    assert merge(base, base, local) == []


def test_both_changed_content_keeps_both() -> None:
    base = {b"x": A}
    remote = {b"x": B}
    assert merge(base, remote, {b"x": Local(A, changed=True)}) == [Copy(b"x", B)]
    # both created the same name
    assert merge({}, {b"n": B}, {b"n": Local(None, changed=True)}) == [Copy(b"n", B)]


def test_deletions_lose_against_changes() -> None:
    base = {b"x": A}
    # removed remotely, changed here: keep ours
    assert merge(base, {}, {b"x": Local(A, changed=True)}) == []
    # removed here, changed remotely: bring theirs back
    assert merge(base, {b"x": B}, {}) == [Take(b"x", B)]
    # removed on both sides
    assert merge(base, {}, {}) == []


def test_attribute_only_changes_never_conflict() -> None:
    base = {b"x": A}
    chmod_remote = {b"x": file(b"id-a", mode=0o600)}
    # ours changed content, theirs only the mode: keep ours (no copy)
    assert merge(base, chmod_remote, {b"x": Local(A, changed=True)}) == []
    # ours changed only the mode, theirs the content: take theirs
    chmod_local = {b"x": clean(file(b"id-a", mode=0o600))}
    assert merge(base, {b"x": B}, chmod_local) == [Take(b"x", B)]
    # same change on both sides
    assert merge(base, {b"x": B}, {b"x": clean(B)}) == []


def test_directories() -> None:
    base = {b"d": directory(b"child")}
    touched = {b"d": directory(b"child", mtime=9)}
    # a directory with changes below it keeps its entry against a remote removal
    assert merge(base, {}, {b"d": Local(base[b"d"], changed=True)}) == []
    # attribute changes of the same child record: no conflict either way
    assert merge(base, touched, {b"d": Local(base[b"d"], changed=True)}) == []
    # replaced remotely by another directory while changed here: both kept
    other = {b"d": directory(b"other")}
    assert merge(base, other, {b"d": Local(base[b"d"], changed=True)}) == [
        Copy(b"d", other[b"d"])]


def test_conflict_names() -> None:
    first = conflict_name(b"report.txt", lambda name: False, now=0)
    assert first.startswith(b"report (conflict ") and first.endswith(b").txt")
    taken = {first}
    second = conflict_name(b"report.txt", taken.__contains__, now=0)
    assert second not in taken and second.endswith(b" 2).txt")
    assert conflict_name(b".bashrc", taken.__contains__, now=0).startswith(b".bashrc (conflict")
    long = conflict_name(b"x" * 250 + b".tar.gz", taken.__contains__, now=0)
    assert len(long) <= 255 and long.endswith(b".gz")
