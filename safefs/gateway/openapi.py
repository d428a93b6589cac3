"""``GET /openapi.yaml``: the OpenAPI 3.1 document of the gateway's API.

The document is ``openapi.yaml`` beside this module (``docs/openapi.yaml`` links to it), written
by hand from the route tables; ``tests/test_openapi.py`` checks that it names exactly the routes
the app serves, so a new route needs its entry there.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.responses import Response

from .routing import Call, Routes

routes = Routes()

DOCUMENT_NAME = "openapi.yaml"
MEDIA_TYPE = "application/yaml"


@cache
def document_bytes() -> bytes:
    """The document as shipped with the package (read once)."""
    return (resources.files(__package__) / DOCUMENT_NAME).read_bytes()


@routes.get("/" + DOCUMENT_NAME)
async def document(call: Call) -> Response:
    return Response(document_bytes(), media_type=MEDIA_TYPE)
