"""The connection-attempt machine and the reconnect rules, fed events with a fake clock (no
sockets, no threads, no sleeps)."""

from __future__ import annotations

import random
import ssl

import pytest

from device_sdk.attempt import (
    Attempt,
    AttemptSettings,
    AttemptState,
    Closed,
    Connack,
    Failed,
    IdentityReceived,
    Stop,
    Tick,
    TlsOk,
)
from device_sdk.backoff import Backoff, BackoffPolicy
from device_sdk.errors import (
    CertificateRejectedError,
    ClockError,
    ConnectionFailedError,
    ConnectionRefusedByServerError,
    ConnectTimeoutError,
    IdentityTimeoutError,
    NotAuthorizedError,
    NotConnectedError,
    SessionTakenOverError,
)
from device_sdk.identity import Identity
from device_sdk.reconnect import Reconnector
from device_sdk.refusals import CLI_HINTS, Refusals, connack_code

REFUSALS = Refusals("h", 8883, client_id="sn1|securemode=2|", keepalive=300, cert_sn="sn1")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _attempt(
    *, expect_identity: bool = True, sent_username: bool = False, started: float = 0.0
) -> Attempt:
    return Attempt(
        AttemptSettings(expect_identity, attempt_timeout=10.0, identity_timeout=5.0),
        REFUSALS,
        started=started,
        sent_username=sent_username,
    )


def _online(start: float = 0.0, **kwargs: bool) -> Attempt:
    attempt = _attempt(started=start, **kwargs)
    attempt.handle(TlsOk(start + 0.1))
    attempt.handle(Connack(0, start + 0.2))
    assert attempt.handle(IdentityReceived(start + 0.3)) is AttemptState.ONLINE
    return attempt


def test_the_happy_path_and_its_timing() -> None:
    attempt = _attempt()
    assert attempt.state is AttemptState.HANDSHAKE and attempt.deadline is None
    assert attempt.handle(TlsOk(1.0)) is AttemptState.AWAIT_CONNACK
    assert attempt.deadline == 11.0
    assert attempt.handle(Connack(0, 1.5)) is AttemptState.AWAIT_IDENTITY
    assert attempt.deadline == 6.5
    assert attempt.handle(Tick(6.4)) is AttemptState.AWAIT_IDENTITY  # not yet
    assert attempt.handle(IdentityReceived(2.0)) is AttemptState.ONLINE
    assert attempt.deadline is None
    timing = attempt.timing()
    assert timing is not None and (timing.handshake, timing.connect, timing.identity) == (
        1.0,
        1.5,
        0.5,
    )
    assert attempt.handle(Closed(50.0)) is AttemptState.ENDED
    assert isinstance(attempt.error, ConnectionFailedError)
    assert "closed by the server" in str(attempt.error)
    assert attempt.closed_by_server and attempt.accepted_for == 48.5
    assert not attempt.socket_open  # the socket is already gone


def test_without_identity_connack_is_online() -> None:
    attempt = _attempt(expect_identity=False)
    attempt.handle(TlsOk(1.0))
    assert attempt.handle(Connack(0, 1.2)) is AttemptState.ONLINE
    timing = attempt.timing()
    assert timing is not None and timing.identity is None


def test_connack_read_before_the_handshake_is_reported_done() -> None:
    # the network thread may read CONNACK before the connecting thread reports the handshake
    attempt = _attempt(expect_identity=False)
    assert attempt.handle(Connack(0, 1.0)) is AttemptState.ONLINE
    assert attempt.handle(TlsOk(1.1)) is AttemptState.ONLINE
    assert attempt.handshake_at == 1.0


def test_deadlines_end_the_attempt_with_their_error() -> None:
    attempt = _attempt()
    attempt.handle(TlsOk(1.0))
    assert attempt.handle(Tick(11.0)) is AttemptState.ENDED
    assert isinstance(attempt.error, ConnectTimeoutError)
    assert "no CONNACK from h:8883 within 10 s" in str(attempt.error)
    assert attempt.socket_open  # we end it: say goodbye on the open socket

    attempt = _attempt()
    attempt.handle(TlsOk(1.0))
    attempt.handle(Connack(0, 2.0))
    assert attempt.handle(Tick(7.0)) is AttemptState.ENDED
    assert isinstance(attempt.error, IdentityTimeoutError)
    assert "expect_identity=False" in str(attempt.error)


def test_cli_hints_name_the_flags() -> None:
    cli = Refusals("h", 1, hints=CLI_HINTS)
    assert "--no-identity" in str(cli.identity_timeout(5))
    assert "expect_identity" not in str(cli.identity_timeout(5))
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "unable to get local issuer certificate"
    assert "Is --server-ca the CA" in str(cli.tls(exc))
    assert "Is server_ca the CA" in str(REFUSALS.tls(exc))


