"""Handle tables: u64 ids for objects that apps build up over several requests.

As in safe_core's object cache, one counter numbers handles of every kind (never reused while
the gateway runs) and each kind is an LRU with its own capacity: adding past the capacity
silently evicts the least recently used object of that kind, and using an evicted, dropped,
unknown or malformed handle is the kind's "invalid handle" error.

Unlike safe_core's counter, which started at 0, ours starts at a random number below 2**52:
tokens survive a restart, so a client still holding a handle of the previous run must get the
invalid-handle error rather than the object that now has its number. 2**52 keeps every handle
exact in a JavaScript number.

Unlike the launcher, a handle belongs to the session that made it: another token, or a request
without one, gets the invalid-handle error (a reader of SYMMETRIC data must not open to whoever
guesses its number). Handles made without a token carry nothing private (the caller had no
keys), so any caller may use them. ``shared=True`` restores the launcher's behaviour, where
every caller may use every handle; its own test suite relies on it.

Objects kept per kind (other modules rely on these types):

- ``WRITER`` / ``READER``: :mod:`safefs.gateway.immutable` objects;
- ``DATA_ID``: :class:`safefs.model.DataIdentifier`;
- ``CIPHER_OPT``: :class:`safefs.model.CipherOpts`, resolved for the session that made it
  (SYMMETRIC carries that app's key);
- ``SIGN_KEY``: the 32 bytes of an Ed25519 public key;
- ``ENCRYPT_KEY``: the 32 bytes of a Curve25519 (box) public key;
- ``STRUCTURED`` / ``APPENDABLE``: the structured/appendable-data modules' snapshots.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from safefs import errors
from safefs.errors import SafeError
from safefs.gateway import DEFAULT_HANDLE_CAPACITY

log = logging.getLogger(__name__)

_U64_MAX = 2**64 - 1
_FIRST_HANDLE_LIMIT = 2**52


class Kind(enum.Enum):
    """A handle kind and the error code for a bad handle of that kind."""

    STRUCTURED = ("structured data", errors.INVALID_SD_HANDLE)
    DATA_ID = ("data identifier", errors.INVALID_DATA_ID_HANDLE)
    APPENDABLE = ("appendable data", errors.INVALID_AD_HANDLE)
    READER = ("reader", errors.INVALID_SE_HANDLE)
    WRITER = ("writer", errors.INVALID_SE_HANDLE)
    CIPHER_OPT = ("cipher options", errors.INVALID_CIPHER_OPT_HANDLE)
    ENCRYPT_KEY = ("encrypt key", errors.INVALID_ENCRYPT_KEY_HANDLE)
    SIGN_KEY = ("sign key", errors.INVALID_SIGN_KEY_HANDLE)

    def __init__(self, label: str, error_code: int) -> None:
        self.label = label
        self.error_code = error_code

    def invalid(self) -> SafeError:
        return SafeError(self.error_code)

    def parse(self, text: str) -> int:
        """A handle from a URL; anything but a decimal u64 is this kind's invalid handle."""
        if not text.isascii() or not text.isdigit() or int(text) > _U64_MAX:
            raise self.invalid()
        return int(text)


@dataclass
class _Entry:
    owner: str | None
    obj: Any
    release: Callable[[], None] | None


class Handles:
    """Every handle table of one gateway. Used from the trio thread only."""

    def __init__(self, capacity: int | dict[Kind, int] = DEFAULT_HANDLE_CAPACITY,
                 shared: bool = False) -> None:
        self._shared = shared
        if isinstance(capacity, int):
            capacity = {kind: capacity for kind in Kind}
        self._capacity = {kind: capacity.get(kind, DEFAULT_HANDLE_CAPACITY) for kind in Kind}
        self._tables: dict[Kind, OrderedDict[int, _Entry]] = {k: OrderedDict() for k in Kind}
        self._next = secrets.randbelow(_FIRST_HANDLE_LIMIT)

    def add(self, kind: Kind, owner: str | None, obj: Any,
            release: Callable[[], None] | None = None) -> int:
        """A new handle for ``obj``; ``release`` runs when it is dropped or evicted."""
        handle = self._next
        self._next = (self._next + 1) & _U64_MAX
        table = self._tables[kind]
        table[handle] = _Entry(owner, obj, release)
        while len(table) > self._capacity[kind]:
            evicted, entry = table.popitem(last=False)
            log.debug("evicting %s handle %d", kind.name, evicted)
            _release(entry)
        return handle

    def _entry(self, kind: Kind, owner: str | None, handle: int) -> _Entry:
        entry = self._tables[kind].get(handle)
        if entry is None or (entry.owner not in (None, owner) and not self._shared):
            raise kind.invalid()
        self._tables[kind].move_to_end(handle)
        return entry

    def get(self, kind: Kind, owner: str | None, handle: int) -> Any:
        return self._entry(kind, owner, handle).obj

    def replace(self, kind: Kind, owner: str | None, handle: int, obj: Any) -> None:
        """Point an existing handle at a new object (e.g. a record after a successful POST)."""
        self._entry(kind, owner, handle).obj = obj

    def drop(self, kind: Kind, owner: str | None, handle: int) -> Any:
        entry = self._entry(kind, owner, handle)
        del self._tables[kind][handle]
        _release(entry)
        return entry.obj

    def drop_owner(self, owner: str) -> None:
        """Drop every handle of a session (when its app is revoked)."""
        for table in self._tables.values():
            for handle in [h for h, e in table.items() if e.owner == owner]:
                _release(table.pop(handle))

    def clear(self) -> None:
        for table in self._tables.values():
            while table:
                _release(table.popitem()[1])

    def count(self, kind: Kind) -> int:
        return len(self._tables[kind])


def _release(entry: _Entry) -> None:
    if entry.release is not None:
        try:
            entry.release()
        except Exception:
            log.exception("releasing a handle failed")
