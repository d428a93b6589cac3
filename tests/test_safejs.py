"""A real 2016 client against a real gateway: the npm package safe-js 0.3.3.

``tests/safejs/drive.js`` uses safe-js's public API the way the launcher-era apps did (auth,
ImmutableData, StructuredData, AppendableData) and prints what it observed as JSON; these tests
check it, and read the same data back through :class:`safefs.client.GatewayClient` so the two
clients have to agree. The gateway gets the authorisation requests like any app's and this
module approves (or rejects) them through the admin endpoint, as a person would.

safe-js hard-codes ``http://localhost:8100/0.5/``: the gateway listens there when the port is
free, else on a free port that the script passes to safe-js. The node packages are installed
from ``tests/safejs/package-lock.json`` on first use; without node and npm the module is
skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from safefs.client import GatewayClient
from safefs.gateway import ADMIN_HEADER
from safefs.model import DataIdentifier, DataKind

from .conftest import GatewayProcess, isolated_env

SAFEJS_DIR = Path(__file__).parent / "safejs"
SAFEJS_VERSION = "0.3.3"
LAUNCHER_PORT = 8100  # safe-js's hard-coded launcher port
# The app names drive.js uses: requests from the first are approved, from the second rejected.
APPROVED_APP = "safe-js client"
REJECTED_APP = "safe-js rejected client"
# Guards against a hung client; the script itself takes about a second.
DRIVE_TIMEOUT = 120.0

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are not installed: the safe-js 0.3.3 client cannot run")


def installed_version() -> str | None:
    try:
        manifest = SAFEJS_DIR / "node_modules" / "safe-js" / "package.json"
        return json.loads(manifest.read_text())["version"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def node_modules() -> None:
    """safe-js and its dependencies exactly as the lockfile pins them."""
    if installed_version() != SAFEJS_VERSION:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=SAFEJS_DIR, check=True,
                       capture_output=True, timeout=600)
    assert installed_version() == SAFEJS_VERSION


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway on the launcher's port if it is free, else on any free port."""
    root = tmp_path_factory.mktemp("safejs")
    gateway = GatewayProcess(isolated_env(root), f"file://{root / 'store'}", [])
    try:
        gateway.start(LAUNCHER_PORT)
    except RuntimeError:
        gateway.start()
    yield gateway
    gateway.stop()


def decide_auth_requests(gateway: GatewayProcess) -> None:
    """Approve the driven app's pending requests and reject the other app's."""
    admin = {ADMIN_HEADER: gateway.admin_secret}
    for request in httpx.get(f"{gateway.url}/admin/auth-requests", headers=admin).json():
        decision = "reject" if request["app"]["name"] == REJECTED_APP else "approve"
        httpx.post(f"{gateway.url}/admin/auth-requests/{request['id']}/{decision}",
                   headers=admin).raise_for_status()


