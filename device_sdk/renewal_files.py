"""A renewal on disk: the new pair beside the current one, so that a kill at any step leaves a
pair that connects (docs/renewal.md, "Device").

Where: for a credential store (``Credentials.from_store(DIR)``) the renewal lives in
``DIR/renewal/``; for a pair of files (``Credentials.from_files(CERT, KEY)``) in
``CERT.renewal/`` beside the certificate (several devices' pairs may share a directory). In it:

========== ============================================= ===============================
state      files                                         the device connects with
========== ============================================= ===============================
idle       (no ``state.json``; leftovers are removed)    current
requested  ``new.key`` (0600), ``state.json``            current
received   + ``new.cer``                                 new first; current on refusal
accepted   ``state.json`` says so while the new pair is  new (promotion is finished
           copied over the current names                 first, at every start)
========== ============================================= ===============================

Every file is written to a temporary name, fsynced and renamed (:func:`atomic_write`), and
``state.json`` is written *last* when a step adds files and removed *first* when the directory
is cleared, so the state never names a file that is not complete. :meth:`RenewalFiles.recover`
runs before any pair is loaded: it finishes an interrupted promotion and clears leftovers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from device_sdk.errors import RenewalMessageError, RenewalStateError
from device_sdk.fileio import PRIVATE_FILE_MODE, PUBLIC_FILE_MODE, atomic_write, fsync_directory
from device_sdk.renewal import RenewalState
from device_sdk.renewal_protocol import RenewalRequest
from device_sdk.store_layout import (
    CERTIFICATE_FILE,
    COMMIT_JOURNAL_FILE,
    MANIFEST_FILE,
    PRIVATE_KEY_FILE,
)

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
NEW_KEY_FILE = "new.key"
NEW_CERT_FILE = "new.cer"
STORE_RENEWAL_DIR = "renewal"
FILES_RENEWAL_SUFFIX = ".renewal"
MAX_STATE_BYTES = 64 * 1024

_ACCEPTED = "accepted"


@dataclass(frozen=True, slots=True)
class DiskState:
    """What ``state.json`` says (IDLE when there is none)."""

    state: RenewalState
    request: RenewalRequest | None = None
    cert_sn: str | None = None
    old_cert_sn: str | None = None
    requested_at: float | None = None


class RenewalFiles:
    """The current pair's paths and the renewal directory beside it."""

    def __init__(
        self, cert: Path, key: Path, directory: Path, *, store_root: Path | None = None
    ) -> None:
        self.cert = cert
        self.key = key
        self.directory = directory
        self.store_root = store_root
        """The credential store, when the pair is one (its manifest is kept up to date)."""

    @classmethod
    def for_files(cls, cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> RenewalFiles:
        cert_path = Path(cert)
        return cls(cert_path, Path(key), cert_path.with_name(cert_path.name + FILES_RENEWAL_SUFFIX))

    @classmethod
    def for_store(cls, directory: str | os.PathLike[str]) -> RenewalFiles:
        root = Path(directory)
        return cls(
            root / CERTIFICATE_FILE,
            root / PRIVATE_KEY_FILE,
            root / STORE_RENEWAL_DIR,
            store_root=root,
        )

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def new_key(self) -> Path:
        return self.directory / NEW_KEY_FILE

    @property
    def new_cert(self) -> Path:
        return self.directory / NEW_CERT_FILE

    # --- reading -------------------------------------------------------------------------------

    def read(self) -> tuple[str, DiskState]:
        """The raw state name and the state (``accepted`` reads as RECEIVED)."""
        path = self.state_path
        try:
            data = path.read_bytes()[: MAX_STATE_BYTES + 1]
        except FileNotFoundError:
            return "idle", DiskState(RenewalState.IDLE)
        except OSError as exc:
            raise RenewalStateError(
                f"cannot read renewal state {path}: {exc.strerror or exc}", path=str(path)
            ) from exc
        try:
            if len(data) > MAX_STATE_BYTES:
                raise ValueError("larger than a renewal state can be")
            obj: dict[str, Any] = json.loads(data)
            name = obj["state"]
            request = obj.get("request")
            disk = DiskState(
                RenewalState.RECEIVED if name == _ACCEPTED else RenewalState(name),
                RenewalRequest.from_json(request) if request is not None else None,
                obj.get("certSn"),
                obj.get("oldCertSn"),
                obj.get("requestedAt"),
            )
        except (ValueError, KeyError, TypeError, RenewalMessageError) as exc:
            raise RenewalStateError(
                f"renewal state {path} is damaged ({exc}); remove the directory {self.directory} "
                f"to abandon the renewal (the current pair is untouched)",
                path=str(path),
            ) from exc
        if disk.state is RenewalState.REQUESTED and disk.request is None:
            raise RenewalStateError(
                f"renewal state {path} is 'requested' without its request; remove "
                f"{self.directory} to abandon the renewal",
                path=str(path),
            )
        return str(name), disk

    def recover(self) -> DiskState:
        """Bring the directory to a clean state before any pair is loaded.

        ``accepted``: finish the promotion (repeated from the files still in the renewal
        directory). ``received`` without ``new.cer``, or ``requested`` without its key: that step
        was not finished, go back one. No state: remove leftovers. A damaged state is abandoned
        with a warning (the current pair, untouched before ``accepted``, connects).
        Raises :class:`RenewalStateError` only when the files cannot be read or changed.
        """
        try:
            name, disk = self.read()
        except RenewalStateError as exc:
            if not self.state_path.is_file():
                raise
            log.warning("%s; abandoning that renewal, the current pair is kept", exc)
            self.discard()
            return DiskState(RenewalState.IDLE)
        if name == _ACCEPTED:
            self.promote()
            return DiskState(RenewalState.IDLE)
        if disk.state is RenewalState.IDLE:
            if self.directory.exists():
                self.discard()
            return disk
        if not self.new_key.is_file():
            self.discard()
            return DiskState(RenewalState.IDLE)
        if disk.state is RenewalState.RECEIVED and not self.new_cert.is_file():
            return DiskState(
                RenewalState.REQUESTED, disk.request, None, disk.old_cert_sn, disk.requested_at
            )
        return disk

    # --- writing -------------------------------------------------------------------------------

    def begin(self, request: RenewalRequest, key_pem: bytes, *, old_cert_sn: str) -> None:
        """State ``requested``: ``new.key`` (0600), then ``state.json``."""
        self._no_unsettled_commit()
        try:
            if self.directory.exists():
                self.discard()
            self.directory.mkdir(mode=0o700, parents=False, exist_ok=True)
            fsync_directory(self.directory.parent)
            atomic_write(self.new_key, key_pem, mode=PRIVATE_FILE_MODE)
            self._write_state(
                {
                    "state": RenewalState.REQUESTED.value,
                    "request": request.to_json(),
                    "oldCertSn": old_cert_sn,
                    "requestedAt": time.time(),
                }
            )
        except OSError as exc:
            raise self._error("store the new key", exc) from exc

    def store_certificate(self, cert_pem: bytes, cert_sn: str) -> None:
        """State ``received``: ``new.cer``, then ``state.json``."""
        _name, disk = self.read()
        try:
            atomic_write(self.new_cert, cert_pem, mode=PUBLIC_FILE_MODE)
            self._write_state(
                {
                    "state": RenewalState.RECEIVED.value,
                    "request": disk.request.to_json() if disk.request else None,
                    "oldCertSn": disk.old_cert_sn,
                    "requestedAt": disk.requested_at,
                    "certSn": cert_sn,
                }
            )
        except OSError as exc:
            raise self._error("store the new certificate", exc) from exc

    def promote(self) -> None:
        """State ``accepted``: the new pair replaces the current names (key first, then the
        certificate; each atomically), the manifest of a store is updated, the directory goes."""
        try:
            name, disk = self.read()
            if name != _ACCEPTED:
                self._write_state(
                    {"state": _ACCEPTED, "certSn": disk.cert_sn, "oldCertSn": disk.old_cert_sn}
                )
            key_pem, cert_pem = self.new_key.read_bytes(), self.new_cert.read_bytes()
            atomic_write(self.key, key_pem, mode=PRIVATE_FILE_MODE)
            atomic_write(self.cert, cert_pem, mode=PUBLIC_FILE_MODE)
            self._update_manifest({self.key.name: key_pem, self.cert.name: cert_pem})
        except OSError as exc:
            raise self._error("promote the new pair", exc) from exc
        self.discard()

    def discard(self) -> None:
        """Remove the renewal directory: ``state.json`` first, then the rest."""
        try:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
                fsync_directory(self.directory)
            if self.directory.is_dir():
                for leftover in self.directory.iterdir():
                    leftover.unlink()
                self.directory.rmdir()
                fsync_directory(self.directory.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._error("remove the renewal files", exc) from exc

    def _no_unsettled_commit(self) -> None:
        """A credential store with an unsettled provisioning commit: the board agent rewrites
        the files from its journal at its next start, which would undo a promotion."""
        if self.store_root is None:
            return
        journal = self.store_root / COMMIT_JOURNAL_FILE
        if journal.exists():
            raise RenewalStateError(
                f"the credential store {self.store_root} has an unfinished provisioning commit "
                f"({journal}); start the board agent once (it finishes the commit) before "
                "renewing; the current pair is kept",
                path=str(journal),
            )

    def _write_state(self, fields: dict[str, Any]) -> None:
        body = json.dumps(fields, indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(self.state_path, body, mode=PRIVATE_FILE_MODE)

    def _update_manifest(self, written: dict[str, bytes]) -> None:
        """Keep a credential store's ``manifest.json`` true to its files (serial provisioning
        lists the store from it)."""
        if self.store_root is None:
            return
        path = self.store_root / MANIFEST_FILE
        try:
            manifest = json.loads(path.read_bytes())
            files = manifest["files"]
            if not isinstance(files, dict):
                return
        except (OSError, ValueError, KeyError, TypeError):
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for name, data in written.items():
            files[name] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "updatedAt": now,
            }
        body = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(path, body, mode=PUBLIC_FILE_MODE)

    def _error(self, what: str, exc: OSError) -> RenewalStateError:
        return RenewalStateError(
            f"cannot {what} in {self.directory}: {exc.strerror or exc}; the current pair is "
            f"kept (check free space and permissions)",
            path=str(exc.filename or self.directory),
        )