@pytest.mark.parametrize(
    ("paho_value", "error_type", "text"),
    [
        (135, NotAuthorizedError, "CONNACK 5, not authorised"),
        (134, ConnectionRefusedByServerError, "CONNACK 4"),
        (
            133,
            ConnectionRefusedByServerError,
            "client id 'sn1|securemode=2|' or the keep-alive 300",
        ),
        (132, ConnectionRefusedByServerError, "CONNACK 1"),
        (136, ConnectionFailedError, "unavailable (CONNACK 3)"),
    ],
)
def test_each_connack_refusal_has_its_error(
    paho_value: int, error_type: type[Exception], text: str
) -> None:
    attempt = _attempt()
    attempt.handle(TlsOk(1.0))
    assert attempt.handle(Connack(connack_code(paho_value), 1.1)) is AttemptState.ENDED
    assert type(attempt.error) is error_type and text in str(attempt.error)


def test_close_before_connack_is_the_servers_verdict_on_the_certificate() -> None:
    attempt = _attempt()
    attempt.handle(TlsOk(1.0))
    attempt.handle(Closed(1.1, None))
    assert isinstance(attempt.error, CertificateRejectedError)
    assert isinstance(attempt.error.__cause__, ConnectionResetError)


def test_a_failure_raised_after_the_handshake_is_the_servers_verdict_on_the_certificate() -> None:
    # TLS 1.3: the client's half of the handshake completed, then writing CONNECT met the
    # server's close. The same error before the handshake completed is a TLS failure.
    eof = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    attempt = _attempt()
    attempt.handle(Failed(eof, 0.5, after_handshake=True))
    assert isinstance(attempt.error, CertificateRejectedError)
    assert attempt.error.__cause__ is eof
    attempt = _attempt()
    attempt.handle(Failed(eof, 0.5))
    assert attempt.error is not None and not isinstance(attempt.error, CertificateRejectedError)


def test_failures_before_the_handshake_are_mapped_once() -> None:
    attempt = _attempt()
    attempt.handle(Failed(ConnectionRefusedError(111, "refused"), 0.5))
    assert attempt.error is not None
    assert "nothing accepts connections at h:8883" in str(attempt.error)
    assert isinstance(attempt.error.__cause__, ConnectionRefusedError)
    clock = ClockError("expired", now=None, not_before=None, not_after=None)  # type: ignore[arg-type]
    attempt = _attempt()
    attempt.handle(Failed(clock, 0.5))
    assert attempt.error is clock and not attempt.socket_open


def test_stop_ends_any_state_and_later_events_change_nothing() -> None:
    attempt = _online()
    assert attempt.handle(Stop(9.0)) is AttemptState.ENDED
    assert isinstance(attempt.error, NotConnectedError) and attempt.socket_open
    assert attempt.handle(Connack(5, 9.1)) is AttemptState.ENDED
    assert isinstance(attempt.error, NotConnectedError)
    attempt.handle(Closed(9.2))
    assert attempt.socket_closed and not attempt.closed_by_server


# --- between attempts ----------------------------------------------------------------------------


def _reconnector(clock: FakeClock, *, cap: float = 120.0) -> Reconnector:
    backoff = Backoff(BackoffPolicy(1.0, cap, 30.0), rng=random.Random(7), clock=clock)
    return Reconnector(backoff, REFUSALS)


def test_a_refused_stored_username_is_retried_at_once_without_it() -> None:
    clock = FakeClock()
    reconnect = _reconnector(clock)
    identity = Identity("a1B2c3D4e5F", "sensor-old")
    assert reconnect.username(identity) == identity
    attempt = _attempt(sent_username=True)
    attempt.handle(TlsOk(1.0))
    attempt.handle(Connack(5, 1.1))
    step = reconnect.after(attempt, fail_fast=True)
    assert (step.delay, step.report) == (0.0, False)  # silently, even while connect() waits
    assert reconnect.username(identity) is None
    # refused again without a username: now it is the real answer
    attempt = _attempt(sent_username=False)
    attempt.handle(TlsOk(2.0))
    attempt.handle(Connack(5, 2.1))
    step = reconnect.after(attempt, fail_fast=True)
    assert step.delay is None and isinstance(step.error, NotAuthorizedError)
    reconnect.identity_received()
    assert reconnect.username(identity) == identity


def test_permanent_refusals_wait_the_cap_unless_connect_waits() -> None:
    reconnect = _reconnector(FakeClock(), cap=60.0)
    attempt = _attempt()
    attempt.handle(TlsOk(1.0))
    attempt.handle(Connack(5, 1.1))
    assert reconnect.after(attempt, fail_fast=False).delay == 60.0
    assert reconnect.after(attempt, fail_fast=True).delay is None
    lost = _attempt()
    lost.handle(Failed(ConnectionRefusedError(111, "refused"), 1.0))
    step = reconnect.after(lost, fail_fast=True)  # not permanent: connect() keeps trying
    assert step.delay is not None and step.delay <= 60.0


