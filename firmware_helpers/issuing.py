"""Batch issuance of device certificates: one RSA key and certificate per device.

Why it is built this way:

- RSA key generation dominates (tens of milliseconds per 2048-bit key, with a long tail), so keys
  are generated in a process pool on all cores (:mod:`firmware_helpers.keypool`). A worker returns
  the PKCS#1 PEM and the public key; the parent draws the SN, reserves it in the ledger, signs
  (well under a millisecond) and writes.
  Private keys never need to be parsed again, the CA key never leaves the parent, and only the
  parent writes files, so a killed parent cannot leave a worker writing behind its back.
- An SN is reserved in the ledger (fsync'd) *before* the pair carrying it is written, so a crash
  can burn an SN but never issue one twice.
- A pair is written key first, certificate second, each atomically (temporary file, fsync,
  rename). A pair is complete when both files exist. On resume complete pairs are kept, and
  incomplete ones (a key without its certificate) and temporary files are removed and issued
  again: re-running the same command finishes the batch. A certificate without a key is a
  device whose key was generated on its board (serial protocol version 2): it is kept.
- The association CSVs are written last and cover every complete pair for the product and CA in
  the output directory, so a resumed run ends with complete CSVs.

Why it is a little over 500 lines: the crash-safety rules above (reserve, write, resume) are
one protocol over one output directory and one ledger; the key pool
(:mod:`firmware_helpers.keypool`) and the defaults (:mod:`firmware_helpers.defaults`) already
live apart.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from device_sdk.certs import (
    certificate_sn,
    is_ca,
    issued_by,
    key_matches_certificate,
    load_certificates,
    load_private_key,
    read_certificates,
    read_private_key,
    signed_by,
    to_pem,
)
from device_sdk.errors import CredentialError, InvalidNameError
from device_sdk.fileio import (
    PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
    atomic_write,
    ensure_private_dir,
)
from device_sdk.naming import (
    CERT_SUFFIX,
    KEY_SUFFIX,
    DeviceFileName,
    validate_new_device_name,
    validate_product_key,
)
from firmware_helpers.association_csv import Association, write_associations
from firmware_helpers.defaults import (
    ALLOWED_KEY_SIZES,
    DEFAULT_CERT_DAYS,
    DEFAULT_KEY_SIZE,
    check_days,
)
from firmware_helpers.errors import (
    DuplicateSerialError,
    InvalidCAError,
    InvalidInputError,
    IssuanceError,
)
from firmware_helpers.keypool import KeySource, generate_key_material, key_stream
from firmware_helpers.ledger import DEFAULT_LEDGER_NAME, SerialLedger
from firmware_helpers.pki import (
    CertifiedKey,
    build_device_certificate,
    random_serial,
)

log = logging.getLogger(__name__)

#: Bits of a device SN: random, positive, top bit set so it never prints shorter.
SERIAL_BITS = 64
#: Fresh draws tried when a random SN is already in the ledger before giving up.
MAX_SERIAL_DRAWS = 16
#: ``atomic_write``'s temporary files: ``.{name}.{random}.tmp``.
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp")

ProgressCallback = Callable[[int, int], None]


# --- inputs ------------------------------------------------------------------------------------


def load_issuing_ca(
    cert_path: str | Path, key_path: str | Path, *, password: bytes | str | None = None
) -> CertifiedKey:
    """Load a CA certificate and its key, refusing anything that cannot issue device certs."""
    try:
        certs = read_certificates(cert_path)
        key = read_private_key(key_path, password=password)
    except CredentialError as exc:
        raise InvalidCAError(str(exc), source=exc.source) from exc
    return check_issuing_ca(certs[0], key, source=str(cert_path), key_source=str(key_path))


def load_issuing_ca_pem(cert_pem: bytes, key_pem: bytes) -> CertifiedKey:
    try:
        cert = load_certificates(cert_pem, source="CA certificate")[0]
        key = load_private_key(key_pem, source="CA key")
    except CredentialError as exc:
        raise InvalidCAError(str(exc), source=exc.source) from exc
    return check_issuing_ca(cert, key, source="CA certificate", key_source="CA key")


def _is_v1_root(cert: x509.Certificate) -> bool:
    """A self-signed version 1 certificate: no extensions, so no CA flag, yet OpenSSL (and the
    field) treat it as a root CA, e.g. one made with ``openssl x509 -req -signkey``."""
    return cert.version == x509.Version.v1 and issued_by(cert, cert)


def check_issuing_ca(
    cert: x509.Certificate, key: object, *, source: str, key_source: str
) -> CertifiedKey:
    if not (is_ca(cert) or _is_v1_root(cert)):
        raise InvalidCAError(
            f"{source} is not a CA certificate (no basicConstraints CA:TRUE): it cannot sign "
            "device certificates. Give the CA's certificate (e.g. the ca.cer that "
            "'iotx509 ca create' wrote), not a device or server certificate.",
            source=source,
        )
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidCAError(
            f"{key_source} is not an RSA key; the platform supports only RSA-signed device "
            "certificates",
            source=key_source,
        )
    if not key_matches_certificate(key, cert):
        raise InvalidCAError(
            f"{key_source} is not the private key of the CA certificate {source} "
            f"(CA SN {certificate_sn(cert)}); give the key that was made with that certificate",
            source=key_source,
        )
    return CertifiedKey(cert, key)


def prepare_output_dir(path: str | Path) -> Path:
    """Create ``path`` with mode 0700 (it will hold private keys), or explain why not."""
    try:
        return ensure_private_dir(path)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot create the output directory {path}: {exc.strerror or exc}"
        ) from exc


def names_from_count(prefix: str, count: int) -> list[str]:
    """``prefix0001`` ... : zero-padded to at least 4 digits, so a re-run yields the same names."""
    if count < 1:
        raise InvalidInputError(f"--count must be at least 1, got {count}")
    width = max(4, len(str(count)))
    return [f"{prefix}{index:0{width}d}" for index in range(1, count + 1)]


def read_names_file(path: str | Path) -> list[str]:
    """One DeviceName per line; blank lines and lines starting with ``#`` are ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read the names file {path}: {exc}") from exc
    names = [line.strip() for line in text.splitlines()]
    return [name for name in names if name and not name.startswith("#")]


