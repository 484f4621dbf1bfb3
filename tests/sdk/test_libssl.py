"""device_sdk.libssl: the system OpenSSL that ssl uses, reached for the calls ssl lacks.

Everything here runs on the real library (no doubles): the handles must be the ones ``_ssl``
mapped, pointers are checked before use, and each call does what its caller relies on.
"""

from __future__ import annotations

import ctypes
import platform
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest

from device_sdk import libssl
from tests.sdk.conftest import PK

pytestmark = pytest.mark.skipif(
    sys.implementation.name != "cpython" or platform.system() != "Linux",
    reason="the system OpenSSL is reached this way on CPython on Linux only",
)


@pytest.fixture(scope="module")
def lib() -> libssl.LibSsl:
    found = libssl.system_libssl()
    assert found is not None, libssl.unavailable_reason()
    return found


def test_the_library_is_the_one_ssl_uses(lib: libssl.LibSsl) -> None:
    assert lib.crypto.OpenSSL_version(0).decode() == ssl.OPENSSL_VERSION
    assert Path(lib.path).name.startswith("libssl"), lib.path  # where its functions' code lies
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pointer = lib.ctx_pointer(context)
    # a change made through ssl is seen through the pointer, and the other way round
    context.options |= ssl.OP_NO_TICKET
    assert lib.ssl.SSL_CTX_get_options(pointer) == context.options
    lib.session_cache_off(context)
    assert lib.ssl.SSL_CTX_ctrl(pointer, 45, 0, None) == 0  # SSL_CTRL_GET_SESS_CACHE_MODE


def test_a_check_that_fails_is_a_reason_not_handles() -> None:
    # The version check, run on the real library against a version text that is not its own:
    # the answer names both texts (what system_libssl logs and unavailable_reason says).
    found = libssl.find_libssl(expected_version="OpenSSL 0.9.8zh not this one")
    assert isinstance(found, str), found
    assert "0.9.8zh" in found and ssl.OPENSSL_VERSION in found


def test_objects_of_another_kind_are_refused_before_any_pointer_is_read(
    lib: libssl.LibSsl,
) -> None:
    with pytest.raises(TypeError, match=r"an ssl\.SSLContext is needed, not MemoryBIO"):
        lib.ctx_pointer(ssl.MemoryBIO())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"an ssl\.MemoryBIO is needed, not SSLContext"):
        lib.bio_pointer(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # type: ignore[arg-type]


def test_a_buffer_is_released_only_when_nothing_waits_in_it(lib: libssl.LibSsl) -> None:
    bio = ssl.MemoryBIO()
    bio.write(b"x" * 5000)
    assert not lib.release_buffer(bio)
    assert bio.read(10) == b"x" * 10 and bio.pending == 4990  # nothing lost
    bio.read()
    assert lib.release_buffer(bio)
    bio.write(b"after")  # the fresh buffer works
    assert bio.read() == b"after"


def _der(pair: Any) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization

    cert = pair.certificate.public_bytes(serialization.Encoding.DER)
    key = pair.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return cert, key


def _chain_length(lib: libssl.LibSsl, context: ssl.SSLContext) -> int:
    """How many chain certificates the context sends after its own (SSL_CTX_get0_chain_certs)."""
    stack = ctypes.c_void_p()
    assert lib.ssl.SSL_CTX_ctrl(lib.ctx_pointer(context), 115, 0, ctypes.byref(stack)) == 1
    if not stack.value:
        return 0
    count = lib.crypto.OPENSSL_sk_num
    count.argtypes, count.restype = [ctypes.c_void_p], ctypes.c_int
    return int(count(stack))


def test_a_pair_is_loaded_from_der_and_a_foreign_key_is_refused(
    lib: libssl.LibSsl, pki: Any
) -> None:
    one, other = pki.device(PK, "sensor01"), pki.device(PK, "sensor02")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert lib.use_pair_der(context, *_der(one))
    assert not lib.use_pair_der(context, _der(one)[0], _der(other)[1])
    # OpenSSL's error queue (per thread) is left empty: ssl would otherwise report the stale
    # error as the cause of this thread's next failure.
    peek = lib.crypto.ERR_peek_error
    peek.argtypes, peek.restype = [], ctypes.c_ulong
    assert peek() == 0


def test_a_der_pair_drops_the_chain_an_earlier_pair_left_in_the_context(
    lib: libssl.LibSsl, pki: Any, tmp_path: Path
) -> None:
    # A shared context: one pair loaded from files with its CA as a chain, then another as DER.
    cert, key, _pair = pki.write_device(PK, "sensor01", directory=tmp_path)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(cert.read_bytes() + pki.ca.cert_pem())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(chain, key)
    assert _chain_length(lib, context) == 1
    assert lib.use_pair_der(context, *_der(pki.device(PK, "sensor02")))
    assert _chain_length(lib, context) == 0  # the second device sends its certificate alone
