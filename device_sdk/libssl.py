"""The OpenSSL that :mod:`ssl` runs on, for the few calls :mod:`ssl` does not offer.

Why: the kit's TLS runs on the system OpenSSL that :mod:`ssl` is linked to, which costs half the
memory per connection of the OpenSSL bundled with ``cryptography`` (8.4 against 16.0 KiB per
bare server connection, measured in ``docs/scaling.md``). Three things ``ssl`` lacks are then
needed, and this module reaches them through :mod:`ctypes` on the *same* library:

- the reference server decides which registered CA issued a device certificate by key, in a
  certificate-verify callback (``SSL_CTX_set_cert_verify_callback``), never by OpenSSL's choice
  of an issuer by name (:mod:`server_stub.mqtt.tls_system`);
- a memory BIO gives back the buffer of the largest flight it carried (``BIO_set_mem_buf``), so
  an idle connection keeps no handshake-sized buffers;
- the fleet simulator loads a device's pair from DER (``SSL_CTX_use_*_ASN1``), 3x cheaper than
  ``load_cert_chain``'s PEM decoding on OpenSSL 3.0.

The risk, and how it is contained: the ``SSL_CTX*`` and ``BIO*`` of :mod:`ssl`'s objects are
read from CPython's object layout (the first field after the object header). :func:`system_libssl`
therefore checks, once per process, that the library found is the one ``_ssl`` mapped (same
path in ``/proc/self/maps``, same version text as :data:`ssl.OPENSSL_VERSION`), and every
pointer read is checked against what :mod:`ssl` itself reports (a context's options and verify
mode, a BIO's pending byte count) before it is used. When any check fails, :func:`system_libssl`
returns None with the reason in :func:`unavailable_reason`, and callers take their portable path.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import ssl
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger("device_sdk.libssl")

#: ``int (*)(X509_STORE_CTX *, void *)``: OpenSSL's certificate-verify callback.
CERT_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_SESS_CACHE_OFF = 0
_BIO_CTRL_PENDING = 10
_BIO_C_SET_BUF_MEM = 114
_BIO_CLOSE = 1
X509_V_FLAG_PARTIAL_CHAIN = 0x80000
X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20

_HEADER = object.__basicsize__  # PyObject_HEAD: where a CPython object's first field starts


class LibSsl:
    """Typed handles on the ``libssl`` and ``libcrypto`` that :mod:`ssl` uses."""

    def __init__(self, libssl: ctypes.CDLL, libcrypto: ctypes.CDLL) -> None:
        self.ssl = libssl
        self.crypto = libcrypto
        _declare(libssl, libcrypto)

    # --- pointers of ssl's objects, each checked before use -------------------------------------

    def ctx_pointer(self, context: ssl.SSLContext) -> int:
        """The ``SSL_CTX*`` of ``context``; ValueError when it does not check out."""
        if not isinstance(context, ssl.SSLContext):
            raise TypeError(f"an ssl.SSLContext is needed, not {type(context).__name__}")
        pointer = ctypes.c_void_p.from_address(id(context) + _HEADER).value
        if (
            not pointer
            or self.ssl.SSL_CTX_get_options(pointer) != context.options
            or self.ssl.SSL_CTX_get_verify_mode(pointer) != _verify_bits(context)
        ):
            raise ValueError("the SSL_CTX of an ssl.SSLContext is not where CPython keeps it")
        return pointer

    def bio_pointer(self, bio: ssl.MemoryBIO) -> int:
        """The ``BIO*`` of ``bio``; ValueError when it does not check out."""
        if not isinstance(bio, ssl.MemoryBIO):
            raise TypeError(f"an ssl.MemoryBIO is needed, not {type(bio).__name__}")
        pointer = ctypes.c_void_p.from_address(id(bio) + _HEADER).value
        if not pointer or self.crypto.BIO_ctrl(pointer, _BIO_CTRL_PENDING, 0, None) != bio.pending:
            raise ValueError("the BIO of an ssl.MemoryBIO is not where CPython keeps it")
        return pointer

    # --- the calls the kit needs ------------------------------------------------------------

    def release_buffer(self, bio: ssl.MemoryBIO) -> bool:
        """Give an *empty* memory BIO's buffer back (a fresh empty one replaces it). A BIO keeps
        the allocation of the largest flight that passed through it for as long as it lives;
        True when the buffer was replaced, False when bytes are waiting (nothing changed)."""
        if bio.pending:
            return False
        pointer = self.bio_pointer(bio)
        fresh = self.crypto.BUF_MEM_new()
        if not fresh:
            return False
        # BIO_set_mem_buf: frees the old buffer (the BIO owns it), takes the new one
        self.crypto.BIO_ctrl(pointer, _BIO_C_SET_BUF_MEM, _BIO_CLOSE, fresh)
        return True

    def session_cache_off(self, context: ssl.SSLContext) -> None:
        """No server-side session cache: resumption is by ticket only, and a cache would keep
        every session (with its peer certificate) of every full handshake."""
        self.ssl.SSL_CTX_ctrl(
            self.ctx_pointer(context), _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_OFF, None
        )

    def set_session_timeout(self, context: ssl.SSLContext, seconds: int) -> None:
        """The lifetime of the sessions (and so of the tickets) this context issues."""
        self.ssl.SSL_CTX_set_timeout(self.ctx_pointer(context), seconds)

    def set_cert_verify_callback(self, context: ssl.SSLContext, callback: Any) -> None:
        """Replace OpenSSL's chain verification of the peer by ``callback`` (a
        :data:`CERT_VERIFY_CALLBACK`; the caller keeps it alive as long as the context)."""
        self.ssl.SSL_CTX_set_cert_verify_callback(self.ctx_pointer(context), callback, None)

    def use_pair_der(self, context: ssl.SSLContext, cert_der: bytes, rsa_key_der: bytes) -> bool:
        """Load a certificate and its PKCS#1 RSA key (DER) into ``context``; True when OpenSSL
        took both and the key belongs to the certificate."""
        pointer = self.ctx_pointer(context)
        lib = self.ssl
        return bool(
            lib.SSL_CTX_use_certificate_ASN1(pointer, len(cert_der), cert_der) == 1
            and lib.SSL_CTX_use_RSAPrivateKey_ASN1(pointer, rsa_key_der, len(rsa_key_der)) == 1
            and lib.SSL_CTX_check_private_key(pointer) == 1
        )

    def certificate_der(self, store_ctx: int) -> bytes | None:
        """The DER of the certificate being verified (the peer's leaf)."""
        crypto = self.crypto
        cert = crypto.X509_STORE_CTX_get0_cert(store_ctx)
        if not cert:
            return None
        size = crypto.i2d_X509(cert, None)
        if size <= 0:
            return None
        buffer = ctypes.create_string_buffer(size)
        cursor = ctypes.c_char_p(ctypes.addressof(buffer))  # i2d advances it
        if crypto.i2d_X509(cert, ctypes.byref(cursor)) != size:
            return None
        return buffer.raw

    def verify_as_anchor(self, store_ctx: int) -> int:
        """OpenSSL's own checks of the leaf (dates, purpose, critical extensions), with the leaf
        itself as the only trust anchor: the issuer was already decided by key, so no chain is
        built and no certificate the client sent is considered. 0 when it passes, else the
        ``X509_V_ERR_*`` code (also set on ``store_ctx``, which picks the alert)."""
        crypto = self.crypto
        cert = crypto.X509_STORE_CTX_get0_cert(store_ctx)
        anchors = crypto.OPENSSL_sk_new_null()
        if not cert or not anchors:
            return X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        try:
            crypto.OPENSSL_sk_push(anchors, cert)  # (the stack takes no reference)
            crypto.X509_STORE_CTX_set0_trusted_stack(store_ctx, anchors)
            crypto.X509_STORE_CTX_set0_untrusted(store_ctx, None)
            crypto.X509_VERIFY_PARAM_set_flags(
                crypto.X509_STORE_CTX_get0_param(store_ctx), X509_V_FLAG_PARTIAL_CHAIN
            )
            if crypto.X509_verify_cert(store_ctx) == 1:
                return 0
            return int(crypto.X509_STORE_CTX_get_error(store_ctx)) or (
                X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
            )
        finally:
            crypto.X509_STORE_CTX_set0_trusted_stack(store_ctx, None)
            crypto.OPENSSL_sk_free(anchors)

    def refuse(self, store_ctx: int, code: int) -> None:
        """Set the verification error the handshake fails with (OpenSSL picks the alert)."""
        self.crypto.X509_STORE_CTX_set_error(store_ctx, code)

    def verify_error_text(self, code: int) -> str:
        text: bytes | None = self.crypto.X509_verify_cert_error_string(code)
        return text.decode("ascii", "replace") if text else f"OpenSSL verify error {code}"


def _verify_bits(context: ssl.SSLContext) -> int:
    """``SSL_CTX_get_verify_mode`` of a context whose ``verify_mode`` is ``context``'s."""
    mode = context.verify_mode
    if mode == ssl.CERT_NONE:
        return 0
    if mode == ssl.CERT_OPTIONAL:
        return 1  # SSL_VERIFY_PEER
    return 3  # SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT


def _declare(libssl: ctypes.CDLL, crypto: ctypes.CDLL) -> None:
    """Argument and result types: without them ctypes would truncate pointers to int."""
    p, i, long_, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_uint64
    table: list[tuple[ctypes.CDLL, str, Any, list[Any]]] = [
        (libssl, "SSL_CTX_get_options", u64, [p]),
        (libssl, "SSL_CTX_get_verify_mode", i, [p]),
        (libssl, "SSL_CTX_ctrl", long_, [p, i, long_, p]),
        (libssl, "SSL_CTX_set_timeout", long_, [p, long_]),
        (libssl, "SSL_CTX_set_cert_verify_callback", None, [p, CERT_VERIFY_CALLBACK, p]),
        (libssl, "SSL_CTX_use_certificate_ASN1", i, [p, i, ctypes.c_char_p]),
        (libssl, "SSL_CTX_use_RSAPrivateKey_ASN1", i, [p, ctypes.c_char_p, long_]),
        (libssl, "SSL_CTX_check_private_key", i, [p]),
        (crypto, "OpenSSL_version", ctypes.c_char_p, [i]),
        (crypto, "BIO_ctrl", long_, [p, i, long_, p]),
        (crypto, "BUF_MEM_new", p, []),
        (crypto, "X509_STORE_CTX_get0_cert", p, [p]),
        (crypto, "X509_STORE_CTX_set_error", None, [p, i]),
        (crypto, "X509_STORE_CTX_get_error", i, [p]),
        (crypto, "X509_STORE_CTX_set0_trusted_stack", None, [p, p]),
        (crypto, "X509_STORE_CTX_set0_untrusted", None, [p, p]),
        (crypto, "X509_STORE_CTX_get0_param", p, [p]),
        (crypto, "X509_VERIFY_PARAM_set_flags", i, [p, ctypes.c_ulong]),
        (crypto, "X509_verify_cert", i, [p]),
        (crypto, "X509_verify_cert_error_string", ctypes.c_char_p, [long_]),
        (crypto, "i2d_X509", i, [p, p]),
        (crypto, "OPENSSL_sk_new_null", p, []),
        (crypto, "OPENSSL_sk_push", i, [p, p]),
        (crypto, "OPENSSL_sk_free", None, [p]),
    ]
    for lib, name, restype, argtypes in table:
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes


_reason: list[str] = []


def unavailable_reason() -> str | None:
    """Why :func:`system_libssl` returned None (None when it did not, or was not asked)."""
    return _reason[0] if _reason else None


@lru_cache(maxsize=1)
def system_libssl() -> LibSsl | None:
    """The checked handles, once per process; None (and :func:`unavailable_reason`) when this
    Python's :mod:`ssl` cannot be reached this way."""
    try:
        found = _find()
    except (OSError, ValueError, AttributeError) as exc:
        _reason.append(str(exc))
        log.info("the system OpenSSL is not usable directly (%s); using the portable path", exc)
        return None
    return found


def _find() -> LibSsl:
    if sys.implementation.name != "cpython" or platform.system() != "Linux":
        raise ValueError(f"needs CPython on Linux (this is {sys.implementation.name})")
    paths = _mapped_libraries()
    libssl_path = next((path for path in paths if Path(path).name.startswith("libssl.so")), None)
    crypto_path = next((path for path in paths if Path(path).name.startswith("libcrypto.so")), None)
    if libssl_path is None or crypto_path is None:
        raise ValueError("ssl is not linked to a shared libssl/libcrypto")
    found = LibSsl(ctypes.CDLL(libssl_path), ctypes.CDLL(crypto_path))
    version = found.crypto.OpenSSL_version(0)
    if not version or version.decode("ascii", "replace") != ssl.OPENSSL_VERSION:
        raise ValueError(f"{crypto_path} reports {version!r}, ssl reports {ssl.OPENSSL_VERSION!r}")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    probe.verify_mode = ssl.CERT_OPTIONAL
    probe.options |= ssl.OP_NO_TICKET
    found.ctx_pointer(probe)  # raises when the layout is not CPython's
    bio = ssl.MemoryBIO()
    bio.write(b"probe")
    found.bio_pointer(bio)
    return found


def _mapped_libraries() -> list[str]:
    """Shared objects mapped into this process, in mapping order (``/proc/self/maps``)."""
    seen: list[str] = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/") and parts[5] not in seen:
            seen.append(parts[5])
    return seen
