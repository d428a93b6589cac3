"""Shared fixtures: an isolated safefs environment and a real gateway process.

``safefs_env`` points ``HOME`` and ``XDG_*`` at a temporary directory (for this process and for
every child it starts). ``gateway`` starts ``python -m safefs gateway`` there on a free loopback
port with a ``file://`` store, waits for ``/health`` and yields a :class:`GatewayProcess`.
Extra gateway flags come from the ``gateway_args`` marker::

    @pytest.mark.gateway_args("--handle-capacity", "3")
    async def test_eviction(gateway): ...

``gateway_factory`` starts more (or differently configured) gateways in the same environment.
``module_env`` / ``module_gateway`` are the same, shared by all tests of a module: cheaper, for
tests that leave the gateway as they found it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from safefs.client import GatewayClient

STARTUP_TIMEOUT = 60.0
TEST_APP = {"name": "safefs tests", "id": "tests.safefs", "vendor": "safefs", "version": "1.0"}


@dataclass
class SafefsEnv:
    root: Path
    env: dict[str, str]

    @property
    def data_dir(self) -> Path:
        return Path(self.env["XDG_DATA_HOME"]) / "safefs"

    def run_cli(self, *args: str, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``python -m safefs ARGS`` in this environment (no TTY)."""
        return subprocess.run([sys.executable, "-m", "safefs", *args], env=self.env,
                              input=input, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)


_ISOLATED_VARS = (("HOME", "home"), ("XDG_CONFIG_HOME", "config"),
                  ("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache"))


def isolated_env(root: Path) -> SafefsEnv:
    """HOME and XDG_* under ``root`` (created), nothing pointing at a gateway already running."""
    env = {k: v for k, v in os.environ.items() if k not in ("SAFEFS_GATEWAY", "XDG_RUNTIME_DIR")}
    for var, sub in _ISOLATED_VARS:
        (root / sub).mkdir(parents=True)
        env[var] = str(root / sub)
    return SafefsEnv(root, env)


def another_device(env: SafefsEnv, root: Path) -> SafefsEnv:
    """A second device of the same account: its own HOME and XDG_* dirs, the same account key."""
    other = isolated_env(root)
    key = Path("safefs") / "account.key"
    (Path(other.env["XDG_CONFIG_HOME"]) / "safefs").mkdir(mode=0o700)
    shutil.copy2(Path(env.env["XDG_CONFIG_HOME"]) / key, Path(other.env["XDG_CONFIG_HOME"]) / key)
    return other


def _isolated_env(root: Path, monkeypatch: pytest.MonkeyPatch) -> SafefsEnv:
    """:func:`isolated_env`, also applied to this process's environment."""
    for var in ("SAFEFS_GATEWAY", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    safefs_env = isolated_env(root)
    for var, _ in _ISOLATED_VARS:
        monkeypatch.setenv(var, safefs_env.env[var])
    return safefs_env


@pytest.fixture
def safefs_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SafefsEnv:
    return _isolated_env(tmp_path / "env", monkeypatch)


@pytest.fixture(scope="module")
def module_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SafefsEnv]:
    """Like ``safefs_env``, shared by the tests of one module."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _isolated_env(tmp_path_factory.mktemp("module") / "env", monkeypatch)


@dataclass
class GatewayProcess:
    """A gateway running as a child process."""

    env: SafefsEnv
    store_url: str
    args: list[str]
    url: str = ""
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.env.root / "gateway.log"

    @property
    def port(self) -> int:
        return httpx.URL(self.url).port or 0

    @property
    def admin_secret(self) -> str:
        return (self.env.data_dir / "admin.secret").read_text().strip()

    def start(self, port: int = 0) -> None:
        cmd = [sys.executable, "-m", "safefs", "-v", "gateway", "--listen",
               f"127.0.0.1:{port}", "--store", self.store_url, *self.args]
        info_file = self.env.data_dir / "run" / "gateway.json"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env.env, stdout=log, stderr=log)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                info = json.loads(info_file.read_text())
            except (FileNotFoundError, ValueError):
                info = {}
            if info.get("pid") == self.proc.pid:
                self.url = info["url"]
                if httpx.get(f"{self.url}/health", verify=False).status_code == 200:
                    return
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"gateway did not come up:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the gateway and wait for it; returns its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def restart(self, *extra_args: str) -> None:
        """Stop gracefully and start again on the same port (``extra_args`` replace args)."""
        port = self.port
        self.stop()
        if extra_args:
            self.args = list(extra_args)
        self.start(port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def authorise(self, permissions: tuple[str, ...] = ("LOW_LEVEL_API",),
                  app: dict | None = None) -> str:
        """A token approved at once through the admin secret."""
        response = httpx.post(f"{self.url}/auth", headers={"X-Safefs-Admin": self.admin_secret},
                              json={"app": app or TEST_APP, "permissions": list(permissions)})
        response.raise_for_status()
        return response.json()["token"]

    def client(self, token: str | None = None, **kwargs) -> GatewayClient:
        return GatewayClient(self.url, token, **kwargs)


@pytest.fixture
def gateway_factory(safefs_env: SafefsEnv, tmp_path: Path) -> Iterator:
    started: list[GatewayProcess] = []

    def start(*args: str, store_url: str | None = None) -> GatewayProcess:
        gateway = GatewayProcess(safefs_env, store_url or f"file://{tmp_path / 'store'}",
                                 list(args))
        gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(gateway_factory, request: pytest.FixtureRequest) -> GatewayProcess:
    marker = request.node.get_closest_marker("gateway_args")
    return gateway_factory(*(marker.args if marker else ()))


@pytest.fixture(scope="module")
def module_gateway(module_env: SafefsEnv) -> Iterator[GatewayProcess]:
    """One default gateway for the tests of a module that need no gateway of their own
    (they must not stop it, change its flags or count its apps)."""
    gateway = GatewayProcess(module_env, f"file://{module_env.root.parent / 'store'}", [])
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
async def client(gateway: GatewayProcess):
    """A client with a LOW_LEVEL_API token."""
    async with gateway.client(gateway.authorise()) as client:
        yield client
