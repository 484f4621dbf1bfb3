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
read from CPython's object layout (the first field after the object header), which is not an
API. :func:`system_libssl` therefore checks, once per process, everything the calls rely on
before anyone uses them (:func:`find_libssl`):

- the functions resolve through ``_ssl``'s own library handle: ``dlsym`` on it searches ``_ssl``
  and the libraries it was linked with, so they are those of the libssl :mod:`ssl` calls, never
  of another copy of OpenSSL loaded in the process (an earlier ``libssl.so`` in the mappings);
- their code lies in a mapped ``libssl`` file (``/proc/self/maps``), and libcrypto's version
  text equals :data:`ssl.OPENSSL_VERSION`;
- on probe objects, the pointers follow what :mod:`ssl` sets and reports, both ways (a
  context's options and verify mode, set to two different states; a BIO's pending byte count).

Every pointer read afterwards is checked the same way before it is used. When any check fails,
:func:`system_libssl` returns None with the reason in :func:`unavailable_reason`, and callers
take their portable path (the server's pyOpenSSL engine, the simulator's ``load_cert_chain``).
"""

from __future__ import annotations

import _ssl
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
_SSL_CTRL_CHAIN = 88  # ssl.h: SSL_CTX_clear_chain_certs(ctx) is SSL_CTX_ctrl(ctx, 88, 0, NULL)
_BIO_CTRL_PENDING = 10
_BIO_C_SET_BUF_MEM = 114
_BIO_CLOSE = 1
X509_V_FLAG_PARTIAL_CHAIN = 0x80000
X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20

_HEADER = object.__basicsize__  # PyObject_HEAD: where a CPython object's first field starts
_PROBE_OPTIONS = ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION


class LibSsl:
    """Typed handles on the ``libssl`` and ``libcrypto`` that :mod:`ssl` uses (as found by
    :func:`find_libssl`, both are ``_ssl``'s own handle, which reaches the functions of both)."""

    def __init__(self, libssl: ctypes.CDLL, libcrypto: ctypes.CDLL, path: str = "") -> None:
        self.ssl = libssl
        self.crypto = libcrypto
        #: the libssl file the functions were found in (for log lines); "" until checked
        self.path = path
        _declare(libssl, libcrypto)

    # --- pointers of ssl's objects, each checked before use -------------------------------------

    def ctx_pointer(self, context: ssl.SSLContext) -> int:
        """The ``SSL_CTX*`` of ``context``; ValueError when it does not check out."""
        if not isinstance(context, ssl.SSLContext):
            raise TypeError(f"an ssl.SSLContext is needed, not {type(context).__name__}")
        pointer = ctypes.c_void_p.from_address(id(context) + _HEADER).value
        if not pointer:
            raise ValueError("an ssl.SSLContext holds no SSL_CTX where CPython keeps it")
        seen = (self.ssl.SSL_CTX_get_options(pointer), self.ssl.SSL_CTX_get_verify_mode(pointer))
        expected = (int(context.options), _verify_bits(context))
        if seen != expected:
            raise ValueError(
                f"the SSL_CTX read from an ssl.SSLContext has options and verify flags {seen}; "
                f"ssl reports {expected}: it is not where CPython keeps it"
            )
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
        """Load one certificate (no chain) and its PKCS#1 RSA key, both DER, into ``context``.

        True: the context now presents this pair, and only it: chain certificates an earlier
        ``load_cert_chain`` left in the context are dropped, as ``load_cert_chain`` itself drops
        them (the simulator loads each device's pair into one shared context). False: OpenSSL
        refused it (not DER, not RSA, the key of another certificate); its error queue is then
        cleared, since :mod:`ssl` would report a stale error as the cause of this thread's next
        failure, and the context may hold the certificate without a key: load the pair the
        usual way, which says why."""
        pointer = self.ctx_pointer(context)
        lib = self.ssl
        if (
            len(cert_der) < 2**31  # its length is a C int
            and lib.SSL_CTX_use_certificate_ASN1(pointer, len(cert_der), cert_der) == 1
            and lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_CHAIN, 0, None) == 1
            and lib.SSL_CTX_use_RSAPrivateKey_ASN1(pointer, rsa_key_der, len(rsa_key_der)) == 1
            and lib.SSL_CTX_check_private_key(pointer) == 1
        ):
            return True
        self.crypto.ERR_clear_error()
        return False

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
        (crypto, "ERR_clear_error", None, []),
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
    found = find_libssl()
    if isinstance(found, str):
        _reason.append(found)
        log.info("the system OpenSSL is not usable directly (%s); using the portable path", found)
        return None
    log.debug("the system OpenSSL is reached through %s", found.path)
    return found


def find_libssl(expected_version: str = ssl.OPENSSL_VERSION) -> LibSsl | str:
    """Run every check of the module docstring now: the handles, or why they cannot be used.

    :func:`system_libssl` is this, once per process and with :data:`ssl.OPENSSL_VERSION`; a
    test passes another ``expected_version`` to see a check fail on the real library."""
    try:
        return _find(expected_version)
    except (OSError, ValueError, AttributeError) as exc:
        # OSError: no library to open or no /proc/self/maps; AttributeError: a missing symbol
        return str(exc) or type(exc).__name__


def _find(expected_version: str) -> LibSsl:
    if sys.implementation.name != "cpython" or platform.system() != "Linux":
        raise ValueError(f"needs CPython on Linux (this is {sys.implementation.name})")
    ssl_file: str | None = getattr(_ssl, "__file__", None)  # None: _ssl is built into python
    handle = ctypes.CDLL(ssl_file)  # dlsym searches _ssl, then the libraries it was linked with
    found = LibSsl(handle, handle)
    version = found.crypto.OpenSSL_version(0)
    if not version or version.decode("ascii", "replace") != expected_version:
        raise ValueError(
            f"the OpenSSL that _ssl resolves to says {version!r}, ssl.OPENSSL_VERSION is "
            f"{expected_version!r}"
        )
    address = ctypes.cast(found.ssl.SSL_CTX_use_certificate_ASN1, ctypes.c_void_p).value or 0
    found.path = _mapped_file(address)
    if not Path(found.path).name.startswith("libssl"):
        raise ValueError(f"SSL_CTX_use_certificate_ASN1 resolves into {found.path!r}, not a libssl")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Two states, each bit set one way and then the other: a pointer that only happened to match
    # would have to follow both (ctx_pointer raises when it does not).
    for options, verify in ((_PROBE_OPTIONS, ssl.CERT_OPTIONAL), (0, ssl.CERT_NONE)):
        probe.verify_mode = verify
        probe.options = (probe.options & ~_PROBE_OPTIONS) | options
        found.ctx_pointer(probe)
    bio = ssl.MemoryBIO()
    bio.write(b"probe")
    found.bio_pointer(bio)
    return found


def _mapped_file(address: int) -> str:
    """The file mapped at ``address`` in this process (``/proc/self/maps``); "" for an
    anonymous mapping."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, _sep, high = fields[0].partition("-")
        if int(low, 16) <= address < int(high, 16):
            return fields[5] if len(fields) == 6 else ""
    raise ValueError(f"no mapping of this process holds address 0x{address:x}")
