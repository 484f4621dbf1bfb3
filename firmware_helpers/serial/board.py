"""The board's credential store: the layout ``Credentials.from_store(DIR)`` reads, replaced as a set.

Why a journal: each file can be replaced atomically by itself, but a certificate, its key and
the server CA must change together, or a board that loses power between two renames would hold a
certificate with another device's key. So the store keeps a write-ahead journal:

1. :meth:`CredentialStore.commit` writes ``DIR/.commit.json`` with ``atomic_write`` (temporary
   file, fsync, rename, fsync ``DIR``): every new file's contents, mode and SHA-256, and the new
   ``manifest.json``. Once it is on disk the new set is committed -- this is the commit point,
   and the only fsyncs the host waits for;
2. it then replaces each live file (temporary file + rename, not yet fsync'd), so readers see
   the new set at once, and the board acknowledges COMMIT;
3. :meth:`CredentialStore.settle`, after the acknowledgement, fsyncs the live files and ``DIR``
   and deletes the journal.

At start, :meth:`CredentialStore.recover` finds a journal only if step 3 did not finish: it
rewrites every live file whose SHA-256 differs from the journal's (with ``atomic_write``), then
settles. No journal means the live set is whole: the old one, or the new one.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from device_sdk import keyfile, store_layout
from device_sdk.certs import CertificateChain, parse_certificates
from device_sdk.credentials import check_pair
from device_sdk.errors import CredentialError
from device_sdk.fileio import (
    PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
    atomic_write,
    ensure_private_dir,
    fsync_directory,
    open_no_follow,
)
from firmware_helpers.errors import SerialProvisioningError, StoreError
from firmware_helpers.serial.protocol import ErrorCode, ObjectInfo, ObjectType

log = logging.getLogger(__name__)

FILE_OF = {
    ObjectType.CERTIFICATE: store_layout.CERTIFICATE_FILE,
    ObjectType.PRIVATE_KEY: store_layout.PRIVATE_KEY_FILE,
    ObjectType.SERVER_CA: store_layout.SERVER_CA_FILE,
}
MODE_OF = {
    ObjectType.CERTIFICATE: PUBLIC_FILE_MODE,
    ObjectType.PRIVATE_KEY: PRIVATE_FILE_MODE,
    ObjectType.SERVER_CA: PUBLIC_FILE_MODE,
}
JOURNAL_FILE = store_layout.COMMIT_JOURNAL_FILE


class CommitRefused(SerialProvisioningError):
    """The set cannot be stored; carries the protocol error code the board answers with."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def check_credentials(objects: Mapping[ObjectType, bytes]) -> None:
    """The board's own check before storing: readable, RSA, and the key belongs to the cert.

    It is the SDK's one pair rule (:func:`device_sdk.credentials.check_pair`), on the SDK's
    certificate model: no ``cryptography`` import on the board (it cost ~45 ms, inside the
    first commit of every boot).
    """
    try:
        chain = CertificateChain.load(objects[ObjectType.CERTIFICATE], source="certificate")
        key = keyfile.read_key(
            objects[ObjectType.PRIVATE_KEY], source="private key", check_rsa_key=False
        )
        check_pair(chain, key, cert_source="certificate", key_source="private key")
        if ObjectType.SERVER_CA in objects:
            parse_certificates(objects[ObjectType.SERVER_CA], source="server CA")
    except CredentialError as exc:
        raise CommitRefused(ErrorCode.INVALID_CREDENTIALS, str(exc)) from exc


