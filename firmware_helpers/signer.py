"""The customer's renewal signer: ``iotx509 ca signer`` (docs/renewal.md, "Signer").

It runs where the CA key lives, and talks to the platform through its HTTP API only (the CA
key never leaves this process). Each round it lists the renewal requests waiting for its CA and
answers every one:

- the CSR is checked by :func:`device_sdk.csr.check_csr` (the one home of those rules:
  possession, RSA >= 2048 bits, exponent 65537, subject empty or ``CN=<DeviceName>``, nothing
  else); a failing CSR is refused with the reason, which the device is told;
- the certificate is issued by the platform's rules (:mod:`firmware_helpers.issuing`): the SNs of
  a round are drawn and reserved in the CA's ledger by ``issuing.reserve_new_serials`` (the one
  SN rule) with one fsync *before* any certificate exists, then
  each is signed with the same subject and extensions as ``certs issue`` and posted;
- what the server refuses (422) is refused towards the device, so no request is left hanging.

Why a round reserves all its SNs first: the fsync dominates a single issuance (the RSA signature
is ~0.3 ms), so one fsync per round instead of one per certificate is what lets the signer come
near the signing ceiling (``bench/bench_signer.py``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from device_sdk.certs import certificate_sn, fingerprint_sha256, to_pem
from device_sdk.csr import check_csr
from device_sdk.errors import CsrRejectedError, InvalidNameError
from device_sdk.fileio import PUBLIC_FILE_MODE, atomic_write
from device_sdk.naming import DeviceFileName, validate_device_name, validate_product_key
from firmware_helpers.defaults import check_days
from firmware_helpers.errors import FirmwareHelpersError
from firmware_helpers.issuing import reserve_new_serials
from firmware_helpers.ledger import DEFAULT_LEDGER_NAME, SerialLedger
from firmware_helpers.pki import CertifiedKey, build_device_certificate
from firmware_helpers.platform_client import PlatformAPIError, PlatformClient

log = logging.getLogger(__name__)

#: Validity of a renewed certificate unless ``--days`` says otherwise: renewal exists so that
#: certificates need not live ten years.
DEFAULT_RENEWAL_DAYS = 365
#: Requests fetched per round (the API's page bound is 100).
DEFAULT_BATCH = 50
#: Certificates posted at once (each POST waits on the network and the server's checks).
DEFAULT_PARALLEL = 4
#: Seconds between two polls when nothing waits, and the longest wait after a failure.
DEFAULT_INTERVAL = 5.0
MAX_BACKOFF = 60.0


class SignerError(FirmwareHelpersError):
    """The signer cannot work: its CA is not the one registered, or the platform is unreachable."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the signer did with one request."""

    request_id: str
    product_key: str
    device_name: str
    status: str
    """``issued``, ``refused`` (CSR or server check failed) or ``skipped`` (answered elsewhere)."""
    cert_sn: str = ""
    reason: str = ""


@dataclass
class RoundReport:
    answers: list[Answer] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for a in self.answers if a.status == status)


@dataclass
class _Todo:
    request: dict[str, object]
    product_key: str
    device_name: str
    public: rsa.RSAPublicKey
    serial: int = 0


