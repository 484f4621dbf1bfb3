"""The certificate model: the fields of an X.509 certificate every rule of the kit reads.

One reader (:mod:`device_sdk.der`), no dependency: a device loads and checks its pair without
``cryptography``'s second OpenSSL. The rules themselves (RSA only, validity, the CA flag, the SN
rule) live in :mod:`device_sdk.certs` and read these fields, whether the certificate came from a
file on a board or from ``cryptography`` on the server (:func:`as_model` converts the latter by
its DER bytes, so both go through this one reader).

A :class:`Certificate` is frozen and compares by its DER bytes, also with a ``cryptography``
certificate of the same bytes.

Why it is over 500 lines: it follows RFC 5280's structure field by field (version, serial,
algorithms, names with their string types, validity, the public key, extensions), and each
reader sits beside the value type it fills. Split apart, the two halves of one field's rule
(how it is read, what it holds) would live in different files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterator
from datetime import datetime
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from device_sdk import der, values
from device_sdk.der import DERError

if TYPE_CHECKING:
    from cryptography import x509

RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
RSASSA_PSS = "1.2.840.113549.1.1.10"
EC_PUBLIC_KEY = "1.2.840.10045.2.1"
BASIC_CONSTRAINTS = "2.5.29.19"
_BASIC_CONSTRAINTS_DER = b"\x55\x1d\x13"
COMMON_NAME = "2.5.4.3"
X500_UNIQUE_IDENTIFIER = "2.5.4.45"

#: The names ``cryptography`` gives the public key types, so messages read the same.
_KEY_KINDS = {
    "1.2.840.10040.4.1": "DSA",
    "1.3.101.112": "Ed25519",
    "1.3.101.113": "Ed448",
    "1.3.101.110": "X25519",
    "1.3.101.111": "X448",
    "1.2.840.10046.2.1": "DH",
}
_CURVES = {
    "1.2.840.10045.3.1.7": "secp256r1",
    "1.3.132.0.34": "secp384r1",
    "1.3.132.0.35": "secp521r1",
    "1.3.132.0.10": "secp256k1",
    "1.2.840.10045.3.1.1": "secp192r1",
    "1.3.132.0.33": "secp224r1",
    "1.3.36.3.3.2.8.1.1.7": "brainpoolP256r1",
    "1.3.36.3.3.2.8.1.1.11": "brainpoolP384r1",
    "1.3.36.3.3.2.8.1.1.13": "brainpoolP512r1",
}
#: RFC 4514 short names, as ``cryptography`` prints them.
_SHORT_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.6": "C",
    "2.5.4.9": "STREET",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}


# --- names -------------------------------------------------------------------------------------


class NameAttribute(NamedTuple):
    oid: str
    value: str | bytes
    """A string, or the content of a BIT STRING attribute (x500UniqueIdentifier)."""

    def rfc4514_string(self) -> str:
        return f"{_SHORT_NAMES.get(self.oid, self.oid)}={_escape_dn_value(self.value)}"


class Name:
    """A distinguished name: RDNs in certificate order, each a set of attributes (immutable)."""

    __slots__ = ("der", "rdns")

    def __init__(self, rdns: tuple[tuple[NameAttribute, ...], ...], der: bytes) -> None:
        object.__setattr__(self, "rdns", rdns)
        object.__setattr__(self, "der", der)

    if TYPE_CHECKING:
        rdns: tuple[tuple[NameAttribute, ...], ...]
        der: bytes

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Name is immutable (cannot set {name})")

    def __repr__(self) -> str:
        return f"<Name({self.rfc4514_string()})>"

    @classmethod
    def from_der(cls, data: bytes) -> Name:
        return _name(der.read_single(data, der.SEQUENCE, "name"))

    def __iter__(self) -> Iterator[NameAttribute]:
        return (attribute for rdn in self.rdns for attribute in rdn)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Name):
            return NotImplemented
        return [frozenset(r) for r in self.rdns] == [frozenset(r) for r in other.rdns]

    def __hash__(self) -> int:
        return hash(tuple(frozenset(r) for r in self.rdns))

    def get(self, oid: str) -> list[str | bytes]:
        return [a.value for a in self if a.oid == oid]

    @property
    def common_name(self) -> str | None:
        values = self.get(COMMON_NAME)
        if not values:
            return None
        value = values[0]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    def rfc4514_string(self) -> str:
        """``CN=x,O=y``: last RDN first, as RFC 4514 (and ``cryptography``) print it."""
        return ",".join("+".join(a.rfc4514_string() for a in rdn) for rdn in reversed(self.rdns))


def _escape_dn_value(value: str | bytes) -> str:
    if not value:
        return ""
    if isinstance(value, bytes):
        return "#" + binascii.hexlify(value).decode("ascii")
    for char in '\\"+,;<>':
        value = value.replace(char, "\\" + char)
    value = value.replace("\0", "\\00")
    if value[0] == "#" or (value[0] == " " and len(value) > 1):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value


def _name(element: der.Element) -> Name:
    rdns: list[tuple[NameAttribute, ...]] = []
    outer = element.reader()
    while not outer.at_end():
        rdn = outer.read(der.SET, "name: relative distinguished name").reader()
        attributes: list[NameAttribute] = []
        while not rdn.at_end():
            pair = rdn.sequence("name: attribute")
            oid = der.oid(pair.read(der.OID, "name: attribute type"))
            value = pair.read(None, f"name: value of {oid}")
            pair.finish("name: attribute")
            if value.tag == der.BIT_STRING:  # x500UniqueIdentifier only: its bytes, as they are
                if oid != X500_UNIQUE_IDENTIFIER:
                    raise DERError(
                        f"name: a BIT STRING value is allowed for {X500_UNIQUE_IDENTIFIER}"
                    )
                attributes.append(NameAttribute(oid, value.content))
            else:
                attributes.append(NameAttribute(oid, der.string(value, f"name: value of {oid}")))
        if not attributes:
            raise DERError("name: empty relative distinguished name")
        rdns.append(tuple(attributes))
    return Name(tuple(rdns), element.encoded)


# --- public keys -------------------------------------------------------------------------------


class PublicKeyInfo(NamedTuple):
    """SubjectPublicKeyInfo: the algorithm, and for RSA the modulus and exponent."""

    der: bytes
    algorithm: str
    parameters: bytes | None
    key: bytes
    rsa_modulus: int | None = None
    rsa_exponent: int | None = None

    @property
    def is_rsa(self) -> bool:
        return self.rsa_modulus is not None

    @property
    def rsa_key_size(self) -> int | None:
        return None if self.rsa_modulus is None else self.rsa_modulus.bit_length()

    @property
    def kind(self) -> str:
        """``RSA``, ``EC (secp256r1)``, ``Ed25519``, ...: for messages."""
        if self.is_rsa:
            return "RSA"
        if self.algorithm == EC_PUBLIC_KEY:
            curve = "unknown curve"
            if self.parameters is not None:
                try:
                    curve_oid = der.oid(der.read_single(self.parameters, der.OID, "curve"))
                    curve = _CURVES.get(curve_oid, curve_oid)
                except DERError:
                    pass
            return f"EC ({curve})"
        return _KEY_KINDS.get(self.algorithm, "unsupported")

    @classmethod
    def from_der(cls, data: bytes) -> PublicKeyInfo:
        return _public_key_info(der.read_single(data, der.SEQUENCE, "public key"))


def _public_key_info(element: der.Element) -> PublicKeyInfo:
    spki = element.reader()
    algorithm = spki.sequence("public key algorithm")
    oid = der.oid(algorithm.read(der.OID, "public key algorithm"))
    parameters = None if algorithm.at_end() else algorithm.read(None, "key parameters").encoded
    algorithm.finish("public key algorithm")
    _check_parameters(oid, parameters, "public key algorithm")
    key, unused = der.bit_string(spki.read(der.BIT_STRING, "public key"), "public key")
    spki.finish("public key")
    modulus = exponent = None
    if oid == RSA_ENCRYPTION and unused == 0:
        modulus, exponent = _rsa_public_numbers(key)
    return PublicKeyInfo(element.encoded, oid, parameters, key, modulus, exponent)


def _rsa_public_numbers(key: bytes) -> tuple[int, int] | tuple[None, None]:
    """(n, e) of an RSAPublicKey, or (None, None) when it is not a usable one."""
    try:
        numbers = der.Reader(key).sequence("RSA public key")
        modulus = der.integer(numbers.read(der.INTEGER, "RSA modulus"))
        exponent = der.integer(numbers.read(der.INTEGER, "RSA exponent"))
        numbers.finish("RSA public key")
    except DERError:
        return None, None
    # What cryptography (and so the verifying side) accepts as an RSA public key.
    if modulus <= 0 or not 3 <= exponent < modulus or exponent % 2 == 0:
        return None, None
    return modulus, exponent


# --- certificates ------------------------------------------------------------------------------


class Extension(NamedTuple):
    oid: str
    critical: bool
    value: bytes
    """The extension's own DER (the content of extnValue)."""


