"""chainAPI on a real gateway: signatures, permissions, caps, PutData/GetData, batches.

Requests are signed here with plain ``hmac`` the way ALTR's documentation spells it, not with
the gateway's own helpers, so the tests check the gateway against the documented scheme. Most
tests share one gateway (keys of fresh organisations keep them apart).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import os
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from safefs import selfenc
from safefs.gateway.chain import INSECURE_LISTENER

from .conftest import GatewayProcess, isolated_env

TOKEN_PREFIX = "chain_"
SMALL = 3 * 1024


def sign(secret: str, method: str, resource: str, date: str) -> str:
    payload = f"{method}\n{resource}\n{date}\n".encode()
    return base64.b64encode(hmac.new(secret.encode(), payload, hashlib.sha256).digest()).decode()


def iso_now(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).isoformat()


@dataclass
class ChainKey:
    """An API key and the requests it signs."""

    url: str
    key: str
    secret: str

    def call(self, method: str, path: str, resource: str = "", *, date: str | None = None,
             sign_as: tuple[str, str] | None = None, secret: str | None = None,
             headers: dict[str, str] | None = None, **kwargs) -> httpx.Response:
        """``method path`` signed over ``resource`` (or over ``sign_as`` = (method, resource))."""
        date = iso_now() if date is None else date
        signed_method, signed_resource = sign_as or (method, resource)
        signature = sign(secret or self.secret, signed_method, signed_resource, date)
        all_headers = {"Authorization": f"ALTR {self.key}:{signature}", "X-ALTR-DATE": date,
                       **(headers or {})}
        return httpx.request(method, self.url + path, headers=all_headers, timeout=60, **kwargs)

    def put(self, data, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.call("POST", "/api/v1/single/", content=data,
                         headers={"Content-Type": "application/octet-stream", **(headers or {})})

    def put_token(self, data: bytes, **headers: str) -> str:
        response = self.put(data, headers)
        assert response.status_code == 200, response.text
        token = response.json()["response"]["data"]["referenceToken"]
        return token

    def get(self, token: str, suffix: str = "") -> httpx.Response:
        return self.call("GET", f"/api/v1/single/{token}{suffix}", token)

    def put_batch(self, pairs: dict) -> httpx.Response:
        return self.call("POST", "/api/v1/batch", json=pairs)

    def get_batch(self, pairs: dict) -> httpx.Response:
        return self.call("PUT", "/api/v1/batch", json=pairs)


def make_key(gateway: GatewayProcess, org: str, read: bool = True, write: bool = True,
             cap: int | None = None) -> ChainKey:
    response = httpx.post(f"{gateway.url}/admin/chain-keys",
                          headers={"X-Safefs-Admin": gateway.admin_secret},
                          json={"org": org, "read": read, "write": write, "cap": cap})
    assert response.status_code == 200, response.text
    body = response.json()
    return ChainKey(gateway.url, body["key"], body["secret"])


def assert_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["response"]["error_type"] == error_type
    return body["response"]["error_message"]


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("chain")
    gateway = GatewayProcess(isolated_env(root), f"file://{root / 'store'}", [])
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def org() -> str:
    """An organisation of this test's own."""
    return f"org-{secrets.token_hex(6)}"


@pytest.fixture
def chain(shared_gateway: GatewayProcess, org: str) -> ChainKey:
    """A read-write key of the test's organisation."""
    return make_key(shared_gateway, org)


# -- signatures -----------------------------------------------------------------------------


def test_put_then_get_round_trip(chain):
    data = os.urandom(100_000)
    token = chain.put_token(data)
    assert token.startswith(TOKEN_PREFIX) and len(token) == len(TOKEN_PREFIX) + 64
    int(token[len(TOKEN_PREFIX):], 16)
    response = chain.get(token)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-expected-hash"] == hashlib.md5(data).hexdigest()


def test_put_envelope_is_altr_shape(chain):
    body = chain.put(b"hello").json()
    assert body.keys() == {"success", "response"} and body["success"] is True
    assert body["response"].keys() == {"data"}
    assert body["response"]["data"].keys() == {"referenceToken"}


def test_tokens_reveal_nothing_about_content(chain):
    """The same bytes twice get two unrelated tokens, and neither is a hash of them."""
    data = b"same content"
    first, second = chain.put_token(data), chain.put_token(data)
    assert first != second
    digests = {hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()}
    assert not digests & {first[len(TOKEN_PREFIX):], second[len(TOKEN_PREFIX):]}


