"""Byte streams regrouped into fixed-size pieces and read one step ahead (safefs.streams)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from safefs.streams import batches, read_ahead, regroup


async def stream_of(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=8), st.sampled_from([1, 3, 64, 1000]))
def test_regroup_cuts_a_stream_exactly(parts: list[bytes], size: int) -> None:
    """Uploads, downloads and request bodies are regrouped into fixed-size pieces: same bytes,
    every piece but the last of exactly ``size`` bytes, and plain bytes out whatever came in."""
    async def run() -> list[bytes]:
        return [piece async for piece in regroup(stream_of(parts), size)]

    pieces = trio.run(run)
    assert b"".join(pieces) == b"".join(parts)
    assert all(len(piece) == size for piece in pieces[:-1])
    assert all(0 < len(piece) <= size and type(piece) is bytes for piece in pieces)


def test_regroup_passes_whole_pieces_without_copying() -> None:
    parts = [bytes(8), bytes(8)]

    async def run() -> list[bytes]:
        return [piece async for piece in regroup(stream_of(parts), 8)]

    assert all(a is b for a, b in zip(trio.run(run), parts, strict=True))


async def test_read_ahead_fetches_the_next_item_while_the_current_is_handled() -> None:
    produced: list[int] = []

    async def items() -> AsyncIterator[int]:
        for i in range(4):
            produced.append(i)
            yield i

    seen = []
    async with read_ahead(items()) as ahead:
        async for item in ahead:
            await trio.sleep(0.01)  # the producer runs meanwhile
            seen.append((item, len(produced)))
    assert [item for item, _ in seen] == [0, 1, 2, 3]
    assert all(count >= min(item + 2, 4) for item, count in seen)


async def test_read_ahead_raises_the_producers_error_unwrapped() -> None:
    async def items() -> AsyncIterator[int]:
        yield 1
        raise ConnectionResetError("peer went away")

    got = []
    with pytest.raises(ConnectionResetError, match="peer went away"):
        async with read_ahead(items()) as ahead:
            async for item in ahead:
                got.append(item)
    assert got == [1]


async def test_read_ahead_raises_the_consumers_error_and_closes_the_producer() -> None:
    closed = trio.Event()

    async def items() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            closed.set()

    with pytest.raises(ValueError, match="too long"):
        async with read_ahead(items()) as ahead:
            async for item in ahead:
                if item == 2:
                    raise ValueError("too long")
    assert closed.is_set()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.sampled_from([1, 64, 1000]))
def test_batches_group_pieces_untouched(parts: list[bytes], size: int) -> None:
    async def run() -> list[list[bytes]]:
        return [batch async for batch in batches(stream_of(parts), size)]

    grouped = trio.run(run)
    assert [piece for batch in grouped for piece in batch] == parts
    assert all(sum(map(len, batch)) >= size for batch in grouped[:-1])