def test_an_identity_timeout_is_retried_on_the_backoff_not_at_the_cap() -> None:
    reconnect = _reconnector(FakeClock(), cap=120.0)
    delays = []
    for n in range(3):
        attempt = _attempt()
        attempt.handle(TlsOk(1.0 + n))
        attempt.handle(Connack(0, 1.1 + n))
        attempt.handle(Tick(20.0 + n))  # past the identity deadline
        assert isinstance(attempt.error, IdentityTimeoutError)
        assert reconnect.after(attempt, fail_fast=True).delay is None  # connect() fails fast
        delays.append(reconnect.after(attempt, fail_fast=False).delay)
    # full jitter up to 1 s, 2 s, 4 s: the ordinary backoff, never the 120 s cap
    assert all(d is not None and d <= 1.0 * 2**n for n, d in enumerate(delays)), delays


def test_sessions_taken_over_again_and_again_are_named_and_slowed_down() -> None:
    clock = FakeClock()
    reconnect = _reconnector(clock, cap=90.0)
    steps = []
    for n in range(3):
        start = 10.0 * n
        attempt = _online(start)
        attempt.handle(Closed(start + 2.0))  # kicked off 2 s after going online
        clock.now = start + 2.0
        steps.append(reconnect.after(attempt, fail_fast=False))
    assert not any(isinstance(s.error, SessionTakenOverError) for s in steps[:2])
    assert all(s.delay is not None and s.delay < 90.0 for s in steps[:2])
    last = steps[2]
    assert isinstance(last.error, SessionTakenOverError) and last.error.sessions == 3
    assert "another connection with the same certificate (SN sn1" in str(last.error)
    assert last.delay == 90.0  # once per cap, not a storm
    assert isinstance(last.error.__cause__, ConnectionFailedError)


def test_a_long_session_or_a_failed_attempt_resets_the_takeover_count() -> None:
    reconnect = _reconnector(FakeClock())
    for _ in range(2):
        attempt = _online(0.0)
        attempt.handle(Closed(1.0))
        reconnect.after(attempt, fail_fast=False)
    long = _online(0.0)
    long.handle(Closed(31.0))  # stayed up for the stable period: an ordinary loss
    assert not isinstance(reconnect.after(long, fail_fast=False).error, SessionTakenOverError)
    assert reconnect.short_sessions == 0
    for _ in range(2):
        attempt = _online(0.0)
        attempt.handle(Closed(1.0))
        reconnect.after(attempt, fail_fast=False)
    down = _attempt()
    down.handle(Failed(ConnectionRefusedError(111, "refused"), 2.0))  # server restarting
    reconnect.after(down, fail_fast=False)
    assert reconnect.short_sessions == 0
    # a session the application ended is no take-over either
    stopped = _online(0.0)
    stopped.handle(Stop(1.0))
    stopped.handle(Closed(1.1))
    reconnect.after(stopped, fail_fast=False)
    assert reconnect.short_sessions == 0


def test_exit_codes_are_the_documented_ones() -> None:
    from datetime import UTC, datetime, timedelta

    from device_sdk.errors import CredentialError, ServerUntrustedError
    from device_sdk.exit_codes import PERMANENT_EXIT_CODES, ExitCode, exit_code_for

    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "FAILURE": 1,
        "CREDENTIALS": 65,
        "NETWORK": 69,
        "CLOCK": 75,
        "CERTIFICATE_REJECTED": 76,
        "NOT_AUTHORISED": 77,
        "CONFIGURATION": 78,
    }
    now = datetime.now(UTC)
    day = timedelta(days=1)
    expired = ClockError("x", now=now, not_before=now - 2 * day, not_after=now - day)
    early = ClockError("x", now=now, not_before=now + day, not_after=now + 2 * day)
    cases = {
        expired: ExitCode.CREDENTIALS,
        early: ExitCode.CLOCK,
        CredentialError("x"): ExitCode.CREDENTIALS,
        REFUSALS.connack(5): ExitCode.NOT_AUTHORISED,
        REFUSALS.connack(4): ExitCode.NOT_AUTHORISED,
        REFUSALS.connack(2): ExitCode.CONFIGURATION,
        REFUSALS.connack(3): ExitCode.NETWORK,
        REFUSALS.certificate_rejected("x"): ExitCode.CERTIFICATE_REJECTED,
        ServerUntrustedError("x"): ExitCode.CONFIGURATION,
        REFUSALS.identity_timeout(1): ExitCode.CONFIGURATION,
        REFUSALS.tls(ConnectionRefusedError(111, "refused")): ExitCode.NETWORK,
        REFUSALS.connect_timeout(1, None): ExitCode.NETWORK,
        ValueError("not ours"): ExitCode.FAILURE,
    }
    for error, code in cases.items():
        assert exit_code_for(error) == code, repr(error)
    assert {65, 76, 77, 78} == PERMANENT_EXIT_CODES
