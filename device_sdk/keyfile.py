"""A device's private key, read and checked without ``cryptography``: OpenSSL (``ssl``) uses it.

A device needs its key for one thing, the TLS handshake, and the ``ssl`` module's OpenSSL can
load it. So the key stays the bytes the user gave (PEM; DER is re-armoured), and the checks
that must happen before any network traffic are made here:

- the format (PKCS#1, PKCS#8, SEC1; PEM or DER; encrypted or not) and the key type, read with
  the SDK's DER reader (:mod:`device_sdk.der`) when the key is not encrypted;
- the RSA key's consistency (``p*q == n``, the CRT values, ``e*d = 1 mod lcm(p-1, q-1)``): what
  OpenSSL's RSA check finds in a damaged key, in pure Python, in microseconds;
- the pair: :func:`load_pair` loads chain and key into an ``ssl.SSLContext``, and OpenSSL
  refuses a key that is not the certificate's (and decrypts an encrypted one, so a wrong
  password shows here). Its errors are mapped once, here, to the SDK's.

``ssl`` can load a key only from a path: :func:`openssl_paths` gives OpenSSL one that stores
the key in no file system, gone as soon as ``load_cert_chain`` returns (how, on Linux and
elsewhere, is said there). An encrypted key stays encrypted on the way.

An encrypted key's type and consistency are not visible before decryption, which needs
``cryptography``: with ``check_rsa_key`` (the default) such a key is also read by
:func:`device_sdk.certs.load_private_key`, lazily; ``check_rsa_key=False`` leaves it to OpenSSL.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import os
import re
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from device_sdk import der, values
from device_sdk.certificate import EC_PUBLIC_KEY, RSA_ENCRYPTION, Certificate
from device_sdk.der import DERError
from device_sdk.errors import (
    CredentialError,
    KeyFormatError,
    KeyMismatchError,
    KeyPasswordError,
)

_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----\r?\n(.*?)"
    rb"-----END \1-----",
    re.DOTALL,
)
_UNREADABLE = "not a readable private key (PKCS#1, PKCS#8 or SEC1, PEM or DER)"
_KINDS = {EC_PUBLIC_KEY: "EC", "1.2.840.10040.4.1": "DSA", "1.3.101.112": "Ed25519"}


class DeviceKey(NamedTuple):
    """A private key as OpenSSL will load it, with what could be learnt before decryption."""

    pem: bytes
    """One PEM block: as given, or DER re-armoured; encrypted keys stay encrypted."""
    source: str
    encrypted: bool
    kind: str | None
    """``RSA``, ``EC``, ...; None for an encrypted key (unknown until decrypted)."""
    password: bytes | None = None
    rsa_public: tuple[int, int] | None = None
    """(n, e) when known before OpenSSL loads the key (an RSA key read here)."""

    def __repr__(self) -> str:  # never the key or its password
        return f"DeviceKey(source={self.source!r}, kind={self.kind!r}, encrypted={self.encrypted})"


values.compare_by_type(DeviceKey)


def read_key(
    data: bytes,
    *,
    password: bytes | str | None = None,
    source: str = "private key",
    check_rsa_key: bool = True,
) -> DeviceKey:
    """Read a key file's bytes; raise the SDK's errors for what is wrong with them."""
    if isinstance(password, str):
        password = password.encode()
    if not data.strip():
        raise KeyFormatError(f"{source}: the file is empty", source=source)
    if b"-----BEGIN" in data:
        if b"PRIVATE KEY-----" not in data:
            raise KeyFormatError(
                f"{source}: PEM file holds no PRIVATE KEY block (is it a certificate?)",
                source=source,
            )
        label, body, legacy_encrypted, pem = _pem_key(data, source)
    else:
        body, legacy_encrypted = data, False
        label = _der_label(body, source)
        pem = _armour(label, body)
    encrypted = legacy_encrypted or label == "ENCRYPTED PRIVATE KEY"
    if encrypted and password is None:
        raise KeyPasswordError(f"{source}: the key is encrypted; give its password", source=source)
    if not encrypted and password is not None:
        raise KeyPasswordError(
            f"{source}: the key is not encrypted, but a password was given", source=source
        )
    kind: str | None = None
    public: tuple[int, int] | None = None
    if not encrypted:
        kind, numbers = _key_kind(label, body, source)
        if numbers is not None:
            public = (numbers[0], numbers[1])
            if check_rsa_key:
                _check_rsa_consistency(numbers, source)
    key = DeviceKey(pem, source, encrypted, kind, password, public)
    if encrypted and check_rsa_key:
        key = _checked_by_cryptography(key)
    return key


def _pem_key(data: bytes, source: str) -> tuple[str, bytes, bool, bytes]:
    """(label, DER body, legacy-encrypted, the block alone) of the first key block."""
    match = _KEY_BLOCK.search(data)
    if match is None:
        raise KeyFormatError(f"{source}: {_UNREADABLE}", source=source)
    label = match.group(1).decode("ascii")
    text = match.group(2)
    legacy_encrypted = False
    if b":" in text.split(b"\n\n", 1)[0] and b"Proc-Type" in text:
        headers, _sep, text = text.partition(b"\n\n")
        legacy_encrypted = b"ENCRYPTED" in headers
        if not legacy_encrypted:
            raise KeyFormatError(f"{source}: {_UNREADABLE}", source=source)
    block = match.group(0) + b"\n"
    if legacy_encrypted:
        return label, b"", True, block
    try:
        body = base64.b64decode(b"".join(text.split()), validate=True)
    except binascii.Error as exc:
        raise KeyFormatError(f"{source}: {_UNREADABLE}", source=source) from exc
    return label, body, False, block


def _der_label(body: bytes, source: str) -> str:
    """The PEM label of a DER key, by its structure."""
    try:
        top = der.read_single(body, der.SEQUENCE, "private key").reader()
        first = top.read(None, "private key")
        if first.tag == der.SEQUENCE:
            return "ENCRYPTED PRIVATE KEY"
        version = der.integer(first) if first.tag == der.INTEGER else -1
        second = top.read(None, "private key")
        if version in (0, 1) and second.tag == der.SEQUENCE:
            return "PRIVATE KEY"
        if version == 0 and second.tag == der.INTEGER:
            return "RSA PRIVATE KEY"
        if version == 1 and second.tag == der.OCTET_STRING:
            return "EC PRIVATE KEY"
    except DERError as exc:
        raise KeyFormatError(f"{source}: {_UNREADABLE}", source=source) from exc
    raise KeyFormatError(f"{source}: {_UNREADABLE}", source=source)


def _armour(label: str, body: bytes) -> bytes:
    text = base64.b64encode(body)
    lines = b"\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    tag = label.encode("ascii")
    return b"-----BEGIN " + tag + b"-----\n" + lines + b"\n-----END " + tag + b"-----\n"


def _key_kind(label: str, body: bytes, source: str) -> tuple[str, list[int] | None]:
    """(kind, RSA numbers n e d p q dp dq qinv or None) of an unencrypted key."""
    try:
        if label == "RSA PRIVATE KEY":
            return "RSA", _rsa_numbers(body)
        if label == "EC PRIVATE KEY":
            der.read_single(body, der.SEQUENCE, "EC private key")
            return "EC", None
        if label == "DSA PRIVATE KEY":
            return "DSA", None
        info = der.read_single(body, der.SEQUENCE, "PKCS#8").reader()
        der.integer(info.read(der.INTEGER, "PKCS#8 version"))
        algorithm = info.sequence("PKCS#8 algorithm")
        oid = der.oid(algorithm.read(der.OID, "PKCS#8 algorithm"))
        inner = info.read(der.OCTET_STRING, "PKCS#8 key").content
        if oid == RSA_ENCRYPTION:
            return "RSA", _rsa_numbers(inner)
        return _KINDS.get(oid, "unsupported"), None
    except DERError as exc:
        raise KeyFormatError(f"{source}: {_UNREADABLE}", source=source) from exc


def _rsa_numbers(body: bytes) -> list[int]:
    key = der.read_single(body, der.SEQUENCE, "RSA private key").reader()
    version = der.integer(key.read(der.INTEGER, "RSA key version"))
    if version != 0:
        raise DERError("RSA private key: multi-prime keys are not supported")
    numbers = [der.integer(key.read(der.INTEGER, "RSA key")) for _ in range(8)]
    key.finish("RSA private key")
    return numbers


def _check_rsa_consistency(numbers: list[int], source: str) -> None:
    """What OpenSSL's RSA_check_key verifies of the key's arithmetic (not primality)."""
    n, e, d, p, q, dp, dq, qinv = numbers
    problem = None
    if min(numbers) <= 0 or p * q != n:
        problem = "its primes do not multiply to its modulus"
    elif e * d % math.lcm(p - 1, q - 1) != 1:
        problem = "its private exponent does not invert its public exponent"
    elif dp != d % (p - 1) or dq != d % (q - 1) or qinv * q % p != 1:
        problem = "its CRT values are wrong"
    if problem:
        raise KeyFormatError(f"{source}: the RSA key is damaged: {problem}", source=source)


def _checked_by_cryptography(key: DeviceKey) -> DeviceKey:
    """An encrypted key: decrypt it once with ``cryptography`` to learn its type and check it."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from device_sdk.certs import load_private_key

    loaded = load_private_key(key.pem, password=key.password, source=key.source)
    kind = type(loaded).__name__.removeprefix("_").replace("PrivateKey", "")
    public = None
    if isinstance(loaded, rsa.RSAPrivateKey):
        numbers = loaded.public_key().public_numbers()
        public = (numbers.n, numbers.e)
    return DeviceKey(key.pem, key.source, True, kind, key.password, public)


