"""A strict DER reader: the ASN.1 that X.509 certificates and keys use, and nothing else.

Why the SDK has its own: a device that loads its pair and connects needs a few fields of its
certificate (SN, validity, names, key type and size, the CA flag). Reading them with the
``cryptography`` package costs a second OpenSSL in memory (~10 MB of a board's RSS); these few
hundred lines cost nothing. The kit's parts that sign or verify still use ``cryptography``
(:mod:`device_sdk.certs` imports it lazily); the fields every rule reads come from here.

Strict means DER, not BER: definite minimal lengths, minimal integers, booleans 0x00/0xFF, no
high tag numbers (no certificate field uses them). Anything else raises :class:`DERError`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from device_sdk.errors import CredentialError

# Universal tags (identifier octets) used by certificates and keys.
BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
UTF8_STRING = 0x0C
NUMERIC_STRING = 0x12
PRINTABLE_STRING = 0x13
T61_STRING = 0x14
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
VISIBLE_STRING = 0x1A
UNIVERSAL_STRING = 0x1C
BMP_STRING = 0x1E
SEQUENCE = 0x30
SET = 0x31

CONSTRUCTED = 0x20


def context(number: int, *, constructed: bool = True) -> int:
    """The identifier octet of context-specific tag ``[number]``."""
    return 0x80 | (CONSTRUCTED if constructed else 0) | number


class DERError(CredentialError, ValueError):
    """The bytes are not the DER structure expected; the message says where.

    A :class:`~device_sdk.errors.CredentialError` (bytes that cannot be a usable certificate or
    key), and a ``ValueError`` for callers that parse untrusted bytes generically.
    """


class Element:
    """One decoded TLV: its tag, and where its header and content lie in the buffer."""

    __slots__ = ("data", "end", "header_start", "start", "tag")

    def __init__(self, data: bytes, tag: int, header_start: int, start: int, end: int) -> None:
        self.data, self.tag, self.header_start, self.start, self.end = (
            data,
            tag,
            header_start,
            start,
            end,
        )

    @property
    def content(self) -> bytes:
        return self.data[self.start : self.end]

    @property
    def encoded(self) -> bytes:
        """The whole TLV, header included."""
        return self.data[self.header_start : self.end]

    def reader(self) -> Reader:
        """A reader over the content (for constructed types)."""
        if not self.tag & CONSTRUCTED:
            raise DERError(f"tag 0x{self.tag:02x} is primitive; expected a constructed value")
        return Reader(self.data, self.start, self.end)


class Reader:
    """Reads consecutive TLVs from ``data[start:end]``."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data, self.pos, self.end = data, start, len(data) if end is None else end

    def at_end(self) -> bool:
        return self.pos >= self.end

    def peek_tag(self) -> int | None:
        return None if self.pos >= self.end else self.data[self.pos]

    def read(self, tag: int | None = None, what: str = "value") -> Element:
        """The next TLV; with ``tag``, it must carry that tag."""
        data, pos, end = self.data, self.pos, self.end
        if pos + 2 > end:
            raise DERError(f"{what}: truncated (no room for a tag and a length)")
        found = data[pos]
        if (tag is not None and found != tag) or found & 0x1F == 0x1F:
            if found & 0x1F == 0x1F:
                raise DERError(f"{what}: high tag number form is not used in certificates")
            raise DERError(f"{what}: expected tag 0x{tag:02x}, found 0x{found:02x}")
        length = data[pos + 1]
        start = pos + 2
        if length >= 0x80:
            count = length & 0x7F
            if count == 0:
                raise DERError(f"{what}: indefinite length is BER, not DER")
            if count > 4 or start + count > end:
                raise DERError(f"{what}: length of {count} bytes is invalid here")
            length = int.from_bytes(data[start : start + count], "big")
            if data[start] == 0 or length < 0x80:
                raise DERError(f"{what}: length is not minimally encoded")
            start += count
        stop = start + length
        if stop > end:
            raise DERError(f"{what}: {length} bytes announced, {end - start} present")
        self.pos = stop
        return Element(data, found, pos, start, stop)

    def optional(self, tag: int, what: str = "value") -> Element | None:
        """The next TLV if it carries ``tag``, else None (nothing consumed)."""
        return self.read(tag, what) if self.peek_tag() == tag else None

    def sequence(self, what: str = "sequence") -> Reader:
        return self.read(SEQUENCE, what).reader()

    def finish(self, what: str = "structure") -> None:
        if self.pos != self.end:
            raise DERError(f"{what}: {self.end - self.pos} unexpected bytes after the last field")


def read_single(data: bytes, tag: int, what: str) -> Element:
    """``data`` is exactly one TLV with ``tag``."""
    reader = Reader(data)
    element = reader.read(tag, what)
    reader.finish(what)
    return element


# --- primitive values --------------------------------------------------------------------------