def _formats(now: datetime) -> dict[str, str]:
    eastern = now.astimezone(timezone(timedelta(hours=-5)))
    return {
        "http-date": email.utils.format_datetime(now, usegmt=True),
        "iso-z": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "iso-offset": eastern.isoformat(),
        "iso-naive-utc": now.replace(tzinfo=None).isoformat(),
        "mm-dd-yyyy": now.strftime("%m-%d-%Y %H:%M:%S"),
        "js-date": eastern.strftime("%a %b %d %Y %H:%M:%S GMT-0500 (Eastern Standard Time)"),
    }


@pytest.mark.parametrize("form", list(_formats(datetime.now(UTC))))
def test_accepted_date_formats(chain, form):
    date = _formats(datetime.now(UTC))[form]
    response = chain.call("POST", "/api/v1/single/", content=b"dated", date=date)
    assert response.status_code == 200, (date, response.text)
    token = response.json()["response"]["data"]["referenceToken"]
    response = chain.call("GET", f"/api/v1/single/{token}", token, date=date)
    assert response.content == b"dated"


@pytest.mark.parametrize("skew", [timedelta(minutes=-16), timedelta(minutes=16),
                                  timedelta(days=-1)])
def test_date_outside_window_is_refused(chain, skew):
    response = chain.call("POST", "/api/v1/single/", content=b"x", date=iso_now(skew))
    assert "15 minutes" in assert_error(response, 401, "unauthorized")


def test_date_inside_window_is_accepted(chain):
    response = chain.call("POST", "/api/v1/single/", content=b"x",
                          date=iso_now(timedelta(minutes=-14)))
    assert response.status_code == 200


def test_mm_dd_yyyy_is_taken_as_utc(chain):
    """Read as local time five hours off, it would be outside the window."""
    date = (datetime.now(UTC) - timedelta(hours=5)).strftime("%m-%d-%Y %H:%M:%S")
    assert_error(chain.call("POST", "/api/v1/single/", content=b"x", date=date),
                 401, "unauthorized")


def test_wrong_secret_is_refused(chain):
    response = chain.call("POST", "/api/v1/single/", content=b"x", secret="0" * 64)
    assert assert_error(response, 401, "unauthorized") == "The API key could not be authenticated."


def test_wrong_method_is_refused(chain):
    response = chain.call("POST", "/api/v1/single/", content=b"x", sign_as=("PUT", ""))
    assert_error(response, 401, "unauthorized")


def test_resource_must_be_empty_for_post(chain):
    response = chain.call("POST", "/api/v1/single/", content=b"x", sign_as=("POST", "x"))
    assert_error(response, 401, "unauthorized")


def test_wrong_resource_is_refused(chain):
    token, other = chain.put_token(b"one"), chain.put_token(b"two")
    response = chain.call("GET", f"/api/v1/single/{token}", sign_as=("GET", other))
    assert_error(response, 401, "unauthorized")
    response = chain.call("GET", f"/api/v1/single/{token}/metadata", sign_as=("GET", ""))
    assert_error(response, 401, "unauthorized")


def test_signed_date_must_be_the_header(chain):
    """The signature covers X-ALTR-DATE verbatim: another spelling of the same time fails."""
    now = datetime.now(UTC).replace(microsecond=0)
    signature = sign(chain.secret, "POST", "", now.isoformat())
    response = httpx.post(chain.url + "/api/v1/single/", content=b"x", headers={
        "Authorization": f"ALTR {chain.key}:{signature}",
        "X-ALTR-DATE": now.strftime("%m-%d-%Y %H:%M:%S")})
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer abc.def.ghi"},
    {"Authorization": "ALTR ALTR-00000000000000000000000000000000:AAAA"},
    {"Authorization": "ALTR no-colon-here"},
])
def test_missing_or_malformed_credentials(shared_gateway, headers):
    response = httpx.post(shared_gateway.url + "/api/v1/single/", content=b"x",
                          headers={"X-ALTR-DATE": iso_now(), **headers})
    assert_error(response, 401, "unauthorized")


def test_missing_or_unreadable_date(chain):
    response = httpx.post(chain.url + "/api/v1/single/", content=b"x", headers={
        "Authorization": f"ALTR {chain.key}:{sign(chain.secret, 'POST', '', '')}"})
    assert_error(response, 401, "unauthorized")
    response = chain.call("POST", "/api/v1/single/", content=b"x", date="yesterday-ish")
    assert_error(response, 401, "unauthorized")


def test_revoked_key_is_refused(shared_gateway, chain):
    assert chain.put(b"before").status_code == 200
    response = httpx.delete(f"{shared_gateway.url}/admin/chain-keys/{chain.key}",
                            headers={"X-Safefs-Admin": shared_gateway.admin_secret})
    assert response.status_code == 200
    assert_error(chain.put(b"after"), 401, "unauthorized")


