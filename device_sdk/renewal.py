"""One device's certificate renewal as a sans-IO state machine (docs/renewal.md, issue 14).

Like :mod:`device_sdk.attempt`, this module holds the logic free of sockets, files, threads and
clocks: the I/O shell (:mod:`device_sdk.renewal_manager`) feeds :class:`RenewalMachine` the
events it observes, each with the (wall-clock) time it happened, and carries out the actions
:meth:`RenewalMachine.handle` returns. Time passing is an event (:class:`Tick`) and
:attr:`RenewalMachine.deadline` says when the next one matters, so a test drives every path with
a fake clock.

    IDLE --(due or RenewNow, online)--> GENERATING --RequestReady--> REQUESTED
    REQUESTED --issued--> (StoreCertificate) --CertificateStored--> RECEIVED
    RECEIVED --Online(new pair)--> (Promote) IDLE with the new validity
    REQUESTED --refused--> IDLE (Discard; the same CSR is never sent again; next try after the cap)
    REQUESTED --failed / no reply--> REQUESTED, the same request re-sent after a backoff delay
    RECEIVED --NewPairRefused--> IDLE (Discard, fall back to the current pair; backoff)

The device keeps its current pair until the platform accepted the new one (identity received
on a session made with it): no path here removes the current pair, only :class:`Promote` does,
and only from RECEIVED on ``Online(new_pair=True)``.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from device_sdk.backoff import BackoffPolicy
from device_sdk.renewal_expiry import DEFAULT_RENEW_THRESHOLD, Validity, validate_threshold
from device_sdk.renewal_protocol import RenewalReply, RenewalRequest, RenewalStatus


class RenewalState(enum.Enum):
    IDLE = "idle"
    """Nothing under way (the on-disk state ``idle``)."""
    GENERATING = "generating"
    """Making the key and the CSR; nothing on disk yet, so a restart is back in IDLE."""
    REQUESTED = "requested"
    """The request is on disk (key + state) and sent, or to be sent once online."""
    RECEIVED = "received"
    """The new certificate is on disk beside its key; the next session uses the new pair."""


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    """When and how patiently to renew. Seconds throughout.

    ``threshold``: renew when less than this fraction of the validity is left. ``automatic``:
    False renews only on demand (``renew_now``). ``reply_timeout``: after sending, how long to
    wait for any answer (``queued`` comes at once). ``issue_timeout``: after ``queued``, how
    long the customer's signer may take. ``resume_wait``: after (re)connecting with a request
    open, how long to wait for the platform to deliver an answer it holds before sending the
    request again. ``retry``: the backoff between failed tries (full jitter); a refusal waits
    its cap before a new key is made.
    """

    threshold: float = DEFAULT_RENEW_THRESHOLD
    automatic: bool = True
    reply_timeout: float = 30.0
    issue_timeout: float = 600.0
    resume_wait: float = 5.0
    retry: BackoffPolicy = field(
        default_factory=lambda: BackoffPolicy(base=30.0, cap=3600.0, stable_period=0.0)
    )

    def __post_init__(self) -> None:
        validate_threshold(self.threshold)
        for name in ("reply_timeout", "issue_timeout", "resume_wait"):
            if not getattr(self, name) > 0:
                raise ValueError(f"renewal {name} must be > 0 s, got {getattr(self, name)}")


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (a deadline may have expired)."""

    at: float


@dataclass(frozen=True, slots=True)
class Online:
    """A session is online (identity received) with the current pair, or with the new one."""

    at: float
    validity: Validity
    new_pair: bool = False


@dataclass(frozen=True, slots=True)
class Offline:
    at: float


@dataclass(frozen=True, slots=True)
class RenewNow:
    """The application (or ``iotx509 device renew``) asks for a renewal now."""

    at: float


@dataclass(frozen=True, slots=True)
class RequestReady:
    """The key and CSR are made and on disk (state ``requested``)."""

    at: float
    request: RenewalRequest


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """The key, the CSR or the files could not be made."""

    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    at: float
    reply: RenewalReply


@dataclass(frozen=True, slots=True)
class CertificateStored:
    """The issued certificate is on disk beside its key (state ``received``)."""

    at: float


@dataclass(frozen=True, slots=True)
class CertificateUnusable:
    """The issued certificate does not fit the key, is not RSA, or is not valid."""

    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class NewPairRefused:
    """A session with the new pair was refused (TLS or CONNACK): it does not connect."""

    at: float
    reason: str


Event = (
    Tick
    | Online
    | Offline
    | RenewNow
    | RequestReady
    | RequestFailed
    | ReplyReceived
    | CertificateStored
    | CertificateUnusable
    | NewPairRefused
)


# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """Make a new RSA-2048 key and a CSR, store them (key, then state), answer RequestReady."""


@dataclass(frozen=True, slots=True)
class PublishRequest:
    request: RenewalRequest