def integer(element: Element, what: str = "INTEGER") -> int:
    content = element.content
    if not content:
        raise DERError(f"{what}: empty INTEGER")
    if len(content) > 1 and (
        (content[0] == 0 and content[1] < 0x80) or (content[0] == 0xFF and content[1] >= 0x80)
    ):
        raise DERError(f"{what}: INTEGER is not minimally encoded")
    return int.from_bytes(content, "big", signed=True)


def boolean(element: Element, what: str = "BOOLEAN") -> bool:
    content = element.content
    if content == b"\xff":
        return True
    if content == b"\x00":
        return False
    raise DERError(f"{what}: a DER BOOLEAN is one byte, 0x00 or 0xFF")


def oid(element: Element, what: str = "OBJECT IDENTIFIER") -> str:
    """Dotted form, e.g. ``2.5.4.3``."""
    try:
        return _dotted(element.content)
    except ValueError as exc:
        raise DERError(f"{what}: {exc}") from None


@lru_cache(maxsize=512)
def _dotted(content: bytes) -> str:
    """Certificates repeat a few dozen OIDs: decoded once each (bounded, so hostile input
    cannot grow it)."""
    if not content:
        raise ValueError("empty OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    fresh = True
    for byte in content:
        if fresh and byte == 0x80:
            raise ValueError("OBJECT IDENTIFIER arc is not minimally encoded")
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    if not fresh:
        raise ValueError("OBJECT IDENTIFIER ends inside an arc")
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(arc) for arc in head + arcs[1:])


def bit_string(element: Element, what: str = "BIT STRING") -> tuple[bytes, int]:
    """The bytes and the number of unused bits in the last byte (which must be zero bits)."""
    content = element.content
    if not content:
        raise DERError(f"{what}: empty BIT STRING")
    unused = content[0]
    if unused > 7 or (unused and len(content) == 1):
        raise DERError(f"{what}: invalid count of unused bits ({unused})")
    if unused and content[-1] & ((1 << unused) - 1):
        raise DERError(f"{what}: unused bits are not zero")
    return content[1:], unused


def time(element: Element, what: str = "time") -> datetime:
    """UTCTime (``YYMMDDHHMMSSZ``) or GeneralizedTime (``YYYYMMDDHHMMSSZ``), as RFC 5280 says."""
    text = element.content
    if element.tag == UTC_TIME:
        if len(text) != 13:
            raise DERError(f"{what}: UTCTime must be YYMMDDHHMMSSZ")
        year = _digits(text[0:2], what)
        year += 2000 if year < 50 else 1900
        rest = text[2:]
    elif element.tag == GENERALIZED_TIME:
        if len(text) != 15:
            raise DERError(f"{what}: GeneralizedTime must be YYYYMMDDHHMMSSZ")
        year = _digits(text[0:4], what)
        rest = text[4:]
    else:
        raise DERError(f"{what}: expected UTCTime or GeneralizedTime, found 0x{element.tag:02x}")
    if rest[-1:] != b"Z":
        raise DERError(f"{what}: time must end in Z (UTC)")
    try:
        return datetime(
            year,
            _digits(rest[0:2], what),
            _digits(rest[2:4], what),
            _digits(rest[4:6], what),
            _digits(rest[6:8], what),
            _digits(rest[8:10], what),
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise DERError(f"{what}: not a calendar time ({exc})") from exc


def _digits(text: bytes, what: str) -> int:
    if not text.isdigit():
        raise DERError(f"{what}: non-digit in a time")
    return int(text)


#: The value types a name attribute may have, and how each decodes. As ``cryptography`` reads
#: names (the kit's verifying side must see the same names): BMPString is UTF-16, UniversalString
#: UTF-32, a PrintableString must keep to its character set, every other type's bytes are UTF-8
#: (a T61String or IA5String included); other tags are refused.
_PRINTABLE = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"
)
_TEXT_TAGS = frozenset(
    {
        OCTET_STRING,
        UTF8_STRING,
        NUMERIC_STRING,
        T61_STRING,
        IA5_STRING,
        UTC_TIME,
        GENERALIZED_TIME,
        VISIBLE_STRING,
    }
)


def string(element: Element, what: str = "string") -> str:
    """The text of a name attribute's value (see ``_TEXT_TAGS``)."""
    tag, content = element.tag, element.content
    try:
        if tag in _TEXT_TAGS:
            return content.decode("utf-8")
        if tag == PRINTABLE_STRING:
            if not _PRINTABLE.issuperset(content):
                raise DERError(f"{what}: character outside PrintableString's set")
            return content.decode("ascii")
        if tag == BMP_STRING:
            return content.decode("utf-16-be")
        if tag == UNIVERSAL_STRING:
            return content.decode("utf-32-be")
    except UnicodeDecodeError as exc:
        raise DERError(f"{what}: string does not decode ({exc.reason})") from exc
    raise DERError(f"{what}: tag 0x{tag:02x} is not a string type")
