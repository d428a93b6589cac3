"""Async client of the safefs gateway (the SAFE launcher REST API), on trio and httpx.

``GatewayClient`` wraps the handle-based API into whole operations — store a stream or a file
as ImmutableData and get its serialised DataIdentifier back, read byte ranges of it, create,
read and update StructuredData — and always drops the handles it made. It pools connections,
streams in both directions with bounded memory, and retries transient failures (connection
errors, 503) with jittered exponential backoff. Failures raise :class:`GatewayError` subclasses.

Uploads go up in segments of ``SEGMENT_SIZE`` bytes, one ``POST /immutable-data/:writer``
each. Every segment carries ``X-Safefs-Offset`` (the writer's expected size before it), which
makes a retried append idempotent: the gateway acknowledges a segment it already has.

``progress`` callbacks receive the number of bytes just transferred (like ``tqdm.update``).
"""

from __future__ import annotations

import base64
import logging
import os
import random
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpcore
import httpx
import trio

from safefs import errors, osutil
from safefs.errors import GatewayError
from safefs.gateway import ADMIN_HEADER, OFFSET_HEADER
from safefs.streams import batches, read_ahead, regroup

log = logging.getLogger(__name__)

T = TypeVar("T")

SEGMENT_SIZE = 4 * 1024 * 1024
#: Segments of ``put_file``, which uploads one file at a time (the mount daemon runs several
#: streams side by side and keeps the default). Each append is a round trip whose answer waits
#: for its last bytes to be spooled, so fewer, larger ones keep the connection busy: 1 GiB took
#: 2.3-2.7 s in 16 MiB segments and 3.0-3.1 s in 4 MiB ones; 64 MiB was slower again (buffers
#: beyond malloc's mmap threshold are faulted in afresh each time, safefs/malloc.py).
FILE_SEGMENT_SIZE = 16 * 1024 * 1024

# httpcore reads a connection at most 64 KiB at a time, and every read goes through h11, httpx
# and anyio before ``aiter_bytes`` yields it: a 1 GiB download was 16,384 trips. Reading up to
# 1 MiB when that much is waiting (as the gateway does, safefs/gateway/server.py) makes them a
# handful per chunk. It is a class attribute, not a setting, hence the assignment.
RECEIVE_BYTES = 1 << 20
if getattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES", 0) < RECEIVE_BYTES:
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = RECEIVE_BYTES

Progress = Callable[[int], None] | None

#: StructuredData handles kept for the next update of the same record (two requests instead of
#: five): enough for the directories a large copy touches, a quarter of the gateway's default
#: capacity per kind (each holds one record of at most 100 KiB there).
KEPT_SD_HANDLES = 256

_CONFLICT_CODES = (errors.DATA_EXISTS, errors.INVALID_SUCCESSOR)
_STALE_HANDLE_CODES = (errors.INVALID_SE_HANDLE, errors.INVALID_DATA_ID_HANDLE)
# Failures where the request never reached the gateway: always safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class NotFound(GatewayError):
    pass


class Unauthorized(GatewayError):
    """Missing, revoked or rejected token (401) or permission not granted (403)."""


class Conflict(GatewayError):
    """The record exists (-23) or changed since it was read (-25)."""


class GatewayUnavailable(GatewayError):
    """The gateway could not be reached, or kept answering 503, after the retries."""


def error_from_response(response: httpx.Response) -> GatewayError:
    code, description = response.status_code, response.reason_phrase
    try:
        body = response.json()
        code, description = int(body["errorCode"]), str(body["description"])
    except (ValueError, KeyError, TypeError):
        if response.text:
            description = response.text
    status = response.status_code
    if code in _CONFLICT_CODES:
        cls: type[GatewayError] = Conflict
    elif status == 404:
        cls = NotFound
    elif status in (401, 403):
        cls = Unauthorized
    elif status == 503:
        cls = GatewayUnavailable
    else:
        cls = GatewayError
    return cls(status, code, description)


