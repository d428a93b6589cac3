"""Three-way merge of one directory: what to do locally when its record moved on remotely.

Inputs are the base (the record this mount last read or published), the remote record (the
newer version another mount published) and the local state of each name. A name only the
remote changed takes the remote entry; a name only this mount changed keeps the local state;
a name both changed keeps the local state and, when the remote side changed the *content*
(different data, another object), adds the remote entry under a conflict name. Deletions lose
against changes on the other side. Nothing is ever dropped silently.

Pure functions: the caller applies the actions to the metadata and republishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from safefs.fs.dirrecord import NAME_MAX, Entry


@dataclass(frozen=True, slots=True)
class Local:
    """A name as this mount has it."""

    entry: Entry | None  # what a record would show for it now; None: nothing showable yet
    changed: bool  # changed since the base (dirty content, unpublished, changes below it)


@dataclass(frozen=True, slots=True)
class Take:
    """Make the local name show the remote entry (None: remove the local name)."""

    name: bytes
    entry: Entry | None


@dataclass(frozen=True, slots=True)
class Copy:
    """Keep the local name and add the remote entry next to it as a conflict copy."""

    name: bytes
    entry: Entry


def merge(base: Mapping[bytes, Entry], remote: Mapping[bytes, Entry],
          local: Mapping[bytes, Local]) -> list[Take | Copy]:
    actions: list[Take | Copy] = []
    for name in sorted(set(base) | set(remote) | set(local)):
        old, new = base.get(name), remote.get(name)
        if new == old:
            continue  # the remote side did not touch it: the local state stands
        mine = local.get(name)
        if mine is None:
            if old is None or new is not None:
                actions.append(Take(name, new))  # new remotely, or changed there, gone here
            continue
        if not mine.changed and mine.entry == old:
            actions.append(Take(name, new))  # only the remote side changed it
        elif new is None or mine.entry == new or not _content_differs(old, new):
            continue  # removed remotely but changed here, same change, or remote attributes
        elif not mine.changed and mine.entry is not None and not _content_differs(old,
                                                                                  mine.entry):
            actions.append(Take(name, new))  # here attributes only, there new content
        else:
            actions.append(Copy(name, new))
    return actions


def _content_differs(old: Entry | None, new: Entry | None) -> bool:
    if old is None or new is None:
        return old is not new
    return (old.kind, old.ref, old.data) != (new.kind, new.ref, new.data)


def conflict_name(name: bytes, taken: Callable[[bytes], bool], now: float | None = None) -> bytes:
    """``report (conflict 2024-05-01 120000).txt``: a free name a person understands."""
    stamp = time.strftime("%Y-%m-%d %H%M%S", time.localtime(now)).encode()
    stem, dot, ext = name.rpartition(b".")
    if not stem:  # no extension, or a dot file such as ".bashrc"
        stem, dot, ext = name, b"", b""
    suffix = dot + ext
    for number in range(1, 1000):
        tag = b" (conflict " + stamp + (b" %d" % number if number > 1 else b"") + b")"
        room = NAME_MAX - len(tag) - len(suffix)
        candidate = stem[:max(room, 1)] + tag + suffix
        if not taken(candidate):
            return candidate
    raise RuntimeError("no free conflict name")
