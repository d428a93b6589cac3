"""The store interface: where encrypted chunks and versioned records live ("the network").

A store holds two kinds of objects:

- **chunks**: immutable byte strings addressed by their BLAKE3-256 digest. The store checks the
  name against the bytes on every put and every get, so a damaged or substituted chunk is
  reported as :class:`ChunkCorrupted` instead of being handed on.
- **records**: small values under an opaque key, with consecutive versions. Every version stays
  stored (directory history is read from it); a new version is written only by compare-and-swap
  on the latest one, which is how concurrent gateways agree on the order of updates.

The interface is synchronous and every call may block on I/O or the network and may raise
:class:`StoreUnavailable` (transient: :func:`retry` it). Callers on the trio thread use
``trio.to_thread.run_sync``. Implementations are safe to call from many threads at once.

Durability: a chunk put is durable once :meth:`Store.flush` returns (a store may batch the
work of many puts into one flush, a group commit); a record write is durable when it returns
and is preceded by a flush, so a record never names a chunk a power cut could take back.

The contract checks (chunk names and hashes, version ranges) live here, in the public methods;
backends implement the ``_``-prefixed primitives and never see invalid input.
"""

from __future__ import annotations

import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import blake3

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK_NAME_SIZE = 32
# Versions are stored as SQLite INTEGERs (signed 64 bits).
MAX_VERSION = 2**63 - 1


def chunk_name(data: bytes) -> bytes:
    """The name a chunk is stored under: the BLAKE3-256 digest of its (encrypted) bytes."""
    return blake3.blake3(data).digest()


class StoreError(Exception):
    """Base of every store error; also raised for permanent I/O failures."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or is busy right now; the same call may succeed later."""


class StoreFull(StoreError):
    """The store has no room left (disk full or quota exceeded); nothing was stored."""


class InvalidStoreURL(StoreError):
    """The URL names no known store scheme or is malformed for its scheme."""


class StoreClosed(StoreError):
    """The store was used after :meth:`Store.close`."""


class ChunkNotFound(StoreError):
    def __init__(self, name: bytes) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"chunk {self.name.hex()} not found"


class ChunkCorrupted(StoreError):
    """The bytes do not hash to the chunk's name (on put: a caller bug; on get: damage)."""

    def __init__(self, name: bytes) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"chunk {self.name.hex()} does not match its name"


class RecordNotFound(StoreError):
    def __init__(self, key: bytes, version: int | None = None) -> None:
        super().__init__(key, version)
        self.key = key
        self.version = version

    def __str__(self) -> str:
        which = "" if self.version is None else f" version {self.version}"
        return f"record {self.key.hex()}{which} not found"


class RecordExists(StoreError):
    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"record {self.key.hex()} already exists"


class VersionConflict(StoreError):
    """A compare-and-swap lost: the record's latest version is ``current``, not the expected one."""

    def __init__(self, current: int) -> None:
        super().__init__(current)
        self.current = current

    def __str__(self) -> str:
        return f"version conflict: the latest version is {self.current}"


@dataclass(frozen=True)
class StoreStats:
    """Totals for ``statfs`` and ``safefs status``: statistics, not accounting."""

    chunk_count: int
    chunk_bytes: int
    record_count: int  # distinct keys, not versions


