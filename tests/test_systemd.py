"""The systemd user units (SPEC §3) and ``safefs service install|uninstall``.

The units that ``safefs service install`` writes must pass ``systemd-analyze --user verify``.
Their Exec lines are then run the way a user manager runs them (``%h`` expanded, a
``NOTIFY_SOCKET`` bound by the test, the test reaping its children as systemd would), to check
that READY=1 comes only once the gateway listens and once the mount answers, that SIGTERM
uploads what was just written and exits 0, and that ExecStop unmounts and waits for the daemon.
No test talks to a real user manager: ``XDG_RUNTIME_DIR`` is a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from safefs.cli.service import GATEWAY_UNIT, MOUNT_UNIT, UNITS
from safefs.fs.mount import FLUSH_TIMEOUT, cache_dir_for
from safefs.gateway.server import GRACEFUL_TIMEOUT
from tests.conftest import STARTUP_TIMEOUT, SafefsEnv
from tests.fs_helpers import needs_fuse

TEMPLATES = Path(__file__).parent.parent / "systemd"


def read_unit(path: Path) -> dict[str, list[str]]:
    """``{"Section.Key": [values]}`` of a unit file (keys may repeat)."""
    unit: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        unit.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return unit


def exec_argv(line: str, home: str) -> list[str]:
    """The argv systemd builds from an Exec line: prefix dropped, ``%h``/``%%``/``$$`` expanded.

    Another specifier raises KeyError: the units use no other.
    """
    line = re.sub(r"%(.)", lambda match: {"h": home, "%": "%"}[match[1]], line.lstrip("-"))
    return shlex.split(line.replace("$$", "$"))


@pytest.fixture
def user_env(safefs_env: SafefsEnv, tmp_path: Path) -> SafefsEnv:
    """The isolated environment plus an XDG_RUNTIME_DIR where no user manager runs."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    safefs_env.env["XDG_RUNTIME_DIR"] = str(runtime)
    return safefs_env


def install(env: SafefsEnv, *args: str) -> dict[str, dict[str, list[str]]]:
    result = env.run_cli("service", "install", *args)
    assert result.returncode == 0, result.stderr
    unit_dir = Path(env.env["XDG_CONFIG_HOME"]) / "systemd" / "user"
    return {name: read_unit(unit_dir / name) for name in UNITS}


def test_units_keep_the_contract() -> None:
    """SPEC §3, and stop timeouts above the daemons' own bounded clean stops."""
    gateway = read_unit(TEMPLATES / GATEWAY_UNIT)
    mount = read_unit(TEMPLATES / MOUNT_UNIT)
    for unit in (gateway, mount):
        assert unit["Service.Type"] == ["notify"]
        assert unit["Service.Restart"] == ["on-failure"]
        assert unit["Service.StandardOutput"] == unit["Service.StandardError"] == ["journal"]
        assert unit["Install.WantedBy"] == ["default.target"]
    assert gateway["Service.ExecStart"] == ["safefs gateway"]
    assert float(gateway["Service.TimeoutStopSec"][0]) > GRACEFUL_TIMEOUT
    assert mount["Unit.Wants"] == mount["Unit.After"] == [GATEWAY_UNIT]
    assert mount["Service.ExecStart"] == ["safefs mount %h/safe --foreground"]
    assert mount["Service.ExecStop"] == ["-safefs umount %h/safe"]
    assert float(mount["Service.TimeoutStopSec"][0]) > FLUSH_TIMEOUT


