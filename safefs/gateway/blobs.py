"""ImmutableData on the store: write a file or bytes once, read byte ranges back.

An ImmutableData is stored as its content's self-encrypted chunks plus one *root chunk*:

    root chunk = cipher wrapper (model.encrypt, per the writer's cipher options) of
                 0x00 || DataMap.to_bytes()   content of 3 bytes or more (self-encrypted)
                 0x01 || content              content under MIN_ENCRYPTABLE_BYTES, inline
    name       = BLAKE3(root chunk)           the chunk's store name and the DataIdentifier's

As in the launcher, the DataMap is what the cipher options protect: PLAIN publishes it (anyone
with the name can read the content), SYMMETRIC seals it with the writing app's key, ASYMMETRIC
to a box public key. The DataMap of any file is at most three entries (bigger maps are shrunk
into child levels), so the root chunk stays a few hundred bytes.

Everything here is synchronous and runs in the gateway's worker threads.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from pathlib import Path

import blake3
from nacl.public import PrivateKey

from safefs import errors, model, selfenc
from safefs.errors import SafeError
from safefs.model import CipherOpts, XorName
from safefs.store import ChunkCorrupted, ChunkNotFound, Store

from .core import ChunkCache

log = logging.getLogger(__name__)

_DATAMAP = 0x00
_INLINE = 0x01


def _store_root(store: Store, envelope: bytes, opts: CipherOpts) -> XorName:
    root = model.encrypt(opts, envelope)
    name = blake3.blake3(root).digest()
    store.put_chunk(name, root)
    return XorName(name)


def store_file(store: Store, path: Path, opts: CipherOpts,
               settings: selfenc.Settings = selfenc.DEFAULT_SETTINGS, threads: int = 2) -> XorName:
    """Self-encrypt the file at ``path`` into the store; the ImmutableData's name."""
    if os.stat(path).st_size < selfenc.MIN_ENCRYPTABLE_BYTES:
        return _store_root(store, bytes([_INLINE]) + path.read_bytes(), opts)
    datamap = selfenc.encrypt_file(path, store.put_chunk, settings, threads)
    return _store_root(store, bytes([_DATAMAP]) + datamap.to_bytes(), opts)


def store_bytes(store: Store, data: bytes, opts: CipherOpts,
                settings: selfenc.Settings = selfenc.DEFAULT_SETTINGS) -> XorName:
    """Self-encrypt in-memory ``data`` into the store; the ImmutableData's name."""
    if len(data) < selfenc.MIN_ENCRYPTABLE_BYTES:
        return _store_root(store, bytes([_INLINE]) + data, opts)
    datamap = selfenc.encrypt_stream(len(data), io.BytesIO(data).read, store.put_chunk, settings)
    return _store_root(store, bytes([_DATAMAP]) + datamap.to_bytes(), opts)


class Blob:
    """The plaintext of one ImmutableData, readable from several threads at once.

    Decrypted chunks go through the gateway's shared :class:`ChunkCache`, so readers moving
    through a chunk in small steps decrypt it once.
    """

    def __init__(self, store: Store, cache: ChunkCache, name: bytes, sym_key: bytes | None = None,
                 box_keypair: PrivateKey | None = None) -> None:
        root = _chunk_getter(store)(name)
        envelope = model.decrypt(root, sym_key, box_keypair)
        if not envelope or envelope[0] not in (_DATAMAP, _INLINE):
            raise SafeError(errors.ENCODE_DECODE, f"ImmutableData {name.hex()} is malformed")
        self._cache = cache
        self._inline: bytes | None = None
        self._decryptor: selfenc.Decryptor | None = None
        if envelope[0] == _INLINE:
            self._inline = envelope[1:]
            self.size = len(self._inline)
        else:
            try:
                datamap = selfenc.DataMap.from_bytes(envelope[1:])
                self._decryptor = selfenc.Decryptor(datamap, _chunk_getter(store))
            except selfenc.SelfEncryptionError as exc:
                raise SafeError(errors.ENCODE_DECODE, str(exc)) from None
            self.size = self._decryptor.size

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``, clamped to the size."""
        end = min(end, self.size)
        if start >= end:
            return b""
        if self._inline is not None:
            return self._inline[start:end]
        decryptor = self._decryptor
        spans = decryptor.chunk_spans()
        pieces = []
        for index in range(decryptor.chunk_index(start), decryptor.chunk_index(end - 1) + 1):
            low, high = spans[index]
            data = self._chunk(index)
            pieces.append(data[max(start - low, 0):min(end, high) - low])
        return b"".join(pieces)

    def _chunk(self, index: int) -> bytes:
        name = self._decryptor.content_map.chunks[index].dst_hash
        data = self._cache.get(name)
        if data is None:
            try:
                data = self._decryptor.chunk(index)
            except selfenc.SelfEncryptionError as exc:
                log.error("chunk %d of an ImmutableData is unreadable: %s", index, exc)
                raise SafeError(errors.ENCODE_DECODE, str(exc)) from None
            self._cache.put(name, data)
        return data


def _chunk_getter(store: Store) -> Callable[[bytes], bytes]:
    def get_chunk(name: bytes) -> bytes:
        try:
            return store.get_chunk(name)
        except ChunkNotFound:
            raise SafeError(errors.NO_SUCH_DATA, f"chunk {name.hex()} is missing") from None
        except ChunkCorrupted:
            log.error("chunk %s in the store is damaged", name.hex())
            raise SafeError(errors.ENCODE_DECODE, f"chunk {name.hex()} is damaged") from None

    return get_chunk
