"""The renewal protocol's topics and messages (docs/renewal.md): the one home of their rules.

The device asks for a new certificate on ``/sys/{pk}/{dn}/thing/cert/renew`` and the server
answers on ``/sys/{pk}/{dn}/thing/cert/renew_reply``; both lie in the device's own topic space
(:func:`device_sdk.platform.topic_within_device_space`), so the server's existing topic-space
check already keeps one device out of another's renewal.

The messages are frozen values that check themselves when built, so that neither side can hold
(or send) a request with an id that breaks a log line or a CSR larger than the bound, and so
that a hostile payload is refused before anything acts on it. The checks here are lexical
(sizes, characters, PEM armour): whether the CSR proves possession of an RSA-2048 key is the
business of :mod:`device_sdk.csr` and the signer, which need ``cryptography``; this module must
not, because the server imports it on every message and the SDK on its connect path.
"""

from __future__ import annotations

import enum
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from device_sdk.errors import InvalidSerialNumberError, RenewalMessageError
from device_sdk.identity import Identity
from device_sdk.naming import validate_device_name, validate_product_key
from device_sdk.platform import device_topic_prefixes, topic_within_device_space
from device_sdk.serials import normalize_sn

RENEW_SUFFIX = "thing/cert/renew"
RENEW_REPLY_SUFFIX = "thing/cert/renew_reply"

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_CSR_BYTES = 8 * 1024
"""A CSR for an RSA-4096 key with a short subject is under 2 KiB; 8 KiB leaves room and no more."""
MAX_CERTIFICATE_BYTES = 8 * 1024
"""The issued leaf (no chain), PEM."""
MAX_REASON_CHARS = 512
"""A refusal's reason is read by a person in a log line; longer is cut, never refused."""
MAX_REQUEST_PAYLOAD_BYTES = 2 * MAX_CSR_BYTES + 256
"""A request payload larger than this is refused before it is parsed (JSON escapes every
newline of the PEM as two bytes, hence twice the CSR bound)."""
MAX_REPLY_PAYLOAD_BYTES = 2 * MAX_CERTIFICATE_BYTES + 4 * MAX_REASON_CHARS + 512

_CSR_LABELS = ("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")
_PEM_BODY_RE = re.compile(r"[A-Za-z0-9+/=\r\n]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")


# --- topics ------------------------------------------------------------------------------------


def renew_topic(product_key: str, device_name: str) -> str:
    """``/sys/{pk}/{dn}/thing/cert/renew``: where the device publishes its request."""
    return _sys_topic(product_key, device_name, RENEW_SUFFIX)


def renew_reply_topic(product_key: str, device_name: str) -> str:
    """``/sys/{pk}/{dn}/thing/cert/renew_reply``: where the server answers (to the session)."""
    return _sys_topic(product_key, device_name, RENEW_REPLY_SUFFIX)


def _sys_topic(product_key: str, device_name: str, suffix: str) -> str:
    validate_product_key(product_key)
    validate_device_name(device_name)
    topic = device_topic_prefixes(product_key, device_name)[1] + suffix
    # the builders are built on the platform's one topic-space rule, and must stay inside it
    assert topic_within_device_space(product_key, device_name, topic)
    return topic


def parse_renew_topic(topic: str) -> Identity | None:
    """The device a ``.../thing/cert/renew`` topic names, or None for any other topic.

    The server still checks that this identity is the session's own (the topic-space rule):
    a topic naming another device is dropped, never answered.
    """
    return _parse_sys_topic(topic, RENEW_SUFFIX)


def parse_renew_reply_topic(topic: str) -> Identity | None:
    """The device a ``.../thing/cert/renew_reply`` topic names, or None for any other topic."""
    return _parse_sys_topic(topic, RENEW_REPLY_SUFFIX)


def _parse_sys_topic(topic: str, suffix: str) -> Identity | None:
    parts = topic.split("/")
    # "", "sys", pk, dn, "thing", "cert", "renew"
    if len(parts) != 7 or parts[0] != "" or parts[1] != "sys" or "/".join(parts[4:]) != suffix:
        return None
    try:
        return Identity(product_key=parts[2], device_name=parts[3])
    except ValueError:
        return None