@pytest.mark.parametrize("mountpoint", [None, "odd dir/100% $HOME \"quoted\""])
def test_installed_units_verify_and_run_this_safefs(user_env: SafefsEnv,
                                                    mountpoint: str | None) -> None:
    args = ("--no-enable",) if mountpoint is None else ("--mountpoint", mountpoint)
    result = user_env.run_cli("service", "install", *args)
    assert result.returncode == 0, result.stderr
    unit_dir = Path(user_env.env["XDG_CONFIG_HOME"]) / "systemd" / "user"
    assert "systemctl --user daemon-reload" in result.stdout
    assert ("enable --now " + " ".join(UNITS) in result.stdout) == (mountpoint is not None)

    home = user_env.env["HOME"]
    expected_mountpoint = str(user_env.root / mountpoint) if mountpoint else f"{home}/safe"
    for name in UNITS:
        unit = read_unit(unit_dir / name)
        for key in ("Service.ExecStart", "Service.ExecStop"):
            for line in unit.get(key, []):
                argv = exec_argv(line, home)
                assert os.path.isabs(argv[0]) and os.access(argv[0], os.X_OK)
                assert Path(argv[0]).name == "safefs"
                if name == MOUNT_UNIT:
                    assert argv[2] == expected_mountpoint

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the units were not verified")
    verify = subprocess.run([analyze, "--user", "verify", *(str(unit_dir / n) for n in UNITS)],
                            env=user_env.env, capture_output=True, text=True)
    problems = [line for line in (verify.stdout + verify.stderr).splitlines()
                if "safefs" in line]
    assert verify.returncode == 0 and not problems, verify.stdout + verify.stderr


def test_uninstall_removes_the_units(user_env: SafefsEnv) -> None:
    install(user_env, "--no-enable")
    result = user_env.run_cli("service", "uninstall")
    assert result.returncode == 0, result.stderr
    assert "systemctl --user disable --now " + " ".join(UNITS) in result.stdout
    assert not list((Path(user_env.env["XDG_CONFIG_HOME"]) / "systemd" / "user").iterdir())
    again = user_env.run_cli("service", "uninstall")
    assert again.returncode == 1
    assert again.stderr.startswith("safefs: no safefs units in ") and again.stderr.count("\n") == 1


