"""The safefs gateway: the SAFE launcher's REST API (and chainAPI) over an encrypted store.

Importing this package is cheap (clients use it to find a running gateway); the server lives in
:mod:`safefs.gateway.server` and the ASGI application in :mod:`safefs.gateway.app`.
"""

from __future__ import annotations

import json
import os

from safefs import paths

# Header carrying the local admin secret (``paths.admin_secret_file()``): admin endpoints, and
# instant approval of ``POST /auth`` for local tools such as the mount daemon.
ADMIN_HEADER = "X-Safefs-Admin"
# Optional header of ``POST /immutable-data/:writer``: the writer's size the client expects
# before this append. It makes a retried append idempotent (see safefs.gateway.immutable).
OFFSET_HEADER = "X-Safefs-Offset"

# Defaults of `safefs gateway` (here, not in the server modules, so that the CLI shows them
# without importing the server and its crypto into every safefs process, the mount included).
DEFAULT_LISTEN = "127.0.0.1:8100"
# How long POST /auth waits for a person to approve or reject the app.
DEFAULT_AUTH_TIMEOUT = 300.0
# Handles kept per kind before the least recently used is evicted.
DEFAULT_HANDLE_CAPACITY = 1000
# Worker threads for encryption, decryption and store calls.
DEFAULT_THREADS = max(2, os.cpu_count() or 2)


def write_info(url: str) -> None:
    """Record the running gateway in ``paths.gateway_info_file()``: ``{"url", "pid"}``."""
    info = {"url": url, "pid": os.getpid()}
    paths.write_secret(paths.gateway_info_file(), json.dumps(info).encode())


def remove_info() -> None:
    """Remove the info file if it is still ours (another gateway may have replaced it)."""
    path = paths.gateway_info_file()
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (FileNotFoundError, ValueError):
        pass


def read_info() -> dict | None:
    """``{"url", "pid"}`` of the gateway running for this user, or ``None``."""
    try:
        info = json.loads(paths.gateway_info_file().read_text())
        os.kill(int(info["pid"]), 0)
    except (FileNotFoundError, ValueError, KeyError, TypeError, ProcessLookupError):
        return None
    except PermissionError:
        pass  # alive, but another user's process: unlikely for a per-user file; trust it
    return info


def read_admin_secret() -> str | None:
    """The local admin secret, if a gateway has created it."""
    try:
        return paths.admin_secret_file().read_text().strip()
    except FileNotFoundError:
        return None
