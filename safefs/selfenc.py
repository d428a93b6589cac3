"""Self-encryption in the self_encryption 0.35 chunk format.

Data is split into at least three chunks; each chunk is compressed with brotli, encrypted with
ChaCha20-Poly1305 under a key derived (BLAKE3 KDF) from its own and its two neighbours' plaintext
hashes, and XORed with a derived pad. A chunk is named by the BLAKE3 hash of its encrypted bytes.
The DataMap lists every chunk's name and plaintext hash; a map of more than three chunks is itself
self-encrypted ("shrunk") at child level 1, 2, ... until three chunks remain. The byte layout is
specified in docs/FORMAT.md section 2.

Pure and synchronous: no store, no event loop. The CPU work (brotli, ChaCha20-Poly1305, BLAKE3,
the numpy XOR) releases the GIL, so chunks are processed by a small thread pool on every core.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import re
import struct
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import blake3
import brotli
import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

log = logging.getLogger(__name__)

# --- Format constants (self_encryption 0.35.0) ---

MIN_CHUNK_SIZE = 1
MIN_ENCRYPTABLE_BYTES = 3 * MIN_CHUNK_SIZE
REFERENCE_MAX_CHUNK_SIZE = 4_190_208  # 4 MiB - 4 KiB: an encrypted chunk stays under 4 MiB
REFERENCE_COMPRESSION_QUALITY = 6
HASH_SIZE = 32
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
PAD_SIZE = 3 * HASH_SIZE - KEY_SIZE - NONCE_SIZE  # 52
KDF_CONTEXT = "self_encryption/chunk/v2"
# The reference compressor reads its input 4096 bytes at a time; C brotli produces the same
# stream only when fed the same way (its hasher choice depends on the bytes pending at the first
# block), so chunk names stay reproducible across installations.
BROTLI_FEED_SIZE = 4096
# After brotli's first block the way the input is cut no longer changes its output (see
# ``compress``); the rest goes in pieces this size, so that no call returns a whole chunk's
# worth of output on top of the buffer it is appended to.
BROTLI_LATER_FEED_SIZE = 1 << 20
# Stored chunks (settings with ``store_incompressible``, FORMAT section 2.4): a chunk of at least
# STORE_TEST_MIN bytes whose STORE_SAMPLES samples of STORE_SAMPLE_SIZE bytes each do not shrink
# under brotli quality 0 goes into the stream uncompressed, without running the encoder on it.
STORE_TEST_MIN = 64 * 1024
STORE_SAMPLES = 4
STORE_SAMPLE_SIZE = 16 * 1024
# The longest uncompressed meta-block (MLEN is at most six nibbles).
BROTLI_METABLOCK_MAX = 1 << 24
# RFC 7932 section 9.1: WBITS 22 is a 1 bit followed by 22 - 17 in three bits.
_BROTLI_WBITS_22 = 0b1 | (22 - 17) << 1
DATAMAP_VERSION = 1
MAX_CHILD_DEPTH = 100
# A DataMap entry takes 80 bytes, so below ~113 bytes per chunk the map of a map is no smaller
# than the map and shrinking never ends; 1 KiB leaves a margin.
MIN_MAX_CHUNK_SIZE = 1024

_ENTRY = struct.Struct("<Q32s32sQ")
_HEADER = struct.Struct("<BQ")
_U64 = struct.Struct("<Q")
_HEX_HASH = re.compile(r"[0-9a-fA-F]{64}")
# The pad repeats every 52 bytes; 104 bytes = 13 uint64 words lets numpy XOR whole words.
_PAD_PERIOD = 2 * PAD_SIZE
_PAD_WORDS = _PAD_PERIOD // 8


# --- Errors ---


class SelfEncryptionError(Exception):
    """Base of every error raised by this module."""


class TooSmall(SelfEncryptionError):
    """The input is shorter than MIN_ENCRYPTABLE_BYTES: the caller stores it inline instead."""

    def __init__(self, size: int) -> None:
        super().__init__(
            f"{size} bytes is too small to self-encrypt (at least {MIN_ENCRYPTABLE_BYTES} needed)"
        )
        self.size = size


class InvalidDataMap(SelfEncryptionError):
    """A DataMap (bincode or JSON) is malformed or inconsistent."""


class InputChanged(SelfEncryptionError):
    """The input ended early or changed while it was being encrypted."""


class ChunkError(SelfEncryptionError):
    """A chunk failed a check; the message names the chunk by index and name."""

    def __init__(self, index: int, name: str, reason: str) -> None:
        super().__init__(f"chunk {index} ({name}): {reason}")
        self.index = index
        self.name = name
        self.reason = reason


class ChunkCorrupted(ChunkError):
    """The chunk's bytes do not match its name, or its plaintext does not match the DataMap."""


