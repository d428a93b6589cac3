"""``/immutable-data``: writer and reader handles (launcher controllers/immutable_data.js).

Writing: ``GET /immutable-data/writer`` makes a writer, each ``POST /immutable-data/:w``
appends its streamed body to a spool file in the gateway's data directory (never held in
memory) whose complete chunks are self-encrypted into the store while the upload goes on
(:class:`safefs.gateway.blobs.Spool`), and closing (``PUT /immutable-data/:w/:cipherOpts``, or
the seed's ``DELETE /immutable-data/writer/:w/:cipherOpts``) encrypts the rest, stores the root
chunk and answers a data-id handle. Closing does not drop the
writer; ``DELETE /immutable-data/writer/:w`` does.

An append is all or nothing: if the body ends early the spool file is cut back to its previous
size. A client may send ``X-Safefs-Offset: n`` (the size it believes the writer has): a retry of
an append the gateway already has is then acknowledged instead of appended twice, and a
mismatch is a 409.

Reading: ``GET /immutable-data/reader/:dataId`` opens a reader (``{"handleId","size"}``) and
``GET /immutable-data/:r`` streams bytes, honouring ``Range`` with the launcher's rules (the end
is exclusive; see :func:`parse_range`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future
from functools import partial

import trio
from starlette.requests import ClientDisconnect

from safefs import errors
from safefs.errors import SafeError
from safefs.gateway import OFFSET_HEADER
from safefs.model import DataIdentifier, DataKind
from safefs.streams import read_ahead, regroup

from . import blobs
from .core import Gateway, wait_future
from .handles import Kind
from .misc import cipher_opts_of
from .routing import (
    BATCH_BYTES,
    Access,
    ApiError,
    Call,
    Routes,
    RunSync,
    StreamedResponse,
    decimal,
)

log = logging.getLogger(__name__)

routes = Routes()

CONTENT_LENGTH_NOT_PRESENT = "Content-Length header is not present"


class Writer:
    """A writer handle: its spooled upload, and a lock for one append or close at a time."""

    def __init__(self, spool: blobs.Spool) -> None:
        self.spool = spool
        self.lock = trio.Lock()

    async def append(self, body: AsyncIterator[bytes], length: int, run_sync: RunSync) -> None:
        """Append exactly ``length`` bytes of ``body``, or nothing."""
        spool = self.spool
        before = spool.size
        checkpoint = spool.checkpoint()
        try:
            # The next batch is received while this one is written.
            async with read_ahead(regroup(body, BATCH_BYTES)) as batches:
                async for batch in batches:
                    if spool.size - before + len(batch) > length:
                        raise ApiError(400, "Request body is longer than its Content-Length")
                    await run_sync(spool.write, batch)
            if spool.size - before != length:
                raise ApiError(400, "Request aborted by client")
        except BaseException:
            with trio.CancelScope(shield=True):
                await run_sync(spool.rollback, checkpoint)
            raise


def _content_length(call: Call) -> int:
    value = decimal(call.request.headers.get("content-length", ""))
    if value is None:
        raise ApiError(400, CONTENT_LENGTH_NOT_PRESENT)
    return value


@routes.get("/immutable-data/writer", access=Access.LLA)
async def new_writer(call: Call) -> dict:
    gateway = call.gateway
    spool = await gateway.run_sync(gateway.new_spool, "writer-")
    return {"handleId": gateway.handles.add(Kind.WRITER, call.owner, Writer(spool),
                                            release=partial(gateway.release_spool, spool))}


@routes.get("/immutable-data/reader/{handle}")
async def new_reader(call: Call) -> dict:
    data_id: DataIdentifier = call.get(Kind.DATA_ID)
    if data_id.kind is not DataKind.IMMUTABLE:
        raise SafeError(errors.NO_SUCH_DATA, "not an ImmutableData identifier")
    gateway = call.gateway
    session = call.session
    sym_key = gateway.app_key(session) if session else None
    box_keypair = gateway.account.box_keypair if session else None
    blob = await gateway.run_sync(blobs.Blob, gateway.store, gateway.chunk_cache, data_id.name,
                                  sym_key, box_keypair)
    release = partial(gateway.transfer_ended, blob.size)
    return {"handleId": gateway.handles.add(Kind.READER, call.owner, blob, release=release),
            "size": blob.size}


@routes.delete("/immutable-data/reader/{handle}")
async def drop_reader(call: Call) -> None:
    call.drop(Kind.READER)


@routes.delete("/immutable-data/writer/{handle}", access=Access.LLA)
async def drop_writer(call: Call) -> None:
    call.drop(Kind.WRITER)


@routes.delete("/immutable-data/writer/{handle}/{cipher}", access=Access.LLA)
async def close_writer_alias(call: Call) -> dict:
    """The seed's spelling of close (RFC 42 draft)."""
    return await close_writer(call)


