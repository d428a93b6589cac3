"""The store: where encrypted chunks and versioned records live ("the network").

``open_store(url)`` picks the backend from the URL's scheme:

- ``file:///abs/dir``: chunks as files and records in SQLite under a local directory, created if
  missing (:mod:`safefs.store.local`);
- ``memory://`` (a fresh private store) or ``memory://NAME`` (one store per name, shared within
  the process) (:mod:`safefs.store.memory`).

The interface and its errors are in :mod:`safefs.store.base`.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import (
    CHUNK_NAME_SIZE,
    ChunkCorrupted,
    ChunkNotFound,
    InvalidStoreURL,
    RecordExists,
    RecordNotFound,
    Store,
    StoreClosed,
    StoreError,
    StoreFull,
    StoreStats,
    StoreUnavailable,
    VersionConflict,
    chunk_name,
    retry,
)
from .local import LocalStore
from .memory import MemoryStore

__all__ = [
    "CHUNK_NAME_SIZE", "ChunkCorrupted", "ChunkNotFound", "InvalidStoreURL", "LocalStore",
    "MemoryStore", "RecordExists", "RecordNotFound", "SCHEMES", "Store", "StoreClosed",
    "StoreError", "StoreFull", "StoreStats", "StoreUnavailable", "VersionConflict", "chunk_name",
    "open_store", "retry",
]

# URL scheme -> the function that opens a store from the whole URL.
SCHEMES: dict[str, Callable[[str], Store]] = {
    "file": LocalStore.from_url,
    "memory": MemoryStore.from_url,
}


def open_store(url: str) -> Store:
    """Open the store at ``url``; InvalidStoreURL if no backend knows its scheme."""
    scheme, separator, _ = url.partition("://")
    opener = SCHEMES.get(scheme) if separator else None
    if opener is None:
        raise InvalidStoreURL(f"unknown store URL {url!r}; expected file:///DIR or memory://")
    return opener(url)