@pytest.fixture(scope="module")
def driven(node_modules: None, launcher: GatewayProcess) -> dict:
    """What drive.js observed while using the gateway through safe-js."""
    args = ["node", "drive.js"]
    if launcher.port != LAUNCHER_PORT:
        args.append(f"http://127.0.0.1:{launcher.port}/0.5/")
    proc = subprocess.Popen(args, cwd=SAFEJS_DIR, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + DRIVE_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        decide_auth_requests(launcher)
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, f"drive.js failed:\n{stderr}\ngateway log:\n{launcher.log()}"
    return json.loads(stdout)


def section(driven: dict, name: str) -> dict:
    """One section of the script's results, failing with its request trace if it broke."""
    result = driven[name]
    assert "error" not in result, (f"safe-js {name} failed: {result['error']}\n"
                                   + "\n".join(result["trace"]))
    return result


def test_safejs_talks_to_the_launcher_api_prefix(driven: dict, launcher: GatewayProcess):
    assert driven["server"].endswith(f":{launcher.port}/0.5/")


def test_auth_approve_validate_and_reject(driven: dict):
    auth = section(driven, "auth")
    assert auth["permissions"] == ["LOW_LEVEL_API"]
    assert auth["tokenValid"] is True
    assert auth["forgedTokenValid"] is False
    assert auth["rejected"] == {"status": 401, "body": "Unauthorised"}


async def test_immutable_data_round_trip(driven: dict, launcher: GatewayProcess):
    immutable = section(driven, "immutable")
    assert immutable["readerSize"] == immutable["size"] == 300 * 1024 + 7
    assert immutable["readSha256"] == immutable["sha256"]
    assert immutable["anonymousReadSha256"] == immutable["sha256"]
    data_id = base64.b64decode(immutable["dataId"])
    assert DataIdentifier.deserialise(data_id).kind is DataKind.IMMUTABLE
    async with GatewayClient(launcher.url) as client:
        assert hashlib.sha256(await client.get_bytes(data_id)).hexdigest() == immutable["sha256"]


def test_symmetric_data_reads_back_only_for_its_app(driven: dict):
    symmetric = section(driven, "symmetric")
    assert symmetric["matches"] is True
    assert 400 <= symmetric["anonymousReaderStatus"] < 500


async def test_structured_data_versions(driven: dict, launcher: GatewayProcess):
    structured = section(driven, "structured")
    assert structured["afterPut"] == {"isOwner": True, "version": 0, "dataVersionLength": 1}
    assert structured["afterPost"] == {"isOwner": True, "version": 1, "dataVersionLength": 2}
    assert structured["sizeValid"] == {"isValid": True}
    assert structured["fetched"] == structured["afterPost"]
    assert structured["readVersions"] == structured["written"]
    # How apps read the latest: readData(token, handle) asks for /structured-data/:h/undefined
    # (the launcher's isNaN(version) made that the latest), readData(token, handle, '') for
    # /structured-data/:h/.
    latest = {"ok": True, "value": structured["written"][-1]}
    assert structured["latestWithoutVersion"] == latest
    assert structured["latestWithEmptyVersion"] == latest
    assert structured["deserialised"] == {"isOwner": True, "version": 1}
    # safe-js names records by the SHA-256 of the string it is given.
    name = bytes.fromhex(structured["nameSha256"])
    assert DataIdentifier.deserialise(base64.b64decode(structured["dataId"])) \
        == DataIdentifier.structured(name, 501)
    async with GatewayClient(launcher.url) as client:
        assert await client.sd_read(name, 501) == (1, structured["written"][-1].encode())


async def test_appendable_data_append_and_read(driven: dict, launcher: GatewayProcess):
    appendable = section(driven, "appendable")
    assert appendable["fetched"] == {"isOwner": True, "version": 0, "filterType": "BlackList",
                                     "dataLength": 2, "deletedDataLength": 0}
    assert appendable["metadata"] == {**appendable["fetched"], "filterLength": 0}
    # Entries are ordered by their serialised form, not by arrival.
    assert sorted(e["dataId"] for e in appendable["entries"]) == sorted(appendable["appended"])
    async with GatewayClient(launcher.url) as client:
        for entry in appendable["entries"]:
            data_id = base64.b64decode(entry["dataId"])
            assert (await client.get_bytes(data_id)).decode() == entry["content"]
    assert {e["content"] for e in appendable["entries"]} == {"hello", "world"}
    assert appendable["afterRemove"] == {"version": 1, "dataLength": 1, "deletedDataLength": 1}
    async with GatewayClient(launcher.url, launcher.authorise()) as client:
        sign_key = await client.sign_key()
        user_key = (await client.request("GET", f"/sign-key/serialise/{sign_key}")).content
    assert base64.b64decode(appendable["appenderKey"]) == user_key


def test_private_inbox_message_sealed_to_its_owner(driven: dict):
    """SAFE Mail's flow: encrypt key of a private AppendableData, ASYMMETRIC cipher opts,
    append, and the owner opens the entry."""
    inbox = section(driven, "privateInbox")
    assert inbox["dataLength"] == 1
    assert inbox["read"] == inbox["written"]