@dataclass(frozen=True, slots=True)
class StoreCertificate:
    """Check the certificate against the new key and store it; answer CertificateStored or
    CertificateUnusable."""

    reply: RenewalReply


@dataclass(frozen=True, slots=True)
class SwitchToNewPair:
    """End the session and connect again with the new pair."""


@dataclass(frozen=True, slots=True)
class Promote:
    """The platform accepted the new pair: it becomes the current one; the old pair goes."""


@dataclass(frozen=True, slots=True)
class Discard:
    """Remove the renewal files; the current pair stays. ``fall_back``: the session used the
    new pair, so connect again with the current one."""

    fall_back: bool = False


class ReportKind(enum.Enum):
    STARTED = "started"
    QUEUED = "queued"
    ISSUED = "issued"
    RENEWED = "renewed"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Report:
    """What happened, for the log and the application's ``on_renewal`` callback."""

    kind: ReportKind
    at: float
    reason: str = ""
    request_id: str | None = None
    retry_in: float | None = None
    """Seconds until the next try (failures), None when none is scheduled."""
    cert_sn: str | None = None


Action = (
    GenerateRequest
    | PublishRequest
    | StoreCertificate
    | SwitchToNewPair
    | Promote
    | Discard
    | Report
)


# --- the machine -------------------------------------------------------------------------------