values.compare_by_type(NameAttribute, PublicKeyInfo, Extension)


class Certificate:
    """An X.509 certificate's fields, read from its DER bytes.

    :meth:`from_der` checks the whole structure at once (a file that loads is a certificate
    every field of which reads); :func:`as_model` of a certificate ``cryptography`` already
    accepted splits the structure and decodes each field on first use, which keeps the server's
    per-handshake rules (SN, CA flag) cheap.
    """

    __slots__ = ("__dict__", "_parts", "der")

    def __init__(self, data: bytes, parts: _Parts) -> None:
        self.der = data
        self._parts = parts

    @classmethod
    def from_der(cls, data: bytes) -> Certificate:
        """Parse every field, or raise :class:`~device_sdk.der.DERError` saying what is wrong."""
        data = bytes(data)
        cert = cls(data, _split(data, strict=True))
        for name in _FIELDS:
            getattr(cert, name)
        return cert

    @classmethod
    def _lazy(cls, data: bytes) -> Certificate:
        return cls(data, _split(data, strict=False))

    # --- fields --------------------------------------------------------------------------------

    @cached_property
    def tbs_certificate_bytes(self) -> bytes:
        return self._parts.tbs.encoded

    @cached_property
    def version(self) -> int:
        """0 for v1, 2 for v3 (the values X.509 encodes)."""
        return self._parts.version

    @cached_property
    def serial_number(self) -> int:
        return der.integer(self._parts.serial, "serialNumber")

    @cached_property
    def signature_algorithm_oid(self) -> str:
        return _algorithm_oid(self._parts.signature_algorithm, "signatureAlgorithm")

    @cached_property
    def issuer(self) -> Name:
        return _name(self._parts.issuer)

    @cached_property
    def subject(self) -> Name:
        return _name(self._parts.subject)

    @cached_property
    def not_valid_before_utc(self) -> datetime:
        return der.time(self._parts.not_before, "notBefore")

    @cached_property
    def not_valid_after_utc(self) -> datetime:
        return der.time(self._parts.not_after, "notAfter")

    @cached_property
    def public_key_info(self) -> PublicKeyInfo:
        return _public_key_info(self._parts.spki)

    @cached_property
    def extensions(self) -> tuple[Extension, ...]:
        wrapper = self._parts.extensions
        return () if wrapper is None else _extensions(wrapper)

    @cached_property
    def signature(self) -> bytes:
        value, _unused = der.bit_string(self._parts.signature, "signature")
        return value

    # --- what the rules read -------------------------------------------------------------------

    @cached_property
    def basic_constraints(self) -> tuple[bool, int | None] | None:
        """(CA flag, path length) of basicConstraints; None without the extension.

        Found by the encoded OID, without decoding the other extensions: the server reads the
        CA flag of every device certificate it sees (:meth:`from_der` still checks them all).
        """
        wrapper = self._parts.extensions
        if wrapper is None:
            return None
        outer = wrapper.reader()
        listing = outer.sequence("extensions")
        while not listing.at_end():
            entry = listing.sequence("extension")
            if entry.read(der.OID, "extension id").content == _BASIC_CONSTRAINTS_DER:
                entry.optional(der.BOOLEAN, "basicConstraints: critical")
                return _basic_constraints(entry.read(der.OCTET_STRING, "basicConstraints").content)
        return None

    @property
    def is_ca(self) -> bool:
        constraints = self.basic_constraints
        return constraints is not None and constraints[0]

    @property
    def fingerprint_sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    def pem(self) -> bytes:
        return self.pem_of(self.der)

    @staticmethod
    def pem_of(data: bytes) -> bytes:
        """PEM armour around certificate DER: 64-character lines, as OpenSSL writes it."""
        body = base64.b64encode(data)
        lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"

    def to_cryptography(self) -> x509.Certificate:
        """The same certificate as a ``cryptography`` object (imports it: sign/verify only)."""
        from cryptography import x509

        return x509.load_der_x509_certificate(self.der)

    # --- equality by bytes ---------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Certificate):
            return self.der == other.der
        other_der = foreign_der(other)
        return NotImplemented if other_der is None else self.der == other_der

    def __hash__(self) -> int:
        return hash(self.der)

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("der", "_parts") and not hasattr(self, name):  # __init__ only
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"Certificate is immutable (cannot set {name})")

    def __repr__(self) -> str:
        return (
            f"<Certificate(subject={self.subject.rfc4514_string()!r}, "
            f"serial_number={self.serial_number:#x})>"
        )


