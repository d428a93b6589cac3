"""docs/openapi.yaml: valid OpenAPI 3.1, naming exactly the routes the gateway serves."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml
from openapi_spec_validator import validate

from safefs.gateway.app import API_PREFIXES, api_routes
from safefs.gateway.openapi import MEDIA_TYPE

DOCUMENT = Path(__file__).parent.parent / "docs" / "openapi.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
ENDPOINT_NOT_FOUND = {"errorCode": 404, "description": "Endpoint Not Found"}


@cache
def document() -> dict:
    return yaml.safe_load(DOCUMENT.read_text())


def resolve(node: dict) -> dict:
    """``node`` with a local ``$ref`` (``#/components/...``) followed."""
    while "$ref" in node:
        target: Any = document()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def documented_operations() -> dict[tuple[str, str], dict]:
    """``{(METHOD, path): operation}`` for every operation of the document."""
    operations = {}
    for path, item in document()["paths"].items():
        item = resolve(item)
        for method in HTTP_METHODS:
            if method in item:
                operations[method.upper(), path] = {**item[method],
                                                    "pathParameters": item.get("parameters", [])}
    return operations


def registered_operations() -> set[tuple[str, str]]:
    """``(METHOD, path)`` of every route the app serves (HEAD comes with GET)."""
    return {(method, route.path) for route in api_routes()
            for method in route.methods - {"HEAD"}}


def example_path(path: str, operation: dict) -> str:
    """``path`` with each parameter replaced by its documented example."""
    for parameter in map(resolve, [*operation["pathParameters"],
                                   *operation.get("parameters", [])]):
        if parameter["in"] == "path":
            path = path.replace(f"{{{parameter['name']}}}", str(parameter["example"]))
    assert "{" not in path, f"a path parameter of {path} has no example"
    return path


def test_document_is_valid_openapi():
    validate(document())


def test_every_route_is_documented_and_every_documented_route_exists():
    documented = set(documented_operations())
    registered = registered_operations()
    assert sorted(registered - documented) == [], "routes missing from docs/openapi.yaml"
    assert sorted(documented - registered) == [], "documented routes the gateway does not serve"


def test_servers_are_the_api_prefixes():
    prefixes = {urlsplit(server["url"]).path for server in document()["servers"]}
    assert prefixes == {"", *API_PREFIXES}


def test_every_documented_operation_is_routed_under_every_prefix(gateway):
    """Anonymous requests with the documented example parameters reach a handler (which may
    refuse them), never the unknown-endpoint answer or a redirect."""
    with httpx.Client(base_url=gateway.url) as http:
        for prefix in ("", *API_PREFIXES):
            for (method, path), operation in documented_operations().items():
                url = prefix + example_path(path, operation)
                response = http.request(method, url)
                assert not response.is_redirect, f"{method} {url} redirects"
                if response.status_code == 404 and response.headers.get(
                        "content-type", "").startswith("application/json"):
                    assert response.json() != ENDPOINT_NOT_FOUND, f"{method} {url} not routed"


def test_gateway_serves_the_document(gateway):
    for prefix in ("", *API_PREFIXES):
        response = httpx.get(f"{gateway.url}{prefix}/openapi.yaml")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(MEDIA_TYPE)
        assert response.content == DOCUMENT.read_bytes()
