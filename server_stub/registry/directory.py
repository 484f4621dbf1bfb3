"""The in-memory index of registered CAs that the MQTT endpoint's hot path reads.

Authenticating a device must not parse CA certificates or scan tables: the index maps a CA
subject to the (few) registered CAs bearing it, each with its parsed public key. It is rebuilt
only when the registry's trust generation moves, and is never changed after it is built, so a
connection can keep the snapshot it was accepted with.

Attribution (:meth:`CaIndex.attribute`) is by key: the subject name only narrows the
candidates; exactly one candidate key must verify the device certificate's signature. None ->
unknown issuer; two or more -> refused as ambiguous, never given either identity.

The index holds *inactive* CAs too, and counts them as candidates. Otherwise an account that
disables or enables a CA whose key also verifies another account's device (possible only for rows
that bypassed the registration rules: one key per registered CA, exponent 65537) would switch
that other account's device between "ambiguous" and "accepted". Attributed to an inactive CA, a
device is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from device_sdk.certs import signed_by
from server_stub.ports import Attribution, IssuerRefused, IssuingCa
from server_stub.store.base import CaRecord

ACTIVE = "active"


@dataclass(frozen=True, slots=True)
class TrustedCa:
    ca_id: int
    account_id: int
    ca_sn: str
    certificate: x509.Certificate
    public_key: CertificatePublicKeyTypes
    active: bool

    def issuing(self) -> IssuingCa:
        return IssuingCa(self.ca_id, self.account_id, self.ca_sn, self.active)


@dataclass(frozen=True)
class CaIndex:
    generation: int
    by_subject: dict[x509.Name, list[TrustedCa]] = field(default_factory=dict)
    by_account_sn: dict[tuple[int, str], TrustedCa] = field(default_factory=dict)
    by_id: dict[int, TrustedCa] = field(default_factory=dict)
    certificates: tuple[x509.Certificate, ...] = ()
    """The *active* CA certificates (informational; trust is decided by :meth:`attribute`)."""

    @classmethod
    def build(cls, generation: int, records: Sequence[CaRecord]) -> CaIndex:
        """``records``: every registered CA of every account, active or not."""
        index = cls(generation)
        certs = []
        for record in records:
            cert = x509.load_der_x509_certificate(record.der)
            active = record.status == ACTIVE
            trusted = TrustedCa(
                record.id, record.account_id, record.ca_sn, cert, cert.public_key(), active
            )
            index.by_subject.setdefault(cert.subject, []).append(trusted)
            index.by_account_sn[(record.account_id, record.ca_sn)] = trusted
            index.by_id[record.id] = trusted
            if active:
                certs.append(cert)
        object.__setattr__(index, "certificates", tuple(certs))
        return index

    def attribute(self, leaf: x509.Certificate) -> Attribution:
        """The one registered CA whose key verifies ``leaf`` (one RSA verify per candidate)."""
        candidates = self.by_subject.get(leaf.issuer, ())
        verifying = [c for c in candidates if signed_by(leaf, c.public_key)]
        if len(verifying) == 1:
            return verifying[0].issuing()
        issuer = leaf.issuer.rfc4514_string()
        if verifying:
            return IssuerRefused(
                f"the signature verifies under {len(verifying)} registered CA keys: refused "
                f"(CA certificates named {issuer!r}; a device certificate must be attributable "
                "to exactly one CA)",
                ambiguous=True,
            )
        if not candidates:
            return IssuerRefused(f"no registered CA has the subject {issuer!r}")
        return IssuerRefused(
            f"the signature does not verify with the key of any of the {len(candidates)} "
            f"registered CA(s) named {issuer!r}"
        )
