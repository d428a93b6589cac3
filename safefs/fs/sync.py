"""SyncTask: carries local changes to the gateway and remote changes into the mount.

One task runs *cycles*, and only one cycle runs at a time:

1. upload every dirty file that is idle (no write for ``upload_delay``, and closed or fsynced
   since its last write), several at once, through writer handles; small files become inline
   content of their directory record instead (up to a budget per directory), and files up to
   ``PACK_FILE_MAX`` travel together, several per ImmutableData (a pack);
2. publish every pending directory record that is idle (``dir_delay``: a burst of changes in one
   directory becomes one version), several at once, a new directory before its parent, with
   compare-and-swap on the version; when
   the record moved on remotely, fetch it, merge three-way, apply the result locally and retry;
3. every ``poll_interval``, ask for the current version of a batch of directories and merge
   those that moved (changes made by other mounts of the account).

Order invariants: a record only names uploaded content and existing child records (what is not
there yet keeps its previous entry, see ``Metadata.build_record``); an upload or a publish is
committed locally only if the file or directory did not change while it was on the way.

While the gateway is unreachable the task waits for it to answer again (probing its health);
the mount keeps working from the cache meanwhile and everything catches up afterwards. Other
failures retry with a backoff of up to ``MAX_BACKOFF``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import trio

from safefs import osutil
from safefs.client import Conflict, GatewayError, GatewayUnavailable, NotFound
from safefs.fs import CPU_THREADS, INLINE_BUDGET, INLINE_MAX, UPLOAD_DELAY, run_all
from safefs.fs.dirrecord import Ref, packed_ref
from safefs.fs.merge import Copy, Take, conflict_name, merge
from safefs.fs.meta import ROOT_INODE, DirState, Metadata, NoSuchEntry

if TYPE_CHECKING:
    from safefs.fs.cache import FileCache
    from safefs.fs.remote import Remote

log = logging.getLogger(__name__)

UPLOAD_CONNECTIONS = 8
#: Uploads of files above one piece at once: each holds a few pieces in memory.
LARGE_UPLOADS = 2
#: Directory records published at once: the store commits record writes arriving together in
#: one transaction after one flush, so more at a time cost fewer syncs each; but the HTTP
#: client's pool does work quadratic in its connections for every request (16 at once: a
#: fifth of the daemon's time in an untar's settle; 8: 0.08 CPU-s less and 1.33 s instead of
#: 1.45 s on average, four interleaved rounds).
PUBLISH_CONNECTIONS = 8
UPLOAD_PIECE = 4 * 1024 * 1024
#: Files up to this size that are not inlined travel in packs (one ImmutableData for many
#: files: six requests per pack instead of six per file) of up to ``PACK_MAX`` bytes.
PACK_FILE_MAX = 1024 * 1024
PACK_MAX = 8 * 1024 * 1024
#: A file written from its start, in order, goes up while it is being written once it holds
#: this much: a large copy is mostly uploaded by the time it is closed.
STREAM_MIN = 4 * UPLOAD_PIECE
#: Background cycles start at least this share of the upload delay apart.
CYCLE_SPACING = 0.5
#: The idle delay of directories, as a multiple of the files' upload delay.
DIR_DELAY_FACTOR = 2.5
MAX_BACKOFF = 30.0
#: Directories whose version is checked per poll (4 requests each).
POLL_BATCH = 16

#: Called with (directory, names whose entry changed, inodes whose content or existence
#: changed) after remote changes were applied locally.
RemoteChangeHook = Callable[[int, list[bytes], list[int]], None]


class FileChanged(Exception):
    """The file changed while it was being uploaded: upload it again later."""


@dataclass(slots=True)
class Stream:
    """A file uploaded while it is written (appended to from its start, in order).

    :written: bytes written contiguously from offset 0 so far (what may be sent).
    :read: bytes read from the cache file to be sent.
    :broken: a write landed below what was read, or the file was truncated below it: the
        stream ends without effect and the file goes up the usual way.
    :final: (generation, size, mtime) of the content once all of it was read, the file closed.
    """

    inode: int
    written: int = 0
    read: int = 0
    broken: bool = False
    started: bool = False
    final: tuple[int, int, int] | None = None
    changed: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True, slots=True)
class PackItem:
    """A small file's content on its way into a pack."""

    inode: int
    generation: int
    mtime_ns: int
    content: bytes
    in_database: bool = False  # a small file's row (else a cache file) holds the content


