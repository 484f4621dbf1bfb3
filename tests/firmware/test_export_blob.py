"""The credential blob codec: exact layout, round trips, and every way a blob can be broken."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_helpers.credential_blob import (
    MAGIC,
    TYPE_DEVICE_CERT,
    TYPE_DEVICE_KEY,
    TYPE_SERVER_CA,
    Record,
    encode_blob,
    parse_blob,
    pem_record,
)
from firmware_helpers.errors import (
    BadMagicError,
    BadRecordError,
    BlobChecksumError,
    BlobFormatError,
    TruncatedBlobError,
    UnsupportedBlobVersionError,
)

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n"
CA = b"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"


def _blob(align: int = 16, server_ca: bool = True) -> bytes:
    records = [pem_record(TYPE_DEVICE_CERT, CERT), pem_record(TYPE_DEVICE_KEY, KEY)]
    if server_ca:
        records.append(pem_record(TYPE_SERVER_CA, CA))
    return encode_blob(records, align=align)


def test_crc32_variant_check_value() -> None:
    """docs/credential-blob.md names CRC-32/ISO-HDLC (zlib) with this check value."""
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_layout_matches_the_documentation_byte_for_byte() -> None:
    """Rebuild the blob from the documented layout alone and compare."""

    def record(rtype: int, value: bytes) -> bytes:
        value += b"\0"
        return struct.pack("<HHI", rtype, 0, len(value)) + value + b"\0" * (-len(value) % 4)

    records = record(1, CERT) + record(2, KEY)
    head = b"IXCB" + bytes([1, 0]) + struct.pack("<HI", 2, len(records))
    crc = zlib.crc32(head + records)
    expected = head + struct.pack("<I", crc) + records
    expected += b"\xff" * (-len(expected) % 64)
    assert encode_blob([pem_record(1, CERT), pem_record(2, KEY)], align=64) == expected
    assert len(expected) % 64 == 0


def test_round_trip_with_and_without_server_ca() -> None:
    blob = parse_blob(_blob())
    assert (blob.device_cert, blob.device_key, blob.server_ca) == (CERT, KEY, CA)
    assert blob.version == (1, 0)
    bare = parse_blob(_blob(server_ca=False))
    assert bare.server_ca is None and bare.device_key == KEY


@pytest.mark.parametrize("align", [4, 16, 256, 4096])
def test_padding_to_alignment_with_erased_flash_bytes(align: int) -> None:
    data = _blob(align=align)
    parsed = parse_blob(data)
    assert len(data) % align == 0
    assert set(data[parsed.length :]) <= {0xFF}
    assert len(data) - parsed.length < align


@pytest.mark.parametrize("align", [0, 2, 3, 24, 1 << 17])
def test_bad_alignment_is_refused(align: int) -> None:
    with pytest.raises(BlobFormatError, match="power of two"):
        _blob(align=align)


def test_every_truncation_is_reported_as_truncated() -> None:
    data = _blob()
    length = parse_blob(data).length
    for cut in range(length):
        with pytest.raises(TruncatedBlobError):
            parse_blob(data[:cut])
    # cutting only alignment padding is harmless
    assert parse_blob(data[:length]).device_cert == CERT


def test_truncated_message_says_what_is_missing() -> None:
    data = _blob()
    with pytest.raises(TruncatedBlobError, match="cut short"):
        parse_blob(data[:40])
    with pytest.raises(TruncatedBlobError, match="shorter than its 16-byte header"):
        parse_blob(data[:10])


def test_trailing_bytes_of_a_partition_are_ignored() -> None:
    data = _blob() + b"\xff" * 4096 + b"garbage from an older image"
    assert parse_blob(data).device_key == KEY


def test_every_single_bit_flip_is_detected() -> None:
    data = _blob()
    length = parse_blob(data).length
    for offset in range(length):
        for bit in (0, 3, 7):
            flipped = bytearray(data)
            flipped[offset] ^= 1 << bit
            with pytest.raises(BlobFormatError):
                parse_blob(bytes(flipped))


def test_bad_magic_erased_flash_and_newer_version() -> None:
    data = _blob()
    with pytest.raises(BadMagicError, match="not a credential blob"):
        parse_blob(b"XXXX" + data[4:])
    with pytest.raises(BadMagicError, match="erased flash"):
        parse_blob(b"\xff" * 4096)
    with pytest.raises(BadMagicError):
        parse_blob(b"\x7fELF")
    newer = bytearray(data)
    newer[4] = 2
    with pytest.raises(UnsupportedBlobVersionError, match=r"version 2\.0 is not supported"):
        parse_blob(bytes(newer))


def test_crc_mismatch_names_both_values() -> None:
    data = bytearray(_blob())
    data[20] ^= 0x01
    with pytest.raises(BlobChecksumError, match="CRC32 mismatch: header says 0x"):
        parse_blob(bytes(data))


def _raw_blob(records: bytes, count: int) -> bytes:
    """A blob with a valid header and CRC around hand-made (possibly malformed) records."""
    head = MAGIC + bytes([1, 0]) + struct.pack("<HI", count, len(records))
    return head + struct.pack("<I", zlib.crc32(head + records)) + records


def _rec(rtype: int, value: bytes, pad: bytes | None = None) -> bytes:
    pad = b"\0" * (-len(value) % 4) if pad is None else pad
    return struct.pack("<HHI", rtype, 0, len(value)) + value + pad


@pytest.mark.parametrize(
    ("records", "count", "message"),
    [
        (_rec(1, CERT + b"\0") + _rec(2, KEY + b"\0"), 3, "announces 3 records"),
        (_rec(1, CERT + b"\0"), 1, "no device private key"),
        (_rec(2, KEY + b"\0"), 1, "no device certificate"),
        (_rec(1, CERT + b"\0") + _rec(1, CERT + b"\0") + _rec(2, KEY + b"\0"), 3, "twice"),
        (_rec(1, CERT) + _rec(2, KEY + b"\0"), 2, "ending with one NUL"),
        (_rec(1, b"ab\0cd\0") + _rec(2, KEY + b"\0"), 2, "ending with one NUL"),
        (_rec(1, b"abc\0", b"") + _rec(2, b"x\0", b"\1\1"), 2, "non-zero padding"),
        (struct.pack("<HHI", 1, 0, 4096) + b"abc\0", 1, "past the end"),
        (_rec(1, CERT + b"\0") + b"\1\0", 2, "runs past the records"),
    ],
)
def test_malformed_records_with_a_valid_crc(records: bytes, count: int, message: str) -> None:
    with pytest.raises(BadRecordError, match=message):
        parse_blob(_raw_blob(records, count))


def test_unknown_record_types_are_kept_and_skipped() -> None:
    data = encode_blob([pem_record(1, CERT), Record(0x7F00, b"\x01\x02\x03"), pem_record(2, KEY)])
    blob = parse_blob(data)
    assert blob.device_key == KEY
    assert blob.get(0x7F00) == b"\x01\x02\x03"


def test_encoder_refuses_what_the_parser_would_refuse() -> None:
    with pytest.raises(BadRecordError, match="NUL"):
        pem_record(TYPE_DEVICE_CERT, b"a\0b")
    with pytest.raises(BadRecordError, match="twice"):
        encode_blob([pem_record(1, CERT), pem_record(1, CERT)])
    with pytest.raises(BadRecordError, match="ending with exactly one NUL"):
        encode_blob([Record(1, CERT)])
    with pytest.raises(BadRecordError, match="out of range"):
        encode_blob([Record(0x10000, b"")])


_pem_text = st.binary(max_size=3000).map(lambda b: b.replace(b"\0", b"."))


@given(
    cert=_pem_text,
    key=_pem_text,
    server_ca=st.none() | _pem_text,
    extra=st.lists(
        st.tuples(st.integers(0x100, 0xFFFF), st.binary(max_size=64)),
        max_size=3,
        unique_by=lambda t: t[0],
    ),
    align_bits=st.integers(2, 12),
    trailing=st.binary(max_size=32),
)
def test_hypothesis_round_trip(
    cert: bytes,
    key: bytes,
    server_ca: bytes | None,
    extra: list[tuple[int, bytes]],
    align_bits: int,
    trailing: bytes,
) -> None:
    records = [pem_record(TYPE_DEVICE_CERT, cert), pem_record(TYPE_DEVICE_KEY, key)]
    if server_ca is not None:
        records.append(pem_record(TYPE_SERVER_CA, server_ca))
    records += [Record(rtype, value) for rtype, value in extra]
    data = encode_blob(records, align=1 << align_bits)
    assert len(data) % (1 << align_bits) == 0
    blob = parse_blob(data + trailing)
    assert blob.device_cert == cert and blob.device_key == key and blob.server_ca == server_ca
    assert blob.records == tuple(records)


@given(st.binary(max_size=256))
def test_hypothesis_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        parse_blob(data)
    except BlobFormatError:
        pass
