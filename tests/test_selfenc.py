"""Self-encryption: known answers, chunking boundaries, random access, integrity, memory, codecs."""

from __future__ import annotations

import functools
import io
import itertools
import json
import random
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safefs import selfenc
from safefs.selfenc import (
    DEFAULT_SETTINGS,
    REFERENCE_SETTINGS,
    ChunkCorrupted,
    ChunkInfo,
    DataMap,
    DecryptionError,
    Decryptor,
    InputChanged,
    InvalidDataMap,
    SelfEncryptionError,
    Settings,
    TooSmall,
)

# Known answers for the 0.35 format (a copy of the project's shared/vectors/selfenc_v035.json).
VECTORS = json.loads((Path(__file__).parent / "vectors" / "selfenc_v035.json").read_text())
VECTOR_A, VECTOR_B = VECTORS["vectors"]
SMALL = Settings(compression_quality=3, max_chunk_size=1024)
M = SMALL.max_chunk_size


def encrypt(data: bytes, settings: Settings = SMALL, threads: int = 2):
    return selfenc.encrypt_bytes(data, settings, threads)


def periodic(size: int, period: int) -> bytes:
    return (bytes(range(period)) * (size // period + 1))[:size]


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def level_chunk_counts(content_chunks: int, settings: Settings) -> list[int]:
    """How many chunks each level of shrinking produces, starting with the content's."""
    counts, child = [content_chunks], None
    while counts[-1] > 3:
        map_size = 10 + 80 * counts[-1] + (0 if child is None else 8)
        counts.append(len(selfenc.chunk_sizes(map_size, settings.max_chunk_size)))
        child = len(counts) - 1
    return counts


# --- Known answers ---


@pytest.mark.parametrize("entry", VECTORS["kdf"], ids=lambda e: f"index{e['index']}")
def test_kdf_vectors(entry):
    pad, key, nonce = selfenc.derive_pad_key_nonce(
        bytes.fromhex(entry["src"]),
        bytes.fromhex(entry["n1"]),
        bytes.fromhex(entry["n2"]),
        entry["index"],
        entry["child_level"],
    )
    assert (pad.hex(), key.hex(), nonce.hex()) == (entry["pad"], entry["key"], entry["nonce"])


def test_vector_a_chunks_and_bincode():
    data = bytes(i % 256 for i in range(3072))
    datamap, store = encrypt(data, REFERENCE_SETTINGS)
    assert VECTOR_A["compression_quality"] == REFERENCE_SETTINGS.compression_quality
    assert datamap.child is VECTOR_A["child"] is None
    assert [(c.index, c.src_size, c.src_hash.hex(), c.dst_hash.hex()) for c in datamap.chunks] == [
        (v["index"], v["src_size"], v["src_hash"], v["dst_hash"]) for v in VECTOR_A["chunks"]
    ]
    assert datamap.to_bytes().hex() == VECTOR_A["datamap_bincode_hex"]
    assert DataMap.from_bytes(bytes.fromhex(VECTOR_A["datamap_bincode_hex"])) == datamap
    assert Decryptor(datamap, store.__getitem__).read(0, 3072) == data


@functools.cache
def vector_b():
    size = 20 * selfenc.REFERENCE_MAX_CHUNK_SIZE + 100
    data = periodic(size, 17)
    datamap, store = encrypt(data, REFERENCE_SETTINGS)
    return data, datamap, store


def test_vector_b_content_chunks_and_child_map():
    data, datamap, store = vector_b()
    decryptor = Decryptor(datamap, store.__getitem__)
    content = decryptor.content_map
    assert [(c.index, c.src_size, c.src_hash.hex(), c.dst_hash.hex()) for c in content.chunks] == [
        (v["index"], v["src_size"], v["src_hash"], v["dst_hash"]) for v in VECTOR_B["level0_chunks"]
    ]
    assert content.child is None
    assert len(content.to_bytes()) == VECTOR_B["level0_datamap_bincode_len"]
    returned = VECTOR_B["returned_datamap"]
    assert datamap.child == returned["child"] == 1
    assert [c.src_size for c in datamap.chunks] == returned["src_sizes"]
    assert [c.dst_hash.hex() for c in datamap.chunks[1:]] == returned["dst_hash_of_chunks_1_and_2"]
    assert len(store) == 21 + 3
    assert decryptor.size == len(data)
    assert decryptor.read(0, len(data)) == data


def test_vector_b_reads_by_src_size_not_settings():
    """Offsets map to chunks by the map's src_size: a map made with another chunk size reads."""
    data, datamap, store = vector_b()
    decryptor = Decryptor(datamap, store.__getitem__)
    max_size = selfenc.REFERENCE_MAX_CHUNK_SIZE
    assert decryptor.chunk_spans()[:2] == [(0, max_size), (max_size, 2 * max_size)]
    assert decryptor.chunk_spans()[-1] == (20 * max_size, 20 * max_size + 100)
    boundary = 7 * max_size
    assert decryptor.read(boundary - 5, 10) == data[boundary - 5 : boundary + 5]
    assert decryptor.read(len(data) - 150, 1000) == data[-150:]
    # The same data chunked 3000 bytes at a time reads back through the same code.
    small = Settings(REFERENCE_SETTINGS.compression_quality, 3000)
    datamap, store = encrypt(data[: 40 * 3000 + 17], small)
    decryptor = Decryptor(datamap, store.__getitem__)
    assert decryptor.chunk_spans()[5] == (15000, 18000)
    assert decryptor.read(14990, 20) == data[14990:15010]


def test_threads_do_not_change_the_result():
    data = random_bytes(30 * M + 7)
    assert encrypt(data, threads=1) == encrypt(data, threads=3)


# --- Chunking ---


@pytest.mark.parametrize(
    ("size", "max_size", "expected"),
    [
        (969_265, selfenc.REFERENCE_MAX_CHUNK_SIZE, [323_088, 323_088, 323_089]),
        (1024, selfenc.REFERENCE_MAX_CHUNK_SIZE, [341, 341, 342]),
        (1025, selfenc.REFERENCE_MAX_CHUNK_SIZE, [341, 341, 343]),
        (3, 1024, [1, 1, 1]),
        (3 * 1024 - 1, 1024, [1023, 1023, 1025]),
        (3 * 1024, 1024, [1024, 1024, 1024]),
        (3 * 1024 + 1, 1024, [1024, 1024, 1024, 1]),
        (5 * 1024, 1024, [1024] * 5),
    ],
)
def test_chunk_sizes(size, max_size, expected):
    assert selfenc.chunk_sizes(size, max_size) == expected


@pytest.mark.parametrize("size", [0, 1, 2])
def test_too_small_inputs_are_refused(size):
    assert selfenc.MIN_ENCRYPTABLE_BYTES == 3
    with pytest.raises(TooSmall, match="too small"):
        encrypt(b"x" * size)
    with pytest.raises(TooSmall):
        selfenc.encrypt_stream(size, lambda n: b"x" * n, lambda name, chunk: None)


def test_neighbours_wrap_around():
    assert selfenc.neighbours(0, 5) == (4, 3)
    assert selfenc.neighbours(1, 5) == (0, 4)
    assert selfenc.neighbours(4, 5) == (3, 2)
    with pytest.raises(ValueError):
        selfenc.neighbours(5, 5)


def check_round_trip(data: bytes, settings: Settings = SMALL) -> DataMap:
    datamap, store = encrypt(data, settings)
    decryptor = Decryptor(datamap, store.__getitem__)
    assert decryptor.size == len(data)
    assert decryptor.read(0, len(data) + 10) == data
    assert len(decryptor.content_map.chunks) == len(
        selfenc.chunk_sizes(len(data), settings.max_chunk_size)
    )
    assert len(datamap.chunks) == 3
    assert len(store) == sum(level_chunk_counts(len(decryptor.content_map.chunks), settings))
    return datamap


@pytest.mark.parametrize(
    "size",
    [3, 4, 5, 3 * M - 1, 3 * M, 3 * M + 1]
    + [k * M + delta for k in (4, 5, 8) for delta in (-1, 0, 1)],
)
def test_round_trip_at_chunking_boundaries(size):
    datamap = check_round_trip(random_bytes(size, seed=size))
    assert (datamap.child is None) == (size <= 3 * M)


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_round_trip_at_real_size_boundaries(delta):
    size = 3 * DEFAULT_SETTINGS.max_chunk_size + delta
    datamap = check_round_trip(random_bytes(size, seed=delta), DEFAULT_SETTINGS)
    assert (datamap.child is None) == (delta <= 0)


@settings(max_examples=40, deadline=None)
@given(
    data=st.one_of(
        st.binary(min_size=3, max_size=200),
        st.builds(random_bytes, st.integers(3, 12 * M), st.integers(0, 2**32)),
        st.builds(periodic, st.integers(3, 12 * M), st.integers(1, 256)),
    ),
    quality=st.integers(0, 11),
    max_size=st.sampled_from([1024, 1500, 4096]),
)
def test_round_trip_any_data(data, quality, max_size):
    check_round_trip(data, Settings(quality, max_size))


def test_shrinking_nests_child_levels():
    size = 60 * M  # the level-1 map of 60 chunks takes 4,810 bytes: more than 3 chunks again
    data = random_bytes(size)
    datamap, store = encrypt(data)
    assert datamap.child == 2
    assert level_chunk_counts(60, SMALL) == [60, 5, 3]
    assert len(store) == 68
    assert Decryptor(datamap, store.__getitem__).read(0, size) == data


# --- Random access ---


@functools.cache
def sample():
    data = random_bytes(20 * M + 333, seed=7) + periodic(10 * M, 31)
    datamap, store = encrypt(data)
    return data, datamap, store


@settings(max_examples=200, deadline=None)
@given(offset=st.integers(0, 31 * M), length=st.integers(0, 12 * M), threads=st.integers(1, 3))
def test_random_ranges_match_slicing(offset, length, threads):
    data, datamap, store = sample()
    decryptor = Decryptor(datamap, store.__getitem__, threads)
    assert decryptor.read(offset, length) == data[offset : offset + length]
    assert b"".join(decryptor.iter_range(offset, offset + length)) == data[offset : offset + length]


def test_only_covering_chunks_are_fetched():
    data, datamap, store = sample()
    fetched = []

    def get_chunk(name):
        fetched.append(name)
        return store[name]

    decryptor = Decryptor(datamap, get_chunk)
    fetched.clear()
    content = decryptor.content_map.chunks
    assert decryptor.read(5 * M + 10, 2 * M) == data[5 * M + 10 : 7 * M + 10]
    assert sorted(fetched) == sorted(c.dst_hash for c in content[5:8])


def test_chunk_api():
    data, datamap, store = sample()
    decryptor = Decryptor(datamap, store.__getitem__)
    spans = decryptor.chunk_spans()
    assert spans[0][0] == 0 and spans[-1][1] == decryptor.size == len(data)
    assert all(end == next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    for index in (0, 13, len(spans) - 1):
        start, end = spans[index]
        assert decryptor.chunk(index) == data[start:end]
        assert decryptor.chunk_index(start) == decryptor.chunk_index(end - 1) == index
    with pytest.raises(ValueError):
        decryptor.chunk_index(len(data))
    assert decryptor.read(len(data), 10) == b""
    assert decryptor.read(len(data) + 5, 10) == b""
    with pytest.raises(ValueError):
        decryptor.read(-1, 10)


def test_iter_range_yields_one_piece_per_chunk_and_can_stop_early():
    data, datamap, store = sample()
    decryptor = Decryptor(datamap, store.__getitem__)
    pieces = list(decryptor.iter_range(M // 2, 4 * M))
    assert [len(p) for p in pieces] == [M // 2, M, M, M]
    stream = decryptor.iter_range(0, len(data))
    assert next(stream) == data[:M]
    stream.close()


def test_concurrent_readers_share_a_decryptor():
    data, datamap, store = sample()
    decryptor = Decryptor(datamap, store.__getitem__)
    failures = []

    def reader(seed):
        rng = random.Random(seed)
        for _ in range(20):
            offset, length = rng.randrange(len(data)), rng.randrange(3 * M)
            if decryptor.read(offset, length) != data[offset : offset + length]:
                failures.append((offset, length))

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- Integrity ---


def tampered(store: dict[bytes, bytes], name: bytes, position: int = 40) -> dict[bytes, bytes]:
    changed = dict(store)
    chunk = bytearray(store[name])
    chunk[position] ^= 1
    changed[name] = bytes(chunk)
    return changed


def test_tampered_chunk_is_named():
    data, datamap, store = sample()
    decryptor = Decryptor(datamap, store.__getitem__)
    victim = decryptor.content_map.chunks[6]
    reader = Decryptor(datamap, tampered(store, victim.dst_hash).__getitem__)
    with pytest.raises(ChunkCorrupted, match=f"chunk 6 \\({victim.dst_hash.hex()}\\)") as caught:
        reader.read(0, len(data))
    assert (caught.value.index, caught.value.name) == (6, victim.dst_hash.hex())
    assert reader.read(0, 6 * M) == data[: 6 * M]  # the other chunks still read


def test_tampered_child_map_chunk_fails_at_open():
    _, datamap, store = sample()
    with pytest.raises(ChunkCorrupted, match="chunk 1 "):
        Decryptor(datamap, tampered(store, datamap.chunks[1].dst_hash).__getitem__)


def test_wrong_key_is_a_decryption_error():
    data = random_bytes(5 * M)
    datamap, store = encrypt(data)
    content = Decryptor(datamap, store.__getitem__).content_map
    infos = list(content.chunks)
    infos[2] = ChunkInfo(2, infos[2].dst_hash, bytes(32), infos[2].src_size)
    wrong = Decryptor(DataMap(infos), store.__getitem__)
    with pytest.raises(DecryptionError, match="chunk 2 .*wrong DataMap") as caught:
        wrong.chunk(2)
    assert isinstance(caught.value, SelfEncryptionError)
    # chunks 3 and 4 are keyed by chunk 2's hash too; chunk 0 is not
    with pytest.raises(DecryptionError):
        wrong.chunk(4)
    assert wrong.chunk(0) == data[:M]


def test_swapped_chunks_are_a_decryption_error():
    data = random_bytes(5 * M)
    datamap, store = encrypt(data)
    infos = list(Decryptor(datamap, store.__getitem__).content_map.chunks)
    a, b = infos[1], infos[3]
    infos[1] = ChunkInfo(1, b.dst_hash, a.src_hash, a.src_size)
    infos[3] = ChunkInfo(3, a.dst_hash, b.src_hash, b.src_size)
    with pytest.raises(DecryptionError, match="chunk 1 "):
        Decryptor(DataMap(infos), store.__getitem__).chunk(1)


def test_store_serving_another_chunk_is_corruption():
    data, datamap, store = sample()
    decryptor = Decryptor(datamap, store.__getitem__)
    content = decryptor.content_map.chunks
    liar = dict(store)
    liar[content[3].dst_hash] = store[content[4].dst_hash]
    with pytest.raises(ChunkCorrupted, match="do not match the chunk's name"):
        Decryptor(datamap, liar.__getitem__).chunk(3)


def forge(content: DataMap, index: int, compressed: bytes) -> tuple[DataMap, dict[bytes, bytes]]:
    """Re-key chunk ``index`` around another payload, as a hostile map author could."""
    hashes = [c.src_hash for c in content.chunks]
    secrets = selfenc._chunk_secrets(hashes, len(hashes), index, 0)
    chunk = selfenc._seal(compressed, secrets)
    name = blake3.blake3(chunk).digest()
    infos = list(content.chunks)
    infos[index] = ChunkInfo(index, name, infos[index].src_hash, infos[index].src_size)
    return DataMap(infos), {name: chunk}


def test_authentic_chunk_with_other_plaintext_is_corruption():
    data = random_bytes(5 * M)
    datamap, store = encrypt(data)
    content = Decryptor(datamap, store.__getitem__).content_map
    forged, extra = forge(content, 2, brotli.compress(b"y" * M))
    with pytest.raises(ChunkCorrupted, match="does not match the DataMap's src_hash"):
        Decryptor(forged, {**store, **extra}.__getitem__).chunk(2)
    bomb, extra = forge(content, 2, brotli.compress(bytes(64 * M)))
    with pytest.raises(ChunkCorrupted):
        Decryptor(bomb, {**store, **extra}.__getitem__).chunk(2)
    garbage, extra = forge(content, 2, b"not brotli at all")
    with pytest.raises(DecryptionError, match="decompression failed"):
        Decryptor(garbage, {**store, **extra}.__getitem__).chunk(2)


# --- Streaming ---


def test_streaming_memory_stays_a_few_chunks():
    """40 MiB of incompressible input through 256 KiB chunks stays within ~12 chunks."""
    size, chunk_size = 40 * 2**20, 256 * 2**10
    stream_settings = Settings(DEFAULT_SETTINGS.compression_quality, chunk_size)
    rng = random.Random(3)
    stored = []

    def read(n):
        return rng.randbytes(n)

    def put(name, chunk):
        stored.append(len(chunk))

    tracemalloc.start()
    try:
        datamap = selfenc.encrypt_stream(size, read, put, stream_settings, threads=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert datamap.child == 1
    assert len(stored) == 160 + 3
    assert peak < 12 * chunk_size, peak


def test_encrypt_file_matches_encrypt_bytes(tmp_path):
    data = random_bytes(9 * M + 5) + periodic(3 * M, 7)
    path = tmp_path / "input"
    path.write_bytes(data)
    store: dict[bytes, bytes] = {}
    datamap = selfenc.encrypt_file(path, store.__setitem__, SMALL)
    assert (datamap, store) == encrypt(data)


def test_input_ending_early_is_refused():
    data = random_bytes(6 * M)
    with pytest.raises(InputChanged, match="gave"):
        selfenc.encrypt_stream(len(data) + 1, io.BytesIO(data).read, lambda n, c: None, SMALL)


def test_short_reads_are_completed():
    data = random_bytes(6 * M + 1)
    position = 0

    def dribble(n):
        nonlocal position
        piece = data[position : position + min(n, 1000)]
        position += len(piece)
        return piece

    store: dict[bytes, bytes] = {}
    datamap = selfenc.encrypt_stream(len(data), dribble, store.__setitem__, SMALL)
    assert (datamap, store) == encrypt(data)


class Head:
    """A spool file's part: the bytes an Encryptor asks to keep, readable again."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, offset, data):
        self.data[offset:offset + len(data)] = data

    def read(self, offset, n):
        return bytes(self.data[offset:offset + n])


def _encryptor(head, store, pool):
    return selfenc.Encryptor(head.read, head.write, store.__setitem__, SMALL, pool, 2)


@pytest.mark.parametrize("size", [3, 5 * M, 3 * M, 17 * M + 7, 20 * M])
def test_data_encrypted_as_it_arrives_matches_encrypt_bytes(size):
    """Data appended in uneven pieces gives the same chunks; only the head is kept aside."""
    data = random_bytes(size - size // 3) + periodic(size // 3, 11)
    head = Head()
    store: dict[bytes, bytes] = {}
    with ThreadPoolExecutor(2) as pool:
        encryptor = _encryptor(head, store, pool)
        for start in range(0, len(data), 700):
            encryptor.append(data[start:start + 700])
        if size > 6 * M:
            assert len(store) >= size // M - 5  # most chunks were encrypted before finish
        datamap = encryptor.finish()
    assert (datamap, store) == encrypt(data)
    assert bytes(head.data) == data[:3 * M]


def test_rollback_forgets_what_came_after_the_checkpoint():
    data = random_bytes(20 * M)
    store: dict[bytes, bytes] = {}
    with ThreadPoolExecutor(2) as pool:
        encryptor = _encryptor(Head(), store, pool)
        for cut in (2 * M + 5, 9 * M + 3):
            encryptor.append(data[encryptor.size:cut])
            checkpoint = encryptor.checkpoint()
            encryptor.append(random_bytes(4 * M + 1))  # an append that fails half-way
            encryptor.rollback(checkpoint)
        encryptor.append(data[encryptor.size:])
        datamap = encryptor.finish()
    assert datamap == encrypt(data)[0]


def test_input_changed_before_reread_is_refused():
    data = random_bytes(6 * M)
    head = Head()
    with ThreadPoolExecutor(2) as pool:
        encryptor = _encryptor(head, {}, pool)
        encryptor.append(data)
        head.data[0] ^= 1
        with pytest.raises(InputChanged, match="changed"):
            encryptor.finish()
        with pytest.raises(InputChanged):  # and it stays failed
            encryptor.append(b"more")


def test_failing_put_fails_the_encryptor_for_good():
    def put(name, chunk):
        raise OSError("store is full")

    with ThreadPoolExecutor(2) as pool:
        encryptor = selfenc.Encryptor(Head().read, Head().write, put, SMALL, pool, 1)
        with pytest.raises(OSError, match="store is full"):
            encryptor.append(random_bytes(10 * M))
        with pytest.raises(OSError, match="store is full"):
            encryptor.finish()


def test_failing_put_stops_encryption():
    calls = 0

    def put(name, chunk):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("store is full")

    data = random_bytes(40 * M)
    with pytest.raises(OSError, match="store is full"):
        selfenc.encrypt_stream(len(data), io.BytesIO(data).read, put, SMALL)
    assert calls < 10


# --- DataMap codecs ---


def test_json_form_is_the_reference_form():
    datamap = DataMap.from_bytes(bytes.fromhex(VECTOR_A["datamap_bincode_hex"]))
    entries = ",".join(
        f'{{"index":{v["index"]},"dst_hash":"{v["dst_hash"]}",'
        f'"src_hash":"{v["src_hash"]}","src_size":{v["src_size"]}}}'
        for v in VECTOR_A["chunks"]
    )
    assert datamap.to_json() == f'{{"chunk_identifiers":[{entries}],"child":null}}'
    assert DataMap.from_json(datamap.to_json()) == datamap


def test_child_map_round_trips():
    _, datamap, _ = sample()
    assert datamap.child == 1
    assert DataMap.from_bytes(datamap.to_bytes()) == datamap
    assert DataMap.from_json(datamap.to_json()) == datamap
    assert len(datamap.to_bytes()) == 10 + 3 * 80 + 8
    assert json.loads(datamap.to_json())["child"] == 1


GOOD = bytes.fromhex(VECTOR_A["datamap_bincode_hex"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"\x00" + GOOD[1:], "version 0"),
        (b"\x02" + GOOD[1:], "version 2"),
        (GOOD[:-1], "cannot hold"),
        (GOOD + b"\x00", "extra bytes"),
        (GOOD[:-1] + b"\x02", "child field"),
        (GOOD[:-1] + b"\x01" + (0).to_bytes(8, "little"), "child level"),
        (GOOD[:1] + (2).to_bytes(8, "little") + GOOD[9 : 9 + 160] + b"\x00", "at least 3"),
        (GOOD[:9] + GOOD[89:169] + GOOD[9:89] + GOOD[169:], "entry 0 is not chunk 0"),
        (GOOD[:1] + (2**60).to_bytes(8, "little") + GOOD[9:], "cannot hold"),
    ],
)
def test_malformed_bincode_is_refused(data, message):
    with pytest.raises(InvalidDataMap, match=message):
        DataMap.from_bytes(data)


def json_variant(change) -> str:
    doc = json.loads(DataMap.from_bytes(GOOD).to_json())
    change(doc)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "does not parse"),
        ("[]", "exactly the keys"),
        (json_variant(lambda d: d.pop("child")), "exactly the keys"),
        (json_variant(lambda d: d.update(extra=1)), "exactly the keys"),
        (json_variant(lambda d: d["chunk_identifiers"][0].pop("src_size")), "exactly the keys"),
        (json_variant(lambda d: d.update(chunk_identifiers={})), "must be a list"),
        (json_variant(lambda d: d["chunk_identifiers"][1].update(dst_hash="ab")), "64 hex"),
        (json_variant(lambda d: d["chunk_identifiers"][1].update(src_hash="g" * 64)), "64 hex"),
        (json_variant(lambda d: d["chunk_identifiers"][1].update(src_hash=5)), "64 hex"),
        (json_variant(lambda d: d["chunk_identifiers"][0].update(index=True)), "index"),
        (json_variant(lambda d: d["chunk_identifiers"][0].update(src_size=-1)), "src_size"),
        (json_variant(lambda d: d["chunk_identifiers"][0].update(src_size=0)), "src_size"),
        (json_variant(lambda d: d["chunk_identifiers"][0].update(src_size=1.5)), "src_size"),
        (json_variant(lambda d: d["chunk_identifiers"].reverse()), "is not chunk"),
        (json_variant(lambda d: d["chunk_identifiers"].pop()), "at least 3"),
        (json_variant(lambda d: d.update(child="1")), "child level"),
        (json_variant(lambda d: d.update(child=0)), "child level"),
    ],
)
def test_malformed_json_is_refused(text, message):
    with pytest.raises(InvalidDataMap, match=message):
        DataMap.from_json(text)


def test_child_level_must_decrease_when_resolving():
    """A map claiming to hold a map of its own level would loop: refused."""
    looping = DataMap.from_bytes(GOOD)
    looping = DataMap(looping.chunks, 1)
    serialized = looping.to_bytes()
    chunks: dict[bytes, bytes] = {}
    inner = selfenc._encrypt_level(
        len(serialized), io.BytesIO(serialized).read, chunks.__setitem__, SMALL, 1, 1
    )
    with pytest.raises(InvalidDataMap, match="level-1 DataMap holds a level-1 map"):
        Decryptor(inner, chunks.__getitem__)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="compression_quality"):
        Settings(12, 4096)
    with pytest.raises(ValueError, match="max_chunk_size"):
        Settings(3, 1000)
    assert DEFAULT_SETTINGS.max_chunk_size == selfenc.REFERENCE_MAX_CHUNK_SIZE
    assert (REFERENCE_SETTINGS.compression_quality, REFERENCE_SETTINGS.max_chunk_size) == (
        6,
        4_190_208,
    )


def test_encryption_hides_the_plaintext():
    data = b"secret text! " * 1000
    _, store = encrypt(data, Settings(0, 4096))
    assert all(b"secret" not in chunk for chunk in store.values())
    assert all(blake3.blake3(chunk).digest() == name for name, chunk in store.items())


def fed_by_pieces(data: bytes, quality: int) -> bytes:
    """The format's definition of a chunk's compression: brotli fed 4096 bytes per call."""
    compressor = brotli.Compressor(quality=quality)
    pieces = [compressor.process(data[i : i + 4096]) for i in range(0, len(data), 4096)]
    return b"".join(pieces) + compressor.finish()


@functools.cache
def compressible_corpus() -> bytes:
    """Real text and machine code (this test suite and the brotli extension), 1 MiB of each."""
    text = b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))
    return (text * (2**20 // len(text) + 1))[: 2**20] + Path(brotli._brotli.__file__).read_bytes()


def corpus_sample(kind: str, size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(size)
    if kind == "zeros":
        return bytes(size)
    corpus = compressible_corpus()
    if kind == "mixed":  # runs of text, code, random bytes and zeros
        parts, held = [], 0
        while held < size:
            n = rng.randrange(1, 100_000)
            start = rng.randrange(len(corpus) - n)
            part = rng.choice([corpus[start : start + n], rng.randbytes(n), bytes(n)])
            parts.append(part)
            held += n
        return b"".join(parts)[:size]
    start = rng.randrange(len(corpus) - min(size, len(corpus) // 2))
    return (corpus[start:] * (size // max(1, len(corpus) - start) + 1))[:size]


@pytest.mark.parametrize("quality", range(12))
def test_compression_equals_the_4096_byte_feed(quality):
    """``compress`` cuts its input differently after the first block: the bytes must not change,
    or chunk names would differ between versions and deduplication would break."""
    block = selfenc.brotli_first_block(quality) or 2**16
    sizes = [1, 4095, 4097, block - 1, block, block + 1, block + 4096, 3 * block + 5]
    if quality < 10:
        sizes += [2**20 + 12_345, selfenc.REFERENCE_MAX_CHUNK_SIZE]
    else:  # the slowest qualities: around the first block only
        sizes = [4097, block, block + 4096]
    for kind in ("text", "mixed", "random", "zeros"):
        for seed, size in enumerate(sizes):
            data = corpus_sample(kind, size, seed)
            assert bytes(selfenc.compress(data, quality)) == fed_by_pieces(data, quality), \
                (kind, size)


STORE = DEFAULT_SETTINGS
assert STORE.store_incompressible and not REFERENCE_SETTINGS.store_incompressible


@pytest.mark.parametrize("size", [STORE_TEST_MIN := selfenc.STORE_TEST_MIN, STORE_TEST_MIN + 1,
                                  2**16 * 3 + 7, 2**20, 2**20 + 1,
                                  selfenc.REFERENCE_MAX_CHUNK_SIZE])
def test_random_chunks_are_stored_as_the_encoder_stores_them(size):
    """Random data skips the encoder, and its stream is byte for byte the one the encoder
    writes at the default quality: chunk names do not change for it."""
    data = random_bytes(size, seed=size)
    assert selfenc.does_not_compress(data)
    stored = bytes(selfenc.compress_chunk(data, STORE))
    assert stored == fed_by_pieces(data, STORE.compression_quality)
    assert brotli.decompress(stored) == data


@pytest.mark.parametrize("kind", ["text", "mixed", "zeros"])
def test_compressible_chunks_go_through_the_encoder(kind):
    for seed, size in enumerate([STORE_TEST_MIN, 2**20, selfenc.REFERENCE_MAX_CHUNK_SIZE]):
        data = corpus_sample(kind, size, seed)
        if kind == "mixed" and selfenc.does_not_compress(data):
            continue  # (every sample fell into random runs)
        assert not selfenc.does_not_compress(data), (kind, size)
        assert bytes(selfenc.compress_chunk(data, STORE)) == \
            fed_by_pieces(data, STORE.compression_quality)


def test_one_compressible_sample_sends_a_chunk_through_the_encoder():
    size = 2**20
    step = (size - selfenc.STORE_SAMPLE_SIZE) // (selfenc.STORE_SAMPLES - 1)
    for sample in range(selfenc.STORE_SAMPLES):
        data = bytearray(random_bytes(size, seed=sample))
        data[sample * step : sample * step + selfenc.STORE_SAMPLE_SIZE] = \
            periodic(selfenc.STORE_SAMPLE_SIZE, 200)
        assert not selfenc.does_not_compress(data), sample
    assert not selfenc.does_not_compress(random_bytes(STORE_TEST_MIN - 1))  # too small to test


def test_stored_chunks_decrypt_and_reference_settings_still_compress():
    """Data the samples call incompressible although the encoder finds something (a random
    block repeated between the samples): stored under the default settings, compressed under
    the reference ones, and both decrypt to the data."""
    block = random_bytes(200_000, seed=7)
    data = block + block + random_bytes(800_000, seed=8)  # three chunks of 400,000 bytes
    assert selfenc.does_not_compress(data[:400_000])
    for chosen in (Settings(3, 2**20, store_incompressible=True), Settings(3, 2**20)):
        datamap, store = encrypt(data, chosen)
        assert [chunk.src_size for chunk in datamap.chunks] == [400_000] * 3
        assert Decryptor(datamap, store.__getitem__).read(0, len(data)) == data
        stored = sum(map(len, store.values()))
        if chosen.store_incompressible:
            assert stored > len(data)  # stored as it came
        else:
            assert stored < len(data) - 150_000  # the repeated block found
    with pytest.raises(ValueError, match="2\\*\\*24"):
        selfenc.stored_stream(b"")