def validate_inputs(product_key: str, names: Sequence[str]) -> None:
    """Check the ProductKey and every DeviceName before anything is written; report all."""
    try:
        validate_product_key(product_key)
    except InvalidNameError as exc:
        raise InvalidInputError(str(exc)) from exc
    if not names:
        raise InvalidInputError("no device names given")
    problems: list[str] = []
    seen: set[str] = set()
    for index, name in enumerate(names, start=1):
        try:
            validate_new_device_name(name)
        except InvalidNameError as exc:
            problems.append(f"#{index}: {exc}")
        if name in seen:
            problems.append(f"#{index}: DeviceName {name!r} is given twice")
        seen.add(name)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise InvalidInputError(
            f"{len(problems)} problem(s) with the device names; nothing was issued:\n  "
            f"{shown}{more}"
        )


# --- the report --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedDevice:
    product_key: str
    device_name: str
    sn: str
    cert_path: Path
    key_path: Path


@dataclass
class IssueReport:
    """What a run did. ``devices`` lists every complete pair in the directory afterwards."""

    product_key: str
    ca_sn: str
    out_dir: Path
    ledger_path: Path
    issued: list[IssuedDevice] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    devices: list[IssuedDevice] = field(default_factory=list)
    csv_files: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Pairs issued per second in this run."""
        return len(self.issued) / self.seconds if self.seconds > 0 else 0.0


# --- the directory -----------------------------------------------------------------------------


@dataclass
class _Scan:
    complete: dict[str, IssuedDevice] = field(default_factory=dict)
    incomplete: list[Path] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)


def _scan(out_dir: Path, product_key: str, ca: CertifiedKey) -> _Scan:
    """Sort the directory's device files into complete pairs, leftovers and other batches."""
    ca_sn = ca.sn
    files: dict[DeviceFileName, set[str]] = {}
    scan = _Scan()
    for entry in out_dir.iterdir():
        temp = _TEMP_RE.fullmatch(entry.name)
        if temp and (
            temp["name"].endswith((CERT_SUFFIX, KEY_SUFFIX))
            or temp["name"].startswith("associations")
        ):
            scan.incomplete.append(entry)
            continue
        if entry.suffix not in (CERT_SUFFIX, KEY_SUFFIX) or not entry.is_file():
            continue
        parsed = DeviceFileName.try_parse(entry.name)
        if parsed is None:
            continue
        if parsed.product_key != product_key or parsed.ca_sn != ca_sn:
            scan.foreign.append(entry.name)
            continue
        files.setdefault(parsed, set()).add(entry.suffix)
    for parsed, suffixes in files.items():
        cert_path, key_path = out_dir / parsed.cert_name, out_dir / parsed.key_name
        if CERT_SUFFIX not in suffixes:
            # Pairs are written key first: a key alone is what an interrupted run leaves.
            scan.incomplete.append(key_path)
            continue
        # A readable certificate alone is not a leftover of this engine: its key was generated
        # on the board (``provision --generate-on-board``) and is nowhere on this host. It is a
        # device of this directory like the others (kept, and in the association CSV).
        lone = KEY_SUFFIX not in suffixes
        try:
            cert = load_certificates(cert_path.read_bytes(), source=str(cert_path))[0]
        except (CredentialError, OSError) as exc:
            if lone:  # an unreadable file alone is debris, not a device: issued again
                scan.incomplete.append(cert_path)
                continue
            raise IssuanceError(
                f"the existing certificate {cert_path} cannot be read ({exc}); it was not written "
                "by this tool's atomic writes. Move the pair away to have it issued again"
            ) from exc
        if not signed_by(cert, ca.certificate.public_key()):
            raise InvalidCAError(
                f"{cert_path} carries this CA's SN in its name but was not signed by this CA's "
                "key; keep batches of different CAs in different directories",
                source=str(cert_path),
            )
        scan.complete[parsed.device_name] = IssuedDevice(
            product_key, parsed.device_name, certificate_sn(cert), cert_path, key_path
        )
    return scan