# --- field checks ------------------------------------------------------------------------------


def new_request_id() -> str:
    """A fresh request id: 32 hex characters, unguessable, within :data:`REQUEST_ID_RE`."""
    return secrets.token_hex(16)


def validate_request_id(value: object) -> str:
    if not isinstance(value, str) or not REQUEST_ID_RE.fullmatch(value):
        raise RenewalMessageError(
            f"renewal request id {_show(value)} must be 1-64 characters of letters, digits, "
            "'_' and '-'"
        )
    return value


def validate_csr_pem(value: object) -> str:
    """A PEM PKCS#10 request (one block, ASCII, at most :data:`MAX_CSR_BYTES`)."""
    return _validate_pem(value, _CSR_LABELS, MAX_CSR_BYTES, "CSR")


def validate_certificate_pem(value: object) -> str:
    """One PEM certificate (the leaf), ASCII, at most :data:`MAX_CERTIFICATE_BYTES`."""
    return _validate_pem(value, ("CERTIFICATE",), MAX_CERTIFICATE_BYTES, "certificate")


def _validate_pem(value: object, labels: tuple[str, ...], limit: int, what: str) -> str:
    if not isinstance(value, str):
        raise RenewalMessageError(f"renewal {what} must be PEM text, not {type(value).__name__}")
    if not value.isascii():
        raise RenewalMessageError(f"renewal {what} must be ASCII PEM text")
    size = len(value.encode("ascii"))
    if size > limit:
        raise RenewalMessageError(
            f"renewal {what} is {size} bytes; at most {limit} bytes ({limit // 1024} KiB) are accepted"
        )
    text = value.strip()
    for label in labels:
        begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
        if text.startswith(begin) and text.endswith(end):
            body = text[len(begin) : -len(end)]
            if "-----" in body:
                raise RenewalMessageError(f"renewal {what} must be one PEM block, not several")
            if not _PEM_BODY_RE.fullmatch(body):
                raise RenewalMessageError(f"renewal {what}'s PEM body is not base64")
            return value
    raise RenewalMessageError(
        f"renewal {what} must be one PEM block '-----BEGIN {labels[0]}-----' ... "
        f"'-----END {labels[0]}-----'"
    )


