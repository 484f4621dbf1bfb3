"""Where a device keeps the identity the platform told it.

The platform publishes ``{"productKey", "deviceName"}`` after every accepted connection; a device
that stores it can send ``DeviceName&ProductKey`` as username next time and knows its topics
before the platform speaks. The file is a cache of what the platform says, so a damaged file is
reported (warning) and ignored rather than keeping the device offline: the next connection
rewrites it. Writes are atomic (temporary file, fsync, rename) and private (0600).

The file records the certificate it belongs to (``certSn`` and ``certSha256``): a file copied
from another board, or left from a previous certificate, names another device, and sending that
as the username would cost a refused attempt. Such a file (or one without the record, written by
an older SDK) is not used; the platform tells the identity on the next connection.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from device_sdk.certs import certificate_sn, fingerprint_sha256
from device_sdk.errors import IdentityStoreError, InvalidNameError
from device_sdk.fileio import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, atomic_write
from device_sdk.identity import Identity

if TYPE_CHECKING:
    from device_sdk.certs import CertLike

log = logging.getLogger(__name__)


class IdentityStore:
    """One JSON file holding the device's last known :class:`Identity`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self, certificate: CertLike | None = None) -> Identity | None:
        """The stored identity; None when there is none or it is unreadable (warned).

        With ``certificate``: None also when the file was stored for another certificate (or
        does not say for which one), reported once as a warning.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn(f"cannot read identity file {self.path}: {exc.strerror or exc}")
            return None
        try:
            identity = Identity.from_json(data)
            fields = json.loads(data)
        except (InvalidNameError, ValueError) as exc:
            self._warn(
                f"identity file {self.path} is damaged ({exc}); ignoring it, the platform will "
                f"send the identity again on the next connection"
            )
            return None
        if certificate is None:
            return identity
        stored_for = fields.get("certSha256")
        if stored_for != fingerprint_sha256(certificate):
            whose = (
                f"the certificate with SN {fields.get('certSn')}"
                if isinstance(stored_for, str)
                else "an unrecorded certificate"
            )
            self._warn(
                f"identity file {self.path} ({identity.product_key}/{identity.device_name}) was "
                f"stored for {whose}, not this device's (SN {certificate_sn(certificate)}); "
                f"ignoring it, the platform will send the identity on the next connection"
            )
            return None
        return identity

    def save(self, identity: Identity, certificate: CertLike | None = None) -> None:
        """Write atomically with mode 0600; create a missing directory as 0700.

        ``certificate``: the certificate the identity was told for (recorded, see above).
        """
        directory = self.path.parent
        fields: dict[str, str] = dict(identity.to_json())
        if certificate is not None:
            fields["certSn"] = certificate_sn(certificate)
            fields["certSha256"] = fingerprint_sha256(certificate)
        try:
            if not directory.exists():
                directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            body = json.dumps(fields, indent=2, sort_keys=True).encode() + b"\n"
            atomic_write(self.path, body, mode=PRIVATE_FILE_MODE)
        except OSError as exc:
            raise IdentityStoreError(
                f"cannot write identity file {self.path}: {exc.strerror or exc}; check that the "
                f"directory exists and is writable by this user",
                path=str(self.path),
            ) from exc

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    @staticmethod
    def _warn(message: str) -> None:
        """Once: as a warning (which the application may filter or log), not also logged."""
        warnings.warn(message, RuntimeWarning, stacklevel=3)