_FIELDS = (
    "serial_number",
    "issuer",
    "subject",
    "not_valid_before_utc",
    "not_valid_after_utc",
    "public_key_info",
    "extensions",
    "signature",
    "basic_constraints",
)


class _HasPublicBytes(Protocol):
    def public_bytes(self, encoding: Any) -> bytes: ...


def foreign_der(cert: object) -> bytes | None:
    """The DER of a ``cryptography`` certificate, or None for anything else.

    Looked up by module name: if ``cert`` is one, ``cryptography`` is already imported, and if
    it is not, nothing here imports it.
    """
    kind = type(cert)
    if kind.__name__ != "Certificate" or not kind.__module__.startswith("cryptography"):
        return None
    from cryptography.hazmat.primitives.serialization import Encoding

    certificate: _HasPublicBytes = cert  # type: ignore[assignment]
    return certificate.public_bytes(Encoding.DER)


def as_model(cert: Certificate | x509.Certificate) -> Certificate:
    """``cert`` as the model: itself, or a ``cryptography`` certificate read by its DER bytes.

    Fields of the latter are decoded on first use (``cryptography`` has accepted the bytes).
    The server applies several rules to one certificate per handshake, and reads it again at
    CONNECT: the last object and a few recent DERs are remembered, so it is read once.
    """
    if isinstance(cert, Certificate):
        return cert
    last = _last
    if last is not None and last[0] is cert:
        return last[1]
    data = foreign_der(cert)
    if data is None:
        raise TypeError(f"not a certificate: {type(cert).__name__}")
    model = _recent(data)
    globals()["_last"] = (cert, model)
    return model


