"""A device's certificate and key loaded from DER into an ``ssl.SSLContext`` by libssl's own calls.

Why: a simulated device loads its pair into the process's shared context right before each
connection (:mod:`simulator.device_tls`). ``SSLContext.load_cert_chain`` takes only file paths,
and with OpenSSL 3.0 its PEM path builds a decoder context per key: about 0.55 ms per connect
(measured 0.76 ms for files, PEM and load together), on top of a ~1.05 ms client handshake. The
same pair, given to libssl as DER (``SSL_CTX_use_certificate_ASN1``,
``SSL_CTX_use_RSAPrivateKey_ASN1``, ``SSL_CTX_check_private_key``), costs ~0.17 ms (0.27 ms
with reading both files and their PEM armour); the handshake afterwards costs the same. That
0.5 ms is most of the gap between one Locust worker and a client that reuses one loaded pair.

The risk: ``ssl`` does not expose its ``SSL_CTX``. :func:`ssl_ctx_pointer` reads it from the
CPython object (``PySSLContext``: the ``SSL_CTX *`` is the first field after ``PyObject_HEAD``),
a layout that is not an API. So :func:`validated` checks, once per process, everything the
calls rely on before any device uses them: the functions resolve through ``_ssl``'s own
library (``dlsym`` on ``_ssl``'s handle searches the libraries it was linked with, so this is
the libssl ``ssl`` uses, not another copy in the process), their code lies in a mapped libssl
file (``/proc/self/maps``, where there is one), libcrypto's version text equals
``ssl.OPENSSL_VERSION``, and on a probe context the pointer's ``SSL_CTX_get_options`` and
``SSL_CTX_get_verify_mode`` follow what Python sets. When anything does not hold (another
platform, another Python, an OpenSSL built without these calls) it logs why, once, and
:func:`load_pair_der` answers False: the caller loads from the files as before.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import ssl
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

_SSL_CTRL_CHAIN = 88  # ssl.h: SSL_CTX_clear_chain_certs(ctx) is SSL_CTX_ctrl(ctx, 88, 0, NULL)
_POINTER_OFFSET = object.__basicsize__  # PyObject_HEAD; the SSL_CTX * follows it
_PROBE_OPTIONS = ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
# What CPython sets for each verify mode: SSL_VERIFY_PEER (1), | SSL_VERIFY_FAIL_IF_NO_PEER_CERT (2).
_VERIFY_FLAGS = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}


class ValidationError(Exception):
    """One of the checks in the module docstring failed; the message says which.

    Internal to this module: :func:`validated` logs it and answers None; it never reaches a
    caller (it is a reason to take the slower path, not an error of the simulator's).
    """


class DerPairLoader:
    """libssl's pair-loading calls, typed, from the library ``_ssl`` is linked with."""

    __slots__ = ("_check", "_clear_errors", "_ctrl", "_use_cert", "_use_key", "path")

    def __init__(self, library: ctypes.CDLL, path: str) -> None:
        self.path = path
        self._use_cert = _function(
            library,
            "SSL_CTX_use_certificate_ASN1",
            [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p],
            ctypes.c_int,
        )
        self._use_key = _function(
            library,
            "SSL_CTX_use_RSAPrivateKey_ASN1",
            [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_long],
            ctypes.c_int,
        )
        self._check = _function(
            library, "SSL_CTX_check_private_key", [ctypes.c_void_p], ctypes.c_int
        )
        self._ctrl = _function(
            library,
            "SSL_CTX_ctrl",
            [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p],
            ctypes.c_long,
        )
        self._clear_errors = _function(library, "ERR_clear_error", [], None)

    def load_pair_der(self, context: ssl.SSLContext, cert_der: bytes, key_der: bytes) -> bool:
        """Load one certificate (no chain) and its PKCS#1 RSA key into ``context``.

        True: the context now presents this pair (chain certificates an earlier pair brought
        are dropped, as ``load_cert_chain`` drops them). False: OpenSSL refused it (not DER, not
        RSA, the key of another certificate); its error queue is cleared and the context may
        hold the certificate without a key: load the pair the usual way, which says why.
        """
        ctx = ssl_ctx_pointer(context)
        if (
            len(cert_der) < 2**31
            and self._use_cert(ctx, len(cert_der), cert_der) == 1
            and self._ctrl(ctx, _SSL_CTRL_CHAIN, 0, None) == 1
            and self._use_key(ctx, key_der, len(key_der)) == 1
            and self._check(ctx) == 1
        ):
            return True
        self._clear_errors()
        return False


def ssl_ctx_pointer(context: ssl.SSLContext) -> int:
    """The ``SSL_CTX *`` inside a stdlib context (see the module docstring for the risk)."""
    if not isinstance(context, _ssl._SSLContext):
        raise TypeError(f"not an ssl.SSLContext: {type(context).__name__}")
    pointer = ctypes.c_void_p.from_address(id(context) + _POINTER_OFFSET).value
    if not pointer:
        raise ValueError("the context holds no SSL_CTX")
    return pointer


def validated(expected_version: str = ssl.OPENSSL_VERSION) -> DerPairLoader | None:
    """A loader when every check of the module docstring holds; else None, with one log line."""
    try:
        return _validate(expected_version)
    except (ValidationError, OSError, AttributeError, TypeError, ValueError) as exc:
        # AttributeError: a symbol missing from the library; OSError: no library to open.
        log.warning(
            "device pairs load through ssl.SSLContext.load_cert_chain (about 0.5 ms more per "
            "connect): libssl's DER calls did not validate here (%s)",
            exc,
        )
        return None


@cache
def process_loader() -> DerPairLoader | None:
    """This process's loader, validated on first use (and logged once if not valid)."""
    loader = validated()
    if loader is not None:
        log.debug("device pairs load as DER through %s", loader.path)
    return loader


def load_pair_der(context: ssl.SSLContext, cert_der: bytes, key_der: bytes) -> bool:
    """:meth:`DerPairLoader.load_pair_der` with this process's loader; False without one."""
    loader = process_loader()
    return loader is not None and loader.load_pair_der(context, cert_der, key_der)


def _validate(expected_version: str) -> DerPairLoader:
    ssl_file = getattr(_ssl, "__file__", None)  # None: _ssl is built into the interpreter
    library = ctypes.CDLL(ssl_file)
    version = _function(library, "OpenSSL_version", [ctypes.c_int], ctypes.c_char_p)(0)
    if version is None or version.decode("ascii", "replace") != expected_version:
        raise ValidationError(
            f"the OpenSSL that _ssl resolves to says {version!r}, ssl.OPENSSL_VERSION is "
            f"{expected_version!r}"
        )
    use_cert = library.SSL_CTX_use_certificate_ASN1
    path = _mapped_file(ctypes.cast(use_cert, ctypes.c_void_p).value or 0)
    if path is not None and "libssl" not in Path(path).name:
        raise ValidationError(f"SSL_CTX_use_certificate_ASN1 resolves into {path}, not a libssl")
    _probe(library)
    return DerPairLoader(library, path or f"the OpenSSL linked with {ssl_file or 'python'}")


def _probe(library: ctypes.CDLL) -> None:
    """The pointer read from a fresh context is that context's ``SSL_CTX``: its options and
    verify flags follow what Python sets, both ways (a coincidence would have to follow both)."""
    get_options = _function(library, "SSL_CTX_get_options", [ctypes.c_void_p], ctypes.c_uint64)
    get_verify = _function(library, "SSL_CTX_get_verify_mode", [ctypes.c_void_p], ctypes.c_int)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for options, verify in ((_PROBE_OPTIONS, ssl.CERT_REQUIRED), (0, ssl.CERT_NONE)):
        probe.check_hostname = verify == ssl.CERT_REQUIRED
        probe.verify_mode = verify
        probe.options = (probe.options & ~_PROBE_OPTIONS) | options
        pointer = ssl_ctx_pointer(probe)
        seen = (get_options(pointer), get_verify(pointer))
        expected = (int(probe.options), _VERIFY_FLAGS[verify])
        if seen != expected:
            raise ValidationError(
                f"the SSL_CTX read from a probe context has options and verify flags {seen}; "
                f"Python set {expected}"
            )


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process; None where ``/proc/self/maps`` is not."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(maxsplit=5)
        low, _sep, high = fields[0].partition("-")
        if int(low, 16) <= address < int(high, 16):
            return fields[5] if len(fields) == 6 else ""
    raise ValidationError(f"no mapping holds address 0x{address:x}")


def _function(
    library: ctypes.CDLL, name: str, argtypes: list[type], restype: type | None
) -> ctypes._NamedFuncPointer:
    function = library[name]
    function.argtypes = argtypes
    function.restype = restype
    return function
