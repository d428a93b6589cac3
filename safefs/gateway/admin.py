"""``/admin``: local management of app authorisation, guarded by the admin secret file.

``safefs apps ...`` talks to these endpoints with the secret from ``paths.admin_secret_file()``
in the ``X-Safefs-Admin`` header. Unknown ids answer 404.
"""

from __future__ import annotations

from .auth import revoke_session
from .routing import Access, ApiError, Call, Routes
from .sessions import Decision

routes = Routes()


@routes.get("/admin/auth-requests", access=Access.ADMIN)
async def list_requests(call: Call) -> list:
    """Apps waiting for a decision, oldest first."""
    return [r.to_json() for r in call.gateway.auth_requests.pending()]


async def _decide(call: Call, decision: Decision) -> None:
    if call.gateway.auth_requests.decide(call.param("id"), decision) is None:
        raise ApiError(404, "No such authorisation request", error_code=404)


@routes.post("/admin/auth-requests/{id}/approve", access=Access.ADMIN)
async def approve(call: Call) -> None:
    await _decide(call, Decision.APPROVED)


@routes.post("/admin/auth-requests/{id}/reject", access=Access.ADMIN)
async def reject(call: Call) -> None:
    await _decide(call, Decision.REJECTED)


@routes.get("/admin/apps", access=Access.ADMIN)
async def list_apps(call: Call) -> list:
    """Authorised apps (sessions), oldest first."""
    return [s.to_json() for s in call.gateway.sessions.all()]


@routes.delete("/admin/apps/{id}", access=Access.ADMIN)
async def revoke_app(call: Call) -> None:
    if not revoke_session(call, call.param("id")):
        raise ApiError(404, "No such app", error_code=404)