_last: tuple[object, Certificate] | None = None


def remember_model(cert: x509.Certificate, data: bytes) -> Certificate:
    """The model of ``cert``, a ``cryptography`` certificate whose DER ``data`` the caller
    already holds (the server's TLS engine and CONNECT): read from ``data``, and remembered so
    that :func:`as_model` of ``cert`` returns it without serialising ``cert`` again."""
    model = _recent(data)
    globals()["_last"] = (cert, model)
    return model


@lru_cache(maxsize=64)
def _recent(data: bytes) -> Certificate:
    return Certificate._lazy(data)


class _Parts(NamedTuple):
    """Where each field of a certificate lies: the structure, checked; values not decoded."""

    tbs: der.Element
    version: int
    serial: der.Element
    signature_algorithm: der.Element
    issuer: der.Element
    not_before: der.Element
    not_after: der.Element
    subject: der.Element
    spki: der.Element
    extensions: der.Element | None
    signature: der.Element


def _split(data: bytes, *, strict: bool) -> _Parts:
    """The structure; ``strict`` also checks both AlgorithmIdentifiers (``cryptography``
    checked them already for a certificate it holds)."""
    outer = der.read_single(data, der.SEQUENCE, "certificate")
    top = outer.reader()
    tbs_element = top.read(der.SEQUENCE, "tbsCertificate")
    outer_algorithm = top.read(der.SEQUENCE, "signatureAlgorithm")
    if strict:
        _algorithm_oid(outer_algorithm, "signatureAlgorithm")
    signature = top.read(der.BIT_STRING, "signature")
    top.finish("certificate")

    tbs = tbs_element.reader()
    version = 0
    explicit = tbs.optional(der.context(0), "version")
    if explicit is not None:
        inner = explicit.reader()
        version = der.integer(inner.read(der.INTEGER, "version"), "version")
        inner.finish("version")
        if version == 0:
            raise DERError("version: v1 is the default and must be omitted in DER")
        if version not in (0, 2):
            raise DERError(f"version: {version} is not X.509 v1 or v3")
    serial = tbs.read(der.INTEGER, "serialNumber")
    # Not compared with the outer one (RFC 5280 wants them equal; cryptography does not check,
    # and a verifier refuses the signature anyway).
    inner_algorithm = tbs.read(der.SEQUENCE, "signature")
    if strict:
        _algorithm_oid(inner_algorithm, "signature")
    issuer = tbs.read(der.SEQUENCE, "issuer")
    validity = tbs.sequence("validity")
    not_before = validity.read(None, "notBefore")
    not_after = validity.read(None, "notAfter")
    validity.finish("validity")
    subject = tbs.read(der.SEQUENCE, "subject")
    spki = tbs.read(der.SEQUENCE, "subjectPublicKeyInfo")
    for number, what in ((1, "issuerUniqueID"), (2, "subjectUniqueID")):
        unique = tbs.optional(der.context(number, constructed=False), what)
        if unique is not None:
            der.bit_string(unique, what)
    extensions = tbs.optional(der.context(3), "extensions")
    tbs.finish("tbsCertificate")
    return _Parts(
        tbs_element,
        version,
        serial,
        outer_algorithm,
        issuer,
        not_before,
        not_after,
        subject,
        spki,
        extensions,
        signature,
    )


