"""A stand-in for the platform's renewal service on a generic broker (Mosquitto), for the SDK's
renewal tests: a real MQTT client (the SDK's own) that answers renewal requests by the contract
of docs/renewal.md, signing with the test CA. The end-to-end test with the reference server and
the real signer lives in tests/sdk/test_renewal_e2e.py; this one lets the device side be tested
over real MQTT and TLS on its own, in every mode a signer can fail in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from device_sdk.client import DeviceClient
from device_sdk.credentials import Credentials
from device_sdk.renewal_protocol import (
    RenewalReply,
    RenewalRequest,
    parse_renew_topic,
    renew_reply_topic,
)
from device_sdk.subscriptions import Message
from firmware_helpers.pki import (
    CertifiedKey,
    build_device_certificate,
    create_ca,
    issue_device_certificate,
)

REQUESTS = "/sys/+/+/thing/cert/renew"
PROBE = b"probe"


@dataclass
class Responder:
    """Answers each request by ``mode``: ``issue`` (queued, then issued), ``refuse``, ``fail``,
    ``silent`` (no answer), ``foreign`` (a certificate for another key), ``untrusted`` (the
    device's key, signed by a CA the broker does not trust: the new pair is refused), ``noisy``
    (malformed replies and a refusal of another request first, then ``issue``)."""

    client: DeviceClient
    ca: CertifiedKey
    mode: str = "issue"
    days: int = 365
    requests: list[RenewalRequest] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    subscribed: threading.Event = field(default_factory=threading.Event)
    other_ca: CertifiedKey = field(default_factory=lambda: create_ca("Untrusted CA"))

    def on_request(self, message: Message) -> None:
        identity = parse_renew_topic(message.topic)
        assert identity is not None
        if message.payload == PROBE:
            self.subscribed.set()
            return
        request = RenewalRequest.from_json(message.payload)
        with self.changed:
            self.requests.append(request)
            self.changed.notify_all()
        reply_topic = renew_reply_topic(identity.product_key, identity.device_name)
        if self.mode == "silent":
            return
        if self.mode == "refuse":
            self._send(reply_topic, RenewalReply.refused(request.id, "CSR key is not RSA-2048"))
            return
        if self.mode == "fail":
            self._send(reply_topic, RenewalReply.failed(request.id, "signer unreachable"))
            return
        if self.mode == "noisy":  # what a confused or hostile server might send first
            self.client.publish(reply_topic, b'{"id": "x", "status": "issued"}', qos=1)
            self.client.publish(reply_topic, b"\xff" * 100_000, qos=1)
            self._send(reply_topic, RenewalReply.refused("another-request", "not yours"))
        self._send(reply_topic, RenewalReply.queued(request.id))
        csr = x509.load_pem_x509_csr(request.csr.encode())
        key = csr.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        if self.mode == "foreign":
            pair = issue_device_certificate(self.ca, identity.device_name)
            cert = pair.certificate
        elif self.mode == "untrusted":  # the device's key, but a CA the broker does not trust
            cert = build_device_certificate(
                self.other_ca, key, identity.device_name, product_key=identity.product_key
            )
        else:
            cert = build_device_certificate(
                self.ca,
                key,
                identity.device_name,
                product_key=identity.product_key,
                days=self.days,
            )
        issued = CertifiedKey(cert, None)  # type: ignore[arg-type]  # (for its sn and PEM only)
        with self.changed:
            self.issued.append(issued.sn)
            self.changed.notify_all()
        self._send(
            reply_topic,
            RenewalReply.issued(request.id, issued.cert_pem().decode(), issued.sn),
        )

    def _send(self, topic: str, reply: RenewalReply) -> None:
        self.client.publish(topic, reply.to_payload(), qos=1)

    def wait_requests(self, count: int, timeout: float = 30.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.requests) >= count, timeout)


def start_responder(
    host: str, port: int, server_ca: Path, ca: CertifiedKey, workdir: Path, mode: str = "issue"
) -> Responder:
    """Connect the responder (its own certificate from ``ca``) and subscribe to requests."""
    workdir.mkdir(parents=True, exist_ok=True)
    pair = issue_device_certificate(ca, "renewal-responder")
    pair.write(workdir / "responder.cer", workdir / "responder.key")
    creds = Credentials.from_files(workdir / "responder.cer", workdir / "responder.key")
    client = DeviceClient(
        host, port, creds, server_ca=server_ca, expect_identity=False, client_id="responder"
    )
    responder = Responder(client, ca, mode)
    client.subscribe(REQUESTS, responder.on_request)
    client.connect(timeout=20)
    # The subscription is in place once the broker routes the responder's own probe back to it.
    client.publish("/sys/probe/probe-device/thing/cert/renew", PROBE, qos=1)
    if not responder.subscribed.wait(20):
        raise RuntimeError("the responder's subscription did not take effect")
    return responder
