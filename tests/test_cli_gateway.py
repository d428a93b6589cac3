"""The command framework and ``safefs gateway``: help, one-line errors, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

COMMANDS = [(), ("gateway",), ("apps",), ("apps", "list"), ("apps", "approve"), ("account",),
            ("account", "init"), ("account", "show"), ("account", "login"), ("put",), ("get",)]


def one_line_error(result) -> str:
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def server_error(result) -> str:
    """A server logs as it starts; its error is still one line, the last, with no traceback."""
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("safefs: "), result.stderr
    return last


def test_commands_start_light():
    """Every command builds the whole parser: it must not pull in the event loop, the HTTP
    stack or the gateway's server (a `safefs sync` in a script is mostly its start-up)."""
    code = ("import sys; from safefs import cli, malloc; malloc.tune(); cli.build_parser(); "
            "import safefs.fs.ctrl; print(' '.join(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    loaded = set(result.stdout.split())
    heavy = {"trio", "httpx", "numpy", "nacl", "cryptography", "hypercorn", "safefs.gateway.core",
             "safefs.gateway.handles", "ctypes.util"}
    assert not heavy & loaded


def test_help_everywhere(safefs_env):
    for command in COMMANDS:
        result = safefs_env.run_cli(*command, "--help")
        assert result.returncode == 0, command
        assert result.stdout.startswith("usage: safefs"), command


@pytest.mark.parametrize("args", [
    ("gateway", "--listen", "nowhere"),
    ("gateway", "--listen", "127.0.0.1:99999"),
    ("gateway", "--tls-cert", "cert.pem"),
    ("gateway", "--threads", "0"),
    ("gateway", "--handle-capacity", "many"),
    ("gateway", "--store", "ftp://example.org/store", "--listen", "127.0.0.1:0"),
    ("bogus",),
    ("put",),
    ("apps", "approve"),
])
def test_bad_flags_are_one_line(safefs_env, args):
    one_line_error(safefs_env.run_cli(*args))


def test_port_in_use(gateway, safefs_env, tmp_path):
    elsewhere = dict(safefs_env.env, XDG_DATA_HOME=str(tmp_path / "elsewhere"))
    result = type(safefs_env)(tmp_path, elsewhere).run_cli(
        "gateway", "--listen", f"127.0.0.1:{gateway.port}", "--store", gateway.store_url)
    assert "cannot listen on" in server_error(result)


def test_one_gateway_per_data_directory(gateway, safefs_env):
    """A second gateway on the same data directory refuses to start and touches nothing."""
    headers = {"Authorization": f"Bearer {gateway.authorise()}"}
    writer = httpx.get(f"{gateway.url}/immutable-data/writer", headers=headers).json()
    path = f"{gateway.url}/immutable-data/{writer['handleId']}"
    assert httpx.post(path, content=b"spooled", headers=headers).status_code == 200
    result = safefs_env.run_cli("gateway", "--listen", "127.0.0.1:0",
                                "--store", gateway.store_url)
    assert f"already running on {gateway.env.data_dir} (pid {gateway.proc.pid}" in \
        one_line_error(result)
    # The running gateway's spooled upload is intact.
    assert httpx.put(f"{path}/PLAIN", headers=headers).status_code == 200


def test_gateway_down(gateway, safefs_env, tmp_path):
    gateway.stop()
    source = tmp_path / "file"
    source.write_bytes(b"data")
    for args in (("put", str(source), "--gateway", gateway.url),
                 ("apps", "--gateway", gateway.url, "list"),
                 ("get", "AQAAAA==", str(tmp_path / "out"), "--gateway", gateway.url)):
        assert "cannot reach the gateway" in one_line_error(safefs_env.run_cli(*args)), args


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls(gateway_factory, tmp_path):
    cert, key = _self_signed(tmp_path)
    gateway = gateway_factory("--tls-cert", str(cert), "--tls-key", str(key))
    assert gateway.url.startswith("https://")
    response = httpx.get(f"{gateway.url}/health", verify=ssl.create_default_context(cafile=cert))
    assert response.text == "OK"