# --- issuing -----------------------------------------------------------------------------------


@contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block ends, then act on them as before.

    Python runs signal handlers between bytecodes, so an interrupt could otherwise land between
    the key and the certificate of a pair. Only the main thread can install handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, _frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in received:
            action = previous[signal.Signals(signum)]
            if callable(action):
                action(signum, None)
            elif action == signal.SIG_DFL:
                signal.raise_signal(signum)


def reserve_new_serials(
    ledger: SerialLedger,
    ca_sn: str,
    devices: Sequence[tuple[str, str]],
    *,
    serial_source: Callable[[], int] | None = None,
) -> list[int]:
    """The one way device SNs are chosen: each drawn at random (:data:`SERIAL_BITS`) and all
    reserved in the CA's ledger with one write and one fsync before any certificate carries them.
    ``devices`` are (ProductKey, DeviceName) pairs; the SNs come back in their order. A draw
    already in the ledger (or drawn for an earlier device of the call) is drawn again, at most
    :data:`MAX_SERIAL_DRAWS` times (then :class:`DuplicateSerialError`: the source is not random).

    Why several at once: the fsync dominates one issuance, so the signer reserves a round's SNs
    together (``bench/bench_signer.py``); batch issuance and on-board provisioning reserve one
    (:func:`reserve_new_serial`)."""
    draw = serial_source or (lambda: random_serial(SERIAL_BITS))
    chosen: list[int] = []
    for _device in devices:
        for _attempt in range(MAX_SERIAL_DRAWS):
            serial = draw()
            if serial not in chosen and (ca_sn, serial) not in ledger:
                break
            log.warning("SN %x is already in the ledger; drawing another", serial)
        else:
            raise DuplicateSerialError(
                f"{MAX_SERIAL_DRAWS} SNs drawn in a row were already in the ledger "
                f"{ledger.path}; the SN source is not random",
                sn=format(serial, "x"),
                ca_sn=ca_sn,
            )
        chosen.append(serial)
    ledger.reserve_many(
        (ca_sn, serial, product_key, device_name)
        for (product_key, device_name), serial in zip(devices, chosen, strict=True)
    )
    return chosen


def reserve_new_serial(
    ledger: SerialLedger,
    ca_sn: str,
    product_key: str,
    device_name: str,
    *,
    serial_source: Callable[[], int] | None = None,
) -> int:
    """One device's SN by :func:`reserve_new_serials` (the rule lives there)."""
    return reserve_new_serials(
        ledger, ca_sn, [(product_key, device_name)], serial_source=serial_source
    )[0]


def _write_pair(
    ca: CertifiedKey,
    ledger: SerialLedger,
    names: DeviceFileName,
    out_dir: Path,
    key_pem: bytes,
    public_der: bytes,
    days: int,
    serial_source: Callable[[], int] | None,
) -> IssuedDevice:
    public = serialization.load_der_public_key(public_der)
    if not isinstance(public, rsa.RSAPublicKey):  # pragma: no cover - our workers make RSA keys
        raise InvalidInputError("key generation returned a non-RSA key")
    serial = reserve_new_serial(
        ledger, ca.sn, names.product_key, names.device_name, serial_source=serial_source
    )
    cert = build_device_certificate(
        ca, public, names.device_name, product_key=names.product_key, serial=serial, days=days
    )
    cert_path, key_path = out_dir / names.cert_name, out_dir / names.key_name
    with _ctrl_c_deferred():  # a pair in hand is finished before Ctrl-C takes effect
        try:
            atomic_write(key_path, key_pem, mode=PRIVATE_FILE_MODE)
            atomic_write(cert_path, to_pem(cert), mode=PUBLIC_FILE_MODE)
        except OSError as exc:
            raise IssuanceError(
                f"cannot write the pair {names.stem} in {out_dir}: {exc.strerror or exc}; the "
                "pairs written so far are complete, re-run the same command to resume"
            ) from exc
    return IssuedDevice(
        names.product_key, names.device_name, certificate_sn(cert), cert_path, key_path
    )


