"""chainAPI data on the store: reference tokens that lead to self-encrypted ImmutableData.

Data is stored as ImmutableData exactly as the launcher API stores files
(:mod:`safefs.gateway.blobs`: self-encrypted chunks and a root chunk), with SYMMETRIC cipher
options under a key derived from the account, so the DataMap is sealed. Two differences:

* Every ImmutableData written here starts with ``SALT_BYTES`` random bytes. Self-encryption is
  convergent: without the salt, whoever can list the store could self-encrypt guesses of a small
  value (a card number, a name) and see whether their chunks exist. The salt lives in the first
  chunk, and with the three chunks of anything under three maximum-size chunks every chunk's
  key depends on it, so small values are unguessable. (From the fourth chunk of a large upload
  on, chunks stay convergent, as for every other file: docs/FORMAT.md's threat model.)
* The values of one PostBatch share one ImmutableData, one after another, so a batch costs a
  handful of chunks instead of four per value.

Each token then gets a *token record* on the store. A reference token is ``chain_<64 hex>``,
random, so it says nothing about the content:

    record key   = BLAKE3-keyed(key = account.derive("chainapi token index v1"), token)
    record value = model.encrypt(SYMMETRIC account.derive("chainapi data v1"), JSON entry)
    entry        = {"token", "org", "name" (ImmutableData name, hex), "offset", "size",
                    "md5" (hex), "metadata" (X-ALTR-METADATA or null), "created" (unix time)}

Keeping the index on the store rather than in the gateway's state database means every gateway
of the account that shares the store resolves every token, and losing a gateway's state loses
no data. The entry repeats its token, so a record moved to another key is detected.

Everything here is synchronous and runs in the gateway's worker threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import blake3

from safefs import errors, model, selfenc
from safefs.errors import SafeError
from safefs.keys import Account
from safefs.model import CipherOpts

from . import blobs
from .blobs import ChunkCache

log = logging.getLogger(__name__)

TOKEN_PREFIX = "chain_"
TOKEN_PATTERN = re.compile(r"chain_[0-9a-f]{64}")
SALT_BYTES = 32
_INDEX_PURPOSE = "chainapi token index v1"
_DATA_PURPOSE = "chainapi data v1"


@dataclass(frozen=True)
class Entry:
    """What a reference token stands for: ``size`` bytes at ``offset`` of an ImmutableData."""

    token: str
    org: str
    name: str  # the ImmutableData's name, hex
    offset: int
    size: int
    md5: str  # hex MD5 of the data: GetData's X-Expected-Hash
    metadata: str | None
    created: float


@dataclass(frozen=True)
class Content:
    """The bytes of one token: ``[offset, offset + size)`` of an ImmutableData."""

    blob: blobs.Blob
    offset: int
    size: int

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the token's data, clamped to its size."""
        end = min(end, self.size)
        if start >= end:
            return b""
        return self.blob.read(self.offset + start, self.offset + end)


class ChainData:
    """Stores data under new reference tokens and finds it again."""

    def __init__(self, store, account: Account, cache: ChunkCache,
                 new_spool: Callable[..., blobs.Spool],
                 settings: selfenc.Settings = selfenc.DEFAULT_SETTINGS) -> None:
        self._store = store
        self._new_spool = new_spool
        self._cache = cache
        self._settings = settings
        self._index_key = account.derive(_INDEX_PURPOSE)
        self._data_key = account.derive(_DATA_PURPOSE)
        self._opts = CipherOpts.symmetric(self._data_key)

    def new_spool(self) -> blobs.Spool:
        """An upload for :meth:`put_spool`, starting with its salt (so the data is never copied
        to get one in front of it)."""
        return self._new_spool("chain-", head=secrets.token_bytes(SALT_BYTES), md5=True)

    def put_spool(self, spool: blobs.Spool, org: str, metadata: str | None = None) -> Entry:
        """Finish a :meth:`new_spool` upload and give its data a new token."""
        name = spool.seal(self._opts)
        return self._add(Entry(_new_token(), org, name.hex(), SALT_BYTES, spool.size - SALT_BYTES,
                               spool.md5(), metadata, time.time()))

    def put_values(self, values: list[bytes], org: str) -> list[Entry]:
        """Self-encrypt a batch's values as one ImmutableData; a new token for each."""
        if not values:
            return []
        name = blobs.store_bytes(self._store, b"".join([secrets.token_bytes(SALT_BYTES), *values]),
                                 self._opts, self._settings).hex()
        entries = []
        offset = SALT_BYTES
        for value in values:
            md5 = hashlib.md5(value, usedforsecurity=False).hexdigest()
            entries.append(self._add(Entry(_new_token(), org, name, offset, len(value), md5,
                                           None, time.time())))
            offset += len(value)
        return entries

    def entry(self, token: str) -> Entry | None:
        """The entry of ``token``, or ``None`` if no such token was ever issued."""
        from safefs.store import RecordNotFound

        if not TOKEN_PATTERN.fullmatch(token):
            return None
        try:
            _version, sealed = self._store.get_record(self._record_key(token))
        except RecordNotFound:
            return None
        try:
            entry = Entry(**json.loads(model.decrypt(sealed, self._data_key)))
        except (ValueError, TypeError) as exc:
            raise SafeError(errors.ENCODE_DECODE, f"token record is malformed: {exc}") from None
        if entry.token != token:
            raise SafeError(errors.ENCODE_DECODE, "token record belongs to another token")
        return entry

    def open(self, entry: Entry) -> Content:
        """The data of ``entry``, for reading byte ranges."""
        blob = blobs.Blob(self._store, self._cache, bytes.fromhex(entry.name), self._data_key)
        return Content(blob, entry.offset, entry.size)

    def _add(self, entry: Entry) -> Entry:
        sealed = model.encrypt(self._opts, json.dumps(asdict(entry)).encode())
        self._store.create_record(self._record_key(entry.token), 0, sealed)
        log.debug("stored %d bytes for organisation %r under a new token", entry.size, entry.org)
        return entry

    def _record_key(self, token: str) -> bytes:
        return blake3.blake3(token.encode("ascii"), key=self._index_key).digest()


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_hex(32)
