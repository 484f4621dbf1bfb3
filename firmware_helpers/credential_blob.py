"""The credential blob: a binary image of a device's certificate, key and server CA for flashing
into a credentials partition of a board that is not Linux. Layout: ``docs/credential-blob.md``.

Pure codec, no I/O: :func:`encode_blob` turns records into bytes, :func:`parse_blob` turns bytes
(a blob, or a whole partition read back from flash) into records, refusing a bad magic, a newer
major version, truncation, a CRC mismatch or a malformed record with a message that says which.
The board side of a Linux board uses the same parser; a C board implements the documented layout.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from firmware_helpers.errors import (
    BadMagicError,
    BadRecordError,
    BlobChecksumError,
    BlobFormatError,
    TruncatedBlobError,
    UnsupportedBlobVersionError,
)

MAGIC = b"IXCB"
VERSION_MAJOR = 1
VERSION_MINOR = 0
#: magic(4) major(1) minor(1) record_count(u16) records_length(u32) crc32(u32), little-endian.
HEADER = struct.Struct("<4sBBHII")
#: type(u16) flags(u16) length(u32), little-endian.
RECORD_HEADER = struct.Struct("<HHI")
RECORD_ALIGN = 4
DEFAULT_ALIGN = 16
MAX_ALIGN = 65536
PAD_BYTE = 0xFF  # the erased state of NOR flash: padding costs no program cycles

TYPE_DEVICE_CERT = 0x0001
TYPE_DEVICE_KEY = 0x0002
TYPE_SERVER_CA = 0x0003
TYPE_NAMES = {
    TYPE_DEVICE_CERT: "device certificate",
    TYPE_DEVICE_KEY: "device private key",
    TYPE_SERVER_CA: "server CA",
}
#: Records whose value is PEM text followed by one NUL byte (counted in the length), the form
#: mbedTLS's ``mbedtls_x509_crt_parse`` / ``mbedtls_pk_parse_key`` expect for PEM input.
PEM_TYPES = frozenset(TYPE_NAMES)
REQUIRED_TYPES = (TYPE_DEVICE_CERT, TYPE_DEVICE_KEY)


@dataclass(frozen=True, slots=True)
class Record:
    type: int
    value: bytes
    flags: int = 0

    @property
    def text(self) -> bytes:
        """The value without the NUL terminator of a PEM record."""
        return self.value[:-1] if self.type in PEM_TYPES else self.value


@dataclass(frozen=True, slots=True)
class CredentialBlob:
    version: tuple[int, int]
    records: tuple[Record, ...]
    length: int
    """Bytes of header + records (without the trailing alignment padding)."""

    def get(self, record_type: int) -> bytes | None:
        for record in self.records:
            if record.type == record_type:
                return record.text
        return None

    @property
    def device_cert(self) -> bytes:
        value = self.get(TYPE_DEVICE_CERT)
        assert value is not None  # parse_blob guarantees the required records
        return value

    @property
    def device_key(self) -> bytes:
        value = self.get(TYPE_DEVICE_KEY)
        assert value is not None
        return value

    @property
    def server_ca(self) -> bytes | None:
        return self.get(TYPE_SERVER_CA)


def _padding(length: int, align: int) -> int:
    return -length % align


def encode_blob(records: Sequence[Record], *, align: int = DEFAULT_ALIGN) -> bytes:
    """Header, records (each padded with zeros to 4 bytes), then 0xFF up to ``align``."""
    if align < RECORD_ALIGN or align > MAX_ALIGN or align & (align - 1):
        raise BlobFormatError(
            f"alignment {align} must be a power of two from {RECORD_ALIGN} to {MAX_ALIGN}"
        )
    if len(records) > 0xFFFF:
        raise BlobFormatError(f"{len(records)} records do not fit the 16-bit record count")
    body = bytearray()
    seen: set[int] = set()
    for record in records:
        if not 0 <= record.type <= 0xFFFF or not 0 <= record.flags <= 0xFFFF:
            raise BadRecordError(f"record type {record.type} or flags {record.flags} out of range")
        if record.type in seen:
            raise BadRecordError(f"record type 0x{record.type:04x} appears twice")
        seen.add(record.type)
        if record.type in PEM_TYPES and (
            not record.value.endswith(b"\0") or b"\0" in record.value[:-1]
        ):
            raise BadRecordError(
                f"{TYPE_NAMES[record.type]} record must be PEM text ending with exactly one NUL"
            )
        body += RECORD_HEADER.pack(record.type, record.flags, len(record.value))
        body += record.value + bytes(_padding(len(record.value), RECORD_ALIGN))
    if len(body) > 0xFFFFFFFF:  # pragma: no cover - far beyond any credential
        raise BlobFormatError("records too large")
    head = HEADER.pack(MAGIC, VERSION_MAJOR, VERSION_MINOR, len(records), len(body), 0)[:12]
    crc = zlib.crc32(body, zlib.crc32(head))
    blob = head + struct.pack("<I", crc) + bytes(body)
    return blob + bytes([PAD_BYTE]) * _padding(len(blob), align)


def pem_record(record_type: int, pem: bytes) -> Record:
    """A PEM record: the text with one NUL appended (refused if it already holds a NUL)."""
    if b"\0" in pem:
        raise BadRecordError(f"{TYPE_NAMES.get(record_type, 'record')} text contains a NUL byte")
    return Record(record_type, pem + b"\0")


def parse_blob(data: bytes) -> CredentialBlob:
    """Parse a blob; bytes after its records (alignment padding, rest of a partition) are ignored."""
    data = bytes(data)
    if len(data) < HEADER.size:
        if MAGIC.startswith(data[: len(MAGIC)]):
            raise TruncatedBlobError(
                f"blob is {len(data)} bytes, shorter than its {HEADER.size}-byte header",
                offset=len(data),
            )
        raise BadMagicError(_magic_message(data), offset=0)
    magic, major, minor, count, length, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadMagicError(_magic_message(data), offset=0)
    if major != VERSION_MAJOR:
        raise UnsupportedBlobVersionError(
            f"blob version {major}.{minor} is not supported (this parser reads "
            f"{VERSION_MAJOR}.x); update the board's firmware or export for version "
            f"{VERSION_MAJOR}",
            offset=4,
        )
    end = HEADER.size + length
    if end > len(data):
        raise TruncatedBlobError(
            f"blob declares {length} bytes of records but only {len(data) - HEADER.size} follow "
            "the header: it was cut short (incomplete flash write or copy?)",
            offset=len(data),
        )
    actual = zlib.crc32(data[HEADER.size : end], zlib.crc32(data[:12]))
    if actual != crc:
        raise BlobChecksumError(
            f"blob CRC32 mismatch: header says 0x{crc:08x}, contents give 0x{actual:08x}; the "
            "blob is corrupt (bit flip, partial erase, or edited after export)",
            offset=12,
        )
    records = _parse_records(data, HEADER.size, end, count)
    return CredentialBlob((major, minor), records, end)


def _magic_message(data: bytes) -> str:
    head = data[: len(MAGIC)]
    if head and set(data[: HEADER.size]) <= {PAD_BYTE}:
        return "no credential blob: the area reads as erased flash (all 0xFF); nothing was written"
    return f"not a credential blob: starts with {head.hex() or 'nothing'}, expected {MAGIC.hex()}"


def _parse_records(data: bytes, start: int, end: int, count: int) -> tuple[Record, ...]:
    records: list[Record] = []
    seen: set[int] = set()
    offset = start
    while offset < end:
        if end - offset < RECORD_HEADER.size:
            raise BadRecordError(
                f"record #{len(records) + 1} header at offset {offset} runs past the records",
                offset=offset,
            )
        rtype, flags, rlength = RECORD_HEADER.unpack_from(data, offset)
        value_start = offset + RECORD_HEADER.size
        value_end = value_start + rlength
        padded_end = value_end + _padding(rlength, RECORD_ALIGN)
        name = TYPE_NAMES.get(rtype, f"type 0x{rtype:04x}")
        if padded_end > end:
            raise BadRecordError(
                f"{name} record at offset {offset} declares {rlength} bytes, past the end of the "
                "records",
                offset=offset,
            )
        if any(data[value_end:padded_end]):
            raise BadRecordError(
                f"{name} record at offset {offset}: non-zero padding", offset=value_end
            )
        value = data[value_start:value_end]
        if rtype in seen:
            raise BadRecordError(f"{name} record appears twice (offset {offset})", offset=offset)
        seen.add(rtype)
        if rtype in PEM_TYPES and (not value.endswith(b"\0") or b"\0" in value[:-1]):
            raise BadRecordError(
                f"{name} record at offset {offset} is not PEM text ending with one NUL",
                offset=offset,
            )
        records.append(Record(rtype, value, flags))
        offset = padded_end
    if len(records) != count:
        raise BadRecordError(
            f"header announces {count} records, the blob holds {len(records)}", offset=8
        )
    for required in REQUIRED_TYPES:
        if required not in seen:
            raise BadRecordError(f"blob has no {TYPE_NAMES[required]} record", offset=start)
    return tuple(records)