def issue_devices(
    ca: CertifiedKey,
    product_key: str,
    device_names: Sequence[str],
    out_dir: str | Path,
    *,
    days: int = DEFAULT_CERT_DAYS,
    key_size: int = DEFAULT_KEY_SIZE,
    jobs: int | None = None,
    ledger_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    write_csv: bool = True,
    _key_source: KeySource | None = None,
    _serial_source: Callable[[], int] | None = None,
) -> IssueReport:
    """Issue a key and certificate for every device in ``device_names`` not yet in ``out_dir``.

    Re-running with the same arguments resumes an interrupted run. ``progress(done, total)`` is
    called after each pair. Keys are generated in ``jobs`` worker processes (default: all
    cores), started with ``fork``, or with ``forkserver`` when the caller runs other threads
    (forking a threaded process is unsafe); like any multiprocessing code, a script calling this
    should then keep its top level under ``if __name__ == "__main__":``.

    ``_key_source`` and ``_serial_source`` are test hooks only: the real path generates one new
    key per device.
    """
    started = time.perf_counter()
    names = list(device_names)
    validate_inputs(product_key, names)
    if key_size not in ALLOWED_KEY_SIZES:
        raise InvalidInputError(
            f"key size {key_size} is not one of {', '.join(map(str, ALLOWED_KEY_SIZES))}"
        )
    check_days(days, InvalidInputError)
    jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    if jobs < 1:
        raise InvalidInputError(f"--jobs must be at least 1, got {jobs}")
    check_issuing_ca(ca.certificate, ca.key, source="CA certificate", key_source="CA key")

    out = prepare_output_dir(out_dir)
    ledger_file = Path(ledger_path) if ledger_path is not None else out / DEFAULT_LEDGER_NAME
    report = IssueReport(product_key, ca.sn, out, ledger_file)

    with SerialLedger(ledger_file) as ledger:
        scan = _scan(out, product_key, ca)
        if scan.foreign:
            raise InvalidInputError(
                f"{out} already holds certificates of another product or CA "
                f"(e.g. {scan.foreign[0]}); the association CSVs cover one product and CA per "
                "directory, so use a separate --out directory for each"
            )
        for leftover in scan.incomplete:
            log.info("removing incomplete leftover %s", leftover)
            leftover.unlink(missing_ok=True)
            report.removed.append(leftover)
        wanted = set(names)
        report.skipped = [name for name in names if name in scan.complete]
        todo = [
            DeviceFileName(product_key, name, ca.sn) for name in names if name not in scan.complete
        ]
        queue = deque(todo)
        total = len(todo)
        if progress:
            progress(0, total)
        stream = key_stream(total, key_size, jobs, _key_source)
        try:
            for key_pem, public_der in stream:
                device = _write_pair(
                    ca, ledger, queue.popleft(), out, key_pem, public_der, days, _serial_source
                )
                report.issued.append(device)
                scan.complete[device.device_name] = device
                if progress:
                    progress(len(report.issued), total)
        finally:
            stream.close()  # stops the pool now, also when a write failed or on Ctrl-C

    report.devices = sorted(scan.complete.values(), key=lambda d: d.device_name)
    missing = wanted - scan.complete.keys()
    if missing:  # pragma: no cover - the loop above issues every name or raises
        raise InvalidInputError(f"{len(missing)} devices were not issued")
    if write_csv:
        report.csv_files = write_associations(
            out, [Association(d.product_key, d.device_name, d.sn) for d in report.devices]
        )
    report.seconds = time.perf_counter() - started
    return report


__all__ = [
    "IssueReport",
    "IssuedDevice",
    "check_issuing_ca",
    "generate_key_material",
    "issue_devices",
    "load_issuing_ca",
    "load_issuing_ca_pem",
    "names_from_count",
    "read_names_file",
    "reserve_new_serial",
    "reserve_new_serials",
    "validate_inputs",
]