class GatewayClient:
    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 60,
                 retries: int = 5, admin_secret: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.retries = retries
        self.admin_secret = admin_secret
        self._timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._cipher_handles: dict[str, int] = {}  # cipher-opts kind -> handle, reused
        # (name, tag) -> (handle, version) of records this client stored last, reused
        self._sd_handles: OrderedDict[tuple[bytes, int], tuple[int, int]] = OrderedDict()

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        while self._sd_handles:
            handle, _ = self._sd_handles.popitem()[1]
            with trio.move_on_after(1):
                await self._drop(f"/structured-data/handle/{handle}")
        await self._http.aclose()

    # -- transport ------------------------------------------------------------------------

    def _headers(self, extra: dict[str, str] | None = None, admin: bool = False) -> dict:
        headers = dict(extra or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if admin and self.admin_secret:
            headers[ADMIN_HEADER] = self.admin_secret
        return headers

    async def _backoff(self, attempt: int, why: object) -> None:
        delay = min(8.0, 0.25 * 2**attempt) * random.uniform(0.5, 1.5)
        log.debug("gateway request failed (%s); retrying in %.2fs", why, delay)
        await trio.sleep(delay)

    async def request(self, method: str, path: str, *, idempotent: bool | None = None,
                      headers: dict[str, str] | None = None, admin: bool = False,
                      timeout: Any = httpx.USE_CLIENT_DEFAULT, **kwargs: Any) -> httpx.Response:
        """Send one request, retrying transient failures; raise GatewayError on an error status.

        Requests that never reached the gateway and 503 answers are always retried; other
        transport failures only when ``idempotent`` (default: GET and HEAD).
        """
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        body: bytes | None = kwargs.pop("content", None)
        if body is not None:
            headers = {**(headers or {}), "Content-Length": str(len(body))}
        attempt = 0
        while True:
            try:
                # A body goes as a one-shot stream, not as bytes: httpx keeps a request's
                # bytes in its response, which sits in a reference cycle until the garbage
                # collector runs, and that kept sixteen 4 MiB upload segments alive at once.
                response = await self._http.request(
                    method, path, headers=self._headers(headers, admin), timeout=timeout,
                    content=None if body is None else _once(body), **kwargs)
            except httpx.TransportError as exc:
                if attempt >= self.retries or not (idempotent or isinstance(exc, _NOT_SENT)):
                    raise GatewayUnavailable(
                        0, errors.NETWORK_OTHER,
                        f"cannot reach the gateway at {self.base_url}: {exc or type(exc).__name__}",
                    ) from exc
                await self._backoff(attempt, exc)
            else:
                if response.status_code == 503 and attempt < self.retries:
                    await self._backoff(attempt, "503")
                elif response.is_error:
                    raise error_from_response(response)
                else:
                    return response
            attempt += 1

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self.request(method, path, **kwargs)).json()

    async def _handle(self, method: str, path: str, **kwargs: Any) -> int:
        return int((await self.json(method, path, **kwargs))["handleId"])

    async def _drop(self, path: str) -> None:
        """Drop a handle; a failure only leaks a handle the gateway's LRU will evict."""
        try:
            await self.request("DELETE", path, idempotent=True)
        except GatewayError as exc:
            log.debug("dropping %s failed: %s", path, exc)

    # -- gateway and authorisation --------------------------------------------------------

    async def health(self) -> bool:
        try:
            response = await self._http.get("/health", timeout=min(self._timeout, 5))
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def authorise(self, app: dict, permissions: Sequence[str] = ("LOW_LEVEL_API",), *,
                        admin_secret: str | None = None) -> str:
        """Ask for a token (waits for a person's approval unless ``admin_secret`` is given)."""
        headers = {ADMIN_HEADER: admin_secret} if admin_secret else {}
        body = await self.json("POST", "/auth", json={"app": app, "permissions": list(permissions)},
                               headers=headers, timeout=httpx.Timeout(self._timeout, read=None))
        self.token = body["token"]
        self._cipher_handles.clear()  # handles belong to the session of the previous token
        self._sd_handles.clear()
        return self.token

    async def token_valid(self) -> bool:
        try:
            await self.request("GET", "/auth")
        except Unauthorized:
            return False
        return True

    async def revoke(self) -> None:
        """Give this client's token back (``DELETE /auth``)."""
        await self.request("DELETE", "/auth")
        self.token = None
        self._cipher_handles.clear()
        self._sd_handles.clear()

    # -- admin (needs admin_secret) -------------------------------------------------------

    async def auth_requests(self) -> list[dict]:
        return await self.json("GET", "/admin/auth-requests", admin=True)

    async def decide(self, request_id: str, approve: bool) -> None:
        verb = "approve" if approve else "reject"
        await self.request("POST", f"/admin/auth-requests/{request_id}/{verb}", admin=True)

    async def apps(self) -> list[dict]:
        return await self.json("GET", "/admin/apps", admin=True)

    async def revoke_app(self, session_id: str) -> None:
        await self.request("DELETE", f"/admin/apps/{session_id}", admin=True, idempotent=True)

    # -- cipher options, data identifiers, sign keys ---------------------------------------

    async def cipher_opts(self, kind: str, key_handle: int | None = None) -> int:
        suffix = f"/{key_handle}" if key_handle is not None else ""
        return await self._handle("GET", f"/cipher-opts/{kind}{suffix}")

    async def drop_cipher_opts(self, handle: int) -> None:
        await self._drop(f"/cipher-opts/{handle}")

    async def data_id_structured(self, name: bytes, tag: int) -> int:
        return await self._handle("POST", "/data-id/structured-data",
                                  json={"name": _b64(name), "typeTag": tag})

    async def data_id_appendable(self, name: bytes, private: bool = False) -> int:
        return await self._handle("POST", "/data-id/appendable-data",
                                  json={"name": _b64(name), "isPrivate": private})

    async def serialise_data_id(self, handle: int) -> bytes:
        return (await self.request("GET", f"/data-id/{handle}")).content

    async def deserialise_data_id(self, data_id: bytes) -> int:
        return await self._handle("POST", "/data-id", content=data_id, idempotent=True,
                                  headers={"Content-Type": "application/octet-stream"})

    async def drop_data_id(self, handle: int) -> None:
        await self._drop(f"/data-id/{handle}")

    async def sign_key(self) -> int:
        return await self._handle("GET", "/sign-key/")

    # -- immutable data: writing -----------------------------------------------------------

    async def new_writer(self) -> int:
        return await self._handle("GET", "/immutable-data/writer")

    async def append(self, writer: int, data: bytes, offset: int | None = None) -> None:
        """Append to a writer; with ``offset`` (its size before) a retry cannot append twice."""
        headers = {"Content-Type": "application/octet-stream"}
        if offset is not None:
            headers[OFFSET_HEADER] = str(offset)
        await self.request("POST", f"/immutable-data/{writer}", content=data, headers=headers,
                           idempotent=offset is not None)

    async def close_writer(self, writer: int, cipher_handle: int | str = "PLAIN") -> int:
        """Encrypt and store what was written; returns a data-id handle. May take a while."""
        return await self._handle("PUT", f"/immutable-data/{writer}/{cipher_handle}",
                                  timeout=httpx.Timeout(self._timeout, read=None))

    async def drop_writer(self, writer: int) -> None:
        await self._drop(f"/immutable-data/writer/{writer}")

    async def put_stream(self, chunks: AsyncIterable[bytes], size: int | None,
                         cipher: str = "PLAIN", progress: Progress = None,
                         segment_size: int = SEGMENT_SIZE) -> bytes:
        """Store ``size`` bytes from ``chunks`` (None: however many they give, e.g. a file still
        being written); returns the serialised DataIdentifier."""
        writer = await self.new_writer()
        try:
            offset = 0
            async with read_ahead(regroup(chunks, segment_size)) as segments:
                async for segment in segments:
                    if size is not None and offset + len(segment) > size:
                        raise ValueError(f"the stream is longer than the announced {size} bytes")
                    await self.append(writer, segment, offset)
                    offset += len(segment)
                    if progress:
                        progress(len(segment))
            if size is not None and offset != size:
                raise ValueError(f"the stream ended after {offset} of {size} bytes")
            return await self._close_to_data_id(writer, cipher)
        finally:
            await self.drop_writer(writer)

    async def _close_to_data_id(self, writer: int, cipher: str) -> bytes:
        data_id = await self._using_cipher(
            cipher, lambda handle: self.close_writer(writer, "PLAIN" if handle is None else handle))
        try:
            return await self.serialise_data_id(data_id)
        finally:
            await self.drop_data_id(data_id)

    async def put_file(self, path: str | os.PathLike, cipher: str = "PLAIN",
                       progress: Progress = None) -> bytes:
        async with await trio.open_file(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size

            async def chunks() -> AsyncIterator[bytes]:
                while data := await file.read(FILE_SEGMENT_SIZE):
                    yield data

            return await self.put_stream(chunks(), size, cipher, progress, FILE_SEGMENT_SIZE)

    async def put_bytes(self, data: bytes, cipher: str = "PLAIN") -> bytes:
        async def chunks() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(chunks(), len(data), cipher)

    # -- immutable data: reading -----------------------------------------------------------

    async def open_reader(self, data_id: bytes) -> Reader:
        reader = Reader(self, data_id)
        await reader.open()
        return reader

    async def get_bytes(self, data_id: bytes) -> bytes:
        reader = await self.open_reader(data_id)
        try:
            return await reader.read()
        finally:
            await reader.close()

    async def get_file(self, data_id: bytes, dest: str | os.PathLike,
                       progress: Progress = None) -> None:
        """Write the data to ``dest`` through a temporary file renamed into place at the end."""
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        reader = await self.open_reader(data_id)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
            try:
                async with read_ahead(batches(reader.iter_range(), SEGMENT_SIZE)) as pieces:
                    # Received in pieces of up to RECEIVE_BYTES, written about a segment at a
                    # time (not joined first) while the next arrives.
                    async for batch in pieces:
                        await trio.to_thread.run_sync(_write_out, fd, batch)
                        if progress:
                            progress(sum(map(len, batch)))
                await trio.to_thread.run_sync(os.fsync, fd)
            finally:
                os.close(fd)
            await trio.to_thread.run_sync(os.replace, tmp, dest)
        finally:
            await reader.close()
            tmp.unlink(missing_ok=True)

    # -- structured data -------------------------------------------------------------------

    async def _sd_handle(self, name: bytes, tag: int) -> dict:
        data_id = await self.data_id_structured(name, tag)
        try:
            return await self.json("GET", f"/structured-data/handle/{data_id}")
        finally:
            await self.drop_data_id(data_id)

    async def _using_cipher(self, cipher: str, use: Callable[[int | None], Awaitable[T]]) -> T:
        """``use(handle)`` with a cipher-opts handle kept for the session (None for PLAIN):
        two requests fewer per use. A handle the gateway no longer knows (evicted, another
        session) is replaced once; the gateway checks it before it changes anything."""
        cipher = cipher.upper()
        if cipher == "PLAIN":
            return await use(None)
        for attempt in range(2):
            handle = self._cipher_handles.get(cipher)
            if handle is None:
                handle = await self.cipher_opts(cipher)
                if self._cipher_handles.setdefault(cipher, handle) != handle:
                    await self.drop_cipher_opts(handle)  # another task made one meanwhile
                    handle = self._cipher_handles[cipher]
            try:
                return await use(handle)
            except GatewayError as exc:
                if exc.code != errors.INVALID_CIPHER_OPT_HANDLE or attempt:
                    raise
                if self._cipher_handles.get(cipher) == handle:
                    del self._cipher_handles[cipher]
        raise AssertionError("unreachable")

    async def sd_create(self, name: bytes, tag: int, data: bytes, cipher: str = "PLAIN",
                        version: int = 0) -> None:
        """Create and store a StructuredData (Conflict if it exists)."""
        async def create(cipher_handle: int | None) -> int:
            body: dict[str, Any] = {"name": _b64(name), "typeTag": tag, "data": _b64(data),
                                    "version": version}
            if cipher_handle is not None:
                body["cipherOpts"] = cipher_handle
            return await self._handle("POST", "/structured-data", json=body)

        handle = await self._using_cipher(cipher, create)
        try:
            await self.request("PUT", f"/structured-data/{handle}")
        except BaseException:
            await self._drop(f"/structured-data/handle/{handle}")
            raise
        await self._keep_sd_handle(name, tag, handle, version)

    async def sd_read(self, name: bytes, tag: int,
                      version: int | None = None) -> tuple[int, bytes]:
        """(record version, data); ``version`` picks a past data version of a tag-501 record."""
        info = await self._sd_handle(name, tag)
        handle = info["handleId"]
        try:
            path = f"/structured-data/{handle}" + (f"/{version}" if version is not None else "")
            return int(info["version"]), (await self.request("GET", path)).content
        finally:
            await self._drop(f"/structured-data/handle/{handle}")

    async def sd_update(self, name: bytes, tag: int, data: bytes, expected_version: int,
                        cipher: str = "PLAIN") -> int:
        """Replace the data if the record is still at ``expected_version``; the new version.

        The handle of a record this client stored last is kept: updating it again is a PATCH
        and a POST (the POST's compare-and-swap still refuses a record that moved on)."""
        kept = self._sd_handles.pop((name, tag), None)
        if kept is not None:
            handle, version = kept
            if version == expected_version:
                try:
                    await self._patch_and_post(handle, data, cipher)
                except GatewayError as exc:
                    await self._drop(f"/structured-data/handle/{handle}")
                    if exc.code != errors.INVALID_SD_HANDLE:  # else evicted: fetch it again
                        raise
                else:
                    await self._keep_sd_handle(name, tag, handle, expected_version + 1)
                    return expected_version + 1
            else:
                await self._drop(f"/structured-data/handle/{handle}")
        info = await self._sd_handle(name, tag)
        handle = info["handleId"]
        try:
            if int(info["version"]) != expected_version:
                raise Conflict(400, errors.INVALID_SUCCESSOR,
                               f"record is at version {info['version']}, "
                               f"not {expected_version}")
            await self._patch_and_post(handle, data, cipher)
        except BaseException:
            await self._drop(f"/structured-data/handle/{handle}")
            raise
        await self._keep_sd_handle(name, tag, handle, expected_version + 1)
        return expected_version + 1

    async def _patch_and_post(self, handle: int, data: bytes, cipher: str) -> None:
        async def patch(cipher_handle: int | None) -> None:
            body: dict[str, Any] = {"data": _b64(data)}
            if cipher_handle is not None:
                body["cipherOpts"] = cipher_handle
            await self.request("PATCH", f"/structured-data/{handle}", json=body)

        await self._using_cipher(cipher, patch)
        await self.request("POST", f"/structured-data/{handle}")

    async def _keep_sd_handle(self, name: bytes, tag: int, handle: int, version: int) -> None:
        """Keep the handle of a record just stored (``version``), dropping the oldest kept."""
        self._sd_handles[(name, tag)] = (handle, version)
        while len(self._sd_handles) > KEPT_SD_HANDLES:
            (_, (oldest, _)) = self._sd_handles.popitem(last=False)
            await self._drop(f"/structured-data/handle/{oldest}")

    async def sd_info(self, name: bytes, tag: int) -> dict:
        """``{"version", "dataVersionLength", "isOwner"}`` (``dataVersionLength``: tag 501)."""
        info = await self._sd_handle(name, tag)
        await self._drop(f"/structured-data/handle/{info['handleId']}")
        return {k: info[k] for k in ("version", "dataVersionLength", "isOwner") if k in info}


class Reader:
    """Random access to one ImmutableData through a gateway reader handle.

    If the handle goes stale (gateway restarted, or evicted), the reader reopens it once.
    """

    def __init__(self, client: GatewayClient, data_id: bytes) -> None:
        self._client = client
        self._data_id = data_id
        self._handle: int | None = None
        self.size = 0

    async def open(self) -> None:
        client = self._client
        data_id = await client.deserialise_data_id(self._data_id)
        try:
            info = await client.json("GET", f"/immutable-data/reader/{data_id}")
        finally:
            await client.drop_data_id(data_id)
        self._handle, self.size = int(info["handleId"]), int(info["size"])

    async def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            await self._client._drop(f"/immutable-data/reader/{handle}")

    def _bounds(self, start: int, end: int | None) -> tuple[int, int]:
        end = self.size if end is None else min(end, self.size)
        if start < 0 or start > end:
            raise ValueError(f"bad range {start}-{end} of {self.size} bytes")
        return start, end

    async def read(self, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` (``end`` defaults to the size)."""
        start, end = self._bounds(start, end)
        if start == end:
            return b""
        return b"".join([piece async for piece in self.iter_range(start, end)])

    async def iter_range(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)``, resuming after transient failures."""
        start, end = self._bounds(start, end)
        attempt = 0
        reopened = False
        while start < end:
            if self._handle is None:
                await self.open()
            # The launcher reads "bytes=s-e" with an exclusive end.
            headers = self._client._headers({"Range": f"bytes={start}-{end}"})
            try:
                async with self._client._http.stream(
                        "GET", f"/immutable-data/{self._handle}", headers=headers) as response:
                    if response.is_error:
                        await response.aread()
                        raise error_from_response(response)
                    async for piece in response.aiter_bytes():
                        start += len(piece)
                        attempt = 0
                        yield piece
                if start < end:
                    raise httpx.ReadError("response ended early")
            except httpx.TransportError as exc:
                if attempt >= self._client.retries:
                    raise GatewayUnavailable(0, errors.NETWORK_OTHER,
                                             f"reading from the gateway failed: {exc}") from exc
                await self._client._backoff(attempt, exc)
                attempt += 1
            except GatewayError as exc:
                if exc.code in _STALE_HANDLE_CODES and not reopened:
                    reopened, self._handle = True, None
                elif exc.status == 503 and attempt < self._client.retries:
                    await self._client._backoff(attempt, exc)
                    attempt += 1
                else:
                    raise


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _write_out(fd: int, pieces: list[bytes]) -> None:
    """Write all of ``pieces`` and start writing them to disk: the fsync at the end of a
    download then finds little left to do, the disk having worked while the rest arrived."""
    osutil.write_pieces(fd, pieces)
    osutil.start_writeback(fd)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