class DecryptionError(ChunkError):
    """The chunk does not decrypt with this DataMap: wrong map (key) or tampered ciphertext."""


# --- Settings ---


@dataclass(frozen=True)
class Settings:
    """Encryption parameters. Decryption needs none: it follows the DataMap's src_size."""

    compression_quality: int
    max_chunk_size: int
    #: Write chunks that do not compress as stored brotli streams (FORMAT section 2.4).
    store_incompressible: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.compression_quality <= 11:
            raise ValueError(f"compression_quality must be 0..11, not {self.compression_quality}")
        if self.max_chunk_size < MIN_MAX_CHUNK_SIZE:
            raise ValueError(
                f"max_chunk_size must be at least {MIN_MAX_CHUNK_SIZE}, not {self.max_chunk_size}"
            )


#: Inputs up to this size are encrypted in the caller's thread: starting a pool of threads
#: cost more than encrypting a directory record.
SERIAL_INPUT_MAX = 1024 * 1024

# Chunk names equal the reference implementation's for data where C and Rust brotli agree.
REFERENCE_SETTINGS = Settings(REFERENCE_COMPRESSION_QUALITY, REFERENCE_MAX_CHUNK_SIZE)
# Quality 3: on the 2-core target, quality 6 encrypts text at ~100 MiB/s, quality 3 at ~2.5x that
# for ~14% more stored bytes (measurements in docs/FORMAT.md section 2.8).
# Incompressible chunks stored: brotli spends 8-10 ms per 4 MiB on data it cannot shrink (photos,
# video, archives), half of what the gateway spends on such an upload.
DEFAULT_SETTINGS = Settings(compression_quality=3, max_chunk_size=REFERENCE_MAX_CHUNK_SIZE,
                            store_incompressible=True)


# --- DataMap ---


@dataclass(frozen=True)
class ChunkInfo:
    """One chunk: its position, name (hash of the stored bytes), plaintext hash and size."""

    index: int
    dst_hash: bytes
    src_hash: bytes
    src_size: int

    def __post_init__(self) -> None:
        for field in ("index", "src_size"):
            value = getattr(self, field)
            if type(value) is not int or value < 0:
                raise InvalidDataMap(f"chunk {field} must be a non-negative integer: {value!r}")
        if self.src_size < MIN_CHUNK_SIZE:
            raise InvalidDataMap(f"chunk {self.index} has src_size {self.src_size}")
        for field in ("dst_hash", "src_hash"):
            value = getattr(self, field)
            if type(value) is not bytes or len(value) != HASH_SIZE:
                raise InvalidDataMap(f"chunk {self.index} {field} must be {HASH_SIZE} bytes")


