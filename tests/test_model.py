"""The data model's encodings and the vault rules it enforces."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from safefs import errors
from safefs.errors import SafeError
from safefs.model import (
    MAX_APPENDABLE_DATA_SIZE,
    MAX_STRUCTURED_DATA_SIZE,
    NO_OWNER,
    U64_MAX,
    VERSIONS_PER_PAGE,
    AppendableData,
    AppendedData,
    AppendWrapper,
    CipherOpts,
    DataIdentifier,
    DataKind,
    Filter,
    FilterKind,
    StructuredData,
    VersionsInfo,
    XorName,
    apply_append,
    check_put,
    check_successor,
    decrypt,
    encrypt,
    open_private_entry,
    update_with_other,
)

names = st.binary(min_size=32, max_size=32)
identifiers = st.one_of(
    st.builds(DataIdentifier.structured, names, st.integers(0, U64_MAX)),
    st.builds(DataIdentifier.immutable, names),
    st.builds(DataIdentifier.appendable, names, st.booleans()),
)


def code_of(excinfo: pytest.ExceptionInfo[SafeError]) -> int:
    return excinfo.value.code


@pytest.fixture
def owner() -> SigningKey:
    return SigningKey.generate()


def pub(key: SigningKey) -> bytes:
    return key.verify_key.encode()


def new_sd(owner: SigningKey, data: bytes = b"content", tag: int = 501) -> StructuredData:
    return StructuredData(tag, os.urandom(32), data, 0, pub(owner)).sign(owner)


def a_pointer() -> DataIdentifier:
    return DataIdentifier.immutable(os.urandom(32))


# Pinned vectors (docs/FORMAT.md 3.8): the signing key is the one derived from the account
# secret 00 01 .. 1f.
VECTOR_SIGNING_KEY = SigningKey(
    bytes.fromhex("4bfdb187ea192420cd8984b19f9adf29275179b3c0d99a7dab36423fe46722a2")
)
VECTOR_SD = bytes.fromhex(
    "f501000000000000" + "00" * 32 + "0500000000000000" + "68656c6c6f" + "0000000000000000"
    "fac21581f6a44a349f30e42f57ae30c9380c7a2b496e872ba5a2d3ca009dca1e" + "00" + "01"
    "b5f21b71a1f0946c692e1561e0350a22a81cfd3f7e5e3676edffa3c887e2e50a"
    "4ca4c71aef25ebc12b4f3dc8d3112968d9eaedc387a7ebbc81dec4fcea5ef103"
)


def test_pinned_vectors() -> None:
    identifier = DataIdentifier.structured(bytes(range(32)), 501)
    assert identifier.record_key().hex() == (
        "d6c26702f80b237ccd6e396bd72e2781cf2ebc15764bb974171719b4f449d3b7"
    )
    sd = StructuredData(501, bytes(32), b"hello", 0, pub(VECTOR_SIGNING_KEY))
    assert sd.sign(VECTOR_SIGNING_KEY).serialise() == VECTOR_SD
    assert StructuredData.deserialise(VECTOR_SD).verify()


# --- names and identifiers ---------------------------------------------------------------------


def test_xor_name_is_exactly_32_bytes() -> None:
    assert XorName(bytes(32)) == bytes(32)
    with pytest.raises(ValueError):
        XorName(bytes(31))


@given(identifiers)
def test_data_identifier_round_trips(identifier: DataIdentifier) -> None:
    assert DataIdentifier.deserialise(identifier.serialise()) == identifier


@given(identifiers, identifiers)
def test_distinct_identifiers_have_distinct_encodings_and_record_keys(
    a: DataIdentifier, b: DataIdentifier
) -> None:
    if a != b:
        assert a.serialise() != b.serialise()
        assert a.record_key() != b.record_key()
    assert len(a.record_key()) == 32


def test_data_identifier_layout() -> None:
    identifier = DataIdentifier.structured(bytes(range(32)), 501)
    assert identifier.serialise() == (
        (0).to_bytes(4, "little") + bytes(range(32)) + (501).to_bytes(8, "little")
    )
    assert DataIdentifier.appendable(bytes(32), private=True).serialise()[:4] == b"\x03\0\0\0"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\0\0",  # truncated variant
        b"\x09\0\0\0" + bytes(32),  # unknown variant
        b"\x01\0\0\0" + bytes(31),  # truncated name
        b"\x01\0\0\0" + bytes(33),  # trailing byte
        b"\x00\0\0\0" + bytes(32) + bytes(7),  # truncated tag
    ],
)
def test_malformed_data_identifier_is_rejected(data: bytes) -> None:
    with pytest.raises(SafeError) as excinfo:
        DataIdentifier.deserialise(data)
    assert code_of(excinfo) == errors.ENCODE_DECODE


@given(st.binary(max_size=80))
def test_arbitrary_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    for decoder in (DataIdentifier, StructuredData, AppendableData, VersionsInfo):
        try:
            value = decoder.deserialise(data)
        except SafeError as exc:
            assert exc.code in (errors.ENCODE_DECODE, errors.INVALID_TYPE_TAG)
        else:
            assert value.serialise() == data


def _sample_records() -> list[tuple[type, bytes]]:
    key = SigningKey(bytes(32))
    sd = StructuredData(501, bytes(32), b"data", 3, pub(key)).sign(key)
    public = AppendableData(bytes(32), pub(key), filter=Filter(FilterKind.WHITE_LIST, {pub(key)}))
    public = apply_append(public.sign(key), AppendWrapper.create(public, a_pointer(), key))
    private = AppendableData(bytes(32), pub(key), PrivateKey(bytes(32)).public_key.encode())
    private = apply_append(private, AppendWrapper.create(private, a_pointer(), key))
    info = VersionsInfo((bytes(32), bytes(range(32))), bytes(32), 7)
    return [
        (StructuredData, sd.serialise()),
        (AppendableData, public.removed(0).sign(key).serialise()),
        (AppendableData, private.serialise()),
        (VersionsInfo, info.serialise()),
    ]


SAMPLE_RECORDS = _sample_records()


@given(st.sampled_from(SAMPLE_RECORDS), st.data())
def test_damaged_records_decode_or_fail_cleanly(sample: tuple[type, bytes], data) -> None:
    decoder, encoded = sample
    position = data.draw(st.integers(0, len(encoded) - 1))
    damaged = bytearray(encoded)
    damaged[position] ^= data.draw(st.integers(1, 255))
    try:
        value = decoder.deserialise(bytes(damaged))
    except SafeError as exc:
        assert exc.code in (errors.ENCODE_DECODE, errors.INVALID_TYPE_TAG)
    else:
        assert value.serialise() == bytes(damaged)


# --- StructuredData ----------------------------------------------------------------------------


@pytest.mark.parametrize("tag", [500, 501, 15000, 2**40, U64_MAX])
def test_valid_type_tags(owner: SigningKey, tag: int) -> None:
    sd = new_sd(owner, tag=tag)
    assert StructuredData.deserialise(sd.serialise()) == sd


@pytest.mark.parametrize("tag", [0, 499, 502, 14999])
def test_invalid_type_tags(owner: SigningKey, tag: int) -> None:
    with pytest.raises(SafeError) as excinfo:
        StructuredData(tag, bytes(32), b"", 0, pub(owner))
    assert code_of(excinfo) == errors.INVALID_TYPE_TAG


def test_signature_covers_every_field(owner: SigningKey) -> None:
    sd = new_sd(owner)
    assert sd.verify()
    assert not sd.verify(pub(SigningKey.generate()))
    for changed in (
        replace(sd, data=b"other"),
        replace(sd, version=1),
        replace(sd, name=os.urandom(32)),
        replace(sd, type_tag=500),
        replace(sd, owner=pub(SigningKey.generate())),
        replace(sd, data=b"", deleted=True),
    ):
        assert not changed.verify(pub(owner))
    assert not replace(sd, signature=None).verify()


def test_signed_record_limit_is_102400_bytes(owner: SigningKey) -> None:
    overhead = new_sd(owner, data=b"").signed_size()
    fits = new_sd(owner, data=bytes(MAX_STRUCTURED_DATA_SIZE - overhead))
    assert len(fits.serialise()) == MAX_STRUCTURED_DATA_SIZE
    fits.validate_size()
    unsigned = replace(fits, signature=None)
    assert unsigned.signed_size() == MAX_STRUCTURED_DATA_SIZE
    too_big = new_sd(owner, data=bytes(MAX_STRUCTURED_DATA_SIZE - overhead + 1))
    for sd in (too_big, replace(too_big, signature=None)):
        with pytest.raises(SafeError) as excinfo:
            sd.validate_size()
        assert code_of(excinfo) == errors.DATA_TOO_LARGE
    with pytest.raises(SafeError) as excinfo:
        check_successor(fits, fits.successor(too_big.data, owner))
    assert code_of(excinfo) == errors.DATA_TOO_LARGE


def test_good_successor(owner: SigningKey) -> None:
    sd = new_sd(owner)
    nxt = sd.successor(b"v1", owner)
    assert (nxt.version, nxt.data, nxt.owner) == (1, b"v1", sd.owner)
    check_successor(sd, nxt)


def test_successor_rules(owner: SigningKey) -> None:
    sd = new_sd(owner)
    intruder = SigningKey.generate()
    bad = {
        "same version": replace(sd, data=b"x").sign(owner),
        "version + 2": replace(sd, version=2).sign(owner),
        "wrong signer": sd.successor(b"x", intruder),
        "other tag": replace(sd.successor(b"x", owner), type_tag=500).sign(owner),
        "other name": replace(sd.successor(b"x", owner), name=os.urandom(32)).sign(owner),
        "unsigned": replace(sd.successor(b"x", owner), signature=None),
        "taken over": replace(sd.successor(b"x", owner), owner=pub(intruder)).sign(intruder),
    }
    for why, successor in bad.items():
        with pytest.raises(SafeError) as excinfo:
            check_successor(sd, successor)
        assert code_of(excinfo) == errors.INVALID_SUCCESSOR, why


def test_delete_then_reclaim_by_anyone(owner: SigningKey) -> None:
    sd = new_sd(owner).successor(b"v1", owner)
    tombstone = sd.deleted_successor(owner)
    check_successor(sd, tombstone)
    assert tombstone.deleted and tombstone.data == b"" and tombstone.version == 2
    assert tombstone.verify()
    assert StructuredData.deserialise(tombstone.serialise()) == tombstone

    for successor in (tombstone.successor(b"again", owner), tombstone.deleted_successor(owner)):
        with pytest.raises(SafeError) as excinfo:
            check_successor(tombstone, successor)
        assert code_of(excinfo) == errors.INVALID_OPERATION

    someone = SigningKey.generate()
    reclaim = StructuredData(sd.type_tag, sd.name, b"mine", 3, pub(someone)).sign(someone)
    check_put(tombstone, reclaim)
    for version in (2, 4):
        with pytest.raises(SafeError) as excinfo:
            check_put(tombstone, replace(reclaim, version=version).sign(someone))
        assert code_of(excinfo) == errors.DATA_EXISTS


def test_deleted_record_carries_no_data(owner: SigningKey) -> None:
    with pytest.raises(ValueError):
        StructuredData(500, bytes(32), b"x", 0, pub(owner), deleted=True)


def test_unclaim_stops_every_change(owner: SigningKey) -> None:
    sd = new_sd(owner)
    unclaimed = sd.unclaimed_successor(owner)
    check_successor(sd, unclaimed)
    assert unclaimed.is_unclaimed and unclaimed.owner == NO_OWNER
    assert unclaimed.verify(sd.owner) and not unclaimed.verify()
    for successor in (unclaimed.successor(b"x", owner), unclaimed.deleted_successor(owner)):
        with pytest.raises(SafeError) as excinfo:
            check_successor(unclaimed, successor)
        assert code_of(excinfo) == errors.INVALID_OPERATION
    someone = SigningKey.generate()
    claim = StructuredData(sd.type_tag, sd.name, b"", 2, pub(someone)).sign(someone)
    with pytest.raises(SafeError) as excinfo:
        check_put(unclaimed, claim)
    assert code_of(excinfo) == errors.DATA_EXISTS


def test_put_rules(owner: SigningKey) -> None:
    sd = new_sd(owner)
    check_put(None, sd)
    with pytest.raises(SafeError) as excinfo:
        check_put(sd, sd.successor(b"x", owner))
    assert code_of(excinfo) == errors.DATA_EXISTS
    with pytest.raises(SafeError) as excinfo:
        check_put(None, replace(sd, data=b"forged"))
    assert code_of(excinfo) == errors.INVALID_SUCCESSOR
    with pytest.raises(SafeError) as excinfo:
        check_put(None, sd.unclaimed_successor(owner))
    assert code_of(excinfo) == errors.INVALID_OPERATION


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],  # signature truncated
        lambda b: b + b"\0",  # trailing byte
        lambda b: b[:-65] + b"\x02" + b[-64:],  # signature option byte 2
        lambda b: b[: 8 + 32] + (2**40).to_bytes(8, "little") + b[48:],  # data length too big
    ],
)
def test_malformed_structured_data_is_rejected(owner: SigningKey, mutate) -> None:
    with pytest.raises(SafeError) as excinfo:
        StructuredData.deserialise(mutate(new_sd(owner).serialise()))
    assert code_of(excinfo) == errors.ENCODE_DECODE


# --- VersionsInfo ------------------------------------------------------------------------------


def test_versions_info_pages() -> None:
    pages: dict[bytes, bytes] = {}  # a stand-in for ImmutableData: name -> content
    info = VersionsInfo()
    pointers = [os.urandom(32) for _ in range(2 * VERSIONS_PER_PAGE + 5)]
    for pointer in pointers:
        if info.is_full:
            stored_as = os.urandom(32)
            pages[stored_as] = info.serialise()
            info = info.next_page(stored_as)
        info = info.appended(pointer)
    assert info.total == len(pointers)
    assert len(info.serialise()) < MAX_STRUCTURED_DATA_SIZE // 2
    info = VersionsInfo.deserialise(info.serialise())

    decoded = {name: VersionsInfo.deserialise(page) for name, page in pages.items()}

    def lookup(index: int) -> bytes:
        page = info
        while (found := page.pointer_at(index)) is None:
            page = decoded[page.older]
        return found

    assert [lookup(i) for i in range(len(pointers))] == pointers
    for index in (-1, len(pointers)):
        with pytest.raises(SafeError) as excinfo:
            info.pointer_at(index)
        assert code_of(excinfo) == errors.INVALID_VERSION_NUMBER


def test_full_versions_page_takes_no_more() -> None:
    full = VersionsInfo(tuple(os.urandom(32) for _ in range(VERSIONS_PER_PAGE)))
    assert full.is_full
    with pytest.raises(ValueError):
        full.appended(os.urandom(32))


# --- AppendableData ----------------------------------------------------------------------------


def new_ad(owner: SigningKey, private: bool = False, **fields) -> AppendableData:
    encrypt_key = PrivateKey.generate().public_key.encode() if private else None
    return AppendableData(os.urandom(32), pub(owner), encrypt_key, **fields).sign(owner)


def append(ad: AppendableData, key: SigningKey, pointer: DataIdentifier | None = None):
    return apply_append(ad, AppendWrapper.create(ad, pointer or a_pointer(), key))


def refused(code: int, ad: AppendableData, wrapper: AppendWrapper) -> None:
    with pytest.raises(SafeError) as excinfo:
        apply_append(ad, wrapper)
    assert code_of(excinfo) == code


def test_public_append_and_round_trip(owner: SigningKey) -> None:
    ad = new_ad(owner)
    appenders = [SigningKey.generate() for _ in range(5)]
    for key in appenders:
        ad = append(ad, key)
    assert len(ad.data) == 5 and ad.version == 0
    assert ad.verify(), "appends do not need the owner's signature"
    encoded = [entry.serialise() for entry in ad.data]
    assert encoded == sorted(encoded), "index n is the n-th entry in serialised order"
    assert {entry.sign_key for entry in ad.data} == {pub(k) for k in appenders}
    assert all(entry.verify(ad.identifier) for entry in ad.data)
    assert AppendableData.deserialise(ad.serialise()) == ad


def test_entry_order_does_not_depend_on_insertion(owner: SigningKey) -> None:
    ad = new_ad(owner)
    entries = [AppendedData.create(ad.identifier, a_pointer(), owner) for _ in range(6)]
    assert replace(ad, data=entries) == replace(ad, data=entries[::-1])


def test_append_needs_current_version(owner: SigningKey) -> None:
    ad = new_ad(owner)
    stale = AppendWrapper.create(ad, a_pointer(), SigningKey.generate())
    posted = update_with_other(ad, ad.successor(owner))
    refused(errors.INVALID_SUCCESSOR, posted, stale)
    apply_append(posted, AppendWrapper.create(posted, stale.data.pointer, SigningKey.generate()))


def test_blacklist_blocks_listed_keys_even_the_owner(owner: SigningKey) -> None:
    banned = SigningKey.generate()
    ad = new_ad(owner, filter=Filter(FilterKind.BLACK_LIST, {pub(banned), pub(owner)}))
    refused(errors.INVALID_SUCCESSOR, ad, AppendWrapper.create(ad, a_pointer(), banned))
    refused(errors.INVALID_SUCCESSOR, ad, AppendWrapper.create(ad, a_pointer(), owner))
    append(ad, SigningKey.generate())


def test_whitelist_admits_only_listed_keys(owner: SigningKey) -> None:
    ad = new_ad(owner, filter=Filter().toggled())
    assert ad.filter == Filter(FilterKind.WHITE_LIST)
    refused(errors.INVALID_SUCCESSOR, ad, AppendWrapper.create(ad, a_pointer(), owner))
    ad = ad.with_filter(ad.filter.with_keys([pub(owner)])).sign(owner)
    append(ad, owner)
    refused(
        errors.INVALID_SUCCESSOR, ad, AppendWrapper.create(ad, a_pointer(), SigningKey.generate())
    )
    assert ad.filter.without_keys([pub(owner)]).keys == frozenset()


def test_forged_or_misdirected_appends_are_refused(owner: SigningKey) -> None:
    ad = new_ad(owner)
    other = new_ad(owner)
    appender = SigningKey.generate()
    wrapper = AppendWrapper.create(ad, a_pointer(), appender)
    refused(errors.INVALID_SUCCESSOR, other, wrapper)
    refused(errors.INVALID_SUCCESSOR, ad, replace(wrapper, signature=bytes(64)))
    # an entry signed for another AppendableData cannot be replayed here
    foreign = AppendWrapper.create(other, a_pointer(), appender).data
    replayed = AppendWrapper.create(ad, a_pointer(), appender)
    replayed = replace(replayed, data=foreign)
    refused(errors.INVALID_SUCCESSOR, ad, _resigned(replayed, appender))
    # an entry signed by someone else, wrapped by the appender
    theirs = AppendedData.create(ad.identifier, a_pointer(), SigningKey.generate())
    refused(errors.INVALID_SUCCESSOR, ad, _resigned(replace(wrapper, data=theirs), appender))


def _resigned(wrapper: AppendWrapper, key: SigningKey) -> AppendWrapper:
    return AppendWrapper.signed(wrapper.append_to, wrapper.data, wrapper.version, key)


def test_duplicates_and_deleted_entries(owner: SigningKey) -> None:
    ad = new_ad(owner)
    appender = SigningKey.generate()
    pointer = a_pointer()
    wrapper = AppendWrapper.create(ad, pointer, appender)
    ad = apply_append(ad, wrapper)
    refused(errors.DATA_EXISTS, ad, wrapper)

    stored = update_with_other(ad, ad.removed(0).successor(owner))
    assert stored.data == () and len(stored.deleted_data) == 1
    assert stored.verify()
    again = AppendWrapper.create(stored, pointer, appender)
    refused(errors.INVALID_SUCCESSOR, stored, again)


def test_owner_post_keeps_concurrent_appends_and_restores(owner: SigningKey) -> None:
    stored = append(new_ad(owner), SigningKey.generate())
    stored = append(stored, SigningKey.generate())
    handle = stored  # the owner's local snapshot
    stored = append(stored, SigningKey.generate())  # meanwhile, someone appends

    removed = handle.entry_at(0)
    stored = update_with_other(stored, handle.removed(0).successor(owner))
    assert len(stored.data) == 2 and removed not in stored.data
    assert stored.deleted_data == (removed,) and stored.version == 1

    handle = stored.restored(0)
    stored = update_with_other(stored, handle.successor(owner))
    assert len(stored.data) == 3 and stored.deleted_data == ()

    handle = stored.all_removed()
    stored = update_with_other(stored, handle.successor(owner))
    assert stored.data == () and len(stored.deleted_data) == 3
    stored = update_with_other(stored, stored.all_purged().successor(owner))
    assert stored.data == () and stored.deleted_data == ()
    assert AppendableData.deserialise(stored.serialise()) == stored


def test_purged_entry_is_gone_for_good(owner: SigningKey) -> None:
    stored = append(new_ad(owner), SigningKey.generate())
    stored = update_with_other(stored, stored.removed(0).successor(owner))
    stored = update_with_other(stored, stored.purged(0).successor(owner))
    assert stored.data == () and stored.deleted_data == ()


def test_owner_post_rules(owner: SigningKey) -> None:
    ad = new_ad(owner)
    intruder = SigningKey.generate()
    bad = {
        "same version": ad.with_filter(Filter().toggled()).sign(owner),
        "version + 2": ad.successor(owner).successor(owner),
        "wrong signer": ad.successor(intruder),
        "other name": replace(ad, name=os.urandom(32)).successor(owner),
        "made private": replace(ad, encrypt_key=bytes(32)).successor(owner),
        "forged entry": replace(
            ad,
            data=[
                replace(AppendedData.create(ad.identifier, a_pointer(), owner), signature=bytes(64))
            ],
        ).successor(owner),
    }
    for why, successor in bad.items():
        with pytest.raises(SafeError) as excinfo:
            update_with_other(ad, successor)
        assert code_of(excinfo) == errors.INVALID_SUCCESSOR, why


def test_edits_check_indices(owner: SigningKey) -> None:
    ad = append(new_ad(owner), SigningKey.generate())
    for edit in (lambda: ad.removed(1), lambda: ad.restored(0), lambda: ad.purged(0)):
        with pytest.raises(SafeError) as excinfo:
            edit()
        assert code_of(excinfo) == errors.INVALID_INDEX
    assert ad.removed(0).signature is None, "a local edit leaves the record to be re-signed"


def test_appendable_data_size_limit(owner: SigningKey) -> None:
    ad = new_ad(owner)
    entry_size = len(AppendedData.create(ad.identifier, a_pointer(), owner).serialise())
    room = (MAX_APPENDABLE_DATA_SIZE - len(ad.serialise())) // entry_size
    full = replace(
        ad, data=[AppendedData.create(ad.identifier, a_pointer(), owner) for _ in range(room)]
    )
    full.validate_size()
    refused(errors.DATA_TOO_LARGE, full, AppendWrapper.create(full, a_pointer(), owner))


def test_private_entries_are_sealed_to_the_owner_box_key(owner: SigningKey) -> None:
    box = PrivateKey.generate()
    ad = AppendableData(os.urandom(32), pub(owner), box.public_key.encode()).sign(owner)
    assert ad.identifier.kind is DataKind.PRIV_APPENDABLE
    pointer = a_pointer()
    appender = SigningKey.generate()
    ad = apply_append(ad, AppendWrapper.create(ad, pointer, appender))
    ad = AppendableData.deserialise(ad.serialise())
    sealed = ad.entry_at(0)
    assert pointer.name not in sealed.serialise()

    opened = open_private_entry(sealed, box, ad.identifier)
    assert (opened.pointer, opened.sign_key) == (pointer, pub(appender))
    with pytest.raises(SafeError) as excinfo:
        open_private_entry(sealed, PrivateKey.generate(), ad.identifier)
    assert code_of(excinfo) == errors.ASYMMETRIC_DECIPHER
    with pytest.raises(SafeError) as excinfo:
        open_private_entry(sealed, box, new_ad(owner, private=True).identifier)
    assert code_of(excinfo) == errors.ASYMMETRIC_DECIPHER


def test_entry_kinds_must_match_the_appendable_data(owner: SigningKey) -> None:
    public, private = new_ad(owner), new_ad(owner, private=True)
    appender = SigningKey.generate()
    plain_entry = AppendWrapper.create(public, a_pointer(), appender).data
    sealed_entry = AppendWrapper.create(private, a_pointer(), appender).data
    with pytest.raises(ValueError):
        replace(private, data=[plain_entry])
    wrapper = AppendWrapper.create(private, a_pointer(), appender)
    refused(
        errors.INVALID_SUCCESSOR, private, _resigned(replace(wrapper, data=plain_entry), appender)
    )
    wrapper = AppendWrapper.create(public, a_pointer(), appender)
    refused(
        errors.INVALID_SUCCESSOR, public, _resigned(replace(wrapper, data=sealed_entry), appender)
    )


def test_malformed_appendable_data_is_rejected(owner: SigningKey) -> None:
    ad = append(append(new_ad(owner), SigningKey.generate()), SigningKey.generate())
    encoded = ad.serialise()
    first, second = (entry.serialise() for entry in ad.data)
    swapped = encoded.replace(first + second, second + first)
    assert swapped != encoded
    for data in (swapped, encoded[:-1], encoded + b"\0"):
        with pytest.raises(SafeError) as excinfo:
            AppendableData.deserialise(data)
        assert code_of(excinfo) == errors.ENCODE_DECODE


# --- cipher options ----------------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_cipher_wrapper_round_trips(data: bytes) -> None:
    key = bytes(range(32))
    box = PrivateKey(bytes(range(1, 33)))
    assert decrypt(encrypt(CipherOpts.plain(), data)) == data
    assert decrypt(encrypt(CipherOpts.symmetric(key), data), sym_key=key) == data
    sealed = encrypt(CipherOpts.asymmetric(box.public_key.encode()), data)
    assert decrypt(sealed, box_keypair=box) == data


def test_cipher_wrapper_is_self_describing() -> None:
    assert encrypt(CipherOpts.plain(), b"abc") == b"\0\0\0\0" + b"\3" + bytes(7) + b"abc"
    sym = encrypt(CipherOpts.symmetric(bytes(32)), b"abc")
    assert sym[:4] == b"\1\0\0\0" and len(sym) == 4 + 24 + 8 + 3 + 16
    assert sym != encrypt(CipherOpts.symmetric(bytes(32)), b"abc"), "nonces are random"


def test_cipher_wrong_or_missing_keys() -> None:
    key, box = os.urandom(32), PrivateKey.generate()
    sym = encrypt(CipherOpts.symmetric(key), b"secret")
    asym = encrypt(CipherOpts.asymmetric(box.public_key.encode()), b"secret")
    cases = [
        (lambda: decrypt(sym, sym_key=os.urandom(32)), errors.SYMMETRIC_DECIPHER),
        (lambda: decrypt(sym[:-1] + bytes([sym[-1] ^ 1]), sym_key=key), errors.SYMMETRIC_DECIPHER),
        (lambda: decrypt(sym, box_keypair=box), errors.FORBIDDEN_FOR_APP),
        (lambda: decrypt(asym, box_keypair=PrivateKey.generate()), errors.ASYMMETRIC_DECIPHER),
        (lambda: decrypt(asym, sym_key=key), errors.FORBIDDEN_FOR_APP),
        (lambda: decrypt(b"\7\0\0\0"), errors.ENCODE_DECODE),
        (lambda: decrypt(sym + b"\0", sym_key=key), errors.ENCODE_DECODE),
        (lambda: decrypt(b""), errors.ENCODE_DECODE),
    ]
    for call, code in cases:
        with pytest.raises(SafeError) as excinfo:
            call()
        assert code_of(excinfo) == code


def test_cipher_opts_check_keys() -> None:
    with pytest.raises(ValueError):
        CipherOpts.symmetric(bytes(16))
    with pytest.raises(ValueError):
        CipherOpts.asymmetric(b"")
