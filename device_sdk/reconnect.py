"""Between two connection attempts: how long to wait, what to report, whether to stop.

Sans-IO like :mod:`device_sdk.attempt` and :mod:`device_sdk.backoff`: :meth:`Reconnector.after`
takes an ended :class:`~device_sdk.attempt.Attempt` and returns a :class:`Step`; the client
sleeps and reports accordingly. The rules, in order:

1. **Stale username**: the server refused (CONNACK 4/5) while the stored identity was sent as
   username -- the platform may have re-associated the certificate. Retry at once with an empty
   username and let the platform say who the device is; no error is reported for it.
2. **Session taken over**: ``takeover_after`` sessions in a row were closed by the server shortly
   (within the stable period) after CONNACK accepted them. That is what a server does when another
   connection with the same client id arrives -- two processes or two boards with one
   certificate, each kicking the other off. Reported as
   :class:`~device_sdk.errors.SessionTakenOverError` and retried only once per backoff cap, so
   the pair does not storm the server.
3. **Fail fast**: while ``connect()`` waits, a refusal that retrying cannot fix stops the loop
   (``connect()`` raises it).
4. Otherwise wait the backoff's full-jitter delay (the cap for permanent refusals). An identity
   that did not come is no refusal -- the server accepted the session; the message was late or
   lost, or the broker never sends one -- so a background client retries it on the ordinary
   backoff, not once per cap (``connect()`` still fails fast on it, with the hint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from device_sdk.attempt import Attempt
from device_sdk.backoff import Backoff
from device_sdk.errors import DeviceSDKError, IdentityTimeoutError
from device_sdk.identity import Identity
from device_sdk.refusals import Refusals, is_permanent

log = logging.getLogger(__name__)

#: Sessions in a row closed by the server soon after acceptance before a take-over is reported.
TAKEOVER_AFTER = 3


@dataclass(frozen=True, slots=True)
class Step:
    """What to do after an attempt ended."""

    error: DeviceSDKError
    delay: float | None
    """Seconds to wait before the next attempt; None: stop (``connect()`` raises ``error``)."""
    report: bool = True
    """Tell the application (OFFLINE with ``error``); False for the silent stale-username retry."""


class Reconnector:
    """The state kept across attempts: backoff, the username fallback, the take-over streak."""

    def __init__(
        self, backoff: Backoff, refusals: Refusals, *, takeover_after: int = TAKEOVER_AFTER
    ) -> None:
        if takeover_after < 1:
            raise ValueError(f"takeover_after must be >= 1, got {takeover_after}")
        self.backoff = backoff
        self.refusals = refusals
        self.takeover_after = takeover_after
        self.skip_username = False
        """The stored identity was refused as username: connect with an empty one until the
        platform tells the identity again."""
        self.short_sessions = 0
        """Sessions in a row the server closed within the stable period after accepting them."""

    def username(self, identity: Identity | None) -> Identity | None:
        """The identity to send as username for the next attempt (None: empty username)."""
        return None if self.skip_username else identity

    def online(self) -> None:
        self.backoff.connected()

    def identity_received(self) -> None:
        self.skip_username = False

    def after(self, attempt: Attempt, *, fail_fast: bool) -> Step:
        """The step after ``attempt`` ended (the attempt must be ENDED)."""
        error = attempt.error
        if error is None:
            raise ValueError("after() needs an ended attempt")
        self.backoff.disconnected()
        if attempt.refused_username and not self.skip_username:
            log.warning(
                "%s refused the stored identity as username (CONNACK %s); retrying without it",
                self.refusals.where,
                attempt.refused_code,
            )
            self.skip_username = True
            return Step(error, 0.0, report=False)
        permanent = is_permanent(error)
        accepted_for = attempt.accepted_for
        if (
            attempt.closed_by_server
            and accepted_for is not None
            and accepted_for < self.backoff.policy.stable_period
        ):
            self.short_sessions += 1
            if self.short_sessions >= self.takeover_after:
                error = self.refusals.taken_over(self.short_sessions, error)
                permanent = True
        else:
            self.short_sessions = 0
        if permanent and fail_fast:
            return Step(error, None)
        at_cap = permanent and not isinstance(error, IdentityTimeoutError)
        return Step(error, self.backoff.next_delay(permanent=at_cap))