# --- into OpenSSL ------------------------------------------------------------------------------


def require_pair(key: DeviceKey, leaf: Certificate) -> None:
    """The key is the certificate's: compared here when the key's public half is known (the
    message is then the same on every platform), and by OpenSSL in :func:`load_pair` always."""
    info = leaf.public_key_info
    if key.rsa_public is not None and key.rsa_public != (info.rsa_modulus, info.rsa_exponent):
        from device_sdk.certs import certificate_sn, mismatch_message

        raise KeyMismatchError(
            mismatch_message(key.source, certificate_sn(leaf)), source=key.source
        )


def load_pair(context: ssl.SSLContext, chain_pem: bytes, key: DeviceKey, *, sn: str) -> None:
    """Load the chain and key into ``context``: OpenSSL checks that the key is the certificate's.

    ``sn`` names the certificate in the mismatch message.
    """

    def no_password() -> bytes:  # never let OpenSSL prompt on a terminal
        raise KeyPasswordError(
            f"{key.source}: the key is encrypted; give its password", source=key.source
        )

    with openssl_paths(chain_pem, key.pem) as (chain_path, key_path):
        try:
            context.load_cert_chain(chain_path, key_path, password=key.password or no_password)
        except ssl.SSLError as exc:
            raise _mapped(exc, key, sn) from exc
        except OSError as exc:  # through a pipe, OpenSSL's reason comes back as an errno
            raise CredentialError(
                f"{key.source}: OpenSSL cannot use this key with the certificate (SN {sn}): a "
                f"wrong password, or the key of another certificate ({exc})",
                source=key.source,
            ) from exc