class RenewalMachine:
    """One device's renewal; :meth:`handle` is its only transition function.

    ``state``/``request``: where a restart resumes (read from the credential directory by the
    shell): REQUESTED with its request, RECEIVED, or IDLE.
    """

    def __init__(
        self,
        policy: RenewalPolicy,
        validity: Validity,
        *,
        state: RenewalState = RenewalState.IDLE,
        request: RenewalRequest | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if state is RenewalState.GENERATING:
            raise ValueError("a renewal cannot resume while generating (nothing is on disk yet)")
        if state is RenewalState.REQUESTED and request is None:
            raise ValueError("a renewal resumed in REQUESTED needs its request")
        self.policy = policy
        self.validity = validity
        self.state: RenewalState = state
        self.request = request if state is RenewalState.REQUESTED else None
        self.online = False
        self.demanded = False
        self.queued = False
        """The platform said ``queued`` for the open request in this session."""
        self.storing = False
        self.send_at: float | None = None
        """When to (re)send the open request, if online by then."""
        self.reply_deadline: float | None = None
        """When the open request counts as unanswered."""
        self.retry_at = 0.0
        """IDLE: the policy starts no new renewal before this moment (after a failure)."""
        self.failures = 0
        self.last_reason = ""
        self._rng = rng or random.Random()

    # --- views ---------------------------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When a :class:`Tick` may change something (None: only other events can)."""
        if not self.online:
            return None
        if self.state is RenewalState.IDLE:
            if self.policy.automatic:
                return max(self.retry_at, self.validity.renew_from(self.policy.threshold))
            return None
        if self.state is RenewalState.REQUESTED and not self.storing:
            times = [t for t in (self.send_at, self.reply_deadline) if t is not None]
            return min(times) if times else None
        return None

    # --- the transition function ---------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Apply ``event``; return what the shell must do, in order."""
        if isinstance(event, Online):
            actions = self._online(event)
        elif isinstance(event, Offline):
            self.online = False
            self.queued = False
            actions = []
        elif isinstance(event, RenewNow):
            self.demanded = self.state is RenewalState.IDLE
            actions = []
        elif isinstance(event, ReplyReceived):
            actions = self._reply(event)
        elif isinstance(event, Tick):
            actions = []
        else:
            actions = self._progress(event)
        actions.extend(self._timers(event.at))
        return actions

    def _online(self, event: Online) -> list[Action]:
        self.online = True
        if self.state is RenewalState.RECEIVED and event.new_pair:
            return self._promoted(event)
        if not event.new_pair:
            self.validity = event.validity
        if self.state is RenewalState.REQUESTED:
            # The platform delivers an answer it holds right after the identity message: give
            # it the chance before sending the request again (a running backoff delay is kept).
            self.send_at = max(self.send_at or 0.0, event.at + self.policy.resume_wait)
            self.reply_deadline = None
            self.queued = False
        return []

    def _progress(
        self,
        event: RequestReady
        | RequestFailed
        | CertificateStored
        | CertificateUnusable
        | NewPairRefused,
    ) -> list[Action]:
        """The shell's answers to the actions it was given."""
        state = self.state
        if isinstance(event, RequestReady) and state is RenewalState.GENERATING:
            self.state = RenewalState.REQUESTED
            self.request = event.request
            self.queued = False
            self.reply_deadline = None
            self.send_at = event.at
            return [Report(ReportKind.STARTED, event.at, request_id=event.request.id)]
        if isinstance(event, RequestFailed) and state is RenewalState.GENERATING:
            self.state = RenewalState.IDLE
            return [self._failure(event.at, event.reason)]
        if isinstance(event, CertificateStored) and state is RenewalState.REQUESTED:
            if self.storing:
                self.storing = False
                self.state = RenewalState.RECEIVED
                self.send_at = self.reply_deadline = None
                return [SwitchToNewPair()]
        elif isinstance(event, CertificateUnusable) and state is RenewalState.REQUESTED:
            if self.storing:
                self.storing = False
                return [Discard(), self._to_idle_after_failure(event.at, event.reason)]
        elif isinstance(event, NewPairRefused) and state is RenewalState.RECEIVED:
            reason = f"the platform refused the new certificate: {event.reason}"
            return [Discard(fall_back=True), self._to_idle_after_failure(event.at, reason)]
        return []

    # --- steps ---------------------------------------------------------------------------------

    def _timers(self, now: float) -> list[Action]:
        """What the passing of time (or a new fact) starts: a renewal, a send, a give-up."""
        if not self.online:
            return []
        if self.state is RenewalState.IDLE:
            due = self.policy.automatic and self.validity.due(now, self.policy.threshold)
            if self.demanded or (due and now >= self.retry_at):
                self.demanded = False
                self.state = RenewalState.GENERATING
                return [GenerateRequest()]
            return []
        if self.state is not RenewalState.REQUESTED or self.storing or self.request is None:
            return []
        if self.reply_deadline is not None and now >= self.reply_deadline:
            if self.queued:
                reason = (
                    "the request is queued but the customer's signer did not issue within "
                    f"{self.policy.issue_timeout:g} s (signer down or slow?)"
                )
            else:
                reason = f"no answer from the platform within {self.policy.reply_timeout:g} s"
            self.reply_deadline = None
            self.queued = False
            return [self._failure(now, reason)]
        if self.send_at is not None and now >= self.send_at:
            self.send_at = None
            self.reply_deadline = now + self.policy.reply_timeout
            return [PublishRequest(self.request)]
        return []

    def _reply(self, event: ReplyReceived) -> list[Action]:
        reply, now = event.reply, event.at
        if (
            self.state is not RenewalState.REQUESTED
            or self.request is None
            or reply.id != self.request.id
            or self.storing
        ):
            return []  # an answer to another (older) request, or a repeat: nothing to do
        if reply.status is RenewalStatus.QUEUED:
            self.queued = True
            self.send_at = None
            self.reply_deadline = now + self.policy.issue_timeout
            return [Report(ReportKind.QUEUED, now, request_id=reply.id)]
        if reply.status is RenewalStatus.ISSUED:
            self.storing = True
            self.send_at = self.reply_deadline = None
            return [
                StoreCertificate(reply),
                Report(ReportKind.ISSUED, now, request_id=reply.id, cert_sn=reply.cert_sn),
            ]
        if reply.status is RenewalStatus.REFUSED:
            self.state = RenewalState.IDLE
            self.request = None
            self.send_at = self.reply_deadline = None
            self.queued = False
            self.failures = 0
            self.retry_at = now + self.policy.retry.cap
            self.last_reason = reply.reason
            return [
                Discard(),
                Report(
                    ReportKind.REFUSED,
                    now,
                    reason=reply.reason or "refused (no reason given)",
                    request_id=reply.id,
                    retry_in=self.policy.retry.cap if self.policy.automatic else None,
                ),
            ]
        # FAILED: transient; the same request goes again after a backoff delay
        return [self._failure(now, reply.reason or "the platform could not handle the request")]

    def _failure(self, now: float, reason: str) -> Report:
        """A try failed for a transient reason: wait a backoff delay, then try again."""
        delay = self.policy.retry.delay(self.failures, self._rng)
        self.failures += 1
        self.last_reason = reason
        request_id = self.request.id if self.request is not None else None
        if self.state is RenewalState.REQUESTED:
            self.send_at = now + delay
            self.reply_deadline = None
        else:
            self.retry_at = now + delay
        return Report(ReportKind.FAILED, now, reason=reason, request_id=request_id, retry_in=delay)

    def _to_idle_after_failure(self, now: float, reason: str) -> Report:
        request_id = self.request.id if self.request is not None else None
        self.state = RenewalState.IDLE
        self.request = None
        self.send_at = self.reply_deadline = None
        self.queued = False
        report = self._failure(now, reason)
        return Report(
            report.kind, now, reason=reason, request_id=request_id, retry_in=report.retry_in
        )

    def _promoted(self, event: Online) -> list[Action]:
        self.state = RenewalState.IDLE
        self.validity = event.validity
        self.request = None
        self.failures = 0
        self.retry_at = 0.0
        self.send_at = self.reply_deadline = None
        return [Promote(), Report(ReportKind.RENEWED, event.at)]
