"""App sessions, their tokens, and authorisation requests waiting for a person's decision.

A session is what the launcher created when a person approved an app: the app's description,
the permissions it was granted, and a random key that signs its tokens. Tokens are JWTs like the
launcher's (HS256 over ``{"id": <session id>, "iat": <time>}``), so clients that look at them see
the same shape. Sessions live in the gateway's SQLite state database, so tokens survive a
restart; revoking an app deletes its session, which kills every token it was given.

Authorisation requests (``POST /auth``) wait in memory for ``safefs apps approve|reject`` or the
admin endpoints; they die with the request that made them.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass, field

import trio

log = logging.getLogger(__name__)

SAFE_DRIVE_ACCESS = "SAFE_DRIVE_ACCESS"
LOW_LEVEL_API = "LOW_LEVEL_API"
PERMISSIONS = (SAFE_DRIVE_ACCESS, LOW_LEVEL_API)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,          -- session id, the JWT payload's "id"
    app_name TEXT NOT NULL,
    app_id TEXT NOT NULL,
    app_vendor TEXT NOT NULL,
    app_version TEXT NOT NULL,
    permissions TEXT NOT NULL,    -- JSON list, as granted
    token_key BLOB NOT NULL,      -- HS256 key of this session's tokens
    created REAL NOT NULL         -- unix time
)
"""


@dataclass(frozen=True)
class AppInfo:
    """The app description of ``POST /auth``."""

    name: str
    id: str
    vendor: str
    version: str

    @property
    def key_id(self) -> str:
        """What the app's own keys derive from: (name, id, vendor), as in safe_core's app.rs.

        The version is not part of it, so an upgraded app still reads its SYMMETRIC data.
        """
        return json.dumps([self.name, self.id, self.vendor])

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "id": self.id, "vendor": self.vendor, "version": self.version}


@dataclass(frozen=True)
class Session:
    id: str
    app: AppInfo
    permissions: tuple[str, ...]
    token_key: bytes = field(repr=False)
    created: float

    @property
    def low_level_api(self) -> bool:
        return LOW_LEVEL_API in self.permissions

    @property
    def safe_drive(self) -> bool:
        return SAFE_DRIVE_ACCESS in self.permissions

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "app": self.app.to_json(), "permissions": list(self.permissions),
                "created": self.created}


class SessionStore:
    """Sessions kept in memory and written through to the state database."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.execute(_SCHEMA)
        self._sessions = {row["id"]: _session_from_row(row)
                          for row in db.execute("SELECT * FROM sessions")}

    def authorise(self, app: AppInfo, permissions: tuple[str, ...]) -> tuple[str, Session]:
        """A new token for an approved app, reusing the session of an identical app."""
        session = next((s for s in self._sessions.values()
                        if s.app == app and s.permissions == permissions), None)
        if session is None:
            session = Session(secrets.token_hex(8), app, permissions, secrets.token_bytes(32),
                              time.time())
            self._db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (session.id, app.name, app.id, app.vendor, app.version,
                 json.dumps(list(permissions)), session.token_key, session.created))
            self._sessions[session.id] = session
            log.info("authorised app %r (%s) as session %s with %s",
                     app.name, app.vendor, session.id, list(permissions))
        return _make_token(session), session

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def all(self) -> list[Session]:
        return sorted(self._sessions.values(), key=lambda s: s.created)

    def revoke(self, session_id: str) -> bool:
        if self._sessions.pop(session_id, None) is None:
            return False
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        log.info("revoked session %s", session_id)
        return True

    def from_authorization(self, header: str) -> Session | None:
        """The session of an ``Authorization: Bearer <jwt>`` header, parsed as strictly as the
        launcher's ``getSessionIdFromRequest``; ``None`` when it is not a valid token."""
        if header.find(" ") != 6:
            return None
        parts = header.split(" ")
        if len(parts) != 2 or parts[0].lower() != "bearer":
            return None
        sections = parts[1].split(".")
        if len(sections) != 3:
            return None
        try:
            payload = json.loads(_unb64url(sections[1]))
            session = self._sessions.get(payload["id"])
            signature = _unb64url(sections[2])
        except (ValueError, TypeError, KeyError, binascii.Error):
            return None
        if session is None:
            return None
        expected = _sign(session.token_key, f"{sections[0]}.{sections[1]}")
        return session if hmac.compare_digest(signature, expected) else None


def _session_from_row(row: sqlite3.Row) -> Session:
    app = AppInfo(row["app_name"], row["app_id"], row["app_vendor"], row["app_version"])
    return Session(row["id"], app, tuple(json.loads(row["permissions"])), row["token_key"],
                   row["created"])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, signing_input: str) -> bytes:
    return hmac.new(key, signing_input.encode(), hashlib.sha256).digest()


def _compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


_JWT_HEADER = _b64url(_compact_json({"alg": "HS256", "typ": "JWT"}))


def _make_token(session: Session) -> str:
    claims = {"id": session.id, "iat": int(time.time()), "jti": secrets.token_hex(4)}
    payload = _b64url(_compact_json(claims))
    signing_input = f"{_JWT_HEADER}.{payload}"
    return f"{signing_input}.{_b64url(_sign(session.token_key, signing_input))}"


class Decision(enum.Enum):
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed out"
    CANCELLED = "cancelled"  # the gateway is shutting down


@dataclass
class AuthRequest:
    """An app waiting for a person to approve or reject it."""

    id: str
    app: AppInfo
    permissions: tuple[str, ...]
    created: float = field(default_factory=time.time)
    decision: Decision | None = None
    decided: trio.Event = field(default_factory=trio.Event, repr=False)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "app": self.app.to_json(), "permissions": list(self.permissions),
                "created": self.created}


class AuthRequests:
    """Pending authorisation requests (in memory: each belongs to an open HTTP request)."""

    def __init__(self) -> None:
        self._pending: dict[str, AuthRequest] = {}

    def pending(self) -> list[AuthRequest]:
        return list(self._pending.values())

    async def wait(self, app: AppInfo, permissions: tuple[str, ...],
                   timeout: float) -> Decision:
        """Register a request and wait until a person decides it or ``timeout`` passes."""
        request = AuthRequest(secrets.token_hex(4), app, permissions)
        self._pending[request.id] = request
        log.warning("app %r (%s, %s) asks for %s: run `safefs apps approve %s` or "
                    "`safefs apps reject %s`", app.name, app.vendor, app.id,
                    list(permissions) or "no permissions", request.id, request.id)
        try:
            with trio.move_on_after(timeout):
                await request.decided.wait()
        finally:
            del self._pending[request.id]
        return request.decision or Decision.TIMED_OUT

    def decide(self, request_id: str, decision: Decision) -> AuthRequest | None:
        request = self._pending.get(request_id)
        if request is not None and request.decision is None:
            request.decision = decision
            request.decided.set()
            log.info("authorisation request %s %s", request_id, decision.value)
        return request

    def cancel_all(self) -> None:
        for request_id in list(self._pending):
            self.decide(request_id, Decision.CANCELLED)