def _mapped(exc: ssl.SSLError, key: DeviceKey, sn: str) -> CredentialError:
    from device_sdk.certs import mismatch_message

    # ``reason`` is None for codes CPython's table lacks; the text then says it ("PEM lib").
    reason = f"{exc.reason} {exc}".upper().replace(" ", "_")
    source = key.source
    if "KEY_VALUES_MISMATCH" in reason:
        return KeyMismatchError(mismatch_message(source, sn), source=source)
    # OpenSSL 3 reports a failed decryption as a PEM_LIB error (older: BAD_DECRYPT).
    if key.encrypted and any(word in reason for word in ("DECRYPT", "PASSWORD", "PEM_LIB")):
        return KeyPasswordError(f"{source}: wrong password for the encrypted key", source=source)
    return CredentialError(
        f"OpenSSL refused the device certificate/key from {source}: {exc.reason or exc}",
        source=source,
    )


@contextlib.contextmanager
def openssl_paths(chain_pem: bytes, key_pem: bytes) -> Iterator[tuple[str, str]]:
    """Paths OpenSSL can read the chain and the key from, for this process only, gone after.

    Linux: two anonymous in-memory files (``memfd``). Elsewhere: a private 0700 directory with
    the chain in a 0600 file and the key in a named pipe, written by a thread as OpenSSL reads:
    the key passes through the kernel and is never stored in a file system.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and Path("/proc/self/fd").is_dir():
        flags = getattr(os, "MFD_CLOEXEC", 0)
        chain_fd = memfd_create("iotx509-device-chain", flags)
        try:
            key_fd = memfd_create("iotx509-device-key", flags)
            try:
                os.write(chain_fd, chain_pem)
                os.write(key_fd, key_pem)
                yield f"/proc/self/fd/{chain_fd}", f"/proc/self/fd/{key_fd}"
            finally:
                os.close(key_fd)
        finally:
            os.close(chain_fd)
        return
    directory = tempfile.mkdtemp(prefix="iotx509-tls-")  # mode 0700
    try:
        chain_path = os.path.join(directory, "chain.pem")
        fd = os.open(chain_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(chain_pem)
        key_path = os.path.join(directory, "key.pem")
        os.mkfifo(key_path, 0o600)
        writer = threading.Thread(target=_feed, args=(key_path, key_pem), daemon=True)
        writer.start()
        try:
            yield chain_path, key_path
        finally:
            # If OpenSSL never opened the pipe, the writer still waits for a reader: be it.
            reader = os.open(key_path, os.O_RDONLY | os.O_NONBLOCK)
            writer.join(5.0)
            os.close(reader)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _feed(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as pipe:
            pipe.write(data)
    except OSError:  # nobody read it (OpenSSL stopped at the chain): nothing to deliver
        pass
