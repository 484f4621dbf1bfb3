"""Certificate serial numbers (SN) as the platform compares them.

Tools print an SN in different cases, with or without leading zeros, with ``0x`` or with colons
between bytes (``openssl x509 -text``). The platform compares SNs as numbers; the canonical text
form used everywhere in this kit (file names, CSVs, the API, the registry) is lowercase hex
without leading zeros.
"""

from __future__ import annotations

import re

from device_sdk.errors import InvalidSerialNumberError

_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_COLON_HEX_RE = re.compile(r"[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2})+")

#: RFC 5280 allows at most 20 octets; longer values are refused rather than silently accepted.
MAX_SN_HEX_DIGITS = 40


def normalize_sn(value: str | int) -> str:
    """Return the canonical form of an SN: lowercase hex, no leading zeros, no prefix."""
    if isinstance(value, bool):
        raise InvalidSerialNumberError(f"SN {value!r} is not a number")
    if isinstance(value, int):
        if value < 0:
            raise InvalidSerialNumberError(
                f"SN {value} is negative; RFC 5280 serial numbers are positive integers"
            )
        text = format(value, "x")
        if len(text) > MAX_SN_HEX_DIGITS:
            raise InvalidSerialNumberError(
                f"SN {text} is {(len(text) + 1) // 2} bytes long; RFC 5280 allows at most 20 bytes"
            )
        return text
    text = value.strip()
    if text[:2].lower() == "0x":
        text = text[2:]
    if _COLON_HEX_RE.fullmatch(text):
        text = text.replace(":", "")
    if not _HEX_RE.fullmatch(text):
        raise InvalidSerialNumberError(f"SN {value!r} is not a hexadecimal number")
    text = text.lower().lstrip("0") or "0"
    if len(text) > MAX_SN_HEX_DIGITS:
        raise InvalidSerialNumberError(f"SN {value!r} is longer than 20 bytes")
    return text


def sn_to_int(value: str | int) -> int:
    return int(normalize_sn(value), 16)
