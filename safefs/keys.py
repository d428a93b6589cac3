"""The account: one secret from which every key of the user derives.

A person keeps one thing, the 32-byte account secret, shown once as a recovery string. Any device
given that string derives the same keys (docs/FORMAT.md, "Account keys"):

* the Ed25519 signing key that owns and signs records (one for all apps of the user),
* the X25519 box key pair whose public half private AppendableData entries are sealed to,
* one secretbox key per app, so SYMMETRIC data of one app is unreadable to another.

The recovery string is bech32m (BIP 350): its checksum is guaranteed to catch any error of up
to four characters, so a typo is reported instead of silently yielding another account.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

import blake3
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from safefs import paths

log = logging.getLogger(__name__)

SECRET_SIZE = 32
_KDF_CONTEXT = "safefs account key derivation v1"

# Recovery string: "safefs1" + 52 data characters (256 bits + 4 zero pad bits) + 6 checksum
# characters, shown in dash-separated groups; dashes, spaces and case are ignored when read.
RECOVERY_HRP = "safefs"
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32M_CONST = 0x2BC830A3
_GENERATORS = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_DATA_CHARS = 52
_CHECKSUM_CHARS = 6
_PAD_BITS = _DATA_CHARS * 5 - SECRET_SIZE * 8
_GROUP = 4


class AccountError(Exception):
    """A problem with the account secret that the user can fix; the message says how."""


def _polymod(values: Sequence[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(_GENERATORS):
            if top >> bit & 1:
                checksum ^= generator
    return checksum


def _hrp_values() -> list[int]:
    return [ord(c) >> 5 for c in RECOVERY_HRP] + [0] + [ord(c) & 31 for c in RECOVERY_HRP]


def _encode_recovery(secret: bytes) -> str:
    number = int.from_bytes(secret, "big") << _PAD_BITS
    data = [number >> 5 * (_DATA_CHARS - 1 - i) & 31 for i in range(_DATA_CHARS)]
    mod = _polymod(_hrp_values() + data + [0] * _CHECKSUM_CHARS) ^ _BECH32M_CONST
    checksum = [mod >> 5 * (_CHECKSUM_CHARS - 1 - i) & 31 for i in range(_CHECKSUM_CHARS)]
    chars = "".join(_CHARSET[v] for v in data + checksum)
    groups = [chars[i : i + _GROUP] for i in range(0, len(chars), _GROUP)]
    return RECOVERY_HRP + "1" + "-".join(groups)


def _decode_recovery(text: str) -> bytes:
    compact = "".join(text.split()).replace("-", "").lower()
    prefix = RECOVERY_HRP + "1"
    if not compact.startswith(prefix):
        raise AccountError(f"a recovery secret starts with '{prefix}'")
    body = compact[len(prefix) :]
    if len(body) != _DATA_CHARS + _CHECKSUM_CHARS:
        raise AccountError(
            f"a recovery secret has {_DATA_CHARS + _CHECKSUM_CHARS} characters after "
            f"'{prefix}' (dashes and spaces aside), this one has {len(body)}"
        )
    for char in body:
        if char not in _CHARSET:
            raise AccountError(
                f"'{char}' cannot occur in a recovery secret: "
                "there is no 1, b, i or o after the prefix"
            )
    values = [_CHARSET.index(c) for c in body]
    number = 0
    for value in values[:_DATA_CHARS]:
        number = number << 5 | value
    if _polymod(_hrp_values() + values) != _BECH32M_CONST or number & (1 << _PAD_BITS) - 1:
        raise AccountError("the recovery secret has a typo (its checksum does not match)")
    return (number >> _PAD_BITS).to_bytes(SECRET_SIZE, "big")


class Account:
    """The account secret and the keys derived from it."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_SIZE:
            raise ValueError(f"an account secret is {SECRET_SIZE} bytes")
        self._secret = bytes(secret)
        self.signing_key = SigningKey(self.derive("sign"))
        self.box_keypair = PrivateKey(self.derive("box"))

    @classmethod
    def generate(cls) -> Account:
        return cls(secrets.token_bytes(SECRET_SIZE))

    @classmethod
    def from_recovery(cls, text: str) -> Account:
        """The account whose recovery string is ``text``; AccountError explains a typo."""
        return cls(_decode_recovery(text))

    @property
    def recovery_string(self) -> str:
        """The secret as a person writes it down: show it once, at creation."""
        return _encode_recovery(self._secret)

    @property
    def public_key(self) -> bytes:
        """The Ed25519 public key that owns the account's records."""
        return self.signing_key.verify_key.encode()

    @property
    def public_id(self) -> str:
        return self.public_key.hex()

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for ``purpose``: BLAKE3 derive_key over secret || purpose."""
        material = self._secret + purpose.encode("utf-8")
        return blake3.blake3(material, derive_key_context=_KDF_CONTEXT).digest()

    def app_key(self, app_id: str) -> bytes:
        """The secretbox key of one app (the gateway's stable identity of that app)."""
        return self.derive("app:" + app_id)

    def save(self, path: Path | None = None) -> None:
        """Writes the recovery string to ``path`` (default: the account key file), mode 0600."""
        path = path or paths.account_key_file()
        paths.write_secret(path, (self.recovery_string + "\n").encode("ascii"))
        log.info("account %s saved to %s", self.public_id, path)

    @classmethod
    def load(cls, path: Path | None = None) -> Account:
        """The account saved at ``path``; refuses a file other users can read."""
        path = path or paths.account_key_file()
        try:
            with open(path, "rb") as file:
                mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
                if mode & 0o077:
                    raise AccountError(
                        f"{path} is accessible to other users (mode {mode:o}): "
                        f"run 'chmod 600 {path}' if nobody else could have read it"
                    )
                content = file.read()
        except FileNotFoundError:
            raise AccountError(
                f"no account on this device ({path} does not exist): create one with "
                "'safefs account init' or attach an existing one with 'safefs account login'"
            ) from None
        except OSError as exc:
            raise AccountError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return cls.from_recovery(content.decode("ascii"))
        except (UnicodeDecodeError, AccountError) as exc:
            raise AccountError(f"{path} is corrupt: {exc}") from None

    def __repr__(self) -> str:
        return f"Account({self.public_id})"