def _algorithm_oid(element: der.Element, what: str) -> str:
    algorithm = element.reader()
    oid = der.oid(algorithm.read(der.OID, what))
    parameters = None if algorithm.at_end() else algorithm.read(None, f"{what}: parameters").encoded
    algorithm.finish(what)
    _check_parameters(oid, parameters, what)
    return oid


#: Algorithms whose parameters are NULL or absent (RSA), or absent (ECDSA, EdDSA): other
#: parameters make the AlgorithmIdentifier invalid (RFC 3279, 5758, 8410). The RSA signature
#: algorithms listed are those cryptography itself parses strictly (SHA-1 and SHA-2); for the
#: others (MD2, MD4, MD5, SHA-512/224, SHA-512/256) it accepts any parameters and refuses them
#: only when asked to verify, so the model does the same and both readers refuse the same bytes.
_NULL_OR_ABSENT = frozenset(
    {RSA_ENCRYPTION} | {f"1.2.840.113549.1.1.{n}" for n in (5, 11, 12, 13, 14)}
)
_ABSENT = frozenset(
    {f"1.2.840.10045.4.3.{n}" for n in (1, 2, 3, 4)}
    | {f"2.16.840.1.101.3.4.3.{n}" for n in range(1, 17)}
    | {"1.2.840.10045.4.1", "1.3.101.112", "1.3.101.113"}
)


def _check_parameters(oid: str, parameters: bytes | None, what: str) -> None:
    if parameters is None:
        return
    if oid in _ABSENT or (oid in _NULL_OR_ABSENT and parameters != b"\x05\x00"):
        raise DERError(f"{what}: parameters not allowed for {oid}")
    # EC keys: a named curve (OID), implicitlyCA (NULL) or specified parameters (SEQUENCE).
    if oid == EC_PUBLIC_KEY and parameters[0] not in (der.OID, der.NULL, der.SEQUENCE):
        raise DERError(f"{what}: EC parameters must name a curve")
    if oid == EC_PUBLIC_KEY and parameters[0] == der.OID:
        # A named curve must be a well-formed OID (cryptography refuses the certificate
        # otherwise): checked here so that both readers refuse the same bytes.
        der.oid(der.read_single(parameters, der.OID, f"{what}: named curve"), f"{what}: curve")


def _extensions(wrapper: der.Element) -> tuple[Extension, ...]:
    outer = wrapper.reader()
    listing = outer.sequence("extensions")
    outer.finish("extensions")
    found: list[Extension] = []
    seen: set[str] = set()
    while not listing.at_end():
        entry = listing.sequence("extension")
        oid = der.oid(entry.read(der.OID, "extension id"))
        critical = False
        flag = entry.optional(der.BOOLEAN, f"extension {oid}: critical")
        if flag is not None:
            critical = der.boolean(flag, f"extension {oid}: critical")
            if not critical:
                raise DERError(f"extension {oid}: critical FALSE must be omitted in DER")
        value = entry.read(der.OCTET_STRING, f"extension {oid}: value").content
        entry.finish(f"extension {oid}")
        if oid in seen:
            raise DERError(f"extension {oid} appears twice")
        seen.add(oid)
        found.append(Extension(oid, critical, value))
    return tuple(found)


def _basic_constraints(value: bytes) -> tuple[bool, int | None]:
    what = "basicConstraints"
    body = der.read_single(value, der.SEQUENCE, what).reader()
    ca = False
    flag = body.optional(der.BOOLEAN, what)
    if flag is not None:
        ca = der.boolean(flag, what)
        if not ca:
            raise DERError(f"{what}: cA FALSE must be omitted in DER")
    path = body.optional(der.INTEGER, what)
    path_length = None if path is None else der.integer(path, what)
    if path_length is not None and path_length < 0:
        raise DERError(f"{what}: negative path length")
    body.finish(what)
    return ca, path_length


# --- PEM ---------------------------------------------------------------------------------------

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)


def pem_blocks(data: bytes, label: bytes) -> list[bytes]:
    """The decoded bodies of every ``-----BEGIN <label>-----`` block, in order.

    Raises :class:`ValueError` when a block's body is not base64 (header lines such as
    ``Proc-Type`` are allowed only in key blocks, which the caller reads itself).
    """
    bodies = []
    for match in _PEM_BLOCK.finditer(data):
        if match.group(1) != label:
            continue
        body = match.group(2)
        try:
            bodies.append(base64.b64decode(b"".join(body.split()), validate=True))
        except binascii.Error as exc:
            raise ValueError(f"the {label.decode()} block is not base64 ({exc})") from exc
    return bodies