@routes.get("/immutable-data/{handle}")
async def read(call: Call) -> StreamedResponse:
    blob: blobs.Blob = call.get(Kind.READER)
    header = call.request.headers.get("range")
    start, end = parse_range(header, blob.size)
    headers = {"Content-Range": f"bytes {start}-{end}/{blob.size}", "Accept-Ranges": "bytes",
               "Content-Length": str(end - start)}
    body = await stream_blob(call.gateway, blob, start, end)
    return StreamedResponse(body, 206 if header is not None else 200, headers)


async def stream_blob(gateway: Gateway, blob: blobs.Blob, start: int,
                      end: int) -> AsyncIterator[bytes]:
    """The bytes ``[start, end)`` of ``blob`` as a response body.

    Chunks are decrypted on the gateway's chunk workers, up to ``threads`` of them ahead of the
    one being sent, so decryption and sending overlap. The first piece is ready when this
    returns, so that a missing or damaged chunk is an error answer rather than a cut-off body.
    """
    indices = iter(blob.pieces(start, end))
    ahead: deque[Future[bytes]] = deque()

    def fill() -> None:
        while len(ahead) < gateway.settings.threads:
            index = next(indices, None)
            if index is None:
                return
            ahead.append(gateway.chunk_workers.submit(blob.piece, index, start, end))

    fill()
    if not ahead:
        first = b""
    else:
        try:
            first = await wait_future(ahead.popleft())
        except BaseException:
            for future in ahead:
                future.cancel()
            raise

    async def body() -> AsyncIterator[bytes]:
        try:
            yield first
            while True:
                fill()
                if not ahead:
                    return
                yield await wait_future(ahead.popleft())
        finally:
            for future in ahead:
                future.cancel()

    return body()


def parse_range(header: str | None, total: int) -> tuple[int, int]:
    """``(start, end)`` to send for a ``Range`` header, by the launcher's rules.

    ``bytes=s-e`` reads ``[s, e)``: the end is exclusive. A missing end, or one at or past the
    size, means the size (so ``bytes=0-`` and over-long ranges read to the end). Anything but
    ``bytes=`` is a 400; non-numbers, a missing start, or start > end are 416.
    """
    if header is None:
        return 0, total
    text = header.strip().lower()
    if not text.startswith("bytes="):
        raise ApiError(400, "invalid range specified")
    positions = [p.strip() for p in text[len("bytes="):].split("-")]
    numbers = [decimal(p) for p in positions]
    if numbers[0] is None or any(n is None and p for n, p in zip(numbers, positions, strict=True)):
        raise ApiError(416, "Invalid range specified")
    start = numbers[0]
    end = total
    if len(numbers) > 1 and numbers[1] is not None and numbers[1] < total:
        end = numbers[1]
    if end < start:
        raise ApiError(416, "Invalid range specified")
    return start, end


@routes.post("/immutable-data/{handle}", access=Access.LLA)
async def append(call: Call) -> None:
    writer: Writer = call.get(Kind.WRITER)
    length = _content_length(call)
    offset_text = call.request.headers.get(OFFSET_HEADER)
    if length == 0:
        return
    async with writer.lock:
        if offset_text is not None:
            offset = decimal(offset_text)
            if offset is None:
                raise ApiError(400, f"{OFFSET_HEADER} must be a byte count")
            held = writer.spool.size
            if offset + length == held:
                return  # a retry of an append that already arrived
            if offset != held:
                raise ApiError(409, f"the writer holds {held} bytes, not {offset_text}",
                               error_code=409)
        try:
            await writer.append(call.request.stream(), length, call.gateway.run_sync)
        except ClientDisconnect:
            raise ApiError(400, "Request aborted by client") from None


@routes.put("/immutable-data/{handle}/{cipher}", access=Access.LLA)
async def close_writer(call: Call) -> dict:
    """Self-encrypt what the writer holds into the store; a data-id handle of the result."""
    writer: Writer = call.get(Kind.WRITER)
    opts = cipher_opts_of(call, call.param("cipher"))
    gateway = call.gateway
    async with writer.lock:
        name = await gateway.run_sync(writer.spool.seal, opts)
    log.debug("stored %d bytes as ImmutableData %s", writer.spool.size, name.hex())
    data_id = DataIdentifier.immutable(name)
    return {"handleId": gateway.handles.add(Kind.DATA_ID, call.owner, data_id)}
