"""Keys that never leave the board: issue a device certificate for the CSR a board returns.

``iotx509 provision --generate-on-board`` (protocol version 2): the board generates the key and
answers GENKEY with a PKCS#10 request; :func:`device_sdk.csr.check_csr` (the one home of the CSR
rules, shared with renewal) decides what of it is trusted -- only the public key, once the
signature proves the board holds its private key, and the subject must be empty -- and
:class:`OnBoardIssuer` issues the certificate by the platform's rules:

- ``[PK]_[DN]_[CA_SN].cer`` in the output directory, and never a ``.key`` (there is none here);
- the SN reserved in the CA's ledger (fsync'd) before the certificate exists, so an SN whose
  certificate never reached a board is burnt, never reused;
- after the board committed, one row in the association CSV and one in the provisioning report.

A transaction that fails before COMMIT leaves no certificate file (its SN stays burnt in the
ledger); one whose line failed after COMMIT was sent keeps the certificate, its association row
and an ``uncertain`` report row: the board may hold it.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from device_sdk.certs import certificate_sn, to_pem
from device_sdk.csr import check_csr
from device_sdk.fileio import PUBLIC_FILE_MODE, atomic_write
from device_sdk.naming import DeviceFileName
from firmware_helpers.association_csv import (
    SINGLE_NAME,
    Association,
    existing_association_files,
    read_associations,
    write_associations,
)
from firmware_helpers.defaults import DEFAULT_CERT_DAYS, DEFAULT_KEY_SIZE
from firmware_helpers.errors import (
    DuplicateSerialError,
    LinkError,
    ProvisioningInputError,
    SerialProvisioningError,
)
from firmware_helpers.issuing import reserve_new_serial
from firmware_helpers.ledger import SerialLedger
from firmware_helpers.pki import CertifiedKey, build_device_certificate
from firmware_helpers.serial.batch import STATUS_OK, STATUS_UNCERTAIN, Pair, Report
from firmware_helpers.serial.host import Host, ProvisionResult
from firmware_helpers.serial.protocol import HelloReply, ObjectType

log = logging.getLogger(__name__)


@dataclass
class OnBoardIssuer:
    """Issues the certificate for one board's CSR, by the platform's rules (see module doc)."""

    ca: CertifiedKey
    product_key: str
    device_name: str
    out_dir: Path
    ledger_path: Path
    server_ca_pem: bytes | None = None
    days: int = DEFAULT_CERT_DAYS
    #: every SN reserved for this device in this run (more than one after a restart)
    reserved: list[str] = field(default_factory=list)
    cert_pem: bytes = b""

    @property
    def names(self) -> DeviceFileName:
        return DeviceFileName(self.product_key, self.device_name, self.ca.sn)

    @property
    def cert_path(self) -> Path:
        return self.out_dir / self.names.cert_name

    def check_free(self) -> None:
        """Before the line is touched: the DeviceName is not issued in this directory yet."""
        if self.cert_path.exists():
            raise ProvisioningInputError(
                f"{self.cert_path} already exists: DeviceName {self.device_name} has a "
                "certificate in this directory; give another --device-name"
            )
        for path in existing_association_files(self.out_dir):
            if any(r.device_name == self.device_name for r in read_associations(path)):
                raise ProvisioningInputError(
                    f"DeviceName {self.device_name} is already in {path}; give another "
                    "--device-name"
                )

    def __call__(self, board: HelloReply, csr_der: bytes) -> dict[ObjectType, bytes]:
        return self.issue(board, csr_der)

    def issue(
        self,
        board: HelloReply,
        csr_der: bytes,
        *,
        lock: AbstractContextManager[object] | None = None,
    ) -> dict[ObjectType, bytes]:
        """Check the CSR, reserve an SN, write the certificate; the objects to send.

        ``lock`` is held only while the SN is reserved in the ledger (shared by the ports):
        the CSR check, the signature and the certificate file (this device's own) run
        outside it, so boards on several ports are issued for at the same time.
        """
        public = check_csr(csr_der)
        with lock if lock is not None else contextlib.nullcontext():
            serial = self._reserve()
        self.reserved.append(format(serial, "x"))
        cert = build_device_certificate(
            self.ca,
            public,
            self.device_name,
            product_key=self.product_key,
            serial=serial,
            days=self.days,
        )
        self.cert_pem = to_pem(cert)
        atomic_write(self.cert_path, self.cert_pem, mode=PUBLIC_FILE_MODE)
        log.info(
            "issued %s (SN %s) for board %s",
            self.cert_path.name,
            certificate_sn(cert),
            board.board_id,
        )
        objects = {ObjectType.CERTIFICATE: self.cert_pem}
        if self.server_ca_pem is not None:
            objects[ObjectType.SERVER_CA] = self.server_ca_pem
        return objects

    def _reserve(self) -> int:
        """A fresh random SN, recorded (fsync'd) in the CA's ledger before any certificate."""
        with SerialLedger(self.ledger_path) as ledger:
            try:
                return reserve_new_serial(ledger, self.ca.sn, self.product_key, self.device_name)
            except DuplicateSerialError as exc:  # pragma: no cover - 16 random 64-bit collisions
                raise ProvisioningInputError(str(exc)) from exc

    @property
    def sn(self) -> str:
        return self.reserved[-1] if self.reserved else ""

    def associate(self) -> Path:
        """Append this device's row to the association CSV(s) of the directory."""
        rows: list[Association] = []
        for path in existing_association_files(self.out_dir):
            rows.extend(read_associations(path))
        rows.append(Association(self.product_key, self.device_name, self.sn))
        written = write_associations(self.out_dir, rows)
        return written[-1] if written else self.out_dir / SINGLE_NAME


def provision_generated(
    host: Host,
    issuer: OnBoardIssuer,
    report: Report,
    *,
    bits: int = DEFAULT_KEY_SIZE,
    lock: AbstractContextManager[object] | None = None,
) -> ProvisionResult:
    """The board generates its key; the host issues, sends and records. See the module doc.

    ``lock`` guards what boards on several ports share (ledger, association CSV, report).
    """
    guard = lock if lock is not None else contextlib.nullcontext()
    with guard:
        issuer.check_free()
    pair = Pair(issuer.names, issuer.cert_path, issuer.cert_path.with_suffix(".key"), "")

    def record(board_id: str, status: str) -> None:
        with guard:
            issuer.associate()
            report.append(board_id, Pair(pair.name, pair.cert, pair.key, issuer.sn), status)

    def issue(board: HelloReply, csr: bytes) -> dict[ObjectType, bytes]:
        return issuer.issue(board, csr, lock=guard)

    try:
        early = {} if issuer.server_ca_pem is None else {ObjectType.SERVER_CA: issuer.server_ca_pem}
        result = host.provision_generated(issue, bits=bits, early=early)
    except (SerialProvisioningError, KeyboardInterrupt) as exc:
        doubtful = host.commit_sent and isinstance(exc, LinkError | KeyboardInterrupt)
        if doubtful and host.board is not None:
            why = str(exc) if isinstance(exc, LinkError) else "interrupted after COMMIT was sent"
            record(host.board.board_id, f"{STATUS_UNCERTAIN}: {why}")
        elif issuer.reserved:
            # Never reached a board: no certificate without a key; the SN stays burnt.
            with contextlib.suppress(FileNotFoundError):
                issuer.cert_path.unlink()
        raise
    record(result.board_id, STATUS_OK)
    return result
