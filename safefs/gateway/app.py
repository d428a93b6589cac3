"""The ASGI application: every route module's table under ``/``, ``/0.5/`` and ``/0.6/``.

To add a group of routes, write ``safefs/gateway/<group>.py`` with a module-level
``routes = Routes()`` (see :mod:`safefs.gateway.routing`), import it here and append it to
``ROUTE_MODULES``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from . import admin, appendable, auth, chain, immutable, misc, openapi, structured
from .core import Gateway
from .routing import error_json

ROUTE_MODULES = (auth, admin, immutable, misc, structured, appendable, chain, openapi)
API_PREFIXES = ("/0.5", "/0.6")


async def health(request: Request) -> Response:
    return PlainTextResponse("OK")


async def not_found(request: Request, exc: Exception) -> Response:
    """Unknown path or method: the launcher's 404 body (express had no 405)."""
    return error_json(404, 404, "Endpoint Not Found")


def api_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = [Route("/health", health, methods=["GET"])]
    for module in ROUTE_MODULES:
        routes.extend(module.routes.routes)
    return routes


def create_app(gateway: Gateway) -> Starlette:
    routes = api_routes()
    app = Starlette(
        routes=[*routes, *(Mount(prefix, routes=routes) for prefix in API_PREFIXES)],
        exception_handlers={HTTPException: not_found},
    )
    app.state.gateway = gateway
    return app
