"""``safefs put`` / ``safefs get`` through a real gateway, in a temporary HOME."""

from __future__ import annotations

import base64
import hashlib
import json
import os

from safefs.model import DataIdentifier

from .test_cli_gateway import one_line_error


def test_put_get_round_trip(gateway, safefs_env, tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    put = safefs_env.run_cli("put", str(source))
    assert put.returncode == 0, put.stderr
    assert put.stderr == ""  # no progress bar without a terminal
    data_id = put.stdout.strip()
    assert DataIdentifier.deserialise(base64.b64decode(data_id)).kind.name == "IMMUTABLE"
    dest = tmp_path / "copy.bin"
    get = safefs_env.run_cli("get", data_id, str(dest))
    assert (get.returncode, get.stdout, get.stderr) == (0, "", "")
    assert hashlib.sha256(dest.read_bytes()).digest() == \
        hashlib.sha256(source.read_bytes()).digest()


def test_put_json_symmetric_and_tiny_files(gateway, safefs_env, tmp_path):
    for content in (b"", b"ab", b"a few bytes"):
        source = tmp_path / "small"
        source.write_bytes(content)
        put = safefs_env.run_cli("put", str(source), "--json", "--cipher", "symmetric")
        result = json.loads(put.stdout)
        assert result["size"] == len(content) and result["cipher"] == "SYMMETRIC"
        dest = tmp_path / "back"
        assert safefs_env.run_cli("get", result["id"], str(dest)).returncode == 0
        assert dest.read_bytes() == content


def test_user_errors_are_one_line(gateway, safefs_env, tmp_path):
    missing = DataIdentifier.immutable(os.urandom(32)).serialise()
    cases = [
        (("put", str(tmp_path / "nope")), "No such file"),
        (("put", str(tmp_path)), "not a regular file"),
        (("get", "not base64!", str(tmp_path / "x")), "not an identifier"),
        (("get", base64.b64encode(missing).decode(), str(tmp_path / "x")), "NoSuchData"),
        (("get", "AQAAAA==", str(tmp_path)), "is a directory"),
        (("get", "AQAAAA==", str(tmp_path / "no" / "dir" / "x")), "no such directory"),
        (("get", "AAAA", str(tmp_path / "x")), "UnsuccessfulEncodeDecode"),
    ]
    for args, message in cases:
        assert message in one_line_error(safefs_env.run_cli(*args)), args
    assert not (tmp_path / "x").exists()
