"""The renewal protocol's topics and messages (docs/renewal.md): builders, parsers and the
self-validating request/reply values, each rule fed a wrong thing and its message checked."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import FrozenInstanceError

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from device_sdk.errors import DeviceSDKError, RenewalError, RenewalMessageError
from device_sdk.identity import Identity
from device_sdk.platform import topic_within_device_space
from device_sdk.renewal_protocol import (
    MAX_CSR_BYTES,
    MAX_REASON_CHARS,
    MAX_REPLY_PAYLOAD_BYTES,
    MAX_REQUEST_PAYLOAD_BYTES,
    RenewalReply,
    RenewalRequest,
    RenewalStatus,
    new_request_id,
    parse_renew_reply_topic,
    parse_renew_topic,
    renew_reply_topic,
    renew_topic,
    validate_request_id,
)

PK, DN = "a1B2c3D4e5F", "sensor-01"


@pytest.fixture(scope="module")
def csr_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DN)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def cert_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DN)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x1A2B)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# --- topics ------------------------------------------------------------------------------------


def test_topics_lie_in_the_devices_own_sys_space() -> None:
    assert renew_topic(PK, DN) == f"/sys/{PK}/{DN}/thing/cert/renew"
    assert renew_reply_topic(PK, DN) == f"/sys/{PK}/{DN}/thing/cert/renew_reply"
    for topic in (renew_topic(PK, DN), renew_reply_topic(PK, DN)):
        assert topic_within_device_space(PK, DN, topic)
        assert not topic_within_device_space(PK, "sensor-02", topic)


@pytest.mark.parametrize(
    ("pk", "dn", "message"),
    [
        ("a1B2/+", DN, "ProductKey"),
        (PK, "s/#", "DeviceName"),
        (PK, "abc", "DeviceName"),
    ],
)
def test_topic_builders_refuse_names_that_would_leave_the_space(
    pk: str, dn: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        renew_topic(pk, dn)
    with pytest.raises(ValueError, match=message):
        renew_reply_topic(pk, dn)


def test_parsers_name_the_device_of_their_own_topic_only() -> None:
    assert parse_renew_topic(renew_topic(PK, DN)) == Identity(PK, DN)
    assert parse_renew_reply_topic(renew_reply_topic(PK, DN)) == Identity(PK, DN)
    for other in (
        renew_reply_topic(PK, DN),
        f"/sys/{PK}/{DN}/thing/cert/renew/x",
        f"/{PK}/{DN}/thing/cert/renew",
        f"/sys/{PK}/+/thing/cert/renew",
        f"/sys/{PK}/ab/thing/cert/renew",
        f"sys/{PK}/{DN}/thing/cert/renew",
        "#",
    ):
        assert parse_renew_topic(other) is None, other
    assert parse_renew_reply_topic(renew_topic(PK, DN)) is None


# --- request -----------------------------------------------------------------------------------


def test_request_round_trips_through_its_payload(csr_pem: str) -> None:
    request = RenewalRequest(new_request_id(), csr_pem)
    payload = request.to_payload()
    assert json.loads(payload) == {"id": request.id, "csr": csr_pem}
    assert RenewalRequest.from_json(payload) == request
    assert RenewalRequest.from_json(payload.decode()) == request
    assert RenewalRequest.from_json(request.to_json()) == request
    with pytest.raises(FrozenInstanceError):
        request.id = "other"  # type: ignore[misc]


def test_fresh_request_ids_are_valid_and_distinct() -> None:
    ids = {new_request_id() for _ in range(50)}
    assert len(ids) == 50
    for value in ids:
        assert validate_request_id(value) == value


@pytest.mark.parametrize(
    "bad_id", ["", "x" * 65, "a b", "a/b", "é", "id\n", 7, None, "../x", "a+b"]
)
def test_request_id_rule(csr_pem: str, bad_id: object) -> None:
    with pytest.raises(RenewalMessageError, match=r"1-64 characters of letters, digits"):
        RenewalRequest(bad_id, csr_pem)  # type: ignore[arg-type]
    with pytest.raises(RenewalMessageError, match=r"1-64 characters"):
        RenewalRequest.from_json({"id": bad_id, "csr": csr_pem})


def test_request_id_bounds_accept_1_and_64() -> None:
    assert RenewalReply.queued("a").id == "a"
    assert RenewalReply.queued("A-_9" * 16).id == "A-_9" * 16


def test_csr_bound_is_8_kib(csr_pem: str) -> None:
    lines = csr_pem.strip().splitlines()
    body = lines[1]
    # a syntactically fine PEM block just over the bound, and one at the bound
    head, tail = lines[0] + "\n", "\n" + lines[-1] + "\n"
    filler = (body + "\n") * ((MAX_CSR_BYTES - len(head) - len(tail)) // (len(body) + 1) + 1)
    too_big = head + filler.rstrip("\n") + tail
    assert len(too_big) > MAX_CSR_BYTES
    with pytest.raises(RenewalMessageError, match=r"at most 8192 bytes \(8 KiB\)"):
        RenewalRequest("r1", too_big)
    fits = too_big[: len(head)] + too_big[len(head) :][len(too_big) - MAX_CSR_BYTES :]
    assert len(fits) == MAX_CSR_BYTES
    assert RenewalRequest("r1", fits).csr == fits


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"-----BEGIN CERTIFICATE REQUEST-----", "must be PEM text, not bytes"),
        (None, "must be PEM text, not NoneType"),
        ("hello", "one PEM block '-----BEGIN CERTIFICATE REQUEST-----'"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "BEGIN CERTIFICATE"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAA AA!\n-----END CERTIFICATE REQUEST-----",
            "not base64",
        ),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----",
            "one PEM block, not several",
        ),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAÄ\n-----END CERTIFICATE REQUEST-----", "ASCII"),
    ],
)
def test_request_csr_must_be_one_pem_request(csr: object, message: str) -> None:
    with pytest.raises(RenewalMessageError, match=message):
        RenewalRequest("r1", csr)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "request is not JSON"),
        (b"\xff\xfe", "request is not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"id": "r1"}', "must be PEM text, not NoneType"),
        (b"x" * (MAX_REQUEST_PAYLOAD_BYTES + 1), "at most"),
    ],
)
def test_request_payload_errors(payload: bytes, message: str) -> None:
    with pytest.raises(RenewalMessageError, match=message):
        RenewalRequest.from_json(payload)


def test_errors_hang_in_the_sdk_branch_and_are_value_errors() -> None:
    assert issubclass(RenewalMessageError, RenewalError)
    assert issubclass(RenewalError, DeviceSDKError)
    assert issubclass(RenewalMessageError, ValueError)


# --- reply -------------------------------------------------------------------------------------


def test_issued_reply_round_trips_and_normalises_the_sn(cert_pem: str) -> None:
    reply = RenewalReply.issued("r1", cert_pem, "0x00001A2B")
    assert reply.cert_sn == "1a2b"
    assert reply.status is RenewalStatus.ISSUED
    wire = json.loads(reply.to_payload())
    assert wire == {"id": "r1", "status": "issued", "certificate": cert_pem, "certSn": "1a2b"}
    assert RenewalReply.from_json(reply.to_payload()) == reply


@pytest.mark.parametrize(
    "reply",
    [
        RenewalReply.queued("r1"),
        RenewalReply.refused("r1", "CSR key is EC; the platform needs RSA >= 2048"),
        RenewalReply.failed("r1", "signer did not answer in time"),
    ],
)
def test_other_replies_round_trip(reply: RenewalReply) -> None:
    assert RenewalReply.from_json(reply.to_payload()) == reply
    assert RenewalReply.from_json(reply.to_json()) == reply
    assert "certificate" not in reply.to_json()


def test_reply_from_a_plain_status_string_and_unknown_fields() -> None:
    reply = RenewalReply.from_json(
        {"id": "r1", "status": "failed", "reason": "busy", "retryAfter": 30}
    )
    assert reply == RenewalReply("r1", RenewalStatus.FAILED, reason="busy")
    assert RenewalReply("r1", "queued").status is RenewalStatus.QUEUED  # type: ignore[arg-type]


def test_reason_is_one_bounded_printable_line() -> None:
    reply = RenewalReply.refused("r1", "bad\r\nINFO forged log line\x1b[31m" + "x" * 2000)
    assert "\n" not in reply.reason and "\r" not in reply.reason and "\x1b" not in reply.reason
    assert len(reply.reason) == MAX_REASON_CHARS
    assert reply.reason.startswith("bad INFO forged log line")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"id": "r1", "status": "done"}, "status 'done' must be one of queued, issued"),
        ({"id": "r1"}, "status None must be one of"),
        ({"id": "r1", "status": "issued"}, "needs certificate and certSn"),
        ({"id": "r1", "status": "issued", "certSn": "1a"}, "needs certificate and certSn"),
        ({"id": "r 1", "status": "queued"}, "1-64 characters"),
        ({"id": "r1", "status": "queued", "reason": 5}, "reason must be text"),
    ],
)
def test_reply_rules(obj: dict[str, object], message: str) -> None:
    with pytest.raises(RenewalMessageError, match=message):
        RenewalReply.from_json(obj)


def test_issued_reply_checks_certificate_and_sn(cert_pem: str, csr_pem: str) -> None:
    with pytest.raises(RenewalMessageError, match="certSn: SN 'xyz' is not a hexadecimal"):
        RenewalReply.issued("r1", cert_pem, "xyz")
    with pytest.raises(RenewalMessageError, match="certSn must be hexadecimal text"):
        RenewalReply.from_json(
            {"id": "r1", "status": "issued", "certificate": cert_pem, "certSn": 12}
        )
    with pytest.raises(RenewalMessageError, match="BEGIN CERTIFICATE-----"):
        RenewalReply.issued("r1", csr_pem, "1a")
    with pytest.raises(RenewalMessageError, match="one PEM block, not several"):
        RenewalReply.issued("r1", cert_pem + cert_pem, "1a")


def test_non_issued_replies_carry_no_certificate(cert_pem: str) -> None:
    with pytest.raises(RenewalMessageError, match="'refused' renewal reply carries no certificate"):
        RenewalReply("r1", RenewalStatus.REFUSED, certificate=cert_pem, cert_sn="1a")


def test_reply_payload_bound_is_checked_before_parsing() -> None:
    with pytest.raises(RenewalMessageError, match=r"reply is \d+ bytes; at most"):
        RenewalReply.from_json(b" " * (MAX_REPLY_PAYLOAD_BYTES + 1))