class CredentialStore:
    """``DIR`` (0700) with ``device.cer``, ``device.key`` (0600), ``server-ca.pem``, manifest."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            ensure_private_dir(self.root)
        except OSError as exc:
            raise StoreError(f"cannot use {self.root} as credential store: {exc}") from exc

    @property
    def journal(self) -> Path:
        return self.root / JOURNAL_FILE

    def path_of(self, obj: ObjectType) -> Path:
        return self.root / FILE_OF[obj]

    # --- reading ------------------------------------------------------------------------------

    def inventory(self) -> tuple[ObjectInfo, ...]:
        """Size and SHA-256 of each stored object; contents never leave this method."""
        found = []
        for obj in ObjectType:
            path = self.path_of(obj)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(f"cannot read {path}: {exc}") from exc
            found.append(ObjectInfo(obj, len(data), hashlib.sha256(data).digest()))
        return tuple(found)

    # --- writing ------------------------------------------------------------------------------

    @property
    def unsettled(self) -> bool:
        """A commit is durable through its journal but the live files are not fsync'd yet."""
        return self.journal.exists()

    def commit(self, objects: Mapping[ObjectType, bytes]) -> None:
        """Replace the stored set with ``objects`` (objects not given are kept).

        Returns once the set is committed (journal on disk) and visible; call :meth:`settle`
        afterwards (the agent does so after acknowledging) to retire the journal.
        """
        if self.unsettled:
            self.settle()
        files = {FILE_OF[o]: (d, MODE_OF[o]) for o, d in objects.items()}
        files[store_layout.MANIFEST_FILE] = (self._manifest_for(objects), PUBLIC_FILE_MODE)
        journal = {
            name: {
                "sha256": hashlib.sha256(data).hexdigest(),
                "mode": mode,
                "data": base64.b64encode(data).decode("ascii"),
            }
            for name, (data, mode) in files.items()
        }
        try:
            atomic_write(
                self.journal, json.dumps({"files": journal}).encode(), mode=PRIVATE_FILE_MODE
            )
        except OSError as exc:
            code = ErrorCode.STORAGE_FULL if exc.errno == errno.ENOSPC else ErrorCode.STORAGE_ERROR
            raise CommitRefused(
                code, f"cannot store the credentials: {exc.strerror or exc}"
            ) from exc
        # Past the commit point: whatever fails from here on, recover() finishes at next start.
        try:
            for name, (data, mode) in files.items():
                _replace_unsynced(self.root / name, data, mode)
        except OSError as exc:
            try:
                self.recover()
            except OSError as again:
                raise StoreError(
                    f"credentials committed but not yet in place ({again}); the agent finishes "
                    "at its next start"
                ) from exc

    def settle(self) -> None:
        """Make the live files durable and retire the journal."""
        try:
            journal = self._read_journal()
        except StoreError:
            self.journal.unlink(missing_ok=True)
            return
        for name in journal:
            fd = os.open(self.root / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(self.root)
        self.journal.unlink(missing_ok=True)
        fsync_directory(self.root)

    def _read_journal(self) -> dict[str, dict[str, object]]:
        try:
            files = json.loads(self.journal.read_bytes())["files"]
            if not isinstance(files, dict):
                raise TypeError("files is not an object")
            return files
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"unreadable commit journal {self.journal}: {exc}") from exc

    def _manifest_for(self, objects: Mapping[ObjectType, bytes]) -> bytes:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        previous = self._read_manifest()
        files: dict[str, dict[str, object]] = {}
        for obj in ObjectType:
            data = objects.get(obj)
            if data is None:
                try:
                    data = self.path_of(obj).read_bytes()
                except FileNotFoundError:
                    continue
            name, digest = FILE_OF[obj], hashlib.sha256(data).hexdigest()
            old = previous.get(name)
            same = isinstance(old, dict) and old.get("sha256") == digest
            updated = old.get("updatedAt", now) if same and isinstance(old, dict) else now
            files[name] = {"sha256": digest, "size": len(data), "updatedAt": updated}
        return json.dumps({"files": files}, indent=2, sort_keys=True).encode() + b"\n"

    def _read_manifest(self) -> dict[str, object]:
        try:
            data = json.loads((self.root / store_layout.MANIFEST_FILE).read_bytes())
            files = data.get("files", {}) if isinstance(data, dict) else {}
            return files if isinstance(files, dict) else {}
        except (OSError, ValueError):
            return {}

    def _remove_temporaries(self) -> int:
        removed = 0
        for leftover in self.root.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def recover(self) -> str:
        """Finish an interrupted commit, or report a clean store (for the agent's log)."""
        self._remove_temporaries()
        if not self.journal.exists():
            return "clean"
        try:
            journal = self._read_journal()
            repaired = 0
            for name, entry in journal.items():
                data = base64.b64decode(str(entry["data"]), validate=True)
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise StoreError(f"{self.journal}: {name} does not match its digest")
                live = self.root / name
                if not live.exists() or _sha256_file(live) != entry["sha256"]:
                    atomic_write(live, data, mode=int(str(entry["mode"])))
                    repaired += 1
        except (StoreError, KeyError, ValueError, TypeError) as exc:
            # atomic_write makes a torn journal impossible; an unreadable one was never written
            # by commit(), so the live files were never touched by it.
            self.journal.unlink(missing_ok=True)
            return f"discarded an unreadable commit journal ({exc}); live credentials kept"
        self.settle()
        return f"finished an interrupted commit ({repaired} file(s) rewritten)"


def _replace_unsynced(path: Path, data: bytes, mode: int) -> None:
    """Temporary file with its final mode, then rename: atomic for readers, durable later."""
    tmp = path.with_name(f".{path.name}.commit.tmp")
    # A predictable name: never truncate through a link planted there.
    fd = open_no_follow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
