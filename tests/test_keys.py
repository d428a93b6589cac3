"""Account secret, recovery string and key derivation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import Box

from safefs import paths
from safefs.keys import Account, AccountError

# A pinned derivation: changing the KDF or the recovery format breaks every existing account.
VECTOR_SECRET = bytes(range(32))
VECTOR_RECOVERY = "safefs1qqqs-yqcy-q5rq-wzqf-pg9s-crgw-pugp-zysn-zs23-v9cc-rydp-k8qa-rc0s-2e7w-cv"
VECTOR_PUBLIC_ID = "fac21581f6a44a349f30e42f57ae30c9380c7a2b496e872ba5a2d3ca009dca1e"
VECTOR_BOX_PUBLIC = "4046cd43aa0d4b47b053d2d838d3eaca5c4492a826487d6c759d99c87a5d293c"
VECTOR_APP_KEY_X = "a1d05f84895667d8523d5c6adb06c2af7c141509bf30b570494d85f507358f46"

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def test_pinned_derivation() -> None:
    account = Account(VECTOR_SECRET)
    assert account.recovery_string == VECTOR_RECOVERY
    assert account.public_id == VECTOR_PUBLIC_ID
    assert account.box_keypair.public_key.encode().hex() == VECTOR_BOX_PUBLIC
    assert account.app_key("x").hex() == VECTOR_APP_KEY_X


def test_second_device_derives_the_same_keys(tmp_path: Path) -> None:
    first = Account.generate()
    first.save(tmp_path / "device1" / "account.key")
    second = Account.from_recovery(first.recovery_string)
    second.save(tmp_path / "device2" / "account.key")
    again = Account.load(tmp_path / "device2" / "account.key")
    for device in (second, again):
        assert device.public_id == first.public_id
        assert device.signing_key.encode() == first.signing_key.encode()
        assert device.box_keypair.encode() == first.box_keypair.encode()
        assert device.app_key("mail") == first.app_key("mail")
        assert device.derive("anything") == first.derive("anything")
    # what one device seals to the account, the other opens
    peer = Account.generate()
    sealed = Box(peer.box_keypair, first.box_keypair.public_key).encrypt(b"hello")
    assert Box(again.box_keypair, peer.box_keypair.public_key).decrypt(sealed) == b"hello"


def test_keys_are_separate() -> None:
    account = Account.generate()
    keys = [
        account.signing_key.encode(),
        account.box_keypair.encode(),
        account.app_key("a"),
        account.app_key("b"),
        account.derive("sign-other"),
    ]
    assert len(set(keys)) == len(keys)
    assert all(len(key) == 32 for key in keys)
    assert Account.generate().public_id != account.public_id


def test_recovery_string_is_forgiving_about_layout() -> None:
    account = Account(VECTOR_SECRET)
    compact = VECTOR_RECOVERY.replace("-", "")
    for text in (compact, compact.upper(), f"  {VECTOR_RECOVERY.replace('-', ' ')}\n"):
        assert Account.from_recovery(text).public_id == account.public_id


def _data_part(recovery: str) -> str:
    return recovery.replace("-", "")[len("safefs1") :]


@given(st.binary(min_size=32, max_size=32), st.data())
def test_any_single_typo_is_detected(secret: bytes, data: st.DataObject) -> None:
    body = _data_part(Account(secret).recovery_string)
    index = data.draw(st.integers(0, len(body) - 1))
    wrong = data.draw(st.sampled_from([c for c in CHARSET if c != body[index]]))
    with pytest.raises(AccountError, match="typo"):
        Account.from_recovery("safefs1" + body[:index] + wrong + body[index + 1 :])


@given(st.binary(min_size=32, max_size=32), st.data())
def test_any_swap_of_neighbours_is_detected(secret: bytes, data: st.DataObject) -> None:
    body = _data_part(Account(secret).recovery_string)
    index = data.draw(st.integers(0, len(body) - 2))
    swapped = body[:index] + body[index + 1] + body[index] + body[index + 2 :]
    if swapped != body:
        with pytest.raises(AccountError, match="typo"):
            Account.from_recovery("safefs1" + swapped)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "starts with"),
        ("safe1" + "q" * 58, "starts with"),
        (VECTOR_RECOVERY[:-1], "58 characters"),
        (VECTOR_RECOVERY + "q", "58 characters"),
        (VECTOR_RECOVERY[:-1] + "b", "'b' cannot occur"),
    ],
)
def test_recovery_string_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(AccountError, match=message):
        Account.from_recovery(text)


def test_key_file_is_private(safefs_env) -> None:
    account = Account.generate()
    account.save()
    path = paths.account_key_file()
    assert path.is_relative_to(safefs_env.root)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == account.recovery_string
    assert Account.load().public_id == account.public_id


def test_missing_key_file(safefs_env) -> None:
    with pytest.raises(AccountError, match="safefs account init"):
        Account.load()


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "account.key"
    Account.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(AccountError, match="chmod 600"):
        Account.load(path)


def test_unreadable_key_file(tmp_path: Path) -> None:
    with pytest.raises(AccountError, match="cannot read"):
        Account.load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\xff\xfe", b"not a secret\n", b"safefs1qqqq\n"])
def test_corrupt_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "account.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(AccountError, match="corrupt"):
        Account.load(path)


def test_repr_does_not_show_the_secret() -> None:
    account = Account(VECTOR_SECRET)
    assert repr(account) == f"Account({VECTOR_PUBLIC_ID})"
    assert VECTOR_SECRET.hex() not in repr(account)