class Signer:
    """Answers the renewal requests of one CA (see module doc)."""

    def __init__(
        self,
        client: PlatformClient,
        ca: CertifiedKey,
        *,
        ledger_path: str | Path,
        days: int = DEFAULT_RENEWAL_DAYS,
        out_dir: str | Path | None = None,
        batch: int = DEFAULT_BATCH,
        parallel: int = DEFAULT_PARALLEL,
        serial_source: Callable[[], int] | None = None,
    ) -> None:
        if not 1 <= parallel <= 32:
            raise SignerError(f"--parallel must be 1..32, got {parallel}")
        check_days(days, SignerError)
        if not 1 <= batch <= 100:
            raise SignerError(f"--batch must be 1..100, got {batch}")
        self.client = client
        self.ca = ca
        self.ledger_path = Path(ledger_path)
        self.days = days
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.batch = batch
        self.parallel = parallel
        self._serial_source = serial_source

    def check_registered(self) -> None:
        """The platform knows this CA in the token's account, as this very certificate."""
        try:
            registered = self.client.ca_certificate(self.ca.sn)
        except PlatformAPIError as exc:
            if exc.status == 404:
                raise SignerError(
                    f"CA {self.ca.sn} ({self.ca.certificate.subject.rfc4514_string()}) is not "
                    "registered in the account of this token; register it first "
                    "('iotx509 platform register-ca') or give the token of its account"
                ) from exc
            raise
        mine = fingerprint_sha256(self.ca.certificate)
        theirs = str(registered.get("fingerprintSha256", "")).replace(":", "").lower()
        if theirs != mine:
            raise SignerError(
                f"the platform's CA with SN {self.ca.sn} is another certificate (SHA-256 "
                f"{theirs or '?'}) than the one given ({mine}); give the CA registered there"
            )

    # --- one round -----------------------------------------------------------------------------

    def run_once(self) -> RoundReport:
        """Answer every request waiting now (page by page); returns what was done."""
        report = RoundReport()
        seen: set[str] = set()
        while True:
            page = self.client.renewal_requests(self.ca.sn, self.batch)
            fresh = [r for r in page if str(r.get("requestId")) not in seen]
            if not fresh:
                return report
            seen.update(str(r.get("requestId")) for r in fresh)
            report.answers.extend(self._answer_page(fresh))
            if len(page) < self.batch:
                return report

    def _answer_page(self, page: list[dict[str, object]]) -> list[Answer]:
        answers: list[Answer] = []
        todo: list[_Todo] = []
        for request in page:
            checked = self._check(request)
            if isinstance(checked, Answer):
                answers.append(checked)
            else:
                todo.append(checked)
        if todo:
            self._reserve(todo)
        if self.parallel == 1 or len(todo) < 2:
            answers.extend(self._issue(item) for item in todo)
        else:  # the POSTs wait on the network and the server: overlap them
            with ThreadPoolExecutor(self.parallel, thread_name_prefix="signer-post") as pool:
                answers.extend(pool.map(self._issue, todo))
        return answers

    def _check(self, request: dict[str, object]) -> _Todo | Answer:
        request_id = str(request.get("requestId", ""))
        pk, dn = str(request.get("productKey", "")), str(request.get("deviceName", ""))
        try:
            validate_product_key(pk)
            validate_device_name(dn)
            public = check_csr(str(request.get("csr", "")), device_name=dn)
        except (CsrRejectedError, InvalidNameError) as exc:
            return self._refuse(request_id, pk, dn, str(exc))
        return _Todo(request, pk, dn, public)

    def _reserve(self, todo: list[_Todo]) -> None:
        """One SN per request, all recorded in the ledger with one fsync before any is used."""
        with SerialLedger(self.ledger_path) as ledger:
            serials = reserve_new_serials(
                ledger,
                self.ca.sn,
                [(item.product_key, item.device_name) for item in todo],
                serial_source=self._serial_source,
            )
        for item, serial in zip(todo, serials, strict=True):
            item.serial = serial

    def _issue(self, item: _Todo) -> Answer:
        request_id = str(item.request.get("requestId", ""))
        cert = build_device_certificate(
            self.ca,
            item.public,
            item.device_name,
            product_key=item.product_key,
            serial=item.serial,
            days=self.days,
        )
        pem = to_pem(cert).decode("ascii")
        sn = certificate_sn(cert)
        if self.out_dir is not None:
            names = DeviceFileName(item.product_key, item.device_name, self.ca.sn)
            atomic_write(self.out_dir / names.cert_name, pem.encode(), mode=PUBLIC_FILE_MODE)
        try:
            self.client.post_renewal_certificate(self.ca.sn, request_id, pem)
        except PlatformAPIError as exc:
            if exc.status == 409:
                log.info("request %s was answered meanwhile: %s", request_id, exc)
                return Answer(
                    request_id, item.product_key, item.device_name, "skipped", sn, str(exc)
                )
            if exc.status == 422:
                return self._refuse(
                    request_id,
                    item.product_key,
                    item.device_name,
                    f"the platform refused the issued certificate: {exc}",
                )
            raise
        log.info(
            "issued SN %s for %s/%s (request %s)",
            sn,
            item.product_key,
            item.device_name,
            request_id,
        )
        return Answer(request_id, item.product_key, item.device_name, "issued", sn)

    def _refuse(self, request_id: str, pk: str, dn: str, reason: str) -> Answer:
        log.warning("refusing request %s of %s/%s: %s", request_id, pk, dn, reason)
        try:
            self.client.refuse_renewal(self.ca.sn, request_id, reason)
        except PlatformAPIError as exc:
            if exc.status != 409:
                raise
            return Answer(request_id, pk, dn, "skipped", reason=str(exc))
        return Answer(request_id, pk, dn, "refused", reason=reason)

    # --- the service ----------------------------------------------------------------------------

    def serve(
        self,
        stop: threading.Event,
        *,
        interval: float = DEFAULT_INTERVAL,
        on_round: Callable[[RoundReport], None] | None = None,
    ) -> None:
        """Poll until ``stop`` is set; an unreachable platform is retried with backoff."""
        if not interval > 0:
            raise SignerError(f"--interval must be more than 0 seconds, got {interval:g}")
        delay = interval
        while not stop.is_set():
            try:
                report = self.run_once()
            except PlatformAPIError as exc:
                if exc.status not in (0, 500, 502, 503, 504):
                    raise
                log.warning("the platform is unavailable (%s); retrying in %.0f s", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            delay = interval
            if on_round is not None:
                on_round(report)
            if not report.answers:
                stop.wait(interval)


def default_ledger(ca_key_path: str | Path) -> Path:
    """The SN ledger beside the CA key: where the CA's SNs are issued from."""
    return Path(ca_key_path).parent / DEFAULT_LEDGER_NAME


__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_PARALLEL",
    "DEFAULT_RENEWAL_DAYS",
    "Answer",
    "RoundReport",
    "Signer",
    "SignerError",
    "default_ledger",
]