class SyncTask:
    """:online: whether the gateway answered the latest request.
    :last_sync: wall-clock time of the latest cycle that left nothing pending (0: none).
    :uploaded_bytes: bytes sent so far (progress of ``safefs sync``)."""

    def __init__(self, meta: Metadata, cache: FileCache, remote: Remote, *,
                 upload_delay: float = UPLOAD_DELAY, dir_delay: float | None = None,
                 poll_interval: float = 15.0) -> None:
        self.meta = meta
        self.cache = cache
        self.remote = remote
        self.upload_delay = upload_delay
        # Longer than the uploads' by default: a directory whose files were just written is
        # published once, after they are uploaded, not once before and once after; and tar,
        # cp -a and rsync -a set each directory's times and mode after filling it, so a copy
        # that goes on for a while would otherwise publish every directory twice.
        self.dir_delay = DIR_DELAY_FACTOR * upload_delay if dir_delay is None else dir_delay
        self.poll_interval = poll_interval
        self.on_remote_change: RemoteChangeHook = lambda directory, names, inodes: None
        self.last_sync = 0.0
        self.uploaded_bytes = 0
        self.last_error = ""
        self._writers: Counter[int] = Counter()
        self._fsynced: dict[int, float] = {}  # inode -> its change time when last fsynced
        self._lock = trio.Lock()
        self._large_uploads = trio.CapacityLimiter(LARGE_UPLOADS)
        self._cpu = trio.CapacityLimiter(CPU_THREADS)
        self._wake = trio.Event()
        self._stopping = False
        self._stopped = trio.Event()
        self._last_cycle = -math.inf
        self._loading: dict[int, trio.Event] = {}
        self._streams: dict[int, Stream] = {}
        self._published_at: dict[int, float] = {}  # directory -> when we last stored its record
        self._nursery: trio.Nursery | None = None  # while run() runs: where streams go
        self._streams_done = trio.Event()
        self._poll_cursor = 0
        self._next_poll = 0.0
        self._asleep_until = 0.0
        meta.on_change = self._changed

    # -- what the file system tells us --------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def _changed(self) -> None:
        """Something new to sync: it becomes due after an idle delay, so the loop only needs
        waking if it sleeps longer than that."""
        if time.monotonic() + min(self.upload_delay, self.dir_delay) < self._asleep_until:
            self.wake()

    def opened_for_write(self, inode: int) -> None:
        self._writers[inode] += 1

    def closed_for_write(self, inode: int) -> None:
        self._writers[inode] -= 1
        if self._writers[inode] <= 0:
            del self._writers[inode]
            self._fsynced.pop(inode, None)
            stream = self._streams.get(inode)
            if stream is not None:
                if not stream.started:
                    del self._streams[inode]  # too small to stream: the usual way
                stream.changed.set()
            self._due_at(inode)

    def fsynced(self, inode: int) -> None:
        """The file was fsynced: it may go up once idle even while it stays open."""
        self._fsynced[inode] = self.meta.file_changes.get(inode, 0.0)
        self._due_at(inode)

    def wrote(self, inode: int, offset: int, length: int) -> None:
        """A write reached the cache: feed (or start, or break) the file's stream."""
        stream = self._streams.get(inode)
        if stream is None:
            if offset != 0 or self._nursery is None or inode not in self._writers:
                return
            ino = self.meta.get(inode)
            if ino.size != length or ino.fetch_limit:  # not a file being written afresh
                return
            stream = self._streams[inode] = Stream(inode)
        if offset < stream.read:
            stream.broken = True
        elif offset <= stream.written:
            stream.written = max(stream.written, offset + length)
        if not stream.started and stream.written >= STREAM_MIN and not stream.broken:
            stream.started = True
            assert self._nursery is not None
            self._nursery.start_soon(self._stream, stream)
        stream.changed.set()

    def truncated(self, inode: int, size: int) -> None:
        stream = self._streams.get(inode)
        if stream is not None:
            if size < stream.read:
                stream.broken = True
            stream.written = min(stream.written, size)
            stream.changed.set()

    def _due_at(self, inode: int) -> None:
        """The file may be uploaded once idle: wake the loop if it would sleep past that (not
        on every close: each wake scans every pending file)."""
        changed = self.meta.file_changes.get(inode)
        if changed is not None and changed + self.upload_delay < self._asleep_until:
            self.wake()

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run cycles until :meth:`stop`; streams run meanwhile."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._run()
            finally:
                self._nursery = None
                for stream in self._streams.values():
                    stream.broken = True
                    stream.changed.set()

    async def _run(self) -> None:
        backoff = 0.0
        while not self._stopping:
            timeout = backoff or self._next_deadline()
            self._asleep_until = time.monotonic() + timeout
            with trio.move_on_after(timeout):
                await self._wake.wait()
            self._asleep_until = 0.0
            self._wake = trio.Event()
            # At most one background cycle per CYCLE_SPACING of the upload delay: files falling
            # due one by one (an untar closes hundreds a second) go up together, in full packs,
            # not a pack of a few files per cycle.
            spacing = self._last_cycle + CYCLE_SPACING * self.upload_delay - time.monotonic()
            if spacing > 0 and not self._stopping:
                with trio.move_on_after(spacing):
                    await self._stopped.wait()
            if self._stopping:
                break
            self._last_cycle = time.monotonic()
            try:
                async with self._lock:
                    await self._cycle(force=False)
                backoff = 0.0
            except GatewayUnavailable as exc:
                self._note_error(exc)
                log.info("gateway unreachable; waiting for it to answer again")
                await self.remote.wait_online()
                log.info("gateway reachable again; catching up")
            except GatewayError as exc:
                backoff = min(max(backoff * 2, 1.0), MAX_BACKOFF)
                self._note_error(exc)
                log.warning("sync failed: %s; retrying in %.0f s", exc, backoff)
            except Exception as exc:  # e.g. a record this version cannot read: keep mounted
                backoff = MAX_BACKOFF
                self._note_error(exc)
                log.exception("sync failed; retrying in %.0f s", backoff)

    def stop(self) -> None:
        self._stopping = True
        self._stopped.set()
        self.wake()

    def _note_error(self, exc: Exception) -> None:
        self.last_error = str(exc)

    def _next_deadline(self) -> float:
        """Seconds until something becomes due: an idle delay expires, or the next poll."""
        due = [self._next_poll]
        due += [changed + self.upload_delay for inode, changed in self.meta.file_changes.items()
                if not self._busy(inode)]
        due += [changed + self.dir_delay for changed in self.meta.dir_changes.values()]
        return max(min(due) - time.monotonic(), 0)

    def _busy(self, inode: int) -> bool:
        """Open for writing and not fsynced since the last change: closing or fsyncing the
        file wakes the loop."""
        return inode in self._writers and \
            self._fsynced.get(inode) != self.meta.file_changes.get(inode)

    async def flush(self, pull: bool = False) -> None:
        """Upload and publish everything now (and with ``pull`` merge the remote changes of
        every directory); returns once nothing is pending, raises GatewayError on failure."""
        async with self._lock:
            started = time.monotonic()
            await self._settle_streams()
            await self._cycle(force=True)
            if pull:
                await self._poll(everything=True, current_since=started)
            while self.meta.file_changes or self.meta.dir_changes:
                await self._settle_streams()  # (a file written meanwhile may stream)
                await self._cycle(force=True)

    async def _cycle(self, force: bool) -> None:
        files = self._due(self.meta.file_changes, self.upload_delay, force)
        if force and files:
            await self._upload_and_publish(files)
        elif files:
            await self._upload_all(files)
        await self._publish_due(force)
        if time.monotonic() >= self._next_poll:
            await self._poll(everything=False)
        self.last_error = ""
        if not self.meta.file_changes and not self.meta.dir_changes:
            self.last_sync = time.time()

    async def _upload_and_publish(self, files: list[int]) -> None:
        """A flush: upload files and meanwhile publish the directories, each once the files in
        it are done (uploaded, or found changed): the first directories go up while the last
        packs do."""
        parents = {inode: where[0] for inode in files
                   if (where := self.meta.name_of(inode)) is not None}
        waiting = Counter(parents.values())
        uploaded = {directory: trio.Event() for directory in waiting}

        def finished(inode: int) -> None:
            directory = parents.pop(inode, None)
            if directory is not None:
                waiting[directory] -= 1
                if not waiting[directory]:
                    uploaded[directory].set()

        async def upload() -> None:
            try:
                await self._upload_all(files, finished)
            finally:  # failed uploads keep their files dirty; the records go up without them
                for event in uploaded.values():
                    event.set()

        await run_all(lambda work: work(),
                      [upload, partial(self._publish_due, True, uploaded)])

    async def _publish_due(self, force: bool,
                           uploaded: dict[int, trio.Event] | None = None) -> None:
        """Publish the due directories (and those that became due meanwhile) once each; one in
        ``uploaded`` waits for its event."""
        published: set[int] = set()
        while due := [directory for directory in self._due(self.meta.dir_changes,
                                                           self.dir_delay, force)
                      if directory not in published]:
            await self._publish_together(due, uploaded or {})
            published.update(due)

    async def _publish_together(self, directories: list[int],
                                uploaded: dict[int, trio.Event]) -> None:
        """Publish directories, ``PUBLISH_CONNECTIONS`` at once. A parent may only name child
        records that exist, so a directory waits for those of its new subdirectories that are
        in the list (publishing one makes the parent pending again); the others wait for
        nothing but their files' uploads (``uploaded``)."""
        done = {directory: trio.Event() for directory in directories}
        new_children: dict[int, list[int]] = {}
        for directory in directories:
            where = self.meta.name_of(directory)
            if where is not None and where[0] in done and \
                    self.meta.get(directory).dir_state == DirState.NEW:
                new_children.setdefault(where[0], []).append(directory)
        connections = trio.CapacityLimiter(PUBLISH_CONNECTIONS)

        async def publish(directory: int) -> None:
            try:
                if directory in uploaded:
                    await uploaded[directory].wait()
                for child in new_children.get(directory, ()):
                    await done[child].wait()
                async with connections:
                    await self.publish(directory)
            finally:
                done[directory].set()

        await run_all(publish, directories)

    def _due(self, changes: dict[int, float], delay: float, force: bool) -> list[int]:
        """The files (or directories) of ``changes`` whose upload (or publish) is due; entries
        with nothing left to do are dropped from ``changes`` on the way."""
        now = time.monotonic()
        due = []
        for inode, changed in list(changes.items()):
            if inode in self._streams and self._streams[inode].started:
                continue  # going up as it is written
            if not force and (now - changed < delay or self._busy(inode)):
                continue
            if self.meta.needs_sync(inode):
                due.append(inode)
            else:
                del changes[inode]
        return due

    # -- uploads --------------------------------------------------------------------------------

    async def _upload_all(self, files: list[int],
                          finished: Callable[[int], None] = lambda inode: None) -> None:
        """Upload files: large ones each through a writer, several at once; the others in
        batches of about ``PACK_MAX`` bytes, whose small files not inlined travel as one pack
        (and only one batch is in memory at a time). ``finished(inode)`` once a file is done
        (uploaded, or found changed and left for later)."""
        items: list[PackItem] = []

        async def upload(inode: int) -> None:
            try:
                item = await self.upload(inode, packable=True)
            except (FileChanged, NoSuchEntry):
                log.debug("inode %d changed during its upload; later", inode)
                finished(inode)
            else:
                if item is None:
                    finished(inode)
                else:
                    items.append(item)

        sizes = {inode: self.meta.get(inode).size for inode in files}
        large = [inode for inode in files if sizes[inode] > PACK_FILE_MAX]
        await run_all(upload, large, UPLOAD_CONNECTIONS)
        self.meta.commit()  # what the gateway now holds is not forgotten after a kill -9
        batches: list[list[int]] = [[]]
        batch_size = 0
        for inode in sorted(set(files) - set(large)):
            if batch_size >= PACK_MAX:
                batches.append([])
                batch_size = 0
            batches[-1].append(inode)
            batch_size += sizes[inode]
        for batch in batches:
            await run_all(upload, batch, UPLOAD_CONNECTIONS)
            if items:
                await self._upload_pack(items)
                for item in items:
                    finished(item.inode)
                items.clear()
            self.meta.commit()

    async def upload(self, inode: int, packable: bool = False) -> PackItem | None:
        """Upload a file's current content (if it does not change meanwhile). With
        ``packable``, a small file's content is returned for a pack instead."""
        ino = self.meta.get(inode)
        generation = ino.generation
        await self.cache.ensure_present(inode, 0, ino.size)  # the parts never fetched
        ino = self.meta.get(inode)
        if ino.generation != generation:
            raise FileChanged(inode)
        size, mtime_ns = ino.size, ino.mtime_ns
        where = self.meta.name_of(inode)
        inline = size <= INLINE_MAX and where is not None and \
            self.meta.inline_bytes(where[0], besides=inode) + size <= INLINE_BUDGET
        small = self.cache.small_content(inode)
        if small is not None and not inline:
            if packable:  # the row stays, as the cached copy of the packed content
                return PackItem(inode, generation, mtime_ns, small, in_database=True)
            self.cache.to_cache_file(inode)  # uploaded as ImmutableData: cached as such
            small = None
        if small is not None:
            ref, data = Ref.INLINE, small
        else:
            fd = self.cache.open_for_upload(inode)
            try:
                if inline or (packable and size <= PACK_FILE_MAX):
                    content = os.pread(fd, size, 0)
                    if len(content) != size:
                        raise FileChanged(inode)
                    if not inline:
                        return PackItem(inode, generation, mtime_ns, content)
                    ref, data = Ref.INLINE, content
                else:
                    large = size > UPLOAD_PIECE
                    async with self._large_uploads if large else contextlib.nullcontext():
                        data = await self.remote.upload(self._pieces(fd, size), size)
                    ref = Ref.DATA_ID
            finally:
                os.close(fd)
        self._uploaded(inode, generation, ref, data, size, mtime_ns, in_cache_file=small is None)
        return None

    async def _upload_pack(self, items: list[PackItem]) -> None:
        """Store several small files as one ImmutableData: one writer instead of one each."""
        items = list(items)

        async def contents() -> AsyncIterator[bytes]:
            for item in items:
                self.uploaded_bytes += len(item.content)
                yield item.content

        pack = await self.remote.upload(contents(), sum(len(item.content) for item in items))
        offset = 0
        for item in items:
            try:
                self._uploaded(item.inode, item.generation, Ref.PACKED,
                               packed_ref(offset, pack), len(item.content), item.mtime_ns,
                               in_cache_file=not item.in_database)
            except FileChanged:
                log.debug("inode %d changed during its upload; later", item.inode)
            offset += len(item.content)

    def _uploaded(self, inode: int, generation: int, ref: Ref, data: bytes, size: int,
                  mtime_ns: int, in_cache_file: bool = True) -> None:
        if not self.meta.mark_uploaded(inode, generation, ref, data, size, mtime_ns,
                                       in_cache_file=in_cache_file):
            raise FileChanged(inode)
        self._fsynced.pop(inode, None)
        self.cache.uploaded(inode)
        if log.isEnabledFor(logging.DEBUG):  # a path costs a query per level
            log.debug("uploaded %r (%d bytes)", self.meta.path_of(inode), size)

    async def _settle_streams(self) -> None:
        """Let the streams of closed files finish; end those of files still open (a flush
        uploads those the usual way, as they are now)."""
        for stream in self._streams.values():
            if stream.inode in self._writers:
                stream.broken = True
                stream.changed.set()
        while any(stream.started for stream in self._streams.values()):
            await self._streams_done.wait()

    async def _stream(self, stream: Stream) -> None:
        """Upload a file while it is written; when it is closed, finish and record it."""
        inode = stream.inode
        try:
            data = await self.remote.upload(self._written_pieces(stream), None)
            assert stream.final is not None
            generation, size, mtime_ns = stream.final
            self._uploaded(inode, generation, Ref.DATA_ID, data, size, mtime_ns)
            self.meta.commit()
        except (FileChanged, NoSuchEntry, GatewayError, OSError) as exc:
            log.debug("streaming inode %d stopped (%s); it goes up the usual way", inode,
                      exc or type(exc).__name__)
        finally:
            if self._streams.get(inode) is stream:
                del self._streams[inode]
            self._streams_done.set()
            self._streams_done = trio.Event()
            self.wake()

    async def _written_pieces(self, stream: Stream) -> AsyncIterator[bytes]:
        """What is written, a piece at a time, until the file is closed; FileChanged if the
        stream breaks. At the end ``stream.final`` holds what the content is a snapshot of."""
        inode = stream.inode
        fd = self.cache.open_for_upload(inode)
        try:
            while not stream.broken:
                closed = inode not in self._writers
                end = min(stream.written, stream.read + UPLOAD_PIECE)
                if end - stream.read == UPLOAD_PIECE or (closed and end > stream.read):
                    # The slot only while reading and handing on a piece: a file kept open (a
                    # log) holds none.
                    async with self._large_uploads:
                        start, stream.read = stream.read, end
                        piece = await trio.to_thread.run_sync(os.pread, fd, end - start, start)
                        if stream.broken or len(piece) != end - start:
                            break
                        # The cache file's pages go to disk while the rest is copied, not
                        # all at the durability barrier of the close.
                        osutil.start_writeback(fd)
                        self.uploaded_bytes += len(piece)
                        yield piece
                elif closed:
                    ino = self.meta.get(inode)
                    if stream.read != stream.written or stream.read != ino.size:
                        break
                    stream.final = ino.generation, ino.size, ino.mtime_ns
                    return
                else:
                    await stream.changed.wait()
                    stream.changed = trio.Event()
        finally:
            os.close(fd)
        raise FileChanged(inode)

    async def _pieces(self, fd: int, size: int) -> AsyncIterator[bytes]:
        offset = 0
        while offset < size:
            piece = await trio.to_thread.run_sync(os.pread, fd, min(UPLOAD_PIECE, size - offset),
                                                  offset)
            if not piece:
                raise FileChanged(fd)  # truncated meanwhile
            offset += len(piece)
            self.uploaded_bytes += len(piece)
            yield piece

    # -- directories ----------------------------------------------------------------------------

    async def publish(self, directory: int) -> None:
        """Publish a directory's record; on a version conflict merge and try again."""
        while True:
            ino = self.meta.get(directory)
            record, moved_upto, generation = self.meta.build_record(directory)
            encoded = await trio.to_thread.run_sync(record.encode, limiter=self._cpu)
            if ino.dir_state == DirState.LOADED and encoded == self.meta.base_encoded(directory):
                assert ino.dir_version is not None
                self.meta.mark_published(directory, generation, ino.dir_version, encoded,
                                         moved_upto)
                return
            assert ino.dir_name is not None
            try:
                if ino.dir_state == DirState.NEW:
                    version = await self.remote.create_dir(ino.dir_name, encoded)
                else:
                    assert ino.dir_version is not None
                    version = await self.remote.update_dir(ino.dir_name, encoded,
                                                           ino.dir_version)
            except Conflict:
                log.info("%r changed remotely; merging", self.meta.path_of(directory))
                await self.merge_remote(directory)
                continue
            self.meta.mark_published(directory, generation, version, encoded, moved_upto)
            self.meta.commit()  # the version we published is our base, even after a kill -9
            self._published_at[directory] = time.monotonic()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("published %r version %d", self.meta.path_of(directory), version)
            return

    async def merge_remote(self, directory: int) -> None:
        """Fetch the latest record of a directory and merge it into the local state."""
        ino = self.meta.get(directory)
        assert ino.dir_name is not None
        version, remote, encoded = await self.remote.read_dir(ino.dir_name)
        # From here on no await: the local state cannot change under the merge.
        if not self.meta.exists(directory):
            return
        base = self.meta.base_record(directory)
        names = [name for name in set(base.entries) | set(remote.entries)
                 if base.entries.get(name) != remote.entries.get(name)]
        local = {name: state for name in names
                 if (state := self.meta.local_state(directory, name)) is not None}
        changed_names: list[bytes] = []
        changed_inodes: list[int] = []
        for action in merge(base.entries, remote.entries, local):
            if isinstance(action, Take):
                changed_inodes += self.meta.apply_entry(directory, action.name, action.entry)
                changed_names.append(action.name)
            else:
                assert isinstance(action, Copy)
                name = conflict_name(
                    action.name, lambda n: self.meta.lookup(directory, n) is not None)
                self.meta.add_entry(directory, name, action.entry, conflict=True)
                changed_names.append(name)
                log.warning("%r was changed here and on another device: kept both, the other "
                            "version as %r", self.meta.path_of(directory) + b"/" + action.name,
                            name)
        if directory == ROOT_INODE:
            self.meta.merge_root_attrs(base.attrs, remote.attrs)
        self.meta.set_base(directory, version, encoded)
        self.meta.mark_dir_pending(directory)
        if changed_names or changed_inodes:
            self.on_remote_change(directory, changed_names, changed_inodes)

    async def ensure_loaded(self, directory: int) -> None:
        """Fetch an UNLOADED directory's entries (the first use after it became known)."""
        while self.meta.get(directory).dir_state == DirState.UNLOADED:
            if (event := self._loading.get(directory)) is not None:
                await event.wait()
                continue
            self._loading[directory] = event = trio.Event()
            try:
                await self._load(directory)
            finally:
                del self._loading[directory]
                event.set()

    async def _load(self, directory: int) -> None:
        ino = self.meta.get(directory)
        assert ino.dir_name is not None
        try:
            version, record, encoded = await self.remote.read_dir(ino.dir_name)
        except NotFound:
            if directory != ROOT_INODE:
                raise
            log.info("creating the root directory of this account")
            self.meta.mark_new(directory)
            return
        if self.meta.get(directory).dir_state == DirState.UNLOADED:
            self.meta.load_dir(directory, version, record, encoded)

    async def _poll(self, everything: bool, current_since: float | None = None) -> None:
        """Merge the directories that moved on remotely (a batch, or all of them). Those
        published since ``current_since`` are known current: the compare-and-swap that stored
        them found the latest version, and a later change is as new as one after the poll."""
        self._next_poll = time.monotonic() + self.poll_interval
        loaded = self.meta.loaded_dirs()
        if current_since is not None:
            loaded = [entry for entry in loaded
                      if self._published_at.get(entry[0], -math.inf) < current_since]
        if not everything:
            start = self._poll_cursor % max(len(loaded), 1)
            loaded = (loaded[start:] + loaded[:start])[:POLL_BATCH]
            self._poll_cursor = start + len(loaded)
        moved: list[int] = []

        async def check(entry: tuple[int, bytes, int]) -> None:
            directory, name, version = entry
            if await self.remote.dir_version(name) != version:
                moved.append(directory)

        await run_all(check, loaded, PUBLISH_CONNECTIONS)
        # Parents first: merging one may remove a child that moved too (then it is skipped).
        for directory in sorted(moved, key=self.meta.depth):
            if directory == ROOT_INODE or self.meta.name_of(directory) is not None:
                await self.merge_remote(directory)
                await self.publish(directory)

    # -- status ---------------------------------------------------------------------------------

    def pending_counts(self) -> tuple[int, int, int]:
        """(dirty files, their bytes, pending directory records)."""
        return self.meta.pending_counts()

    def status(self) -> dict:
        files, size, dirs = self.pending_counts()
        return {
            "online": self.remote.online,
            "pending_files": files,
            "pending_bytes": size,
            "pending_dirs": dirs,
            "uploaded_bytes": self.uploaded_bytes,
            "last_sync": self.last_sync,
            "conflicts": self.meta.count_conflicts(),
            "error": self.last_error,
        }

