"""ImmutableData on the store: write a file or bytes once, read byte ranges back.

An ImmutableData is stored as its content's self-encrypted chunks plus one *root chunk*:

    root chunk = cipher wrapper (model.encrypt, per the writer's cipher options) of
                 0x00 || DataMap.to_bytes()   content of 3 bytes or more (self-encrypted)
                 0x01 || content              content under MIN_ENCRYPTABLE_BYTES, inline; also
                                              a record's small content (not PLAIN), see below
    name       = BLAKE3(root chunk)           the chunk's store name and the DataIdentifier's

As in the launcher, the DataMap is what the cipher options protect: PLAIN publishes it (anyone
with the name can read the content), SYMMETRIC seals it with the writing app's key, ASYMMETRIC
to a box public key. The DataMap of any file is at most three entries (bigger maps are shrunk
into child levels), so the root chunk stays a few hundred bytes.

A record's content version (a directory of the file system, mostly a few KiB) is stored inline
when it is at most ``RECORD_INLINE_MAX`` bytes and its cipher options are not PLAIN: one chunk
file instead of four, and no self-encryption of a content that is read whole and never
deduplicated (a record version is unique). The wrapper still encrypts it.

Everything here is synchronous and runs in the gateway's worker threads.
"""

from __future__ import annotations

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
#: Record content up to this size goes inside its root chunk (not under PLAIN options).
RECORD_INLINE_MAX = 256 * 1024


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


def _store_root(store: Store, envelope: bytes, opts: CipherOpts, flush: bool = True) -> XorName:
    """Store the root chunk; with ``flush`` every chunk of the data is durable when its name is
    returned (without: the caller only puts the name in a record, whose write flushes)."""
    root = model.encrypt(opts, envelope)
    name = blake3.blake3(root).digest()
    store.put_chunk(name, root)
    if flush:
        store.flush()
    return XorName(name)


#: Bytes of an upload's head a spool keeps in memory before it moves them to a temporary file.
SPOOL_HEAD_IN_MEMORY = 256 * 1024


class Spool:
    """An upload on its way into the store, self-encrypted as it arrives.

    A :class:`selfenc.Encryptor` on the gateway's shared workers encrypts every chunk as soon as
    it is complete, so a large upload is mostly stored by the time it ends; only its first three
    chunks (read again at the end) are kept, in memory up to ``SPOOL_HEAD_IN_MEMORY`` and in a
    temporary file beyond (most uploads are small: no file is created and deleted for them),
    and one incomplete chunk is held in memory. :meth:`seal` finishes it and stores the root
    chunk; a spool is sealed once (sealing again answers the same name). Synchronous: the
    gateway calls it from worker threads, one call at a time.
    """

    def __init__(self, directory: Path, store: Store, settings: selfenc.Settings,
                 executor: Executor, max_in_flight: int, *, prefix: str = "spool-",
                 head: bytes = b"", md5: bool = False) -> None:
        """``head`` starts the content (a salt); ``md5`` keeps the MD5 of what follows it."""
        self._directory = directory
        self._prefix = prefix
        self._head = bytearray()  # the kept head while it is small, else ...
        self._fd = -1  # ... the temporary file that holds it
        self.path: Path | None = None
        self._store = store
        self._encryptor = selfenc.Encryptor(self._read, self._write, store.put_chunk, settings,
                                            executor, max_in_flight)
        self._sealed: tuple[CipherOpts, XorName] | None = None
        self._encryptor.append(head)
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None

    @property
    def size(self) -> int:
        return self._encryptor.size

    def write(self, data: bytes) -> None:
        """Append ``data`` (blocks while the workers are behind)."""
        if self._sealed is not None:
            raise SafeError(errors.INVALID_OPERATION, "the writer is already closed")
        if self._md5 is not None:
            self._md5.update(data)
        self._encryptor.append(data)

    def checkpoint(self) -> object:
        """Where :meth:`rollback` goes back to."""
        return self._encryptor.checkpoint()

    def rollback(self, checkpoint: object) -> None:
        """Take back what was written since ``checkpoint`` (an append that failed half-way)."""
        self._encryptor.rollback(checkpoint)
        kept = min(self.size, self._encryptor.head_size)
        if self._fd < 0:
            del self._head[kept:]
        else:
            os.ftruncate(self._fd, kept)

    def md5(self) -> str | None:
        """The MD5 of the content after the head, if asked for."""
        return None if self._md5 is None else self._md5.hexdigest()

    def seal(self, opts: CipherOpts) -> XorName:
        """Encrypt the rest and store the root chunk; the ImmutableData's name."""
        if self._sealed is not None:
            sealed_opts, name = self._sealed
            if sealed_opts != opts:
                raise SafeError(errors.INVALID_OPERATION, "the writer is already closed")
            return name  # a retried close
        if self.size < selfenc.MIN_ENCRYPTABLE_BYTES:
            name = _store_root(self._store, bytes([_INLINE]) + self._read(0, self.size), opts)
        else:
            try:
                datamap = self._encryptor.finish()
            finally:
                self._encryptor.cancel()
            name = _store_root(self._store, bytes([_DATAMAP]) + datamap.to_bytes(), opts)
        self._sealed = opts, name
        return name

    def release(self) -> None:
        """Drop the upload: queued chunks are cancelled and the file removed."""
        self._encryptor.cancel()
        self._head = bytearray()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _read(self, offset: int, size: int) -> bytes:
        if self._fd < 0:
            return bytes(self._head[offset:offset + size])
        return os.pread(self._fd, size, offset)

    def _write(self, offset: int, data: bytes) -> None:
        if self._fd < 0:
            if offset + len(data) <= SPOOL_HEAD_IN_MEMORY:
                if offset > len(self._head):
                    self._head.extend(bytes(offset - len(self._head)))
                self._head[offset:offset + len(data)] = data
                return
            fd, name = tempfile.mkstemp(dir=self._directory, prefix=self._prefix)
            self._fd, self.path = fd, Path(name)
            self._write(0, self._head)
            self._head = bytearray()
        view = memoryview(data)
        while view:
            view = view[os.pwrite(self._fd, view, offset + len(data) - len(view)):]


