"""chainAPI keys: who may call the ALTR-style API, for which organisation, and how they sign.

A key is ``ALTR-<32 hex>`` with a 64-hex secret, given to one organisation with read and/or
write permission. Organisations carry an optional data cap (bytes) and the bytes they have
stored so far. Both live in the gateway's state database (:mod:`safefs.gateway.state`):

* ``chain_keys``: the key, its organisation and permissions, and its secret **sealed** with
  XChaCha20-Poly1305 under a key derived from the account (``Account.derive``), the key id as
  associated data, so the database alone never reveals a secret and a sealed secret cannot be
  moved to another key's row;
* ``chain_orgs``: name, cap (NULL = none) and bytes used.

Nothing is cached in memory: every request reads its key's row, so ``safefs keys revoke``
takes effect at once, whether it went through the running gateway or straight to the database
while the gateway was stopped.

A request is signed as ALTR's chainAPI documents it (see :func:`string_to_sign` and
docs/chainapi.md); the secret is used as the HMAC key in its ASCII form, as ALTR's own client
examples do.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import logging
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nacl import bindings

from safefs.keys import Account

log = logging.getLogger(__name__)

KEY_PREFIX = "ALTR-"
KEY_PATTERN = re.compile(r"ALTR-[0-9A-F]{32}")
# How far X-ALTR-DATE may be from the gateway's clock, either way.
DATE_WINDOW = timedelta(minutes=15)
MAX_ORG_NAME = 100
_SEAL_PURPOSE = "chainapi key secrets v1"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS chain_orgs (
        name TEXT PRIMARY KEY,
        cap INTEGER,                  -- bytes the organisation may store; NULL: no cap
        used INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS chain_keys (
        key TEXT PRIMARY KEY,         -- "ALTR-<32 hex>"
        org TEXT NOT NULL REFERENCES chain_orgs(name),
        can_read INTEGER NOT NULL,
        can_write INTEGER NOT NULL,
        sealed_secret BLOB NOT NULL,  -- nonce || XChaCha20-Poly1305(secret, aad = key)
        created REAL NOT NULL         -- unix time
    )""",
)


class InvalidKeyRequest(ValueError):
    """A key request that cannot be honoured (bad organisation name, negative cap)."""


@dataclass(frozen=True)
class ApiKey:
    key: str
    org: str
    can_read: bool
    can_write: bool
    created: float
    secret: str = field(repr=False)

    def to_json(self) -> dict[str, object]:
        """The key as ``safefs keys list`` shows it: never the secret."""
        return {"key": self.key, "org": self.org, "read": self.can_read,
                "write": self.can_write, "created": self.created}


@dataclass(frozen=True)
class Org:
    name: str
    cap: int | None
    used: int

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "cap": self.cap, "used": self.used}


class KeyStore:
    """The chainAPI keys and organisations of one account, in a state database connection."""

    def __init__(self, db: sqlite3.Connection, account: Account) -> None:
        self._db = db
        self._seal_key = account.derive(_SEAL_PURPOSE)
        for statement in _SCHEMA:
            db.execute(statement)

    def create(self, org: str, can_read: bool, can_write: bool,
               cap: int | None = None) -> ApiKey:
        """A new key for ``org`` (created if new); ``cap`` replaces the organisation's cap."""
        org = org.strip()
        if not org or len(org) > MAX_ORG_NAME or not org.isprintable():
            raise InvalidKeyRequest(
                f"an organisation name is 1 to {MAX_ORG_NAME} printable characters")
        if cap is not None and cap < 0:
            raise InvalidKeyRequest("a data cap is a number of bytes, 0 or more")
        key = KEY_PREFIX + secrets.token_hex(16).upper()
        api_key = ApiKey(key, org, can_read, can_write, time.time(), secrets.token_hex(32))
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR IGNORE INTO chain_orgs (name, cap) VALUES (?, ?)",
                             (org, cap))
            if cap is not None:
                self._db.execute("UPDATE chain_orgs SET cap = ? WHERE name = ?", (cap, org))
            self._db.execute("INSERT INTO chain_keys VALUES (?, ?, ?, ?, ?, ?)",
                             (key, org, can_read, can_write, self._seal(api_key),
                              api_key.created))
        log.info("created chainAPI key %s for organisation %r (read=%s, write=%s)",
                 key, org, can_read, can_write)
        return api_key

    def get(self, key: str) -> ApiKey | None:
        """The key with its secret unsealed, or ``None`` if unknown or revoked."""
        row = self._db.execute("SELECT * FROM chain_keys WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._from_row(row)

    def all(self) -> list[ApiKey]:
        """Every key, oldest first (callers show :meth:`ApiKey.to_json`, not the secret)."""
        rows = self._db.execute("SELECT * FROM chain_keys ORDER BY created").fetchall()
        return [self._from_row(row) for row in rows]

    def revoke(self, key: str) -> bool:
        deleted = self._db.execute("DELETE FROM chain_keys WHERE key = ?", (key,)).rowcount
        if deleted:
            log.info("revoked chainAPI key %s", key)
        return bool(deleted)

    def orgs(self) -> list[Org]:
        rows = self._db.execute("SELECT * FROM chain_orgs ORDER BY name").fetchall()
        return [Org(row["name"], row["cap"], row["used"]) for row in rows]

    def room(self, org: str) -> int | None:
        """Bytes ``org`` may still store (``None``: no cap)."""
        row = self._db.execute("SELECT cap, used FROM chain_orgs WHERE name = ?",
                               (org,)).fetchone()
        if row is None or row["cap"] is None:
            return None
        return max(row["cap"] - row["used"], 0)

    def reserve(self, org: str, size: int) -> bool:
        """Count ``size`` bytes against ``org``'s cap, all or nothing; False if they do not fit.

        One UPDATE checks and adds, so concurrent uploads cannot both squeeze under the cap.
        """
        cursor = self._db.execute(
            "UPDATE chain_orgs SET used = used + ?1 "
            "WHERE name = ?2 AND (cap IS NULL OR used + ?1 <= cap)", (size, org))
        return cursor.rowcount == 1

    def release(self, org: str, size: int) -> None:
        """Give back bytes reserved for an upload that failed."""
        self._db.execute("UPDATE chain_orgs SET used = MAX(used - ?, 0) WHERE name = ?",
                         (size, org))

    def _from_row(self, row: sqlite3.Row) -> ApiKey:
        return ApiKey(row["key"], row["org"], bool(row["can_read"]), bool(row["can_write"]),
                      row["created"], self._unseal(row["key"], row["sealed_secret"]))

    def _seal(self, api_key: ApiKey) -> bytes:
        nonce = secrets.token_bytes(bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES)
        return nonce + bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            api_key.secret.encode("ascii"), api_key.key.encode("ascii"), nonce, self._seal_key)

    def _unseal(self, key: str, sealed: bytes) -> str:
        size = bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
        return bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[size:], key.encode("ascii"), sealed[:size], self._seal_key).decode("ascii")