# -- permissions and organisations ----------------------------------------------------------


def test_read_only_key_cannot_write(shared_gateway, org):
    reader = make_key(shared_gateway, org, write=False)
    message = assert_error(reader.put(b"x"), 403, "forbidden")
    assert message == "API key does not have write permissions."
    assert_error(reader.put_batch({"a": "b"}), 403, "forbidden")


def test_write_only_key_cannot_read(shared_gateway, org):
    writer = make_key(shared_gateway, org, read=False)
    token = writer.put_token(b"secret stuff")
    assert_error(writer.get(token), 403, "forbidden")
    assert_error(writer.get(token, "/metadata"), 403, "forbidden")
    assert_error(writer.get_batch({"a": token}), 403, "forbidden")
    # The writer may still ask whether its upload is available.
    assert writer.get(token, "/status").status_code == 200
    reader = make_key(shared_gateway, org, write=False)
    assert reader.get(token).content == b"secret stuff"


def test_other_organisations_tokens_are_not_found(shared_gateway, chain, org):
    token = chain.put_token(b"ours")
    stranger = make_key(shared_gateway, org + "-other")
    for suffix in ("", "/metadata", "/status"):
        assert_error(stranger.get(token, suffix), 404, "resource_not_found")
    assert stranger.get_batch({"t": token}).json() == {"t": None}


@pytest.mark.parametrize("token", [TOKEN_PREFIX + "0" * 64, "chain_nothex", "anything"])
def test_unknown_token_is_not_found(chain, token):
    for suffix in ("", "/metadata", "/status"):
        message = assert_error(chain.get(token, suffix), 404, "resource_not_found")
        assert message == "The requested resource could not be found."


def test_cap_is_enforced(shared_gateway, org):
    capped = make_key(shared_gateway, org, cap=1000)
    capped.put_token(b"a" * 600)
    message = assert_error(capped.put(b"b" * 600), 400, "bad_request")
    assert message == "Organization data cap exceeded."
    capped.put_token(b"c" * 400)  # exactly fills the cap
    assert_error(capped.put(b"d"), 400, "bad_request")
    assert_error(capped.put_batch({"k": "v"}), 400, "bad_request")


def test_cap_applies_to_streamed_bodies_and_batches(shared_gateway, org):
    capped = make_key(shared_gateway, org, cap=10_000)
    chunks = (b"x" * 1000 for _ in range(11))  # no Content-Length: chunked
    assert_error(capped.put(chunks), 400, "bad_request")
    response = capped.put_batch({"a": "y" * 3000, "b": "z" * 3000})
    assert response.status_code == 200
    assert response.headers["x-bytes-consumed"] == "6000"
    assert_error(capped.put_batch({"c": "y" * 3000, "d": "z" * 1001}), 400, "bad_request")
    listing = httpx.get(f"{shared_gateway.url}/admin/chain-keys",
                        headers={"X-Safefs-Admin": shared_gateway.admin_secret}).json()
    assert {"name": org, "cap": 10_000, "used": 6000} in listing["orgs"]


def test_chain_routes_are_refused_on_an_insecure_listener(gateway_factory, safefs_env):
    gateway = gateway_factory("--listen", "0.0.0.0:0")
    key = make_key(gateway, "acme")
    key.url = f"http://127.0.0.1:{gateway.port}"
    assert assert_error(key.put(b"x"), 403, "forbidden") == INSECURE_LISTENER
    assert_error(key.get(TOKEN_PREFIX + "0" * 64), 403, "forbidden")


