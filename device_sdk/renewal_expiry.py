"""How much of a certificate's life is left, and what a device does about it (sans-IO).

Two rules live here, once:

- **When to renew**: when less than ``threshold`` (default 20%) of the validity window is
  left (:meth:`Validity.renew_from`). The renewal machine (:mod:`device_sdk.renewal`) uses it.
- **When to warn and when to stop**: :class:`ExpiryWatch` tells the client to warn (log and
  callback) once the certificate is inside that last part of its life and no renewal is
  configured, and to end the session the moment the certificate expires (a device must not
  stay connected on an expired certificate; one was seen staying a day). Whether a certificate
  is valid *now* is still decided by the one validity check,
  :meth:`device_sdk.credentials.Credentials.check_validity`; the watch only says when to ask.

Time is POSIX seconds (wall clock) given by the caller, so tests use a fake clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

DEFAULT_RENEW_THRESHOLD = 0.2
"""Renew (or warn) when less than this fraction of the validity window is left."""


def validate_threshold(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"renewal threshold {value} must be a fraction of the validity between 0 and 1 "
            "(0.2: renew when less than 20% is left)"
        )
    return value


class _HasValidity(Protocol):
    @property
    def not_valid_before_utc(self) -> datetime: ...

    @property
    def not_valid_after_utc(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Validity:
    """A certificate's validity window, as POSIX seconds."""

    not_before: float
    not_after: float

    def __post_init__(self) -> None:
        if not self.not_after > self.not_before:
            raise ValueError("a validity window must end after it begins")

    @classmethod
    def of(cls, certificate: _HasValidity) -> Validity:
        """The window of an ``x509.Certificate`` (or anything with its two UTC properties)."""
        return cls(
            certificate.not_valid_before_utc.timestamp(),
            certificate.not_valid_after_utc.timestamp(),
        )

    @property
    def lifetime(self) -> float:
        return self.not_after - self.not_before

    def fraction_left(self, now: float) -> float:
        """1.0 at the start (or before), 0.0 at the end (or after)."""
        return min(1.0, max(0.0, (self.not_after - now) / self.lifetime))

    def renew_from(self, threshold: float = DEFAULT_RENEW_THRESHOLD) -> float:
        """The moment from which less than ``threshold`` of the window is left."""
        return self.not_after - threshold * self.lifetime

    def due(self, now: float, threshold: float = DEFAULT_RENEW_THRESHOLD) -> bool:
        return now >= self.renew_from(threshold)

    def expired(self, now: float) -> bool:
        return now > self.not_after

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / 86400.0


class ExpiryNotice(enum.Enum):
    NEAR_EXPIRY = "near-expiry"
    """Inside the last ``threshold`` of the window and no renewal configured: warn, once."""
    EXPIRED = "expired"
    """Past ``notAfter``: end the session; the client refuses to connect with this pair."""


class ExpiryWatch:
    """When a connected client must look at its certificate again, and why.

    ``renewal_configured``: a renewal manager is attached (it renews instead: no warning).
    """

    def __init__(
        self,
        validity: Validity,
        *,
        threshold: float = DEFAULT_RENEW_THRESHOLD,
        renewal_configured: bool = False,
    ) -> None:
        self.validity = validity
        self.threshold = validate_threshold(threshold)
        self.renewal_configured = renewal_configured
        self.warned = False

    @property
    def deadline(self) -> float:
        """The next moment :meth:`check` may have something to say (POSIX seconds)."""
        if not self.warned and not self.renewal_configured:
            return self.validity.renew_from(self.threshold)
        return self.validity.not_after

    def check(self, now: float) -> ExpiryNotice | None:
        """What to do at ``now``: EXPIRED (every time it is asked after the end), NEAR_EXPIRY
        (once), or nothing."""
        if self.validity.expired(now):
            return ExpiryNotice.EXPIRED
        if (
            not self.warned
            and not self.renewal_configured
            and self.validity.due(now, self.threshold)
        ):
            self.warned = True
            return ExpiryNotice.NEAR_EXPIRY
        return None
