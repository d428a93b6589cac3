"""The gateway's own SQLite database (``paths.gateway_state_file()``, mode 0600).

It keeps what must survive a restart: app sessions and their token keys, and whatever other
gateway modules register (chainAPI keys). Each module creates its own tables with
``CREATE TABLE IF NOT EXISTS`` on the connection returned here. The connection is used from
the trio thread only; statements are short, so they run inline.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from safefs import paths

log = logging.getLogger(__name__)


def open_state_db(path: Path | None = None) -> sqlite3.Connection:
    """Open (creating with mode 0600) the gateway's state database in autocommit mode."""
    path = path or paths.gateway_state_file()
    paths.ensure_private_dir(path.parent)
    # Create the file ourselves so it is 0600 from its first byte; SQLite gives its WAL and
    # shared-memory files the same mode as the database.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    db.row_factory = sqlite3.Row
    return db
