"""Async byte streams: regrouped into fixed-size pieces, and read one step ahead.

Request and response bodies arrive in pieces of whatever size the socket had ready; uploads,
downloads and spool writes work on pieces of a useful size, and overlap receiving the next one
with handling the current one.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import TypeVar

import trio

T = TypeVar("T")


async def regroup(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Regroup a byte stream into pieces of ``size`` bytes (the last may be shorter), with one
    copy at most: pieces that already have the right size are passed on as they are, the others
    are cut through memoryviews and joined once."""
    pieces: list[memoryview] = []
    held = 0
    async for chunk in chunks:
        view = memoryview(chunk)
        while view:
            take = min(len(view), size - held)
            pieces.append(view[:take])
            view = view[take:]
            held += take
            if held == size:
                yield _joined(pieces)
                pieces, held = [], 0
    if held:
        yield _joined(pieces)


async def batches(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[list[bytes]]:
    """The pieces of a byte stream as they came, in lists of at least ``size`` bytes (the last
    may hold less): for a writer that takes several buffers at once and needs no copy."""
    held: list[bytes] = []
    held_bytes = 0
    async for chunk in chunks:
        held.append(chunk)
        held_bytes += len(chunk)
        if held_bytes >= size:
            yield held
            held, held_bytes = [], 0
    if held:
        yield held


def _joined(pieces: list[memoryview]) -> bytes:
    if len(pieces) == 1 and isinstance(pieces[0].obj, bytes) and \
            len(pieces[0]) == len(pieces[0].obj):
        return pieces[0].obj  # a whole piece as it came
    return b"".join(pieces)


@asynccontextmanager
async def read_ahead(items: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Iterate ``items`` one step ahead of the consumer, in a task of its own (the next piece
    is received while the current one is sent or written). Errors on either side come out as
    they are, not wrapped in an exception group."""
    send, receive = trio.open_memory_channel[T](0)
    failure: BaseException | None = None

    async def produce() -> None:
        nonlocal failure
        async with send, aclosing(items):
            try:
                async for item in items:
                    await send.send(item)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                failure = exc

    async def consume() -> AsyncIterator[T]:
        async for item in receive:
            yield item
        if failure is not None:
            raise failure

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        try:
            async with aclosing(consume()) as consumed:
                yield consumed
        except Exception as exc:
            failure = exc
        finally:
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
