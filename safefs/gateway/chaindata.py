"""chainAPI data on the store: reference tokens that lead to self-encrypted ImmutableData.

PutData stores its body as ImmutableData exactly as the launcher API does
(:mod:`safefs.gateway.blobs`: self-encrypted chunks and a root chunk), with SYMMETRIC cipher
options under a key derived from the account, so the DataMap is sealed. It then mints a random
reference token, ``chain_<64 hex>`` (random, so it says nothing about the content), and writes
one *token record* on the store:

    record key   = BLAKE3-keyed(key = account.derive("chainapi token index v1"), token)
    record value = model.encrypt(SYMMETRIC account.derive("chainapi data v1"), JSON entry)
    entry        = {"token", "org", "name" (ImmutableData name, hex), "size", "md5" (hex),
                    "metadata" (X-ALTR-METADATA or null), "created" (unix time)}

Keeping the index on the store rather than in the gateway's state database means every gateway
of the account that shares the store resolves every token, and losing a gateway's state loses
no data. The entry repeats its token, so a record moved to another key is detected.

Everything here is synchronous and runs in the gateway's worker threads.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import blake3

from safefs import errors, model, selfenc
from safefs.errors import SafeError
from safefs.keys import Account
from safefs.model import CipherOpts

from . import blobs
from .core import ChunkCache

log = logging.getLogger(__name__)

TOKEN_PREFIX = "chain_"
TOKEN_PATTERN = re.compile(r"chain_[0-9a-f]{64}")
_INDEX_PURPOSE = "chainapi token index v1"
_DATA_PURPOSE = "chainapi data v1"


@dataclass(frozen=True)
class Entry:
    """What a reference token stands for."""

    token: str
    org: str
    name: str  # the ImmutableData's name, hex
    size: int
    md5: str  # hex MD5 of the data: GetData's X-Expected-Hash
    metadata: str | None
    created: float


class ChainData:
    """Stores data under new reference tokens and finds it again."""

    def __init__(self, store, account: Account, cache: ChunkCache,
                 settings: selfenc.Settings = selfenc.DEFAULT_SETTINGS, threads: int = 2) -> None:
        self._store = store
        self._cache = cache
        self._settings = settings
        self._threads = threads
        self._index_key = account.derive(_INDEX_PURPOSE)
        self._data_key = account.derive(_DATA_PURPOSE)
        self._opts = CipherOpts.symmetric(self._data_key)

    def put_file(self, path: Path, org: str, size: int, md5: str,
                 metadata: str | None = None) -> Entry:
        """Self-encrypt the file at ``path`` and give it a new token."""
        name = blobs.store_file(self._store, path, self._opts, self._settings, self._threads)
        return self._add(Entry(_new_token(), org, name.hex(), size, md5, metadata, time.time()))

    def put_bytes(self, data: bytes, org: str, md5: str) -> Entry:
        """Self-encrypt ``data`` (a batch value) and give it a new token."""
        name = blobs.store_bytes(self._store, data, self._opts, self._settings)
        return self._add(Entry(_new_token(), org, name.hex(), len(data), md5, None, time.time()))

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

    def open(self, entry: Entry) -> blobs.Blob:
        """The data of ``entry``, for reading byte ranges."""
        return blobs.Blob(self._store, self._cache, bytes.fromhex(entry.name), self._data_key)

    def _add(self, entry: Entry) -> Entry:
        sealed = model.encrypt(self._opts, json.dumps(asdict(entry)).encode())
        self._store.create_record(self._record_key(entry.token), 0, sealed)
        log.debug("stored %d bytes for organisation %r under a new token", entry.size, entry.org)
        return entry

    def _record_key(self, token: str) -> bytes:
        return blake3.blake3(token.encode("ascii"), key=self._index_key).digest()


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_hex(32)
