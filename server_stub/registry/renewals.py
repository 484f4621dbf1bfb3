"""Certificate renewal on the server side (docs/renewal.md): queue, answer, associate, retire.

Two halves, as everywhere in the server:

- :class:`Renewals` holds the rules over the :class:`~server_stub.store.base.Store`. It is
  synchronous (SQLite, signature checks) and clock-injectable, so tests drive it directly. A
  request is bound to the *session's* identity (an :class:`AuthenticatedDevice`), never to what
  the payload says; the CSR is checked by :mod:`device_sdk.csr` (the one home of those rules)
  before anything is queued; a certificate a signer posts is checked against the CA's key and
  the CSR's key before the new SN is associated, in one transaction, beside the old one.
- :class:`RenewalDesk` is the MQTT endpoint's hook (:class:`server_stub.ports.RenewalHandler`):
  on the event loop it hands requests and connections to :class:`Renewals` in the thread pool
  and sends the replies to the device's session.

Why the old SN is kept: the device stores the new pair and reconnects; until the platform
accepted the new certificate the device must still be able to connect with the old one. The
old SN is retired at the first CONNECT with the new SN, or when the grace period ends.

The CONNECT path (issue 16): a device whose last CONNECT found nothing to record or do is
remembered as *quiet* and costs no lookup; the others are looked up in batches, one
transaction per batch. (Over 500 lines: the rules and their one event-loop hook belong
together; the hook is the last class.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from device_sdk import csr as csr_rules
from device_sdk.certs import (
    certificate_sn,
    check_validity,
    common_name,
    device_certificate_problem,
    is_rsa,
    load_certificates,
    signed_by,
)
from device_sdk.errors import ClockError, CredentialError, CsrRejectedError, RenewalMessageError
from device_sdk.renewal_protocol import (
    REQUEST_ID_RE,
    RenewalReply,
    RenewalRequest,
    clean_reason,
    new_request_id,
    parse_renew_topic,
    renew_reply_topic,
    validate_certificate_pem,
)
from server_stub.config import RenewalSettings
from server_stub.errors import (
    ConflictError,
    InvalidFieldError,
    NotFoundError,
    RenewalCertificateRejectedError,
)
from server_stub.ports import AuthenticatedDevice, DeviceMessaging
from server_stub.registry.service import Registry
from server_stub.store.base import AccountRecord, ExpiringRow, NewRenewal, RenewalRecord, Store

log = logging.getLogger("server_stub.renewal")

#: Most requests one ``GET .../renewals`` returns.
MAX_PENDING_PAGE = 100
#: Largest ``expiringWithinDays`` and most rows of one expiry listing.
MAX_EXPIRY_DAYS = 36500
MAX_EXPIRING_ROWS = 10_000
DAY = 86400.0
#: Most associations :meth:`Renewals.is_quiet` remembers (~150 bytes each; forgotten all at
#: once when full, after which CONNECTs are looked up again).
MAX_QUIET_ASSOCIATIONS = 100_000


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A reply for a device's session (sent only if the device is online)."""

    product_key: str
    device_name: str
    reply: RenewalReply

    @property
    def topic(self) -> str:
        return renew_reply_topic(self.product_key, self.device_name)


@dataclass(frozen=True, slots=True)
class ExpiringDevice:
    row: ExpiringRow
    days_left: float


def _spki(key: object) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined,no-any-return]


def _request_id_of(payload: bytes) -> str | None:
    """The id of a request that failed its checks, when it has a usable one (for the reply)."""
    try:
        value = json.loads(payload).get("id")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) and REQUEST_ID_RE.fullmatch(value) else None


