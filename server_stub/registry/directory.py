"""The in-memory index of active CAs that the MQTT endpoint's hot path reads.

Authenticating a device must not parse CA certificates or scan tables: the index maps a CA
subject to the (few) active CAs bearing it, each with its parsed public key. It is rebuilt only
when the registry's trust generation moves. Several CAs may share a subject; the caller picks
the one whose *key* verifies the device certificate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from device_sdk.certs import signed_by
from server_stub.store.base import CaRecord


@dataclass(frozen=True, slots=True)
class TrustedCa:
    ca_id: int
    account_id: int
    ca_sn: str
    certificate: x509.Certificate
    public_key: CertificatePublicKeyTypes


@dataclass(frozen=True)
class CaIndex:
    generation: int
    by_subject: dict[x509.Name, list[TrustedCa]] = field(default_factory=dict)
    by_account_sn: dict[tuple[int, str], TrustedCa] = field(default_factory=dict)
    certificates: tuple[x509.Certificate, ...] = ()

    @classmethod
    def build(cls, generation: int, records: Sequence[CaRecord]) -> CaIndex:
        index = cls(generation)
        certs = []
        for record in records:
            cert = x509.load_der_x509_certificate(record.der)
            key = cert.public_key()
            trusted = TrustedCa(record.id, record.account_id, record.ca_sn, cert, key)
            index.by_subject.setdefault(cert.subject, []).append(trusted)
            index.by_account_sn[(record.account_id, record.ca_sn)] = trusted
            certs.append(cert)
        object.__setattr__(index, "certificates", tuple(certs))
        return index

    def issuer_of(self, leaf: x509.Certificate) -> tuple[TrustedCa | None, int]:
        """The active CA whose key signed ``leaf``, and how many CAs bore its issuer name."""
        candidates = self.by_subject.get(leaf.issuer, [])
        for candidate in candidates:
            if signed_by(leaf, candidate.public_key):
                return candidate, len(candidates)
        return None, len(candidates)
