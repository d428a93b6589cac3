"""``/auth``: apps ask for a token, check it, and give it back (launcher controllers/auth.js)."""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.responses import PlainTextResponse

from .routing import UNAUTHORISED, ApiError, Call, Routes
from .sessions import PERMISSIONS, AppInfo, Decision

log = logging.getLogger(__name__)

routes = Routes()

_APP_FIELDS = ("name", "id", "vendor", "version")


def parse_auth_request(body: Any) -> tuple[AppInfo, tuple[str, ...]]:
    """Validate a ``POST /auth`` body in the launcher's order, with its messages."""
    app = body.get("app") if isinstance(body, dict) else None
    if not isinstance(app, dict) or not all(_truthy(app.get(f)) for f in _APP_FIELDS):
        raise ApiError(400, "Fields are missing")
    values = [str(app[f]) for f in _APP_FIELDS]
    if not all(re.search(r"\S", v) for v in values):
        raise ApiError(400, "Values cannot be empty")
    if "permissions" not in body:
        raise ApiError(400, "Permission field is missing")
    permissions = body["permissions"]
    if not isinstance(permissions, list) or any(p not in PERMISSIONS for p in permissions):
        raise ApiError(400, "Invalid permissions requested")
    return AppInfo(*values), tuple(dict.fromkeys(permissions))


def _truthy(value: Any) -> bool:
    """JavaScript truthiness for a JSON value, as the launcher tested the app fields."""
    return value not in (None, False, 0, "")


@routes.post("/auth")
async def authorise(call: Call) -> Any:
    """Wait for a person's decision, unless the caller holds the admin secret."""
    app, permissions = parse_auth_request(await call.json())
    gateway = call.gateway
    if call.is_admin or gateway.settings.auto_approve:
        decision = Decision.APPROVED
    else:
        decision = await gateway.auth_requests.wait(app, permissions,
                                                    gateway.settings.auth_timeout)
    if decision is Decision.CANCELLED:
        raise ApiError(503, "The gateway is shutting down")
    if decision is not Decision.APPROVED:
        log.info("app %r not authorised (%s)", app.name, decision.value)
        return PlainTextResponse(UNAUTHORISED, status_code=401)
    token, _session = gateway.sessions.authorise(app, permissions)
    return {"token": token, "permissions": list(permissions)}


@routes.get("/auth")
async def validate_token(call: Call) -> None:
    if call.session is None:
        raise ApiError(401, UNAUTHORISED)


@routes.delete("/auth")
async def revoke(call: Call) -> None:
    if call.session is None:
        raise ApiError(401, UNAUTHORISED)
    revoke_session(call, call.session.id)


def revoke_session(call: Call, session_id: str) -> bool:
    """Forget a session: its tokens stop working and its handles are dropped."""
    if not call.gateway.sessions.revoke(session_id):
        return False
    call.gateway.handles.drop_owner(session_id)
    return True
