"""``memory://`` store: everything in process memory, for tests and throw-away gateways.

``memory://`` opens a fresh, private store. ``memory://NAME`` opens a handle on the store of
that name, shared by every handle of the same name in the process, so that two gateways (or a
gateway and a test) started in one process see the same data. Closing a handle never discards
a named store's data; closing the only handle of a private store does.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from .base import (
    ChunkNotFound,
    InvalidStoreURL,
    RecordExists,
    RecordNotFound,
    Store,
    StoreStats,
    VersionConflict,
)

log = logging.getLogger(__name__)

SCHEME = "memory"


@dataclass
class _Contents:
    """The data behind one or more handles, guarded by its own lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    chunks: dict[bytes, bytes] = field(default_factory=dict)
    chunk_bytes: int = 0
    # key -> (first version, values from the first version on); versions are consecutive.
    records: dict[bytes, tuple[int, list[bytes]]] = field(default_factory=dict)


_named: dict[str, _Contents] = {}
_named_lock = threading.Lock()


class MemoryStore(Store):
    def __init__(self, name: str = "") -> None:
        """A private store, or a handle on the process-wide store called ``name``."""
        self.url = f"{SCHEME}://{name}"
        if name:
            with _named_lock:
                self._contents = _named.setdefault(name, _Contents())
        else:
            self._contents = _Contents()

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        prefix = f"{SCHEME}://"
        if not url.startswith(prefix):
            raise InvalidStoreURL(f"not a {prefix} URL: {url!r}")
        name = url[len(prefix):]
        if "/" in name:
            raise InvalidStoreURL(f"a memory store name has no '/': {url!r}")
        return cls(name)

    def _put_chunk(self, name: bytes, data: bytes) -> bool:
        contents = self._contents
        with contents.lock:
            if name in contents.chunks:
                return False
            contents.chunks[name] = bytes(data)
            contents.chunk_bytes += len(data)
            return True

    def _flush(self) -> None:
        pass  # nothing here survives the process anyway

    def _get_chunk(self, name: bytes) -> bytes:
        try:
            return self._contents.chunks[name]
        except KeyError:
            raise ChunkNotFound(name) from None

    def _has_chunk(self, name: bytes) -> bool:
        return name in self._contents.chunks

    def _create_record(self, key: bytes, version: int, value: bytes) -> None:
        key = bytes(key)
        with self._contents.lock:
            if key in self._contents.records:
                raise RecordExists(key)
            self._contents.records[key] = (version, [bytes(value)])

    def _cas_record(self, key: bytes, expected_version: int, value: bytes) -> int:
        with self._contents.lock:
            first, values = self._versions_of(key)
            current = first + len(values) - 1
            if current != expected_version:
                raise VersionConflict(current)
            values.append(bytes(value))
            return current + 1

    def _get_record(self, key: bytes, version: int | None) -> tuple[int, bytes]:
        with self._contents.lock:
            first, values = self._versions_of(key)
            if version is None:
                return first + len(values) - 1, values[-1]
            if not first <= version < first + len(values):
                raise RecordNotFound(key, version)
            return version, values[version - first]

    def _record_versions(self, key: bytes) -> list[int]:
        with self._contents.lock:
            first, values = self._contents.records.get(bytes(key), (0, []))
            return list(range(first, first + len(values)))

    def _versions_of(self, key: bytes) -> tuple[int, list[bytes]]:
        try:
            return self._contents.records[bytes(key)]
        except KeyError:
            raise RecordNotFound(key) from None

    def _stats(self) -> StoreStats:
        contents = self._contents
        with contents.lock:
            return StoreStats(chunk_count=len(contents.chunks),
                              chunk_bytes=contents.chunk_bytes,
                              record_count=len(contents.records))

    def _close(self) -> None:
        # A named store's data outlives its handles; a private one goes with its only handle.
        self._contents = _Contents()
