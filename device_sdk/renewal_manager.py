"""Certificate renewal for a :class:`~device_sdk.client.DeviceClient`: the I/O shell around the
sans-IO :class:`~device_sdk.renewal.RenewalMachine` (docs/renewal.md, issue 14).

    renewal = Renewal.for_files("PK_DN_CASN.cer", "PK_DN_CASN.key", on_renewal=print)
    client = DeviceClient(host, 8883, renewal.credentials, server_ca="server-ca.pem")
    renewal.attach(client)
    client.connect()
    ...                       # renews by itself when < 20% of the validity is left
    client.renew_now()        # or now

``Renewal.for_store(DIR)`` does the same for a credential store (serial provisioning).

Creating a :class:`Renewal` first finishes whatever a kill left on disk
(:meth:`RenewalFiles.recover`), then chooses the pair to connect with: the new one while a
renewal is in ``received`` (the current one stays on disk until the platform accepted the new),
else the current one. One worker thread per renewal runs the machine: it makes the key (so that
neither paho's network thread nor the application waits ~50 ms of RSA key generation), writes
the files and sleeps until the machine's next deadline; the client's hooks only post events.

Reports (``on_renewal(report)``, and the log): started, queued, issued, renewed, refused (with
the reason; the current pair is kept), failed (with the reason and when it tries again).
``on_step(name)`` names every step once it is done (``key-generated`` (in memory only),
``key-stored``, ``request-sent``, ``certificate-stored``, ``online-new`` (before promotion),
``promoted``, ``discarded``), for logs and for the tests that kill a device at each step.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from device_sdk.client import ConnectionState, DeviceClient
from device_sdk.credentials import Credentials
from device_sdk.errors import DeviceSDKError, NotConnectedError, RenewalError
from device_sdk.identity import Identity
from device_sdk.refusals import is_permanent
from device_sdk.renewal import (
    Action,
    CertificateStored,
    CertificateUnusable,
    Discard,
    Event,
    GenerateRequest,
    NewPairRefused,
    Offline,
    Online,
    Promote,
    PublishRequest,
    RenewalMachine,
    RenewalPolicy,
    RenewalState,
    RenewNow,
    ReplyReceived,
    Report,
    ReportKind,
    RequestFailed,
    RequestReady,
    StoreCertificate,
    SwitchToNewPair,
    Tick,
)
from device_sdk.renewal_expiry import Validity
from device_sdk.renewal_files import RenewalFiles
from device_sdk.renewal_protocol import (
    RenewalReply,
    RenewalRequest,
    new_request_id,
    parse_renew_reply_topic,
    renew_reply_topic,
    renew_topic,
)

log = logging.getLogger(__name__)

Password = bytes | str | None
RenewalCallback = Callable[[Report], None]
StepCallback = Callable[[str], None]

#: The worker looks at the machine at least this often (seconds), whatever its deadline says:
#: the wall clock may be set meanwhile (boards without a real-time clock).
_MAX_SLEEP = 60.0


class Renewal:
    """Renews one device's certificate/key pair in place (files or credential store)."""

    def __init__(
        self,
        files: RenewalFiles,
        *,
        password: Password = None,
        policy: RenewalPolicy | None = None,
        on_renewal: RenewalCallback | None = None,
        on_step: StepCallback | None = None,
        identity: Identity | None = None,
        subscribe_reply: bool = False,
        check_key: bool = True,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``identity``: the device's identity when the server never tells it (a generic
        broker, ``expect_identity=False``); default: the one the platform tells the client.
        ``subscribe_reply``: subscribe to the reply topic (generic brokers; the platform sends
        the reply to the session without one)."""
        self.files = files
        self.password = password
        self.policy = policy or RenewalPolicy()
        self.on_renewal = on_renewal
        self.on_step = on_step
        self.identity_hint = identity
        self.subscribe_reply = subscribe_reply
        self._check_key = check_key
        self._clock = clock
        self._lock = threading.Condition()
        self._events: list[Event] = []
        self._reports: list[Report] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self._client: DeviceClient | None = None

        disk = files.recover()
        self.current = self._load(files.cert, files.key)
        self.new: Credentials | None = None
        state = disk.state
        if state is RenewalState.RECEIVED:
            try:
                self.new = self._load(files.new_cert, files.new_key)
            except DeviceSDKError as exc:
                log.warning("the stored new pair cannot be used (%s); abandoning it", exc)
                files.discard()
                state = RenewalState.IDLE
        self.connecting_with_new = self.new is not None
        self.machine = RenewalMachine(
            self.policy,
            Validity.of(self.current.certificate),
            state=state,
            request=disk.request,
            rng=rng,
        )

    # --- constructors --------------------------------------------------------------------------

    @classmethod
    def for_files(
        cls, cert: str | os.PathLike[str], key: str | os.PathLike[str], **kwargs: object
    ) -> Renewal:
        """A pair of files (``[PK]_[DN]_[CA_SN].cer/.key``); the renewal lives in
        ``CERT.renewal/``."""
        return cls(RenewalFiles.for_files(cert, key), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def for_store(cls, directory: str | os.PathLike[str], **kwargs: object) -> Renewal:
        """A credential store (serial provisioning); the renewal lives in ``DIR/renewal/``."""
        return cls(RenewalFiles.for_store(directory), **kwargs)  # type: ignore[arg-type]

    def _load(self, cert: Path, key: Path) -> Credentials:
        if self.files.store_root is not None and cert == self.files.cert:
            return Credentials.from_store(self.files.store_root, self.password)
        return Credentials.from_files(cert, key, self.password, check_key=self._check_key)

    # --- what the application uses -------------------------------------------------------------

    @property
    def credentials(self) -> Credentials:
        """The pair to connect with: the new one while it waits for the platform's first
        acceptance, else the current one."""
        return self.new if self.connecting_with_new and self.new is not None else self.current

    @property
    def state(self) -> RenewalState:
        with self._lock:
            return self.machine.state

    @property
    def reports(self) -> list[Report]:
        with self._lock:
            return list(self._reports)

    def attach(self, client: DeviceClient) -> DeviceClient:
        """Hook into ``client`` (built with :attr:`credentials`) and start the worker."""
        if self._client is not None:
            raise RenewalError("this renewal is attached to a client already")
        self._client = client
        client.add_message_hook(self._on_message)
        client.add_state_hook(self._on_state)
        client.add_attempt_hook(self._on_attempt_ended)
        client.attach_renewal(self)
        if self.subscribe_reply:
            identity = self._identity()
            if identity is None:
                raise RenewalError(
                    "subscribe_reply needs the device's identity (identity=...) when the server "
                    "does not tell it"
                )
            client.subscribe(renew_reply_topic(identity.product_key, identity.device_name), _drop)
        self._thread = threading.Thread(target=self._run, name="iotx509-renewal", daemon=True)
        self._thread.start()
        if client.state is ConnectionState.ONLINE:
            self._on_state(ConnectionState.ONLINE, None)
        return client

    def renew_now(self) -> None:
        """Start a renewal now (once online); progress arrives as reports."""
        self._post(RenewNow(self._clock()))

    def wait(
        self, kinds: tuple[ReportKind, ...], timeout: float, *, since: int = 0
    ) -> Report | None:
        """Block until a report of one of ``kinds`` (the ``since``-th report or later) arrives;
        None on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for report in self._reports[since:]:
                    if report.kind in kinds:
                        return report
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return None
                self._lock.wait(remaining)

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # --- client hooks (other threads: post only) -----------------------------------------------

    def _on_state(self, state: ConnectionState, error: DeviceSDKError | None) -> None:
        client = self._client
        if client is None:
            return
        now = self._clock()
        if state is ConnectionState.ONLINE:
            new_pair = self.connecting_with_new and client.credentials is self.new
            self._post(Online(now, Validity.of(client.credentials.certificate), new_pair))
            return
        self._post(Offline(now))

    def _on_attempt_ended(self, error: DeviceSDKError | None) -> None:
        """(Connection thread.) The new pair was refused (TLS, CONNACK, not valid by this
        clock): connect again at once with the current pair, before the client decides to
        wait or give up; the machine then discards the new pair and reports why."""
        client = self._client
        if client is None or not self.connecting_with_new or client.credentials is not self.new:
            return
        if not is_permanent(error):
            return  # (the network, not the pair: keep trying the new pair)
        self.connecting_with_new = False
        client.use_credentials(self.current)
        self._post(NewPairRefused(self._clock(), str(error)))

    def _on_message(self, topic: str, payload: bytes) -> bool:
        named = parse_renew_reply_topic(topic)
        if named is None:
            return False
        identity = self._identity()
        if identity is not None and named != identity:
            return False
        try:
            reply = RenewalReply.from_json(payload)
        except RenewalError as exc:
            log.warning("ignored a malformed renewal reply on %s: %s", topic, exc)
            return True
        self._post(ReplyReceived(self._clock(), reply))
        return True

    def _identity(self) -> Identity | None:
        client = self._client
        known = client.identity if client is not None else None
        return known or self.identity_hint or self.current.hinted_identity

    def _post(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)
            self._lock.notify_all()

    # --- the worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._events and not self._closed:
                        deadline = self.machine.deadline
                        now = self._clock()
                        if deadline is not None and now >= deadline:
                            break
                        wait = _MAX_SLEEP if deadline is None else min(_MAX_SLEEP, deadline - now)
                        self._lock.wait(wait)
                    if self._closed:
                        return
                    events, self._events = self._events, []
                for event in events or [Tick(self._clock())]:
                    self._handle(event)
        except Exception:  # the worker must never die silently
            log.exception("the renewal worker failed; the current pair is kept")
            raise

    def _handle(self, event: Event) -> None:
        if isinstance(event, Online) and event.new_pair:
            self._step("online-new")
        with self._lock:
            actions = self.machine.handle(event)
        for action in actions:
            self._do(action)

    def _do(self, action: Action) -> None:
        if isinstance(action, Report):
            self._report(action)
        elif isinstance(action, GenerateRequest):
            self._post(self._generate())
        elif isinstance(action, PublishRequest):
            self._publish(action.request)
        elif isinstance(action, StoreCertificate):
            self._post(self._store(action.reply))
        elif isinstance(action, SwitchToNewPair):
            self.connecting_with_new = True
            if self._client is not None and self.new is not None:
                self._client.use_credentials(self.new)
        elif isinstance(action, Promote):
            self._promote()
        elif isinstance(action, Discard):
            self._discard(action.fall_back)

    def _generate(self) -> Event:
        identity = self._identity()
        now = self._clock()
        if identity is None:
            return RequestFailed(now, "the device's identity is not known yet")
        try:
            from device_sdk.renewal_keys import generate_key_and_csr

            made = generate_key_and_csr(identity.device_name, password=self.password)
            request = RenewalRequest(new_request_id(), made.csr_pem)
            self._step("key-generated")
            self.files.begin(request, made.key_pem, old_cert_sn=self.current.sn)
        except (DeviceSDKError, OSError, ValueError) as exc:
            return RequestFailed(self._clock(), f"cannot make the new key: {exc}")
        self._step("key-stored")
        return RequestReady(self._clock(), request)

    def _publish(self, request: RenewalRequest) -> None:
        identity = self._identity()
        client = self._client
        if identity is None or client is None:
            return
        topic = renew_topic(identity.product_key, identity.device_name)
        try:
            client.publish(topic, request.to_payload(), qos=1)
        except (NotConnectedError, ValueError) as exc:
            log.info("renewal request %s not sent now (%s); sent when online", request.id, exc)
            return
        log.info("renewal request %s sent on %s", request.id, topic)
        self._step("request-sent")

    def _store(self, reply: RenewalReply) -> Event:
        now = self._clock()
        assert reply.certificate is not None and reply.cert_sn is not None
        try:
            key_pem = self.files.new_key.read_bytes()
            creds = Credentials.from_pem(
                reply.certificate.encode("ascii"),
                key_pem,
                self.password,
                cert_source=f"renewed certificate {reply.cert_sn}",
                key_source=str(self.files.new_key),
            )
            if creds.sn != reply.cert_sn:
                return CertificateUnusable(
                    now, f"the certificate's SN is {creds.sn}, the reply says {reply.cert_sn}"
                )
            self.files.store_certificate(creds.chain.pem(), creds.sn)
            self.new = Credentials.from_files(
                self.files.new_cert, self.files.new_key, self.password, check_key=False
            )
        except (DeviceSDKError, OSError) as exc:
            return CertificateUnusable(now, f"the issued certificate cannot be used: {exc}")
        self._step("certificate-stored")
        return CertificateStored(self._clock())

    def _promote(self) -> None:
        try:
            self.files.promote()
        except RenewalError as exc:
            # The new pair connects (the session is online with it); the next start finishes.
            log.error("%s", exc)
            return
        new = self.new
        if new is not None:
            self.current = self._load(self.files.cert, self.files.key)
        self.new = None
        self.connecting_with_new = False
        if self._client is not None and new is not None:
            # the same pair under its final names, for the next session (no reconnect now)
            self._client.credentials = self.current
        self._step("promoted")

    def _discard(self, fall_back: bool) -> None:
        try:
            self.files.discard()
        except RenewalError as exc:
            log.error("%s", exc)
        was_new = self.connecting_with_new
        self.new = None
        self.connecting_with_new = False
        if fall_back and was_new and self._client is not None:
            self._client.use_credentials(self.current)
        self._step("discarded")

    def _report(self, report: Report) -> None:
        if report.kind in (ReportKind.FAILED, ReportKind.REFUSED):
            retry = f"; next try in {report.retry_in:.0f} s" if report.retry_in is not None else ""
            log.warning(
                "certificate renewal %s (request %s): %s%s",
                report.kind.value,
                report.request_id,
                report.reason,
                retry,
            )
        else:
            log.info(
                "certificate renewal %s (request %s)%s",
                report.kind.value,
                report.request_id,
                f", new SN {report.cert_sn}" if report.cert_sn else "",
            )
        with self._lock:
            self._reports.append(report)
            self._lock.notify_all()
        if self.on_renewal is not None:
            try:
                self.on_renewal(report)
            except Exception:
                log.exception("on_renewal callback failed")

    def _step(self, name: str) -> None:
        log.debug("renewal step %s", name)
        if self.on_step is not None:
            self.on_step(name)


def _drop(message: object) -> None:
    """The reply subscription's callback: the message hook consumed it already."""