def test_tls_listener_serves_chain_keys(gateway_factory, safefs_env, tmp_path, monkeypatch):
    cert, key_file = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    gateway = gateway_factory("--listen", "0.0.0.0:0", "--tls-cert", str(cert),
                              "--tls-key", str(key_file))
    assert gateway.url.startswith("https://")
    key = make_key(gateway, "acme")
    key.url = f"https://127.0.0.1:{gateway.port}"
    token = key.put_token(b"over tls")
    assert key.get(token).content == b"over tls"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "safefs test")])
    now = datetime.now(UTC)
    addresses = [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "0.0.0.0")]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(private_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(addresses), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(private_key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


# -- PutData details ------------------------------------------------------------------------


def test_small_hint_keeps_at_most_3kb(chain):
    data = os.urandom(10_000)
    pieces = (data[i:i + 1000] for i in range(0, len(data), 1000))
    token = chain.put_token(pieces, **{"X-Content-Length-Hint": "500"})
    response = chain.get(token)
    assert response.content == data[:SMALL]
    assert response.headers["x-expected-hash"] == hashlib.md5(data[:SMALL]).hexdigest()


def test_small_hint_and_short_body_keeps_the_body(chain):
    data = b"q" * 2000
    token = chain.put_token(iter([data]), **{"X-Content-Length-Hint": "10"})
    assert chain.get(token).content == data


def test_large_hint_keeps_everything(chain):
    data = os.urandom(10_000)
    token = chain.put_token(iter([data[:5000], data[5000:]]),
                            **{"X-Content-Length-Hint": str(SMALL)})
    assert chain.get(token).content == data


def test_content_length_wins_over_hint(chain):
    data = os.urandom(10_000)
    token = chain.put_token(data, **{"X-Content-Length-Hint": "100"})
    assert chain.get(token).content == data


def test_bad_hint_is_a_bad_request(chain):
    response = chain.put(iter([b"x"]), {"X-Content-Length-Hint": "lots"})
    assert_error(response, 400, "bad_request")


def test_empty_and_tiny_bodies(chain):
    for data in (b"", b"a", b"ab", b"abc"):
        response = chain.get(chain.put_token(data))
        assert response.content == data
        assert response.headers["x-expected-hash"] == hashlib.md5(data).hexdigest()


def test_large_body_streams_through(chain):
    data = os.urandom(5 * 1024 * 1024 + 17)
    token = chain.put_token(data)
    response = chain.get(token)
    assert response.content == data
    assert response.headers["content-length"] == str(len(data))


def test_metadata_round_trip(chain):
    token = chain.put_token(b"with metadata", **{"X-ALTR-METADATA": "filename.txt"})
    response = chain.get(token)
    assert response.headers["x-altr-metadata"] == "filename.txt"
    assert chain.get(token, "/metadata").json() == {"success": True, "metadata": "filename.txt"}
    bare = chain.put_token(b"without")
    assert "x-altr-metadata" not in chain.get(bare).headers
    assert chain.get(bare, "/metadata").json() == {"success": True, "metadata": None}


def test_metadata_may_be_utf8(chain):
    name = "naïve résumé €.txt"
    token = chain.put_token(b"text", **{"X-ALTR-METADATA": name.encode()})
    assert (b"x-altr-metadata", name.encode()) in chain.get(token).headers.raw
    assert chain.get(token, "/metadata").json()["metadata"] == name
    assert_error(chain.put(b"x", {"X-ALTR-METADATA": b"\xff\xfe"}), 400, "bad_request")


def test_non_ascii_token_in_path_is_not_found(chain):
    assert_error(chain.get("chain_€"), 404, "resource_not_found")


def test_status(chain):
    token = chain.put_token(b"status")
    assert chain.get(token, "/status").json() == {"success": True, "response": {"data": {
        "token_active": True, "data_protected": True, "data_available": True}}}


def test_older_chain_paths_are_aliases(chain):
    response = chain.call("POST", "/api/v1/chain", content=b"old path")
    token = response.json()["response"]["data"]["referenceToken"]
    assert chain.call("GET", f"/api/v1/chain/{token}", token).content == b"old path"


# -- batches --------------------------------------------------------------------------------


def test_batch_put_and_get(chain):
    big = "b" * (SMALL + 1)
    response = chain.put_batch({"text": "héllo", "number": 5, "object": {"x": [1, 2]},
                                "edge": "e" * SMALL, "big": big})
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert list(tokens) == ["text", "number", "object", "edge", "big"]
    assert tokens["big"] is None and response.headers["x-overflow-data"] == "true"
    assert all(tokens[k].startswith(TOKEN_PREFIX) for k in ("text", "number", "object", "edge"))
    consumed = len("héllo".encode()) + len("5") + len('{"x":[1,2]}') + SMALL
    assert response.headers["x-bytes-consumed"] == str(consumed)
    # Batch values are ordinary tokens (sharing one ImmutableData, each its own range).
    assert chain.get(tokens["text"]).content == "héllo".encode()
    response = chain.get(tokens["edge"])
    assert response.content == b"e" * SMALL
    assert response.headers["x-expected-hash"] == hashlib.md5(b"e" * SMALL).hexdigest()

    large = chain.put_token(b"L" * (SMALL + 1))
    unknown = TOKEN_PREFIX + "f" * 64
    request = {"id": "1", "text": tokens["text"], "number": tokens["number"],
               "object": tokens["object"], "edge": tokens["edge"], "large": large,
               "unknown": unknown, "nested": {"a": 1}}
    response = chain.get_batch(request)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "1", "text": "héllo", "number": "5",
                               "object": '{"x":[1,2]}', "edge": "e" * SMALL, "large": None,
                               "unknown": None, "nested": {"a": 1}}
    assert response.headers["x-overflow-data"] == "true"


def test_batch_without_overflow_has_no_flag(chain):
    response = chain.put_batch({"a": "1"})
    assert "x-overflow-data" not in response.headers
    response = chain.get_batch({"a": response.json()["a"]})
    assert response.json() == {"a": "1"} and "x-overflow-data" not in response.headers


def test_batch_read_signed_as_get(chain):
    token = chain.put_batch({"a": "value"}).json()["a"]
    response = chain.call("GET", "/api/v1/batch", json={"a": token})
    assert response.json() == {"a": "value"}


def test_batch_of_1024_pairs(chain):
    pairs = {f"k{i}": str(i % 10) for i in range(1024)}
    tokens = chain.put_batch(pairs).json()
    assert len(set(tokens.values())) == 1024
    assert chain.get_batch(tokens).json() == pairs


def test_batch_limits(chain):
    assert_error(chain.put_batch({f"k{i}": "v" for i in range(1025)}), 400, "bad_request")
    assert_error(chain.get_batch({f"k{i}": "v" for i in range(1025)}), 400, "bad_request")
    too_big = {"a": "x" * 3000} | {f"k{i}": "y" * 3000 for i in range(171)}  # > 500 KB
    response = chain.put_batch(too_big)
    assert_error(response, 509, "limit_exceeded")
    assert response.headers["x-overflow-data"] == "true"
    assert_error(chain.call("POST", "/api/v1/batch", content=b"[1, 2]"), 400, "bad_request")
    assert_error(chain.call("POST", "/api/v1/batch", content=b"{nope"), 400, "bad_request")


def test_batch_read_over_500kb_is_refused(chain):
    tokens = {}
    for part in range(2):
        response = chain.put_batch({f"{part}-{i}": "z" * 3000 for i in range(90)})
        tokens |= response.json()
    response = chain.get_batch(tokens)  # 180 x 3000 bytes of data > 500 KB
    assert_error(response, 509, "limit_exceeded")


# -- storage --------------------------------------------------------------------------------


def test_secrets_are_not_stored_or_logged_in_plaintext(shared_gateway, chain):
    chain.put_token(b"use the key once")
    state = shared_gateway.env.data_dir
    stored = b"".join(path.read_bytes() for path in state.glob("gateway.sqlite*"))
    assert chain.key.encode() in stored  # the key id is there: we are looking in the right place
    assert chain.secret.encode() not in stored
    assert bytes.fromhex(chain.secret) not in stored
    assert chain.secret not in shared_gateway.log()
    with sqlite3.connect(state / "gateway.sqlite") as db:
        [sealed] = db.execute("SELECT sealed_secret FROM chain_keys WHERE key = ?",
                              (chain.key,)).fetchone()
    assert len(sealed) == 24 + 64 + 16  # nonce, secret, tag


def test_data_is_self_encrypted_in_the_store(shared_gateway, chain):
    marker = b"plaintext marker that must not reach the store " * 100
    chain.put_token(marker)
    store = Path(shared_gateway.store_url.removeprefix("file://"))
    for path in store.rglob("*"):
        if path.is_file():
            assert b"plaintext marker" not in path.read_bytes(), path


async def test_small_values_cannot_be_confirmed_from_the_store(shared_gateway, chain):
    """Whoever can list the store cannot confirm a guessed value: the chunks its plain
    self-encryption gives (what the launcher API stores) are not there after PutData or
    PostBatch stored it."""
    value = b"4111 1111 1111 1111"
    chain.put_token(value)
    chain.put_batch({"card": value.decode()})
    _, chunks = selfenc.encrypt_bytes(value)
    convergent = {name.hex() for name in chunks}
    store = Path(shared_gateway.store_url.removeprefix("file://"))

    def stored() -> set[str]:
        return {path.name for path in store.rglob("*") if path.is_file()}

    assert not convergent & stored()
    async with shared_gateway.client(shared_gateway.authorise()) as client:
        await client.put_bytes(value)
    assert convergent <= stored()  # the check can see such chunks


def test_tokens_survive_a_restart(gateway_factory, safefs_env):
    gateway = gateway_factory()
    key = make_key(gateway, "acme")
    token = key.put_token(b"durable", **{"X-ALTR-METADATA": "kept"})
    gateway.restart()
    key.url = gateway.url
    response = key.get(token)
    assert response.content == b"durable" and response.headers["x-altr-metadata"] == "kept"
