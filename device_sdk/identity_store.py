"""Where a device keeps the identity the platform told it.

The platform publishes ``{"productKey", "deviceName"}`` after every accepted connection; a device
that stores it can send ``DeviceName&ProductKey`` as username next time and knows its topics
before the platform speaks. The file is a cache of what the platform says, so a damaged file is
reported (warning) and ignored rather than keeping the device offline: the next connection
rewrites it. Writes are atomic (temporary file, fsync, rename) and private (0600).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

from device_sdk.errors import IdentityStoreError, InvalidNameError
from device_sdk.fileio import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, atomic_write
from device_sdk.identity import Identity

log = logging.getLogger(__name__)


class IdentityStore:
    """One JSON file holding the device's last known :class:`Identity`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> Identity | None:
        """The stored identity; None when there is none or it is unreadable (warned)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn(f"cannot read identity file {self.path}: {exc.strerror or exc}")
            return None
        try:
            return Identity.from_json(data)
        except InvalidNameError as exc:
            self._warn(
                f"identity file {self.path} is damaged ({exc}); ignoring it, the platform will "
                f"send the identity again on the next connection"
            )
            return None

    def save(self, identity: Identity) -> None:
        """Write atomically with mode 0600; create a missing directory as 0700."""
        directory = self.path.parent
        try:
            if not directory.exists():
                directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            body = json.dumps(identity.to_json(), indent=2, sort_keys=True).encode() + b"\n"
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
        log.warning("%s", message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