class Renewals:
    """The renewal rules over the registry's store (see module doc). Thread-safe."""

    def __init__(
        self,
        registry: Registry,
        settings: RenewalSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.settings = settings or RenewalSettings()
        self._clock = clock
        # Associations whose last CONNECT found nothing to do but what is recorded (see
        # is_quiet): (account id, CA SN, cert SN) -> notAfter recorded. Valid for one trust
        # generation and one epoch (an issued certificate starts a new epoch).
        self._quiet: dict[tuple[int, str, str], float] = {}
        self._quiet_generation = -1
        self._quiet_epoch = 0
        self._quiet_lock = threading.Lock()

    @property
    def store(self) -> Store:
        return self.registry.store

    # --- device side (MQTT) -------------------------------------------------------------------

    def submit(self, device: AuthenticatedDevice, topic: str, payload: bytes) -> Outgoing | None:
        """A PUBLISH of ``device``'s session on a renewal topic: queue it or say why not.

        Returns the reply for the session, or None when ``topic`` is no renewal request or no
        reply can be addressed (no usable id). Every refusal is logged with the device.
        """
        named = parse_renew_topic(topic)
        if named is None:
            return None
        who = f"{device.product_key}/{device.device_name}"
        if (named.product_key, named.device_name) != (device.product_key, device.device_name):
            # The MQTT endpoint already drops a topic outside the session's space; this is the
            # same rule once more, where the request would be bound.
            return self._refuse(
                device,
                _request_id_of(payload),
                f"the request names device {named.product_key}/{named.device_name} but was "
                f"sent by {who}'s session: a device renews its own certificate only",
            )
        try:
            request = RenewalRequest.from_json(payload)
        except RenewalMessageError as exc:
            return self._refuse(device, _request_id_of(payload), str(exc))
        return self._queue(device, request)

    def _queue(self, device: AuthenticatedDevice, request: RenewalRequest) -> Outgoing | None:
        settings = self.settings
        now = self._clock()
        if len(request.csr.encode("ascii")) > settings.max_csr_bytes:
            return self._refuse(
                device,
                request.id,
                f"the CSR is {len(request.csr)} bytes; at most {settings.max_csr_bytes} accepted",
            )
        ca = self.store.ca(device.account_id, device.ca_sn)
        state = None if ca is None else self.store.association_state(ca.id, device.cert_sn)
        if ca is None or state is None:
            return self._refuse(
                device,
                request.id,
                f"certificate SN {device.cert_sn} of this session is no longer associated",
            )
        last = self.store.last_renewal_at(state.device_id)
        if last is not None and now - last < settings.min_interval:
            return self._fail(
                device,
                request.id,
                f"one renewal request per {settings.min_interval:g} s per device; retry in "
                f"{settings.min_interval - (now - last):.0f} s",
            )
        new = NewRenewal(
            request_id=new_request_id(),
            account_id=device.account_id,
            ca_id=ca.id,
            device_id=state.device_id,
            device_request_id=request.id,
            old_cert_sn=device.cert_sn,
            csr_pem=request.csr,
            requested_at=now,
        )
        try:
            csr_rules.check_csr(
                request.csr, device_name=device.device_name, max_bytes=settings.max_csr_bytes
            )
        except CsrRejectedError as exc:
            # recorded, so that a refused request counts against the device's rate too
            self.store.insert_renewal(new, refused=clean_reason(str(exc)))
            return self._refuse(device, request.id, str(exc))
        with self.store.atomic():
            last = self.store.last_renewal_at(state.device_id)
            if last is not None and now - last < settings.min_interval:
                return self._fail(device, request.id, "another request of this device came first")
            open_count = self.store.open_renewals(device.account_id)
            if open_count >= settings.max_open_per_account:
                return self._fail(
                    device,
                    request.id,
                    f"the account's signer queue is full ({open_count} requests wait; "
                    f"max {settings.max_open_per_account}); retry later",
                )
            record, superseded = self.store.insert_renewal(new)
        log.info(
            "renewal: %s/%s request %s queued for CA %s as %s (old cert SN %s%s)",
            device.product_key,
            device.device_name,
            request.id,
            device.ca_sn,
            record.request_id,
            device.cert_sn,
            "; an unanswered request replaced" if superseded else "",
        )
        return Outgoing(device.product_key, device.device_name, RenewalReply.queued(request.id))

    def _refuse(
        self, device: AuthenticatedDevice, request_id: str | None, reason: str
    ) -> Outgoing | None:
        log.warning(
            "renewal: refused a request of %s/%s (cert SN %s, CA SN %s): %s",
            device.product_key,
            device.device_name,
            device.cert_sn,
            device.ca_sn,
            clean_reason(reason),
        )
        if request_id is None:
            return None
        return Outgoing(
            device.product_key, device.device_name, RenewalReply.refused(request_id, reason)
        )

    def _fail(self, device: AuthenticatedDevice, request_id: str, reason: str) -> Outgoing:
        log.warning(
            "renewal: request %s of %s/%s not queued: %s",
            request_id,
            device.product_key,
            device.device_name,
            reason,
        )
        return Outgoing(
            device.product_key, device.device_name, RenewalReply.failed(request_id, reason)
        )

    def connected(self, device: AuthenticatedDevice, not_after: float) -> list[Outgoing]:
        """A CONNECT was accepted: record the certificate's notAfter, finish a change-over.

        Connecting with the new SN retires the old one at once. Connecting with the old SN
        while a new certificate waits returns that certificate again (``issued``).
        """
        return self.connected_many([(device, not_after)])

    def connected_many(
        self, arrivals: Sequence[tuple[AuthenticatedDevice, float]]
    ) -> list[Outgoing]:
        """:meth:`connected` for many CONNECTs: their notAfter writes share one transaction.

        A CONNECT storm of first connections would otherwise commit once per device. A
        device whose CONNECT cannot be handled is logged and the others still are.
        """
        # captured before any read: what is remembered as quiet below was read after these
        epoch, generation = self._quiet_epoch, self.registry.trust_generation
        replies: list[Outgoing] = []
        writes: list[tuple[int, float]] = []
        quiet: dict[tuple[int, str, str], float] = {}
        for device, not_after in arrivals:
            try:
                replies += self._arrived(device, not_after, writes, quiet)
            except Exception:
                log.exception(
                    "renewal: recording the connection of %s/%s failed",
                    device.product_key,
                    device.device_name,
                )
        if writes:
            with self.store.atomic():
                for association_id, value in writes:
                    self.store.record_not_after(association_id, value)
        self._remember_quiet(quiet, epoch, generation)
        return replies

    def is_quiet(self, device: AuthenticatedDevice, not_after: float) -> bool:
        """True when a CONNECT of ``device`` with ``not_after`` has nothing to record or do.

        That is: its last CONNECT, under the registry's current trust generation and with no
        certificate issued since, found this notAfter recorded and no change-over pending.
        Cheap and lock-free (the endpoint asks on the event loop for every CONNECT).
        """
        return (
            self._quiet_generation == self.registry.trust_generation
            and self._quiet.get((device.account_id, device.ca_sn, device.cert_sn)) == not_after
        )

    def _remember_quiet(
        self, entries: dict[tuple[int, str, str], float], epoch: int, generation: int
    ) -> None:
        if not entries:
            return
        with self._quiet_lock:
            if epoch != self._quiet_epoch or generation != self.registry.trust_generation:
                return  # something changed since the reads: they may be stale
            if self._quiet_generation != generation or (
                len(self._quiet) + len(entries) > MAX_QUIET_ASSOCIATIONS
            ):
                self._quiet.clear()
                self._quiet_generation = generation
            self._quiet.update(entries)

    def _forget_quiet(self) -> None:
        """After a write that gives a device something to do at its next CONNECT."""
        with self._quiet_lock:
            self._quiet_epoch += 1
            self._quiet.clear()

    def _arrived(
        self,
        device: AuthenticatedDevice,
        not_after: float,
        writes: list[tuple[int, float]],
        quiet: dict[tuple[int, str, str], float],
    ) -> list[Outgoing]:
        trusted = self.registry.trust_index().by_account_sn.get((device.account_id, device.ca_sn))
        if trusted is None:
            return []
        state = self.store.connect_state(trusted.ca_id, device.cert_sn)
        if state is None:
            return []
        if state.not_after != not_after:
            writes.append((state.association_id, not_after))
        if state.retire_at is None:
            if not (state.has_issued or state.has_retiring):
                quiet[(device.account_id, device.ca_sn, device.cert_sn)] = not_after
                return []
            retired = self.store.complete_change_over(
                state.device_id, state.association_id, self._clock()
            )
            if retired:
                log.info(
                    "renewal: %s/%s connected with its new certificate SN %s; %d old SN retired",
                    device.product_key,
                    device.device_name,
                    device.cert_sn,
                    retired,
                )
                self.registry._bump()  # sessions of the retired SN no longer hold
            return []
        if not state.has_issued:
            return []
        return [
            Outgoing(
                device.product_key,
                device.device_name,
                RenewalReply.issued(r.device_request_id, r.cert_pem or "", r.cert_sn or ""),
            )
            for r in self.store.undelivered_renewals(state.device_id)
            if r.cert_sn != device.cert_sn and r.cert_pem
        ]

    def sweep(self) -> int:
        """Retire the old SNs whose grace period ended; returns how many."""
        retired = self.store.retire_expired(self._clock())
        if retired:
            log.info(
                "renewal: %d old certificate SN(s) retired at the end of the grace period", retired
            )
            self.registry._bump()
        return retired

    # --- signer side (HTTP) -------------------------------------------------------------------

    def pending(self, account: AccountRecord, ca_sn: str, limit: int = 50) -> list[RenewalRecord]:
        if not 1 <= limit <= MAX_PENDING_PAGE:
            raise InvalidFieldError(f"limit {limit} must be 1..{MAX_PENDING_PAGE}")
        ca = self.registry.ca(account, ca_sn)
        return self.store.pending_renewals(ca.id, limit)

    def _request(self, account: AccountRecord, ca_sn: str, request_id: str) -> RenewalRecord:
        ca = self.registry.ca(account, ca_sn)
        record = self.store.renewal(account.id, request_id)
        if record is None or record.ca_id != ca.id:
            raise NotFoundError(f"no renewal request {request_id!r} for CA {ca.ca_sn}")
        if record.status != "pending":
            raise ConflictError(
                f"renewal request {request_id} was already answered (status {record.status})"
            )
        return record

    def post_certificate(
        self, account: AccountRecord, ca_sn: str, request_id: str, certificate_pem: str
    ) -> tuple[RenewalRecord, Outgoing]:
        """Check the signer's certificate, associate its SN with the device (old SN kept)."""
        record = self._request(account, ca_sn, request_id)
        ca = self.registry.ca(account, ca_sn)
        if self.store.association_state(record.ca_id, record.old_cert_sn) is None:
            # the device was re-associated or its old SN retired since it asked: nothing to
            # renew from any more (the request is closed so that it counts against no bound)
            reason = (
                f"certificate SN {record.old_cert_sn}, from which the device asked to renew, is "
                "no longer associated"
            )
            self.store.refuse_renewal(record.id, reason, self._clock())
            raise ConflictError(f"renewal request {request_id} is refused: {reason}")
        cert = self._checked_certificate(account, record, ca.der, certificate_pem)
        cert_sn = certificate_sn(cert)
        now = self._clock()
        pem = certificate_pem.strip() + "\n"
        self.store.issue_renewal(
            record,
            cert_sn,
            pem,
            cert.not_valid_after_utc.timestamp(),
            now + self.settings.grace,
            now,
        )
        self._forget_quiet()  # after the commit: the device has a certificate to fetch
        log.info(
            "renewal: CA %s issued cert SN %s for %s/%s (request %s); old SN %s retires at the "
            "first CONNECT with the new one or in %g s",
            ca.ca_sn,
            cert_sn,
            record.product_key,
            record.device_name,
            record.request_id,
            record.old_cert_sn,
            self.settings.grace,
        )
        reply = RenewalReply.issued(record.device_request_id, pem, cert_sn)
        return record, Outgoing(record.product_key, record.device_name, reply)

    def _checked_certificate(
        self, account: AccountRecord, record: RenewalRecord, ca_der: bytes, pem: str
    ) -> x509.Certificate:
        def reject(why: str) -> RenewalCertificateRejectedError:
            return RenewalCertificateRejectedError(
                f"the certificate for renewal request {record.request_id} "
                f"({record.product_key}/{record.device_name}) is refused: {why}; nothing was "
                "associated"
            )

        try:
            validate_certificate_pem(pem)
            [cert] = load_certificates(pem.encode("ascii"), source="certificate")
        except (RenewalMessageError, CredentialError) as exc:
            raise reject(str(exc)) from exc
        except ValueError as exc:  # more than one certificate
            raise reject("give exactly one certificate (the leaf, no chain)") from exc
        ca_cert = x509.load_der_x509_certificate(ca_der)
        if not signed_by(cert, ca_cert.public_key()):
            raise reject(f"it is not signed by the key of CA {record.ca_sn}")
        problem = device_certificate_problem(cert)
        if problem is not None:
            raise reject(problem)
        if not is_rsa(cert):
            raise reject("its key is not RSA; only RSA device certificates are supported")
        requested = csr_rules.load_csr(record.csr_pem).public_key()
        if _spki(cert.public_key()) != _spki(requested):
            raise reject("its public key is not the one of the device's CSR")
        name = common_name(cert.subject)
        if name is not None and name != record.device_name:
            raise reject(f"its subject CN {name!r} names another device than {record.device_name}")
        try:
            check_validity(
                cert, now=datetime.fromtimestamp(self._clock(), UTC), what="the certificate"
            )
        except ClockError as exc:
            raise reject(str(exc)) from exc
        sn = certificate_sn(cert)
        taken = self.store.sn_bindings(account.id, [sn]).get(sn)
        if taken is not None:
            raise reject(
                f"SN {sn} is already associated in this account (CA {taken.ca_sn}, device "
                f"{taken.product_key}/{taken.device_name}); device certificate SNs are unique "
                "per account"
            )
        return cert

    def refuse(
        self, account: AccountRecord, ca_sn: str, request_id: str, reason: str
    ) -> tuple[RenewalRecord, Outgoing]:
        """The signer refuses the request; the device is told why and keeps its certificate."""
        record = self._request(account, ca_sn, request_id)
        text = clean_reason(reason)
        if not text:
            raise InvalidFieldError("reason must say why the request is refused")
        if not self.store.refuse_renewal(record.id, text, self._clock()):
            raise ConflictError(f"renewal request {request_id} was already answered")
        log.warning(
            "renewal: the signer of CA %s refused request %s of %s/%s: %s",
            record.ca_sn,
            record.request_id,
            record.product_key,
            record.device_name,
            text,
        )
        reply = RenewalReply.refused(record.device_request_id, "signer: " + text)
        return record, Outgoing(record.product_key, record.device_name, reply)

    # --- operators ----------------------------------------------------------------------------

    def expiring(
        self, account: AccountRecord, days: float, limit: int = 1000
    ) -> list[ExpiringDevice]:
        """Devices whose current certificate (as last seen) expires within ``days``."""
        if not 0 <= days <= MAX_EXPIRY_DAYS:
            raise InvalidFieldError(f"expiringWithinDays {days:g} must be 0..{MAX_EXPIRY_DAYS}")
        if not 1 <= limit <= MAX_EXPIRING_ROWS:
            raise InvalidFieldError(f"limit {limit} must be 1..{MAX_EXPIRING_ROWS}")
        now = self._clock()
        rows = self.store.expiring(account.id, now + days * DAY, limit)
        return [ExpiringDevice(r, (r.not_after - now) / DAY) for r in rows]


class RenewalDesk:
    """The MQTT endpoint's renewal hook (:class:`server_stub.ports.RenewalHandler`).

    Called on the event loop; the registry work runs in the default thread pool and the reply
    goes back to the device's session (QoS 1). One request per device is worked on at a time:
    more PUBLISHes meanwhile are dropped with a log line, so a device cannot queue work here.
    """

    def __init__(self, renewals: Renewals, messaging: DeviceMessaging) -> None:
        self.renewals = renewals
        self.messaging = messaging
        self._busy: set[tuple[str, str]] = set()
        # CONNECTs waiting for the job in the thread pool (at most one association each)
        self._arrivals: dict[tuple[int, str, str], tuple[AuthenticatedDevice, float]] = {}
        self._working = False

    def on_publish(self, device: AuthenticatedDevice, topic: str, payload: bytes) -> None:
        if parse_renew_topic(topic) is None:
            return
        key = (device.product_key, device.device_name)
        if key in self._busy:
            log.warning(
                "renewal: %s/%s sent a request while its previous one is being handled; dropped",
                *key,
            )
            return
        self._busy.add(key)
        future = asyncio.get_running_loop().run_in_executor(
            None, self.renewals.submit, device, topic, payload
        )
        future.add_done_callback(lambda f: self._answered(key, f))

    def _answered(self, key: tuple[str, str], future: asyncio.Future[Outgoing | None]) -> None:
        self._busy.discard(key)
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            log.error("renewal: handling a request of %s/%s failed", *key, exc_info=error)
            return
        self.send(future.result())

    def on_connected(self, device: AuthenticatedDevice, not_after: float) -> None:
        """Per accepted CONNECT, on the event loop: nothing for a quiet device; the others
        are handed to the thread pool together, one job at a time (one transaction each)."""
        if self.renewals.is_quiet(device, not_after):
            return
        # keyed by association: a device that reconnects while a job runs is handled once
        self._arrivals[(device.account_id, device.ca_sn, device.cert_sn)] = (device, not_after)
        if not self._working:
            self._start()

    def _start(self) -> None:
        arrivals, self._arrivals = list(self._arrivals.values()), {}
        self._working = True
        future = asyncio.get_running_loop().run_in_executor(
            None, self.renewals.connected_many, arrivals
        )
        future.add_done_callback(self._connected_done)

    def _connected_done(self, future: asyncio.Future[list[Outgoing]]) -> None:
        self._working = False
        if self._arrivals:
            self._start()
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            log.error("renewal: recording connections failed", exc_info=error)
            return
        for outgoing in future.result():
            self.send(outgoing)

    def send(self, outgoing: Outgoing | None) -> bool:
        """Send a reply to the device's live session (event loop); False when offline."""
        if outgoing is None:
            return False
        return self.messaging.deliver(
            outgoing.product_key,
            outgoing.device_name,
            outgoing.topic,
            outgoing.reply.to_payload(),
            1,
        )


__all__ = ["ExpiringDevice", "Outgoing", "RenewalDesk", "Renewals"]
