"""The platform's naming rules, in one place for every part of the kit.

- ProductKey: letters and digits (the platform generates 11 of them).
- DeviceName: 4-32 characters of letters, digits and ``-_@.:``. Stricter than the platform,
  the kit does not issue, write into a CSV or register a DeviceName that *begins* with ``-``,
  ``@``, ``=`` or ``+`` (:func:`validate_new_device_name`): DeviceNames end up in CSV files
  (association CSVs, provisioning reports) and spreadsheet programs run such a cell as a
  formula (:mod:`device_sdk.csvsafe` owns those characters). An identity the platform tells a
  device is still read with the platform's own rule.
- CA certificate name: 4-30 characters of letters, digits and ``_``.
- Device certificate files: ``[ProductKey]_[DeviceName]_[CA_SN].cer`` and ``.key``. A DeviceName
  may itself contain ``_``; a ProductKey and a CA SN never do, so the name splits at the first and
  the last underscore.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from device_sdk.csvsafe import FORMULA_LEADING
from device_sdk.errors import InvalidNameError
from device_sdk.serials import normalize_sn

PRODUCT_KEY_RE = re.compile(r"[A-Za-z0-9]{1,64}")
DEVICE_NAME_RE = re.compile(r"[A-Za-z0-9\-_@.:]{4,32}")
CA_NAME_RE = re.compile(r"[A-Za-z0-9_]{4,30}")

CERT_SUFFIX = ".cer"
KEY_SUFFIX = ".key"
CA_FILE_SUFFIXES = (".cer", ".crt", ".pem")


def validate_product_key(value: str) -> str:
    if not PRODUCT_KEY_RE.fullmatch(value):
        raise InvalidNameError(f"ProductKey {value!r} must be letters and digits only")
    return value


def validate_device_name(value: str) -> str:
    if not DEVICE_NAME_RE.fullmatch(value):
        raise InvalidNameError(
            f"DeviceName {value!r} must be 4-32 characters of letters, digits and -_@.:"
        )
    return value


def validate_new_device_name(value: str) -> str:
    """The rule for a DeviceName the kit issues, writes into a CSV or registers.

    The platform's rule, plus: no ``-``, ``@``, ``=`` or ``+`` as the first character, because
    the name goes into CSV files that people open in spreadsheet programs. Names the platform
    *tells* a device (its identity) are checked with :func:`validate_device_name` only.
    """
    validate_device_name(value)
    if value.startswith(FORMULA_LEADING):
        raise InvalidNameError(
            f"DeviceName {value!r} must not begin with {value[0]!r}: DeviceNames go into CSV "
            "files, and spreadsheet programs run a cell beginning with = + - @ as a formula "
            "(the kit is stricter than the platform here); start it with a letter, a digit or "
            "one of _.:"
        )
    return value


def validate_ca_name(value: str) -> str:
    if not CA_NAME_RE.fullmatch(value):
        raise InvalidNameError(
            f"CA name {value!r} must be 4-30 characters of letters, digits and underscore"
        )
    return value


@dataclass(frozen=True, slots=True)
class DeviceFileName:
    """``[ProductKey]_[DeviceName]_[CA_SN]``: the stem of a device's ``.cer``/``.key`` pair."""

    product_key: str
    device_name: str
    ca_sn: str

    def __post_init__(self) -> None:
        validate_product_key(self.product_key)
        validate_device_name(self.device_name)
        object.__setattr__(self, "ca_sn", normalize_sn(self.ca_sn))

    @property
    def stem(self) -> str:
        return f"{self.product_key}_{self.device_name}_{self.ca_sn}"

    @property
    def cert_name(self) -> str:
        return self.stem + CERT_SUFFIX

    @property
    def key_name(self) -> str:
        return self.stem + KEY_SUFFIX

    @classmethod
    def parse(cls, filename: str | PurePath) -> DeviceFileName:
        """Read the parts from a file name (any directory and suffix are ignored)."""
        stem = PurePath(filename).stem if PurePath(filename).suffix else PurePath(filename).name
        first, last = stem.find("_"), stem.rfind("_")
        if first <= 0 or last <= first + 1 or last == len(stem) - 1:
            raise InvalidNameError(
                f"file name {str(filename)!r} does not follow [ProductKey]_[DeviceName]_[CA_SN]"
            )
        try:
            return cls(stem[:first], stem[first + 1 : last], stem[last + 1 :])
        except (InvalidNameError, ValueError) as exc:
            raise InvalidNameError(
                f"file name {str(filename)!r} does not follow [ProductKey]_[DeviceName]_[CA_SN]: "
                f"{exc}"
            ) from exc

    @classmethod
    def try_parse(cls, filename: str | PurePath) -> DeviceFileName | None:
        try:
            return cls.parse(filename)
        except InvalidNameError:
            return None