def string_to_sign(method: str, resource: str, date: str) -> bytes:
    """``METHOD\\nRESOURCE\\nDATE\\n``: RESOURCE is empty for POST (and the batch calls) and the
    reference token for reads of one token; DATE is the ``X-ALTR-DATE`` header verbatim."""
    # Header values reach us decoded as Latin-1: encoding them back gives the bytes sent.
    return b"%s\n%s\n%s\n" % (method.encode("ascii"), resource.encode("utf-8"),
                               date.encode("latin-1"))


def _digest(secret: str, method: str, resource: str, date: str) -> bytes:
    """The HMAC-SHA256 a client sends, base64-encoded, after ``ALTR key:``."""
    return hmac.new(secret.encode("ascii"), string_to_sign(method, resource, date),
                    hashlib.sha256).digest()


def parse_authorization(header: str) -> tuple[str, bytes] | None:
    """``(key, signature bytes)`` from ``ALTR key:base64``, or ``None`` if malformed."""
    scheme, _, credentials = header.strip().partition(" ")
    key, sep, encoded = credentials.strip().partition(":")
    if scheme.upper() != "ALTR" or not sep or not KEY_PATTERN.fullmatch(key):
        return None
    try:
        return key, base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        return None


def signature_matches(api_key: ApiKey, signature_bytes: bytes, method: str, resource: str,
                      date: str) -> bool:
    return hmac.compare_digest(_digest(api_key.secret, method, resource, date),
                               signature_bytes)


# JavaScript's Date.prototype.toString(), what ALTR's examples sign ("date = new Date()"):
# "Tue Mar 05 2019 14:03:00 GMT-0500 (Eastern Standard Time)".
_JS_DATE = re.compile(r"[A-Za-z]{3} ([A-Za-z]{3} \d{2} \d{4} \d{2}:\d{2}:\d{2}) GMT([+-]\d{4})"
                      r"(?: \(.*\))?")


def parse_date(text: str) -> datetime | None:
    """An ``X-ALTR-DATE`` as an aware datetime, or ``None`` if it is none of the accepted forms.

    Accepted: ``MM-DD-YYYY HH:MM:SS`` (the docs' example), ISO 8601, an HTTP-date (RFC 9110,
    including its obsolete forms) and JavaScript's ``Date.toString()``. Forms without an offset
    are UTC.
    """
    text = text.strip()
    parsed: datetime | None = None
    if match := _JS_DATE.fullmatch(text):
        try:
            parsed = datetime.strptime(f"{match[1]} {match[2]}", "%b %d %Y %H:%M:%S %z")
        except ValueError:
            return None
    else:
        for parse in (lambda t: datetime.strptime(t, "%m-%d-%Y %H:%M:%S"),
                      datetime.fromisoformat, email.utils.parsedate_to_datetime):
            try:
                parsed = parse(text)
                break
            except (ValueError, TypeError, IndexError):
                continue
    if parsed is None:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def date_is_current(date: datetime) -> bool:
    return abs(datetime.now(UTC) - date) <= DATE_WINDOW
