"""The renewal machine and the expiry rules, fed events with a fake clock (no sockets, no files,
no threads, no sleeps): every path of docs/renewal.md's device states."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from device_sdk.backoff import BackoffPolicy
from device_sdk.renewal import (
    CertificateStored,
    CertificateUnusable,
    Discard,
    GenerateRequest,
    NewPairRefused,
    Offline,
    Online,
    PublishRequest,
    RenewalMachine,
    RenewalPolicy,
    RenewalState,
    RenewNow,
    ReplyReceived,
    Report,
    RequestFailed,
    RequestReady,
    StoreCertificate,
    SwitchToNewPair,
    Tick,
)
from device_sdk.renewal_expiry import ExpiryNotice, ExpiryWatch, Validity
from device_sdk.renewal_protocol import RenewalReply, RenewalRequest

DAY = 86400.0
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
OLD = Validity(0.0, 100 * DAY)  # renew from day 80
NEW = Validity(85 * DAY, 185 * DAY)
POLICY = RenewalPolicy(
    reply_timeout=30.0,
    issue_timeout=600.0,
    resume_wait=5.0,
    retry=BackoffPolicy(base=10.0, cap=1000.0, stable_period=0.0),
)


def machine(**kwargs: object) -> RenewalMachine:
    return RenewalMachine(POLICY, OLD, rng=random.Random(7), **kwargs)  # type: ignore[arg-type]


def kinds(actions: Sequence[object]) -> list[str]:
    return [
        f"Report:{a.kind.value}" if isinstance(a, Report) else type(a).__name__ for a in actions
    ]


def state_of(m: RenewalMachine) -> RenewalState:
    """(A call, so that the type checker does not keep an earlier assert's narrowing.)"""
    return m.state


def started(m: RenewalMachine, at: float) -> RenewalRequest:
    """Drive ``m`` from IDLE (online) to REQUESTED with the request sent at ``at``."""
    assert kinds(m.handle(RenewNow(at))) == ["GenerateRequest"]
    request = RenewalRequest("req-1", CSR)
    actions = m.handle(RequestReady(at, request))
    assert kinds(actions) == ["Report:started", "PublishRequest"]
    assert state_of(m) is RenewalState.REQUESTED
    return request


# --- policy ------------------------------------------------------------------------------------


def test_policy_renews_when_less_than_20_percent_is_left() -> None:
    m = machine()
    assert m.handle(Online(10 * DAY, OLD)) == []
    assert m.deadline == pytest.approx(80 * DAY)
    assert m.handle(Tick(80 * DAY - 1)) == []
    assert m.handle(Tick(80 * DAY)) == [GenerateRequest()]
    assert state_of(m) is RenewalState.GENERATING


def test_threshold_is_configurable() -> None:
    m = RenewalMachine(RenewalPolicy(threshold=0.5), OLD)
    m.handle(Online(0.0, OLD))
    assert m.deadline == pytest.approx(50 * DAY)
    with pytest.raises(ValueError, match="between 0 and 1"):
        RenewalPolicy(threshold=1.5)
    with pytest.raises(ValueError, match="reply_timeout must be > 0"):
        RenewalPolicy(reply_timeout=0)


def test_nothing_starts_offline_and_a_due_renewal_starts_once_online() -> None:
    m = machine()
    assert m.handle(Tick(90 * DAY)) == []
    assert m.deadline is None
    assert m.handle(Online(90 * DAY, OLD)) == [GenerateRequest()]


def test_on_demand_renewal_ignores_the_policy_but_waits_for_the_connection() -> None:
    m = RenewalMachine(RenewalPolicy(automatic=False), OLD)
    assert m.handle(RenewNow(1.0)) == []
    m.handle(Online(2.0, OLD))
    assert state_of(m) is RenewalState.GENERATING
    # automatic=False: the policy alone never starts one
    m2 = RenewalMachine(RenewalPolicy(automatic=False), OLD)
    m2.handle(Online(99 * DAY, OLD))
    assert m2.state is RenewalState.IDLE and m2.deadline is None


# --- the happy path ----------------------------------------------------------------------------


def test_issued_certificate_is_stored_used_and_promoted_only_after_acceptance() -> None:
    m = machine()
    m.handle(Online(1.0, OLD))
    request = started(m, 2.0)
    queued = m.handle(ReplyReceived(3.0, RenewalReply.queued(request.id)))
    assert kinds(queued) == ["Report:queued"]
    assert m.deadline == pytest.approx(3.0 + 600.0)
    issued = RenewalReply.issued(request.id, CERT, "abc")
    actions = m.handle(ReplyReceived(4.0, issued))
    assert actions[0] == StoreCertificate(issued)
    assert kinds(actions) == ["StoreCertificate", "Report:issued"]
    assert state_of(m) is RenewalState.REQUESTED  # until the certificate is on disk
    assert m.handle(CertificateStored(4.1)) == [SwitchToNewPair()]
    assert state_of(m) is RenewalState.RECEIVED
    # the session with the new pair is online: only now is the old pair replaced
    m.handle(Offline(4.2))
    actions = m.handle(Online(4.5, NEW, new_pair=True))
    assert kinds(actions) == ["Promote", "Report:renewed"]
    assert state_of(m) is RenewalState.IDLE
    assert m.validity == NEW
    assert m.deadline == pytest.approx(NEW.renew_from(0.2))


def test_repeated_or_foreign_replies_change_nothing() -> None:
    m = machine()
    m.handle(Online(1.0, OLD))
    request = started(m, 2.0)
    assert m.handle(ReplyReceived(3.0, RenewalReply.issued("other-id", CERT, "1"))) == []
    issued = RenewalReply.issued(request.id, CERT, "abc")
    m.handle(ReplyReceived(4.0, issued))
    assert m.handle(ReplyReceived(4.0, issued)) == []  # storing already
    m.handle(CertificateStored(4.1))
    assert m.handle(ReplyReceived(5.0, issued)) == []  # the server repeats it at CONNECT


def test_an_online_event_with_the_current_pair_in_received_does_not_promote() -> None:
    m = machine(state=RenewalState.RECEIVED)
    assert m.handle(Online(1.0, OLD, new_pair=False)) == []
    assert state_of(m) is RenewalState.RECEIVED


# --- refusals and failures ---------------------------------------------------------------------


def test_refused_keeps_the_current_pair_never_resends_and_waits_the_cap() -> None:
    m = machine()
    m.handle(Online(80 * DAY, OLD))
    request = RenewalRequest("req-1", CSR)
    m.handle(RequestReady(80 * DAY, request))
    actions = m.handle(ReplyReceived(80 * DAY + 1, RenewalReply.refused(request.id, "EC key")))
    assert kinds(actions) == ["Discard", "Report:refused"]
    assert actions[0] == Discard(fall_back=False)
    report = actions[1]
    assert isinstance(report, Report) and report.reason == "EC key" and report.retry_in == 1000.0
    assert state_of(m) is RenewalState.IDLE and m.request is None
    assert m.handle(Tick(80 * DAY + 999)) == []
    assert m.handle(Tick(80 * DAY + 1001)) == [GenerateRequest()]  # a new key, a new CSR


def test_failed_reply_retries_the_same_request_with_backoff() -> None:
    m = machine()
    m.handle(Online(1.0, OLD))
    request = started(m, 2.0)
    actions = m.handle(ReplyReceived(3.0, RenewalReply.failed(request.id, "queue full")))
    assert kinds(actions) == ["Report:failed"]
    report = actions[0]
    assert isinstance(report, Report) and report.reason == "queue full"
    assert report.retry_in is not None and 0 <= report.retry_in <= 10.0
    assert m.deadline == pytest.approx(3.0 + report.retry_in)
    assert m.handle(Tick(3.0 + report.retry_in)) == [PublishRequest(request)]


def test_no_answer_is_a_failure_and_the_delays_grow_to_the_cap() -> None:
    m = machine()
    m.handle(Online(0.0, OLD))
    started(m, 0.0)
    now, ceilings = 0.0, []
    for _ in range(9):
        now += 30.0  # the reply timeout passes
        actions = m.handle(Tick(now))
        assert kinds(actions) == ["Report:failed"]
        report = actions[0]
        assert isinstance(report, Report)
        assert report.reason == "no answer from the platform within 30 s"
        assert report.retry_in is not None
        ceilings.append(report.retry_in)
        now += report.retry_in
        assert kinds(m.handle(Tick(now))) == ["PublishRequest"]
    assert max(ceilings) <= 1000.0
    assert max(ceilings) > 10.0  # the ceiling grew past the base
    assert m.failures == 9


def test_signer_slow_after_queued_is_reported_as_such() -> None:
    m = machine()
    m.handle(Online(0.0, OLD))
    request = started(m, 0.0)
    m.handle(ReplyReceived(1.0, RenewalReply.queued(request.id)))
    assert m.handle(Tick(600.0)) == []
    actions = m.handle(Tick(601.0))
    assert isinstance(actions[0], Report)
    assert "queued but the customer's signer did not issue within 600 s" in actions[0].reason


def test_unusable_certificate_is_discarded_and_a_new_try_follows_backoff() -> None:
    m = machine()
    m.handle(Online(1.0, OLD))
    request = started(m, 2.0)
    m.handle(ReplyReceived(3.0, RenewalReply.issued(request.id, CERT, "1")))
    actions = m.handle(CertificateUnusable(4.0, "key mismatch"))
    assert kinds(actions) == ["Discard", "Report:failed"]
    assert state_of(m) is RenewalState.IDLE and m.request is None
    report = actions[1]
    assert isinstance(report, Report) and report.retry_in is not None
    assert m.retry_at == pytest.approx(4.0 + report.retry_in)


def test_new_pair_refused_falls_back_to_the_current_pair() -> None:
    m = machine(state=RenewalState.RECEIVED)
    m.handle(Online(1.0, OLD))
    actions = m.handle(NewPairRefused(2.0, "certificate rejected"))
    assert kinds(actions) == ["Discard", "Report:failed"]
    assert actions[0] == Discard(fall_back=True)
    report = actions[1]
    assert isinstance(report, Report)
    assert "refused the new certificate: certificate rejected" in report.reason


def test_key_generation_failure_is_reported_and_retried() -> None:
    m = machine()
    m.handle(Online(80 * DAY, OLD))
    actions = m.handle(RequestFailed(80 * DAY, "disk full"))
    assert kinds(actions) == ["Report:failed"]
    assert state_of(m) is RenewalState.IDLE
    assert m.handle(Tick(m.retry_at)) == [GenerateRequest()]


# --- restarts ----------------------------------------------------------------------------------


def test_resumed_request_waits_for_a_held_answer_before_sending_again() -> None:
    request = RenewalRequest("req-1", CSR)
    m = machine(state=RenewalState.REQUESTED, request=request)
    assert m.handle(Online(10.0, OLD)) == []
    assert m.deadline == pytest.approx(15.0)
    assert m.handle(Tick(15.0)) == [PublishRequest(request)]


def test_resumed_request_answered_at_connect_is_not_sent_again() -> None:
    request = RenewalRequest("req-1", CSR)
    m = machine(state=RenewalState.REQUESTED, request=request)
    m.handle(Online(10.0, OLD))
    actions = m.handle(ReplyReceived(10.1, RenewalReply.issued(request.id, CERT, "1")))
    assert kinds(actions) == ["StoreCertificate", "Report:issued"]
    assert m.deadline is None


def test_reconnect_keeps_a_running_backoff() -> None:
    m = machine()
    m.handle(Online(0.0, OLD))
    request = started(m, 0.0)
    actions = m.handle(ReplyReceived(1.0, RenewalReply.failed(request.id, "busy")))
    report = actions[0]
    assert isinstance(report, Report) and report.retry_in is not None
    m.handle(Offline(2.0))
    m.handle(Online(3.0, OLD))
    assert m.deadline == pytest.approx(max(1.0 + report.retry_in, 8.0))


def test_machine_refuses_impossible_resumes() -> None:
    with pytest.raises(ValueError, match="needs its request"):
        machine(state=RenewalState.REQUESTED)
    with pytest.raises(ValueError, match="cannot resume while generating"):
        machine(state=RenewalState.GENERATING)


# --- expiry ------------------------------------------------------------------------------------


def test_validity_fractions() -> None:
    assert OLD.fraction_left(-5.0) == 1.0
    assert OLD.fraction_left(50 * DAY) == pytest.approx(0.5)
    assert OLD.fraction_left(200 * DAY) == 0.0
    assert OLD.days_left(90 * DAY) == pytest.approx(10.0)
    assert not OLD.expired(100 * DAY) and OLD.expired(100 * DAY + 1)
    with pytest.raises(ValueError, match="end after it begins"):
        Validity(5.0, 5.0)


def test_expiry_watch_warns_once_without_renewal_then_reports_expiry() -> None:
    watch = ExpiryWatch(OLD)
    assert watch.deadline == pytest.approx(80 * DAY)
    assert watch.check(79 * DAY) is None
    assert watch.check(80 * DAY) is ExpiryNotice.NEAR_EXPIRY
    assert watch.check(81 * DAY) is None
    assert watch.deadline == pytest.approx(100 * DAY)
    assert watch.check(100 * DAY + 1) is ExpiryNotice.EXPIRED
    assert watch.check(100 * DAY + 2) is ExpiryNotice.EXPIRED


def test_expiry_watch_with_renewal_configured_does_not_warn() -> None:
    watch = ExpiryWatch(OLD, renewal_configured=True)
    assert watch.deadline == pytest.approx(100 * DAY)
    assert watch.check(90 * DAY) is None
    assert watch.check(101 * DAY) is ExpiryNotice.EXPIRED