def clean_reason(value: str) -> str:
    """A reason fit for one log line: control characters become spaces, cut at the bound."""
    text = _CONTROL_RE.sub(" ", value).strip()
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 1] + "…"
    return text


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _load(data: Any, limit: int, what: str) -> dict[str, Any]:
    if isinstance(data, bytes | bytearray | memoryview | str):
        size = len(data.encode() if isinstance(data, str) else bytes(data))
        if size > limit:
            raise RenewalMessageError(f"renewal {what} is {size} bytes; at most {limit} accepted")
        try:
            data = json.loads(bytes(data) if not isinstance(data, str) else data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RenewalMessageError(f"renewal {what} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RenewalMessageError(f"renewal {what} must be a JSON object")
    return data


def _payload(obj: dict[str, str]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenewalRequest:
    """``{"id": .., "csr": ..}``, device -> server. Frozen; checks itself when built."""

    id: str
    csr: str

    def __post_init__(self) -> None:
        validate_request_id(self.id)
        validate_csr_pem(self.csr)

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "csr": self.csr}

    def to_payload(self) -> bytes:
        """The MQTT payload: compact JSON, UTF-8."""
        return _payload(self.to_json())

    @classmethod
    def from_json(cls, data: Any) -> RenewalRequest:
        """From a dict, or the payload (str or bytes, refused unparsed when oversized)."""
        obj = _load(data, MAX_REQUEST_PAYLOAD_BYTES, "request")
        return cls(id=validate_request_id(obj.get("id")), csr=validate_csr_pem(obj.get("csr")))


class RenewalStatus(enum.StrEnum):
    """What the server says about a request (docs/renewal.md)."""

    QUEUED = "queued"
    """Stored; waits for the signer."""
    ISSUED = "issued"
    """The certificate is in the reply."""
    REFUSED = "refused"
    """Refused for good (``reason``): do not retry the same CSR."""
    FAILED = "failed"
    """A transient failure (``reason``): retry later with backoff."""


def parse_status(value: object) -> RenewalStatus:
    if isinstance(value, str):
        try:
            return RenewalStatus(value)
        except ValueError:
            pass
    raise RenewalMessageError(
        f"renewal reply status {_show(value)} must be one of "
        f"{', '.join(s.value for s in RenewalStatus)}"
    )


@dataclass(frozen=True, slots=True)
class RenewalReply:
    """``{"id", "status", "reason", "certificate", "certSn"}``, server -> device.

    ``issued`` carries the certificate and its SN (canonical form); every other status carries
    neither. A reason is cleaned to one printable line (a hostile signer cannot forge log
    lines through it).
    """

    id: str
    status: RenewalStatus
    reason: str = ""
    certificate: str | None = None
    cert_sn: str | None = None

    def __post_init__(self) -> None:
        validate_request_id(self.id)
        status = parse_status(self.status)
        object.__setattr__(self, "status", status)
        if not isinstance(self.reason, str):
            raise RenewalMessageError("renewal reply reason must be text")
        object.__setattr__(self, "reason", clean_reason(self.reason))
        if status is RenewalStatus.ISSUED:
            if self.certificate is None or self.cert_sn is None:
                raise RenewalMessageError("an 'issued' renewal reply needs certificate and certSn")
            validate_certificate_pem(self.certificate)
            if not isinstance(self.cert_sn, str):
                raise RenewalMessageError("renewal reply certSn must be hexadecimal text")
            try:
                object.__setattr__(self, "cert_sn", normalize_sn(self.cert_sn))
            except InvalidSerialNumberError as exc:
                raise RenewalMessageError(f"renewal reply certSn: {exc}") from exc
        elif self.certificate is not None or self.cert_sn is not None:
            raise RenewalMessageError(
                f"a {status.value!r} renewal reply carries no certificate or certSn"
            )

    @classmethod
    def queued(cls, request_id: str) -> RenewalReply:
        return cls(request_id, RenewalStatus.QUEUED)

    @classmethod
    def issued(cls, request_id: str, certificate: str, cert_sn: str) -> RenewalReply:
        return cls(request_id, RenewalStatus.ISSUED, certificate=certificate, cert_sn=cert_sn)

    @classmethod
    def refused(cls, request_id: str, reason: str) -> RenewalReply:
        return cls(request_id, RenewalStatus.REFUSED, reason=reason)

    @classmethod
    def failed(cls, request_id: str, reason: str) -> RenewalReply:
        return cls(request_id, RenewalStatus.FAILED, reason=reason)

    def to_json(self) -> dict[str, str]:
        obj = {"id": self.id, "status": self.status.value}
        if self.reason:
            obj["reason"] = self.reason
        if self.certificate is not None and self.cert_sn is not None:
            obj["certificate"] = self.certificate
            obj["certSn"] = self.cert_sn
        return obj

    def to_payload(self) -> bytes:
        """The MQTT payload: compact JSON, UTF-8."""
        return _payload(self.to_json())

    @classmethod
    def from_json(cls, data: Any) -> RenewalReply:
        """From a dict, or the payload (str or bytes, refused unparsed when oversized).
        Unknown fields are ignored (a later server may add some)."""
        obj = _load(data, MAX_REPLY_PAYLOAD_BYTES, "reply")
        reason = obj.get("reason", "")
        if reason is None:
            reason = ""
        return cls(
            id=validate_request_id(obj.get("id")),
            status=parse_status(obj.get("status")),
            reason=reason,
            certificate=obj.get("certificate"),
            cert_sn=obj.get("certSn"),
        )
