"""/auth, the admin endpoints, tokens, prefixes and the error envelope, on a real gateway."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from safefs.client import GatewayClient, Unauthorized

from .conftest import TEST_APP

APP = {"name": "app name", "id": "test.app", "version": "0.0.1", "vendor": "MaidSafe"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def wait_for_pending(gateway, count: int = 1) -> list[dict]:
    """Poll the admin endpoint until ``count`` requests are waiting."""
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        while True:
            response = await http.get("/admin/auth-requests",
                                      headers={"X-Safefs-Admin": gateway.admin_secret})
            pending = response.json()
            if len(pending) >= count:
                return pending
            await trio.sleep(0.05)


async def post_auth_in_background(nursery, gateway, payload: dict) -> dict:
    """Start ``POST /auth``; the returned dict gets ``"response"`` when it completes."""
    result: dict = {}

    async def send() -> None:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
            result["response"] = await http.post("/auth", json=payload)

    nursery.start_soon(send)
    return result


VALIDATION_CASES = [
    ({}, "Fields are missing"),
    ({"permissions": []}, "Fields are missing"),
    ({"app": {}, "permissions": []}, "Fields are missing"),
    ({"app": {"name": "test_app"}, "permissions": []}, "Fields are missing"),
    ({"app": {"version": "0.1.1"}, "permissions": []}, "Fields are missing"),
    ({"app": APP}, "Permission field is missing"),
    ({"app": {**APP, "name": " "}, "permissions": []}, "Values cannot be empty"),
    ({"app": {**APP, "vendor": " \t"}, "permissions": []}, "Values cannot be empty"),
    ({"app": APP, "permissions": ["SAFE_DRIVE_PERMISSION"]}, "Invalid permissions requested"),
    ({"app": APP, "permissions": "LOW_LEVEL_API"}, "Invalid permissions requested"),
    ({"app": APP, "permissions": None}, "Invalid permissions requested"),
    ([], "Fields are missing"),
    ({"app": {**APP, "id": 0}, "permissions": []}, "Fields are missing"),
]


async def test_auth_validation(module_gateway):
    async with httpx.AsyncClient(base_url=module_gateway.url) as http:
        for payload, message in VALIDATION_CASES:
            response = await http.post("/auth", json=payload)
            assert response.status_code == 400, payload
            assert response.json() == {"errorCode": 400, "description": message}, payload


async def test_auth_body_must_be_json(module_gateway):
    """As body-parser: a non-JSON content type leaves the body empty."""
    async with httpx.AsyncClient(base_url=module_gateway.url) as http:
        response = await http.post("/auth", content=json.dumps({"app": APP, "permissions": []}),
                                   headers={"Content-Type": "text/plain"})
    assert response.status_code == 400
    assert response.json()["description"] == "Fields are missing"


async def test_approve_with_cli(gateway, safefs_env):
    async with trio.open_nursery() as nursery:
        result = await post_auth_in_background(
            nursery, gateway, {"app": APP, "permissions": ["LOW_LEVEL_API"]})
        [pending] = await wait_for_pending(gateway)
        assert pending["app"] == APP and pending["permissions"] == ["LOW_LEVEL_API"]
        listing = await trio.to_thread.run_sync(safefs_env.run_cli, "apps", "list")
        assert pending["id"] in listing.stdout and "app name" in listing.stdout
        approved = await trio.to_thread.run_sync(safefs_env.run_cli, "apps", "approve",
                                                 pending["id"])
        assert approved.returncode == 0, approved.stderr
    response = result["response"]
    assert response.status_code == 200
    body = response.json()
    assert body["permissions"] == ["LOW_LEVEL_API"]
    async with gateway.client(body["token"]) as client:
        assert await client.token_valid()


async def test_reject_with_admin_endpoint(gateway):
    async with trio.open_nursery() as nursery:
        result = await post_auth_in_background(nursery, gateway,
                                               {"app": APP, "permissions": []})
        [pending] = await wait_for_pending(gateway)
        async with gateway.client(admin_secret=gateway.admin_secret) as admin:
            await admin.decide(pending["id"], approve=False)
    response = result["response"]
    assert response.status_code == 401
    assert response.text == "Unauthorised"


async def test_reject_with_cli_and_unknown_ids(gateway, safefs_env):
    async with trio.open_nursery() as nursery:
        result = await post_auth_in_background(nursery, gateway,
                                               {"app": APP, "permissions": []})
        [pending] = await wait_for_pending(gateway)
        rejected = await trio.to_thread.run_sync(safefs_env.run_cli, "apps", "reject",
                                                 pending["id"])
        assert rejected.returncode == 0
    assert result["response"].status_code == 401
    for action in ("approve", "reject", "revoke"):
        unknown = safefs_env.run_cli("apps", action, "nosuchid")
        assert unknown.returncode == 1
        assert unknown.stderr.count("\n") == 1 and "nosuchid" in unknown.stderr


@pytest.mark.gateway_args("--auth-timeout", "0.2")
async def test_undecided_request_times_out(gateway):
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.post("/auth", json={"app": APP, "permissions": []})
    assert (response.status_code, response.text) == (401, "Unauthorised")


@pytest.mark.gateway_args("--auto-approve")
async def test_auto_approve(gateway):
    async with gateway.client() as client:
        token = await client.authorise(APP, [])
        assert await client.token_valid()
    assert token.count(".") == 2


async def test_admin_secret_approves_at_once_and_same_app_shares_a_session(gateway):
    first = gateway.authorise()
    second = gateway.authorise()
    assert first != second
    async with gateway.client(admin_secret=gateway.admin_secret) as admin:
        [app] = await admin.apps()
    assert app["app"] == TEST_APP and app["permissions"] == ["LOW_LEVEL_API"]
    other = gateway.authorise(permissions=("SAFE_DRIVE_ACCESS",))
    async with gateway.client(admin_secret=gateway.admin_secret) as admin:
        assert len(await admin.apps()) == 2
    # Revoking the session kills every token it gave out.
    async with gateway.client(first) as client:
        await client.revoke()
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for token, status in ((first, 401), (second, 401), (other, 200)):
            assert (await http.get("/auth", headers=bearer(token))).status_code == status


async def test_token_checks(module_gateway):
    token = module_gateway.authorise()
    async with httpx.AsyncClient(base_url=module_gateway.url) as http:
        missing = await http.get("/auth")
        assert missing.status_code == 401
        assert missing.json() == {"errorCode": 400, "description": "Unauthorised"}
        revoke_missing = await http.delete("/auth")
        assert revoke_missing.json() == {"errorCode": 400, "description": "Unauthorised"}
        valid = await http.get("/auth", headers=bearer(token))
        assert (valid.status_code, valid.text) == (200, "OK")
        header, payload, signature = token.split(".")
        for bad in (f"Bearer {header}.{payload}.{signature[:-2]}AA", f"bearer  {token}",
                    f"Token {token}", "Bearer abc", f"Bearer {header}.e30.{signature}",
                    f"Bearer {token} extra"):
            response = await http.get("/auth", headers={"Authorization": bad})
            assert response.status_code == 401, bad
            assert "errorCode" not in response.text, bad
        # A bad token is refused even where no token is needed.
        response = await http.get("/immutable-data/reader/1", headers={"Authorization": "x"})
        assert response.status_code == 401
        # The scheme is case-insensitive, as the launcher's.
        assert (await http.get("/auth", headers={"Authorization": f"BEARER {token}"})
                ).status_code == 200
        assert (await http.delete("/auth", headers=bearer(token))).text == "OK"
        assert (await http.get("/auth", headers=bearer(token))).status_code == 401


async def test_tokens_survive_restart(gateway):
    token = gateway.authorise()
    gateway.restart()
    async with gateway.client(token) as client:
        assert await client.token_valid()
        writer = await client.new_writer()
        await client.drop_writer(writer)


async def test_permissions_are_enforced(module_gateway):
    no_lla = module_gateway.authorise(permissions=())
    async with httpx.AsyncClient(base_url=module_gateway.url) as http:
        anonymous = await http.get("/immutable-data/writer")
        assert anonymous.status_code == 401
        assert anonymous.json() == {"errorCode": 400, "description": "Unauthorised access"}
        forbidden = await http.get("/immutable-data/writer", headers=bearer(no_lla))
        assert forbidden.status_code == 403
        assert forbidden.json() == {"errorCode": 400,
                                    "description": "Low level api access is not granted"}


async def test_prefixes_health_and_unknown_routes(module_gateway):
    token = module_gateway.authorise()
    async with httpx.AsyncClient(base_url=module_gateway.url) as http:
        for prefix in ("", "/0.5", "/0.6"):
            assert (await http.get(f"{prefix}/health")).text == "OK"
            assert (await http.get(f"{prefix}/auth", headers=bearer(token))).status_code == 200
        for method, path in (("GET", "/nothing"), ("PUT", "/auth"), ("GET", "/0.4/auth"),
                             ("PATCH", "/immutable-data/writer")):
            response = await http.request(method, path)
            assert response.status_code == 404
            assert response.json() == {"errorCode": 404, "description": "Endpoint Not Found"}


async def test_admin_endpoints_need_the_secret(module_gateway):
    async with httpx.AsyncClient(base_url=module_gateway.url) as http:
        for method, path in (("GET", "/admin/apps"), ("GET", "/admin/auth-requests"),
                             ("DELETE", "/admin/apps/x"),
                             ("POST", "/admin/auth-requests/x/approve")):
            for headers in ({}, {"X-Safefs-Admin": "wrong"}):
                response = await http.request(method, path, headers=headers)
                assert response.status_code == 401
                assert response.json()["errorCode"] == 400


async def test_revoke_app_with_cli(gateway, safefs_env):
    token = gateway.authorise()
    listing = json.loads(safefs_env.run_cli("apps", "list", "--json").stdout)
    [app] = listing["apps"]
    assert listing["pending"] == []
    result = safefs_env.run_cli("apps", "revoke", app["id"])
    assert result.returncode == 0
    async with gateway.client(token) as client:
        assert not await client.token_valid()


async def test_shutdown_answers_waiting_requests(gateway):
    """SIGTERM: a waiting authorisation request gets 503, the gateway exits cleanly."""
    async with trio.open_nursery() as nursery:
        result = await post_auth_in_background(nursery, gateway,
                                               {"app": APP, "permissions": []})
        await wait_for_pending(gateway)
        status = await trio.to_thread.run_sync(gateway.stop)
    assert status == 0
    assert result["response"].status_code == 503
    assert not (gateway.env.data_dir / "run" / "gateway.json").exists()


async def test_client_typed_errors(module_gateway):
    async with GatewayClient(module_gateway.url, "not.a.token", retries=0) as client:
        with pytest.raises(Unauthorized) as info:
            await client.new_writer()
        assert info.value.status == 401
