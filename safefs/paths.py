"""Where safefs keeps its files (XDG base directories).

Config (account key, settings) lives in ``$XDG_CONFIG_HOME/safefs``; the store, the gateway's
state and the admin secret in ``$XDG_DATA_HOME/safefs``; the write-back cache in
``$XDG_CACHE_HOME/safefs``. Every path is computed when asked, so tests can point ``HOME`` and
``XDG_*`` at temporary directories.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "safefs"


def _base(var: str, default: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / default


def config_dir() -> Path:
    return _base("XDG_CONFIG_HOME", ".config") / APP


def data_dir() -> Path:
    return _base("XDG_DATA_HOME", ".local/share") / APP


def cache_dir() -> Path:
    return _base("XDG_CACHE_HOME", ".cache") / APP


def runtime_dir() -> Path:
    """Per-user runtime directory (sockets, pid files); falls back to the data dir."""
    value = os.environ.get("XDG_RUNTIME_DIR")
    if value and os.path.isdir(value):
        return Path(value) / APP
    return data_dir() / "run"


def account_key_file() -> Path:
    """The account secret (mode 0600)."""
    return config_dir() / "account.key"


def config_file() -> Path:
    return config_dir() / "config.json"


def default_store_url() -> str:
    return "file://" + str(data_dir() / "store")


def gateway_state_file() -> Path:
    """The gateway's own database: app sessions, tokens, chainAPI keys (mode 0600)."""
    return data_dir() / "gateway.sqlite"


def admin_secret_file() -> Path:
    """Local secret that lets the CLI and the mount daemon use the gateway's admin endpoints."""
    return data_dir() / "admin.secret"


def gateway_info_file() -> Path:
    """Written by a running gateway: ``{"url": ..., "pid": ...}``; how clients find it."""
    return runtime_dir() / "gateway.json"


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def write_secret(path: Path, data: bytes) -> None:
    """Atomically write a secret file with mode 0600 (temp file + fsync + rename)."""
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