def store_bytes(store: Store, data: bytes, opts: CipherOpts,
                settings: selfenc.Settings = selfenc.DEFAULT_SETTINGS, *,
                flush: bool = True, inline_max: int = 0) -> XorName:
    """Self-encrypt in-memory ``data`` into the store; the ImmutableData's name (durable unless
    ``flush`` is False: for a name that only a record will carry, see :func:`_store_root`).
    Data up to ``inline_max`` bytes goes inside the root chunk instead, unless ``opts`` are
    PLAIN (which would leave it readable in the store)."""
    inline = len(data) <= inline_max and opts.kind is not model.CipherKind.PLAIN
    if inline or len(data) < selfenc.MIN_ENCRYPTABLE_BYTES:
        return _store_root(store, bytes([_INLINE]) + data, opts, flush)
    datamap = selfenc.encrypt_stream(len(data), io.BytesIO(data).read, store.put_chunk, settings)
    return _store_root(store, bytes([_DATAMAP]) + datamap.to_bytes(), opts, flush)


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
        return b"".join(self.piece(index, start, end) for index in self.pieces(start, end))

    def pieces(self, start: int, end: int) -> range:
        """The pieces :meth:`piece` gives for ``[start, end)``: one per chunk it touches."""
        end = min(end, self.size)
        if start >= end:
            return range(0)
        if self._decryptor is None:
            return range(1)
        return range(self._decryptor.chunk_index(start), self._decryptor.chunk_index(end - 1) + 1)

    def piece(self, index: int, start: int, end: int) -> bytes:
        """The part of ``[start, end)`` in chunk ``index`` (decrypted through the cache)."""
        if self._inline is not None:
            return self._inline[start:end]
        low, high = self._decryptor.chunk_span(index)
        whole = start <= low and end >= high
        # A read that takes a whole chunk is done with it: kept, it would only push out chunks
        # that small readers are still stepping through, and hold memory (a 1 GiB download
        # left four chunks behind).
        data = self._chunk(index, keep=not whole)
        return data if whole else data[max(start - low, 0):min(end, high) - low]

    def _chunk(self, index: int, keep: bool) -> bytes:
        name = self._decryptor.content_map.chunks[index].dst_hash
        data = self._cache.get(name)
        if data is None:
            try:
                data = self._decryptor.chunk(index)
            except selfenc.SelfEncryptionError as exc:
                log.error("chunk %d of an ImmutableData is unreadable: %s", index, exc)
                raise SafeError(errors.ENCODE_DECODE, str(exc)) from None
            if keep:
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