class Store(ABC):
    """A chunk and record store. See the module docstring for the contract."""

    url: str
    _closed = False

    def put_chunk(self, name: bytes, data: bytes) -> bool:
        """Store ``data`` under ``name`` (durable after the next :meth:`flush`); False if it
        was already there. Racing writers in several processes may all answer True.

        Raises :class:`ChunkCorrupted` if ``name`` is not the BLAKE3 digest of ``data``.
        """
        self._check_open()
        _check_chunk_name(name)
        if chunk_name(data) != name:
            raise ChunkCorrupted(name)
        return self._put_chunk(name, data)

    def get_chunk(self, name: bytes) -> bytes:
        """The chunk's bytes, verified against its name (ChunkNotFound / ChunkCorrupted)."""
        self._check_open()
        _check_chunk_name(name)
        data = self._get_chunk(name)
        if chunk_name(data) != name:
            raise ChunkCorrupted(name)
        return data

    def has_chunk(self, name: bytes) -> bool:
        self._check_open()
        _check_chunk_name(name)
        return self._has_chunk(name)

    def flush(self) -> None:
        """Make every chunk put so far (by this process) durable: the durability barrier to
        pass before a chunk's name is handed out."""
        self._check_open()
        self._flush()

    def create_record(self, key: bytes, version: int, value: bytes) -> None:
        """Store the first version of a record; RecordExists if the key has any version."""
        self._check_open()
        _check_version(version)
        self._flush()
        self._create_record(key, version, value)

    def cas_record(self, key: bytes, expected_version: int, value: bytes) -> int:
        """Store ``value`` as version ``expected_version + 1`` and return that version.

        Only if the latest version is ``expected_version``: VersionConflict(latest) otherwise,
        RecordNotFound if the key has no version at all.
        """
        self._check_open()
        _check_version(expected_version + 1)
        self._flush()
        return self._cas_record(key, expected_version, value)

    def get_record(self, key: bytes, version: int | None = None) -> tuple[int, bytes]:
        """``(version, value)`` of the latest (or the given) version; RecordNotFound."""
        self._check_open()
        if version is not None:
            _check_version(version)
        return self._get_record(key, version)

    def record_versions(self, key: bytes) -> list[int]:
        """Every stored version of the record, ascending ([] if there is none)."""
        self._check_open()
        return self._record_versions(key)

    def stats(self) -> StoreStats:
        """Totals, cheap enough to call on every ``statfs``."""
        self._check_open()
        return self._stats()

    def close(self) -> None:
        """Release resources; later calls raise :class:`StoreClosed`. Idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self.url} is closed")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # Backend primitives: arguments are already validated.

    @abstractmethod
    def _put_chunk(self, name: bytes, data: bytes) -> bool: ...

    @abstractmethod
    def _flush(self) -> None: ...

    @abstractmethod
    def _get_chunk(self, name: bytes) -> bytes: ...

    @abstractmethod
    def _has_chunk(self, name: bytes) -> bool: ...

    @abstractmethod
    def _create_record(self, key: bytes, version: int, value: bytes) -> None: ...

    @abstractmethod
    def _cas_record(self, key: bytes, expected_version: int, value: bytes) -> int: ...

    @abstractmethod
    def _get_record(self, key: bytes, version: int | None) -> tuple[int, bytes]: ...

    @abstractmethod
    def _record_versions(self, key: bytes) -> list[int]: ...

    @abstractmethod
    def _stats(self) -> StoreStats: ...

    @abstractmethod
    def _close(self) -> None: ...


def _check_chunk_name(name: bytes) -> None:
    if len(name) != CHUNK_NAME_SIZE:
        raise ValueError(f"a chunk name is {CHUNK_NAME_SIZE} bytes, not {len(name)}")


def _check_version(version: int) -> None:
    if not 0 <= version <= MAX_VERSION:
        raise ValueError(f"record version {version} out of range 0..{MAX_VERSION}")


def retry(fn: Callable[[], T], *, attempts: int = 5, base_delay: float = 0.1,
          max_delay: float = 5.0) -> T:
    """Call ``fn()``, retrying :class:`StoreUnavailable` up to ``attempts`` calls in all.

    Waits are "full jitter" exponential backoff (uniform in ``[0, base_delay * 2**n]``, capped at
    ``max_delay``) so that many clients retrying the same outage do not come back in lockstep.
    Any other exception, and the last StoreUnavailable, propagates at once.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts):
        try:
            return fn()
        except StoreUnavailable as exc:
            delay = random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
            log.warning("store unavailable (%s); retry %d/%d in %.2fs",
                        exc, attempt, attempts - 1, delay)
            time.sleep(delay)
    return fn()
