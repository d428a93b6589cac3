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

import functools
import hashlib
import io
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

import blake3
from nacl.public import PrivateKey

from safefs import errors, model, selfenc
from safefs.errors import SafeError
from safefs.model import CipherOpts, XorName
from safefs.store import ChunkCorrupted, ChunkNotFound, Store

log = logging.getLogger(__name__)

_DATAMAP = 0x00
_INLINE = 0x01


class ChunkCache:
    """A bounded LRU of decrypted chunks keyed by their encrypted name, safe across threads.

    Readers of one file share it, so sequential small reads decrypt each chunk once.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._size = 0
        self._chunks: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: bytes) -> bytes | None:
        with self._lock:
            data = self._chunks.get(name)
            if data is not None:
                self._chunks.move_to_end(name)
            return data

    def put(self, name: bytes, data: bytes) -> None:
        if len(data) > self._capacity:
            return
        with self._lock:
            old = self._chunks.pop(name, None)
            if old is not None:
                self._size -= len(old)
            self._chunks[name] = data
            self._size += len(data)
            while self._size > self._capacity:
                _, evicted = self._chunks.popitem(last=False)
                self._size -= len(evicted)

    @property
    def size(self) -> int:
        return self._size


def _store_root(store: Store, envelope: bytes, opts: CipherOpts) -> XorName:
    root = model.encrypt(opts, envelope)
    name = blake3.blake3(root).digest()
    store.put_chunk(name, root)
    return XorName(name)


class Spool:
    """An upload on its way into the store: a temporary file, self-encrypted as it grows.

    Appended bytes go to the file and, once they are final (:meth:`write` by default), to a
    :class:`selfenc.FileEncryptor` running on the gateway's shared workers, so a large upload
    is mostly encrypted by the time it ends. :meth:`seal` finishes it and stores the root chunk.
    Synchronous: the gateway calls it from worker threads, one call at a time.
    """

    def __init__(self, directory: Path, store: Store, settings: selfenc.Settings,
                 executor: Executor, max_in_flight: int, *, prefix: str = "spool-",
                 head: bytes = b"", md5: bool = False) -> None:
        """``head`` starts the content (a salt); ``md5`` keeps the MD5 of what follows it."""
        fd, name = tempfile.mkstemp(dir=directory, prefix=prefix)
        self.path = Path(name)
        self.size = 0
        self._fd = fd
        self._store = store
        self._new_encryptor = functools.partial(selfenc.FileEncryptor, fd, store.put_chunk,
                                                settings, executor, max_in_flight)
        self._encryptor = self._new_encryptor()
        self._md5 = None
        self.write(head, final=False)
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None

    def write(self, data: bytes, final: bool = True) -> None:
        """Append ``data``; unless ``final`` is false, encrypt what is complete of it."""
        view = memoryview(data)
        while view:
            view = view[os.pwrite(self._fd, view, self.size + len(data) - len(view)):]
        self.size += len(data)
        if self._md5 is not None:
            self._md5.update(data)
        if final:
            self._encryptor.advance(self.size)

    def truncate(self, size: int) -> None:
        """Cut the upload back to ``size`` bytes (an append that failed half-way)."""
        self._encryptor.rewind(size)
        os.ftruncate(self._fd, size)
        self.size = size
        self._md5 = None  # no longer the digest of the content

    def md5(self) -> str | None:
        """The MD5 of the content after the head, if asked for."""
        return None if self._md5 is None else self._md5.hexdigest()

    def seal(self, opts: CipherOpts) -> XorName:
        """Encrypt the rest, store the root chunk; the ImmutableData's name.

        The spool stays usable: appending more and sealing again stores the longer content.
        """
        self._encryptor.advance(self.size)
        encryptor, self._encryptor = self._encryptor, self._new_encryptor()
        if self.size < selfenc.MIN_ENCRYPTABLE_BYTES:
            return _store_root(store=self._store, opts=opts,
                               envelope=bytes([_INLINE]) + os.pread(self._fd, self.size, 0))
        try:
            datamap = encryptor.finish(self.size)
        finally:
            encryptor.cancel()
        return _store_root(self._store, bytes([_DATAMAP]) + datamap.to_bytes(), opts)

    def release(self) -> None:
        """Drop the upload: queued chunks are cancelled and the file removed."""
        self._encryptor.cancel()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


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