@dataclass(frozen=True)
class DataMap:
    """The chunks of one piece of data, in index order.

    ``child`` is None for a map of the data itself. ``child = L`` means the chunks hold the
    serialized DataMap one level down (``child`` L-1, or None when L is 1), encrypted at KDF child
    level L.
    """

    chunks: tuple[ChunkInfo, ...]
    child: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunks", tuple(self.chunks))
        if len(self.chunks) < 3:
            raise InvalidDataMap(f"a DataMap lists at least 3 chunks, not {len(self.chunks)}")
        for position, info in enumerate(self.chunks):
            if not isinstance(info, ChunkInfo) or info.index != position:
                raise InvalidDataMap(f"DataMap entry {position} is not chunk {position}")
        if self.child is not None and (type(self.child) is not int or self.child < 1):
            raise InvalidDataMap(f"DataMap child level must be a positive integer: {self.child!r}")

    @property
    def level(self) -> int:
        """The KDF child level the listed chunks were encrypted with."""
        return self.child or 0

    def to_bytes(self) -> bytes:
        """bincode 1.x of the reference's ``DataMap`` behind a version byte (1)."""
        parts = [_HEADER.pack(DATAMAP_VERSION, len(self.chunks))]
        parts += [_ENTRY.pack(c.index, c.dst_hash, c.src_hash, c.src_size) for c in self.chunks]
        parts.append(b"\x00" if self.child is None else _HEADER.pack(1, self.child))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> DataMap:
        """Parse ``to_bytes`` output; only version 1, no trailing bytes."""
        data = bytes(data)
        if len(data) < _HEADER.size + 1:
            raise InvalidDataMap(f"DataMap of {len(data)} bytes is truncated")
        version, count = _HEADER.unpack_from(data)
        if version != DATAMAP_VERSION:
            raise InvalidDataMap(f"unsupported DataMap version {version} (only 1 is known)")
        tail = _HEADER.size + count * _ENTRY.size
        if tail >= len(data):
            raise InvalidDataMap(f"DataMap of {len(data)} bytes cannot hold {count} chunks")
        chunks = [
            ChunkInfo(*_ENTRY.unpack_from(data, _HEADER.size + i * _ENTRY.size))
            for i in range(count)
        ]
        tag, rest = data[tail], data[tail + 1 :]
        if tag == 0 and not rest:
            child = None
        elif tag == 1 and len(rest) == _U64.size:
            (child,) = _U64.unpack(rest)
        else:
            raise InvalidDataMap("DataMap child field is malformed or followed by extra bytes")
        return cls(tuple(chunks), child)

    def to_json(self) -> str:
        """The reference's serde_json form: compact, hashes as lowercase hex."""
        return json.dumps(
            {
                "chunk_identifiers": [
                    {
                        "index": c.index,
                        "dst_hash": c.dst_hash.hex(),
                        "src_hash": c.src_hash.hex(),
                        "src_size": c.src_size,
                    }
                    for c in self.chunks
                ],
                "child": self.child,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> DataMap:
        """Parse ``to_json`` output; unknown or missing keys are errors."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise InvalidDataMap(f"DataMap JSON does not parse: {exc}") from None
        _expect_keys(doc, {"chunk_identifiers", "child"}, "DataMap")
        entries = doc["chunk_identifiers"]
        if not isinstance(entries, list):
            raise InvalidDataMap("DataMap chunk_identifiers must be a list")
        chunks = []
        for entry in entries:
            _expect_keys(entry, {"index", "dst_hash", "src_hash", "src_size"}, "chunk identifier")
            chunks.append(
                ChunkInfo(
                    entry["index"],
                    _hash_from_hex(entry["dst_hash"]),
                    _hash_from_hex(entry["src_hash"]),
                    entry["src_size"],
                )
            )
        return cls(tuple(chunks), doc["child"])


def _expect_keys(obj: Any, keys: set[str], what: str) -> None:
    if not isinstance(obj, dict) or set(obj) != keys:
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise InvalidDataMap(f"{what} must have exactly the keys {sorted(keys)}, not {found}")


def _hash_from_hex(value: Any) -> bytes:
    if not isinstance(value, str) or not _HEX_HASH.fullmatch(value):
        raise InvalidDataMap(f"a hash must be 64 hex digits: {value!r}")
    return bytes.fromhex(value)


# --- Chunking, key derivation, chunk transform ---


def chunk_sizes(size: int, max_chunk_size: int) -> list[int]:
    """Plaintext chunk sizes: three near-equal chunks below 3 x max, else max-sized chunks."""
    if size < MIN_ENCRYPTABLE_BYTES:
        raise TooSmall(size)
    if size < 3 * max_chunk_size:
        third = size // 3
        return [third, third, size - 2 * third]
    full, rest = divmod(size, max_chunk_size)
    return [max_chunk_size] * full + ([rest] if rest else [])


def neighbours(index: int, count: int) -> tuple[int, int]:
    """The two chunks whose plaintext hashes key chunk ``index`` (wrapping around for 0 and 1)."""
    if count < 3 or not 0 <= index < count:
        raise ValueError(f"no chunk {index} among {count}")
    if index == 0:
        return count - 1, count - 2
    if index == 1:
        return 0, count - 1
    return index - 1, index - 2


def derive_pad_key_nonce(
    src_hash: bytes, n1_hash: bytes, n2_hash: bytes, index: int, child_level: int
) -> tuple[bytes, bytes, bytes]:
    """One BLAKE3 derive_key XOF call: 52-byte pad, 32-byte key, 12-byte nonce."""
    material = src_hash + n1_hash + n2_hash + struct.pack("<QQ", index, child_level)
    out = blake3.blake3(material, derive_key_context=KDF_CONTEXT).digest(
        length=PAD_SIZE + KEY_SIZE + NONCE_SIZE
    )
    return out[:PAD_SIZE], out[PAD_SIZE : PAD_SIZE + KEY_SIZE], out[PAD_SIZE + KEY_SIZE :]


def _chunk_secrets(
    src_hashes: list[bytes], count: int, index: int, level: int
) -> tuple[bytes, bytes, bytes]:
    """Pad, key and nonce of chunk ``index`` of ``count``; needs only its neighbours' hashes."""
    n1, n2 = neighbours(index, count)
    return derive_pad_key_nonce(src_hashes[index], src_hashes[n1], src_hashes[n2], index, level)


def _hash(data: Any) -> bytes:
    return blake3.blake3(data).digest()


def _xor_pad(buffer: np.ndarray, pad: bytes) -> None:
    """XOR ``buffer`` in place with the pad repeated: numpy on whole words, outside the GIL."""
    body = len(buffer) - len(buffer) % _PAD_PERIOD
    period = np.frombuffer(pad * 2, np.uint8)
    words = buffer[:body].view(np.uint64).reshape(-1, _PAD_WORDS)
    np.bitwise_xor(words, period.view(np.uint64), out=words)
    np.bitwise_xor(buffer[body:], period[: len(buffer) - body], out=buffer[body:])


def brotli_first_block(quality: int) -> int | None:
    """Size of C brotli's first input block at ``quality`` (its ``ComputeLgBlock`` with the
    default window), or None for qualities 0 and 1, whose one- and two-pass modes compress
    whatever each call brings."""
    if quality < 2:
        return None
    return 1 << (14 if quality < 4 else 16 if quality < 9 else 18)


def compress(plain: Any, quality: int) -> bytearray:
    """brotli at ``quality``: the stream of an encoder fed 4096 bytes at a time, as the format
    requires.

    The encoder copies its input into fixed blocks and encodes each block once it is full, so how
    the input is cut matters only until the first block is encoded: that is when it fixes its
    size hint (that block plus the rest of the current call), which picks its hasher at some
    qualities. Feeding 4096-byte pieces until then and the rest in larger ones gives the same
    bytes (tests/test_selfenc.py compares them) with a thousand fewer calls per chunk, each of which
    gave up the GIL and had to win it back: beside a busy event loop that convoy made a 4 MiB
    chunk take up to a second instead of 8 ms.
    """
    compressor = brotli.Compressor(quality=quality)
    view = memoryview(plain)
    first_block = brotli_first_block(quality)
    fed = len(view) if first_block is None else min(len(view), first_block)
    out = bytearray()  # grown in place: no list of parts joined into a second copy
    for i in range(0, fed, BROTLI_FEED_SIZE):
        out += compressor.process(view[i : min(i + BROTLI_FEED_SIZE, fed)])
    for i in range(fed, len(view), BROTLI_LATER_FEED_SIZE):
        out += compressor.process(view[i : i + BROTLI_LATER_FEED_SIZE])
    out += compressor.finish()
    return out


def does_not_compress(plain: Any) -> bool:
    """Whether a chunk is one to store (FORMAT section 2.4): at least ``STORE_TEST_MIN`` bytes,
    and none of its samples, spread evenly from its start to its end, shrinks under brotli
    quality 0. Text fails on its first sample, so the test costs compressible data ~40 us."""
    view = memoryview(plain).cast("B")
    size = len(view)
    if not STORE_TEST_MIN <= size <= BROTLI_METABLOCK_MAX:
        return False
    step = (size - STORE_SAMPLE_SIZE) // (STORE_SAMPLES - 1)
    for i in range(STORE_SAMPLES):
        sample = view[i * step : i * step + STORE_SAMPLE_SIZE]
        if len(brotli.compress(sample, quality=0)) < len(sample):
            return False
    return True


def stored_stream(plain: Any) -> bytearray:
    """``plain`` as a brotli stream (window 22) of one uncompressed meta-block and the empty
    last one: what the encoder itself writes at quality 3 for chunks (up to 4 MiB) it cannot
    shrink, and decoded as a copy."""
    view = memoryview(plain).cast("B")
    size = len(view)
    if not 1 <= size <= BROTLI_METABLOCK_MAX:
        raise ValueError(f"an uncompressed meta-block holds 1 to 2**24 bytes, not {size}")
    nibbles = max(4, -(-(size - 1).bit_length() // 4))
    # WBITS; ISLAST = 0; MNIBBLES - 4 in two bits; MLEN - 1 in MNIBBLES nibbles; ISUNCOMPRESSED.
    header = _BROTLI_WBITS_22 | (nibbles - 4) << 5 | (size - 1) << 7 | 1 << (7 + 4 * nibbles)
    out = bytearray(header.to_bytes((8 + 4 * nibbles + 7) // 8, "little"))
    out += view
    out.append(0b11)  # the last meta-block: ISLAST = 1, ISLASTEMPTY = 1
    return out


def compress_chunk(plain: Any, settings: Settings) -> bytearray:
    """The compression step of the chunk transform under ``settings``."""
    if settings.store_incompressible and does_not_compress(plain):
        return stored_stream(plain)
    return compress(plain, settings.compression_quality)


def _seal(compressed: bytes, secrets: tuple[bytes, bytes, bytes]) -> memoryview:
    # Working in one preallocated buffer avoids two fresh chunk-sized allocations, whose page
    # faults cost more than the cipher itself; the buffer itself is the result (no copy).
    pad, key, nonce = secrets
    sealed = np.empty(len(compressed) + TAG_SIZE, np.uint8)
    ChaCha20Poly1305(key).encrypt_into(nonce, compressed, None, sealed)
    _xor_pad(sealed, pad)
    return memoryview(sealed)


def _open_chunk(
    info: ChunkInfo, secrets: tuple[bytes, bytes, bytes], get_chunk: Callable[[bytes], bytes]
) -> bytes:
    """Fetch, verify and decrypt one chunk."""
    index, name = info.index, info.dst_hash.hex()
    data = get_chunk(info.dst_hash)
    if _hash(data) != info.dst_hash:
        raise ChunkCorrupted(index, name, "stored bytes do not match the chunk's name")
    pad, key, nonce = secrets
    if len(data) < TAG_SIZE:
        raise DecryptionError(index, name, f"{len(data)} bytes is shorter than a tag")
    sealed = np.frombuffer(data, np.uint8).copy()
    _xor_pad(sealed, pad)
    compressed = np.empty(len(sealed) - TAG_SIZE, np.uint8)
    try:
        ChaCha20Poly1305(key).decrypt_into(nonce, sealed, None, compressed)
    except InvalidTag:
        raise DecryptionError(
            index, name, "authentication failed: wrong DataMap or tampered ciphertext"
        ) from None
    decompressor = brotli.Decompressor()
    try:
        # The limit stops a hostile chunk from inflating far beyond its declared size.
        plain = decompressor.process(compressed, output_buffer_limit=info.src_size + 1)
    except brotli.error:
        raise DecryptionError(index, name, "decompression failed") from None
    if (
        not decompressor.is_finished()
        or len(plain) != info.src_size
        or _hash(plain) != info.src_hash
    ):
        raise ChunkCorrupted(index, name, "plaintext does not match the DataMap's src_hash")
    return plain


# --- Encryption ---


def _read_exactly(read: Callable[[int], Any], size: int) -> Any:
    data = read(size)
    if len(data) == size:
        return data
    parts, got = [bytes(data)], len(data)
    while got < size:
        piece = read(size - got)
        if not piece:
            break
        parts.append(bytes(piece))
        got += len(piece)
    if got != size:
        raise InputChanged(f"input gave {got} bytes where {size} were expected")
    return b"".join(parts)


def _encrypt_level(
    size: int,
    read: Callable[[int], Any],
    put: Callable[[bytes, bytes], None],
    settings: Settings,
    threads: int,
    level: int,
) -> DataMap:
    """Encrypt one level (file data, or a serialized map) read once as a stream.

    Chunks 2.. are encrypted as soon as they and their two predecessors are hashed. Chunks 0
    and 1 need the last two hashes: they are compressed at once and their (smaller) compressed
    form is kept until the end. At most ``threads`` chunks are in flight plus the one being read,
    so memory stays a few chunks whatever the size. (Seekable files go through
    :class:`FileEncryptor`, which reads chunks 0 and 1 again instead of keeping them.)
    """
    sizes = chunk_sizes(size, settings.max_chunk_size)
    count = len(sizes)
    src: list[bytes] = []  # grows as chunks are read; a worker reads only entries already there
    dst: list[bytes] = [b""] * count

    def seal_and_put(index: int, compressed: bytes) -> None:
        chunk = _seal(compressed, _chunk_secrets(src, count, index, level))
        dst[index] = name = _hash(chunk)
        put(name, chunk)

    def encrypt(index: int, plain: Any) -> None:
        seal_and_put(index, compress_chunk(plain, settings))

    if threads == 1 or size <= SERIAL_INPUT_MAX:
        # Small input (a directory record, a map): every chunk at hand, no pool to start.
        plains = []
        for chunk_size in sizes:
            plains.append(_read_exactly(read, chunk_size))
            src.append(_hash(plains[-1]))
        for index, plain in enumerate(plains):
            encrypt(index, plain)
    else:
        _encrypt_in_pool(sizes, read, src, encrypt, seal_and_put, settings, threads)
    return DataMap(
        tuple(ChunkInfo(i, dst[i], src[i], n) for i, n in enumerate(sizes)), level or None
    )


def _encrypt_in_pool(sizes: list[int], read: Callable[[int], Any], src: list[bytes],
                     encrypt: Callable[[int, Any], None],
                     seal_and_put: Callable[[int, bytes], None], settings: Settings,
                     threads: int) -> None:
    """The chunks of one level on ``threads`` workers, reading ahead of them."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix="selfenc")
    in_flight: deque[Future[Any]] = deque()
    heads: list[Future[bytes]] = []
    try:
        for index, chunk_size in enumerate(sizes):
            while len(in_flight) >= threads:
                in_flight.popleft().result()
            plain = _read_exactly(read, chunk_size)
            src.append(_hash(plain))
            if index >= 2:
                in_flight.append(pool.submit(encrypt, index, plain))
            else:
                heads.append(pool.submit(compress_chunk, plain, settings))
                in_flight.append(heads[-1])
            del plain
        for index in (0, 1):
            in_flight.append(pool.submit(seal_and_put, index, heads[index].result()))
        for future in in_flight:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _shrink(
    datamap: DataMap, put: Callable[[bytes, bytes], None], settings: Settings, threads: int
) -> DataMap:
    """Self-encrypt a map of more than three chunks into child levels until three remain."""
    while len(datamap.chunks) > 3:
        serialized = datamap.to_bytes()
        datamap = _encrypt_level(
            len(serialized), _reader(serialized), put, settings, threads, datamap.level + 1
        )
    return datamap


def encrypt_stream(
    size: int,
    read: Callable[[int], Any],
    put: Callable[[bytes, bytes], None],
    settings: Settings = DEFAULT_SETTINGS,
    threads: int = 2,
) -> DataMap:
    """Self-encrypt ``size`` bytes given by ``read(n)`` (the next n bytes) in bounded memory.

    ``put(name, chunk)`` stores one encrypted chunk; it is called from worker threads, for every
    chunk including those of the shrunk maps, before this returns. Returns the DataMap to keep:
    three chunks, with ``child`` set when the data had more.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    datamap = _encrypt_level(size, read, put, settings, threads, 0)
    log.debug("encrypted %d bytes into %d chunks", size, len(datamap.chunks))
    return _shrink(datamap, put, settings, threads)


class Encryptor:
    """Self-encrypts data as it is appended (an upload), in bounded memory.

    Once ``3 x max_chunk_size`` bytes (the *head*) have arrived, every chunk but the last is
    max-sized whatever the final size, and chunk i >= 2 is keyed by chunks i-1 and i-2 only:
    such chunks are encrypted as soon as they are complete. The head goes to ``write_head``
    (a spool file) and is read back through ``read_head``: chunks 0 and 1 need the last two
    hashes, so :meth:`finish` reads them again (checking they did not change), and a smaller
    file is encrypted from there as a whole. Past the head, only the incomplete last chunk is
    held, in memory. Work runs on ``executor`` with at most ``max_in_flight`` chunks of this
    data queued or running; :meth:`append` and :meth:`finish` block while that many are, which
    is the backpressure on whoever feeds the data. Not thread-safe: one call at a time.
    """

    def __init__(
        self,
        read_head: Callable[[int, int], bytes],
        write_head: Callable[[int, bytes], None],
        put: Callable[[bytes, bytes], None],
        settings: Settings,
        executor: Executor,
        max_in_flight: int,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self._read_head = read_head
        self._write_head = write_head
        self._put = put
        self._settings = settings
        self._chunk_size = settings.max_chunk_size
        self.head_size = 3 * settings.max_chunk_size
        self._executor = executor
        self._max_in_flight = max_in_flight
        self.size = 0
        # Bytes [len(src) x max, size) once past the head: pieces as they came, or views of them.
        self._tail: list[bytes | memoryview] = []
        self._src: list[bytes] = []  # plaintext hashes of the chunks taken so far, in order
        self._dst: dict[int, bytes] = {}
        self._in_flight: deque[Future[None]] = deque()
        self._failed: BaseException | None = None

    def append(self, data: bytes) -> None:
        """Add ``data`` at the end; encrypt the chunks it completes."""
        self._check()
        in_head = max(0, min(len(data), self.head_size - self.size))
        if in_head:
            self._write_head(self.size, data[:in_head])
        if in_head < len(data):
            self._tail.append(data[in_head:] if in_head else data)
        self.size += len(data)
        if self.size < self.head_size:
            return
        while len(self._src) < 3:  # the head is complete: its chunks are max-sized
            index = len(self._src)
            self._take(index, self._read_head(index * self._chunk_size, self._chunk_size))
        while self.size - len(self._src) * self._chunk_size >= self._chunk_size:
            self._take(len(self._src), self._cut_tail(self._chunk_size))

    def _cut_tail(self, n: int) -> bytes:
        """The first ``n`` bytes held in the tail, removed from it, copied once."""
        parts: list[Any] = []
        while n:
            piece = self._tail[0]
            if len(piece) <= n:
                parts.append(self._tail.pop(0))
                n -= len(piece)
            else:
                view = memoryview(piece)
                parts.append(view[:n])
                self._tail[0] = view[n:]  # no copy: a view of the piece it came from
                n = 0
        return b"".join(parts)

    def checkpoint(self) -> tuple[int, tuple[bytes | memoryview, ...], int]:
        """The state to go back to if what is appended next has to be taken back."""
        return self.size, tuple(self._tail), len(self._src)

    def rollback(self, checkpoint: tuple[int, tuple[bytes | memoryview, ...], int]) -> None:
        """Forget everything appended since ``checkpoint`` (an append that failed half-way)."""
        self._check()
        while self._in_flight:
            try:
                self._in_flight.popleft().result()
            except BaseException as exc:
                self._failed = exc
                raise
        self.size, tail, taken = checkpoint
        self._tail = list(tail)
        del self._src[taken:]
        for index in [i for i in self._dst if i >= taken]:
            del self._dst[index]

    def finish(self) -> DataMap:
        """Encrypt the rest; the DataMap (shrunk to three chunks). Ends this encryptor."""
        self._check()
        try:
            sizes = chunk_sizes(self.size, self._chunk_size)
            starts = list(itertools.accumulate(sizes, initial=0))
            for index in range(len(self._src), len(sizes)):
                if self.size >= self.head_size:  # the incomplete last chunk
                    self._take(index, b"".join(self._tail))
                else:
                    self._take(index, self._read_head(starts[index], sizes[index]))
            self._tail = []
            for index in (0, 1):
                plain = self._read_head(starts[index], sizes[index])
                if len(plain) != sizes[index] or _hash(plain) != self._src[index]:
                    raise InputChanged(f"bytes {starts[index]}..{starts[index + 1]} changed")
                self._submit(index, plain, len(sizes))
            while self._in_flight:
                self._in_flight.popleft().result()
        except BaseException as exc:
            self._failed = exc
            raise
        self._failed = InputChanged("the data was already encrypted")
        datamap = DataMap(tuple(
            ChunkInfo(i, self._dst[i], self._src[i], n) for i, n in enumerate(sizes)))
        log.debug("encrypted %d bytes into %d chunks", self.size, len(sizes))
        return _shrink(datamap, self._put, self._settings, self._max_in_flight)

    def cancel(self) -> None:
        """Drop queued chunks (those already running finish in the background)."""
        for future in self._in_flight:
            future.cancel()
        self._in_flight.clear()

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _take(self, index: int, plain: bytes) -> None:
        self._src.append(_hash(plain))
        if index >= 2:
            self._submit(index, plain, index + 1)

    def _submit(self, index: int, plain: bytes, known_count: int) -> None:
        # Chunks >= 2 do not depend on the final count; 0 and 1 are submitted knowing it.
        secrets = _chunk_secrets(self._src, max(known_count, 3), index, 0)
        try:
            while len(self._in_flight) >= self._max_in_flight:
                self._in_flight.popleft().result()
        except BaseException as exc:
            self._failed = exc
            raise
        self._in_flight.append(self._executor.submit(self._encrypt, index, plain, secrets))

    def _encrypt(self, index: int, plain: bytes, secrets: tuple[bytes, bytes, bytes]) -> None:
        chunk = _seal(compress_chunk(plain, self._settings), secrets)
        self._dst[index] = name = _hash(chunk)
        self._put(name, chunk)


def _reader(data: Any) -> Callable[[int], memoryview]:
    """A ``read(n)`` over an in-memory buffer, without copying."""
    view = memoryview(data).cast("B")
    position = 0

    def read(n: int) -> memoryview:
        nonlocal position
        piece = view[position : position + n]
        position += len(piece)
        return piece

    return read


def encrypt_bytes(
    data: bytes, settings: Settings = DEFAULT_SETTINGS, threads: int = 2
) -> tuple[DataMap, dict[bytes, bytes]]:
    """Self-encrypt an in-memory buffer; returns the DataMap and every chunk by name."""
    chunks: dict[bytes, bytes] = {}
    datamap = encrypt_stream(len(data), _reader(data), chunks.__setitem__, settings, threads)
    return datamap, chunks


def encrypt_file(
    path: str | os.PathLike[str],
    put: Callable[[bytes, bytes], None],
    settings: Settings = DEFAULT_SETTINGS,
    threads: int = 2,
) -> DataMap:
    """Self-encrypt a regular file in bounded memory (chunks 0 and 1 are read twice)."""
    with open(path, "rb", buffering=0) as file, ThreadPoolExecutor(
        threads, thread_name_prefix="selfenc"
    ) as pool:
        fd = file.fileno()
        encryptor = Encryptor(lambda offset, n: os.pread(fd, n, offset), lambda offset, data: None,
                              put, settings, pool, threads)
        try:
            while piece := file.read(settings.max_chunk_size):
                encryptor.append(piece)
            return encryptor.finish()
        finally:
            encryptor.cancel()


# --- Decryption ---


def _open_all(datamap: DataMap, get_chunk: Callable[[bytes], bytes]) -> Iterator[bytes]:
    src_hashes = [c.src_hash for c in datamap.chunks]
    for info in datamap.chunks:
        secrets = _chunk_secrets(src_hashes, len(src_hashes), info.index, datamap.level)
        yield _open_chunk(info, secrets, get_chunk)


class Decryptor:
    """Random-access reader of self-encrypted data.

    Child maps are resolved (their chunks fetched) on construction. Offsets map to chunks by the
    DataMap's cumulative src_size, so data encrypted with any chunk size reads back. Only the
    chunks covering a range are fetched; each is checked against its name and its plaintext hash.
    Immutable after construction, so one instance can serve several threads.
    """

    def __init__(
        self, datamap: DataMap, get_chunk: Callable[[bytes], bytes], threads: int = 2
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self._get_chunk = get_chunk
        self._threads = threads
        depth = 0
        while datamap.child is not None:
            depth += 1
            if depth > MAX_CHILD_DEPTH:
                raise InvalidDataMap(f"DataMap nests more than {MAX_CHILD_DEPTH} child levels")
            serialized = b"".join(_open_all(datamap, get_chunk))
            parent = DataMap.from_bytes(serialized)
            if parent.level >= datamap.level:
                raise InvalidDataMap(
                    f"a level-{datamap.level} DataMap holds a level-{parent.level} map"
                )
            datamap = parent
        self.content_map = datamap
        self._src_hashes = [c.src_hash for c in datamap.chunks]
        self._starts = list(itertools.accumulate((c.src_size for c in datamap.chunks), initial=0))
        self.size = self._starts[-1]

    def chunk_spans(self) -> list[tuple[int, int]]:
        """(start, end) offsets of every chunk, by index."""
        return list(itertools.pairwise(self._starts))

    def chunk_span(self, index: int) -> tuple[int, int]:
        """(start, end) offsets of chunk ``index``."""
        return self._starts[index], self._starts[index + 1]

    def chunk_index(self, offset: int) -> int:
        """Index of the chunk holding byte ``offset``."""
        if not 0 <= offset < self.size:
            raise ValueError(f"offset {offset} is outside 0..{self.size}")
        return bisect.bisect_right(self._starts, offset) - 1

    def chunk(self, index: int) -> bytes:
        """The whole decrypted chunk ``index`` (callers may cache it)."""
        info = self.content_map.chunks[index]
        secrets = _chunk_secrets(self._src_hashes, len(self._src_hashes), index, 0)
        return _open_chunk(info, secrets, self._get_chunk)

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; short (or empty) past the end."""
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset or length: {offset}, {length}")
        return b"".join(self.iter_range(offset, offset + length))

    def iter_range(self, start: int, end: int) -> Iterator[bytes]:
        """The bytes ``start..end`` in order, decrypting up to ``threads`` chunks ahead."""
        end = min(end, self.size)
        if start < 0:
            raise ValueError(f"negative start: {start}")
        if start >= end:
            return
        first, last = self.chunk_index(start), self.chunk_index(end - 1)
        if first == last:
            yield self._slice(first, self.chunk(first), start, end)
            return
        pool = ThreadPoolExecutor(self._threads, thread_name_prefix="selfdec")
        try:
            window = range(first, min(first + self._threads, last + 1))
            ahead = deque(pool.submit(self.chunk, i) for i in window)
            for index in range(first, last + 1):
                data = ahead.popleft().result()
                following = index + self._threads
                if following <= last:
                    ahead.append(pool.submit(self.chunk, following))
                yield self._slice(index, data, start, end)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _slice(self, index: int, data: bytes, start: int, end: int) -> bytes:
        base = self._starts[index]
        low, high = max(start - base, 0), min(end - base, len(data))
        return data if (low, high) == (0, len(data)) else data[low:high]
