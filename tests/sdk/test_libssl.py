"""device_sdk.libssl: the system OpenSSL that ssl uses, reached for the calls ssl lacks.

Everything here runs on the real library (no doubles): the handles must be the ones ``_ssl``
mapped, pointers are checked before use, and each call does what its caller relies on.
"""

from __future__ import annotations

import platform
import ssl
import sys
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
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pointer = lib.ctx_pointer(context)
    # a change made through ssl is seen through the pointer, and the other way round
    context.options |= ssl.OP_NO_TICKET
    assert lib.ssl.SSL_CTX_get_options(pointer) == context.options
    lib.session_cache_off(context)
    assert lib.ssl.SSL_CTX_ctrl(pointer, 45, 0, None) == 0  # SSL_CTRL_GET_SESS_CACHE_MODE


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


def test_a_pair_is_loaded_from_der_and_a_foreign_key_is_refused(
    lib: libssl.LibSsl, pki: Any
) -> None:
    from cryptography.hazmat.primitives import serialization

    def der(pair: Any) -> tuple[bytes, bytes]:
        cert = pair.certificate.public_bytes(serialization.Encoding.DER)
        key = pair.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return cert, key

    one, other = pki.device(PK, "sensor01"), pki.device(PK, "sensor02")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert lib.use_pair_der(context, *der(one))
    assert not lib.use_pair_der(context, der(one)[0], der(other)[1])