class NotifySocket:
    """The datagram socket a user manager reads sd_notify messages from."""

    def __init__(self) -> None:
        self.name = f"safefs-test-{secrets.token_hex(6)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.settimeout(0.1)

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": "@" + self.name}

    def wait_for(self, message: str, process: subprocess.Popen, log: Path) -> None:
        """Wait for ``message``; fail if ``process`` exits first."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if message in self.sock.recv(4096).decode().split("\n"):
                    return
            except TimeoutError:
                if process.poll() is not None:
                    raise AssertionError(f"exited with {process.returncode} before {message}:\n"
                                         + log.read_text(errors="replace")) from None
        raise AssertionError(f"no {message} within {STARTUP_TIMEOUT} s:\n"
                             + log.read_text(errors="replace"))


class Services:
    """Runs unit command lines as the user manager would; kills what is left at the end."""

    def __init__(self, env: SafefsEnv) -> None:
        self.env = env
        self.home = env.env["HOME"]
        unit_dir = Path(env.env["XDG_CONFIG_HOME"]) / "systemd" / "user"
        self.units = {name: read_unit(unit_dir / name) for name in UNITS}
        self.mountpoint = Path(self.home) / "safe"
        self.started: list[subprocess.Popen] = []

    def argv(self, unit: str, key: str) -> list[str]:
        [line] = self.units[unit][f"Service.{key}"]
        return exec_argv(line, self.home)

    def start(self, unit: str, notify: NotifySocket, log: Path, *extra_args: str,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """ExecStartPre, then ExecStart in the background; returns once READY=1 arrived."""
        for line in self.units[unit].get("Service.ExecStartPre", []):
            subprocess.run(exec_argv(line, self.home), env=self.env.env, check=True)
        env = {**self.env.env, **notify.env, **(extra_env or {})}
        with open(log, "ab") as output:
            process = subprocess.Popen([*self.argv(unit, "ExecStart"), *extra_args], env=env,
                                       stdin=subprocess.DEVNULL, stdout=output, stderr=output)
        self.started.append(process)
        notify.wait_for("READY=1", process, log)
        return process

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()
        subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)


@pytest.fixture
def services(user_env: SafefsEnv) -> Iterator[Services]:
    install(user_env, "--no-enable")
    running = Services(user_env)
    yield running
    running.stop()


def journal_stream(path: Path) -> str:
    """``JOURNAL_STREAM`` naming ``path`` (what systemd sets when stderr is the journal)."""
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}"


@needs_fuse
def test_units_notify_stop_cleanly_and_unmount(services: Services, tmp_path: Path) -> None:
    mountpoint = services.mountpoint
    gateway_notify, mount_notify = NotifySocket(), NotifySocket()

    # The gateway unit. Port 8100 may be taken on a test machine: listen on a free port; the
    # mount finds the gateway the way it does under systemd, through the runtime directory.
    gateway_log = tmp_path / "gateway.log"
    gateway_log.touch()
    gateway = services.start(GATEWAY_UNIT, gateway_notify, gateway_log, "--listen", "127.0.0.1:0",
                             extra_env={"JOURNAL_STREAM": journal_stream(gateway_log)})
    runtime = Path(services.env.env["XDG_RUNTIME_DIR"])
    info = json.loads((runtime / "safefs" / "gateway.json").read_text())
    assert info["pid"] == gateway.pid
    assert httpx.get(f"{info['url']}/health").status_code == 200
    [listening] = [line for line in gateway_log.read_text().splitlines()
                   if "gateway listening on" in line]
    assert listening.startswith("INFO safefs.gateway.server: "), "journal lines carry no time"

    # The mount unit: READY=1 once the mount answers.
    mount_log = tmp_path / "mount.log"
    mount = services.start(MOUNT_UNIT, mount_notify, mount_log)
    assert os.path.ismount(mountpoint)
    assert stat.S_ISDIR(os.stat(mountpoint).st_mode)
    status = services.env.run_cli("status", str(mountpoint), "--json")
    assert json.loads(status.stdout)["gateway"] == info["url"], status.stderr

    # SIGTERM right after a write (still waiting for its upload delay): uploaded, exit 0.
    (mountpoint / "note.txt").write_text("written just before SIGTERM\n")
    mount.send_signal(signal.SIGTERM)
    mount_notify.wait_for("STOPPING=1", mount, mount_log)
    assert mount.wait() == 0, mount_log.read_text()
    assert not os.path.ismount(mountpoint)

    # Restart without the local cache: the file comes back from the gateway.
    shutil.rmtree(cache_dir_for(mountpoint))
    mount = services.start(MOUNT_UNIT, mount_notify, mount_log)
    reaper = threading.Thread(target=mount.wait, daemon=True)  # reaps at once, as systemd does
    reaper.start()
    assert (mountpoint / "note.txt").read_text() == "written just before SIGTERM\n"

    # ExecStop uploads, unmounts and returns only once the daemon is gone.
    stop = subprocess.run(services.argv(MOUNT_UNIT, "ExecStop"), env=services.env.env,
                          capture_output=True, text=True)
    assert stop.returncode == 0, stop.stderr
    assert not Path(f"/proc/{mount.pid}").exists()
    assert not os.path.ismount(mountpoint)
    reaper.join()
    assert mount.returncode == 0, mount_log.read_text()

    gateway.send_signal(signal.SIGTERM)
    gateway_notify.wait_for("STOPPING=1", gateway, gateway_log)
    assert gateway.wait() == 0, gateway_log.read_text()


@needs_fuse
def test_mount_unit_alone_is_ready_only_once_mounted(services: Services,
                                                     tmp_path: Path) -> None:
    """Without the gateway unit the mount starts its own gateway, which must not report
    READY=1 in the mount's name."""
    log = tmp_path / "mount.log"
    mount = services.start(MOUNT_UNIT, NotifySocket(), log)
    assert os.path.ismount(services.mountpoint), log.read_text()
    mount.send_signal(signal.SIGTERM)
    assert mount.wait() == 0, log.read_text()
