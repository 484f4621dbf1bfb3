"""A device's certificate (with any intermediates) and its RSA private key, checked before use.

Every check happens here, on the board, before any network traffic: a wrong file, a key from
another device, an EC key, a missing password or a clock stuck in 1970 are reported with a
message that names the file and says what to do, instead of surfacing later as an opaque TLS
alert. The reading and checking itself is the kit's shared certificate model
(:mod:`device_sdk.certs`) and the device key reader (:mod:`device_sdk.keyfile`); this module only
combines them for a device.

Nothing here imports ``cryptography`` (a second OpenSSL in a board's memory): the certificate is
read by the SDK's DER reader, the key is checked in pure Python and by OpenSSL through ``ssl``
(which also proves it is the certificate's). An encrypted key with ``check_key`` is the exception
(see :mod:`device_sdk.keyfile`).
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from device_sdk import certs, keyfile
from device_sdk.certificate import Certificate
from device_sdk.errors import (
    CredentialError,
    InsecureKeyFileWarning,
    KeyFormatError,
    UnsupportedKeyTypeError,
)
from device_sdk.fileio import loose_permissions
from device_sdk.identity import Identity
from device_sdk.naming import DeviceFileName
from device_sdk.store_layout import CERTIFICATE_FILE, PRIVATE_KEY_FILE, SERVER_CA_FILE

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger(__name__)

Password = bytes | str | None


@dataclass(frozen=True, eq=False)
class Credentials:
    """A checked certificate/key pair: RSA, matching, and valid at load time."""

    chain: certs.CertificateChain
    key: keyfile.DeviceKey = field(repr=False)
    cert_source: str = "certificate"
    key_source: str = "private key"
    file_name: DeviceFileName | None = None
    """ProductKey, DeviceName and CA SN read from a ``[PK]_[DN]_[CA_SN].cer`` file name; a hint
    only, the platform decides the identity."""
    server_ca: Path | None = None
    """The server CA file that came with the credentials (credential stores carry one)."""

    # --- constructors --------------------------------------------------------------------------

    @classmethod
    def from_pem(
        cls,
        certificate: bytes,
        private_key: bytes,
        password: Password = None,
        *,
        cert_source: str = "certificate",
        key_source: str = "private key",
        now: datetime | None = None,
        check_key: bool = True,
    ) -> Credentials:
        """From bytes in memory (PEM or DER certificate chain; PKCS#1/PKCS#8 key).

        ``check_key=False`` skips the RSA key consistency check, for keys this kit generated or
        checked before (fleet simulators load thousands); every other check stays, the key
        must still belong to the certificate.
        """
        chain = certs.CertificateChain.load(certificate, source=cert_source)
        key = keyfile.read_key(
            private_key, password=password, source=key_source, check_rsa_key=check_key
        )
        return cls._checked(chain, key, cert_source=cert_source, key_source=key_source, now=now)

    @classmethod
    def from_files(
        cls,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        password: Password = None,
        *,
        now: datetime | None = None,
        check_key: bool = True,
    ) -> Credentials:
        """Load ``cert`` (leaf first, intermediates after it) and ``key``, then check them.

        Warns (:class:`~device_sdk.errors.InsecureKeyFileWarning` and the log) when the key file
        is readable or writable by group or others. ``check_key``: see :meth:`from_pem`.
        """
        cert_path, key_path = Path(cert), Path(key)
        certs_list = certs.read_certificate_file(cert_path)
        chain = certs.CertificateChain(certs_list[0], tuple(certs_list[1:]))
        try:
            key_bytes = key_path.read_bytes()
        except OSError as exc:
            raise KeyFormatError(
                f"cannot read key file {key_path}: {exc.strerror or exc}", source=str(key_path)
            ) from exc
        private_key = keyfile.read_key(
            key_bytes, password=password, source=str(key_path), check_rsa_key=check_key
        )
        creds = cls._checked(
            chain,
            private_key,
            cert_source=str(cert_path),
            key_source=str(key_path),
            now=now,
            file_name=DeviceFileName.try_parse(cert_path.name),
        )
        warn_if_key_file_is_loose(key_path)
        return creds

    @classmethod
    def from_store(
        cls,
        directory: str | os.PathLike[str],
        password: Password = None,
        *,
        now: datetime | None = None,
    ) -> Credentials:
        """Load what serial provisioning wrote (:mod:`device_sdk.store_layout`)."""
        root = Path(directory)
        if not root.is_dir():
            raise CredentialError(
                f"credential store {root} does not exist or is not a directory; provision the "
                f"board first (iotx509 provision ...) or give --cert/--key",
                source=str(root),
            )
        creds = cls.from_files(root / CERTIFICATE_FILE, root / PRIVATE_KEY_FILE, password, now=now)
        server_ca = root / SERVER_CA_FILE
        return Credentials(
            creds.chain,
            creds.key,
            creds.cert_source,
            creds.key_source,
            creds.file_name,
            server_ca if server_ca.is_file() else None,
        )

    @classmethod
    def _checked(
        cls,
        chain: certs.CertificateChain,
        key: keyfile.DeviceKey,
        *,
        cert_source: str,
        key_source: str,
        now: datetime | None,
        file_name: DeviceFileName | None = None,
    ) -> Credentials:
        check_pair(chain, key, cert_source=cert_source, key_source=key_source)
        creds = cls(chain, key, cert_source, key_source, file_name)
        creds.check_validity(now)
        return creds

    # --- views ---------------------------------------------------------------------------------

    @property
    def certificate(self) -> Certificate:
        return self.chain.leaf

    @property
    def intermediates(self) -> tuple[Certificate, ...]:
        return self.chain.intermediates

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        """The key as a ``cryptography`` object, for code that signs with it (imports it)."""
        loaded = certs.load_private_key(
            self.key.pem, password=self.key.password, source=self.key_source, check_rsa_key=False
        )
        return certs.require_rsa_key(loaded, source=self.key_source)

    @property
    def sn(self) -> str:
        """The certificate's SN, canonical (lowercase hex): the default MQTT client id."""
        return self.chain.sn

    @property
    def hinted_identity(self) -> Identity | None:
        """The identity the file name suggests (never sent as username: the platform decides)."""
        if self.file_name is None:
            return None
        return Identity(self.file_name.product_key, self.file_name.device_name)

    def check_validity(self, now: datetime | None = None) -> None:
        """Raise :class:`~device_sdk.errors.ClockError` unless the certificate is valid now.

        The one validity check of the device side: at load time (a wrong file or clock is
        reported before any network traffic) and by the client before each connection attempt
        (a long-running device outlives its certificate).
        """
        certs.check_validity(
            self.chain.leaf, now=now, what=f"{self.cert_source}: the device certificate"
        )

    def __repr__(self) -> str:
        return (
            f"Credentials(sn={self.sn!r}, subject={self.certificate.subject.rfc4514_string()!r}, "
            f"cert={self.cert_source!r}, key={self.key_source!r})"
        )


def warn_if_key_file_is_loose(path: Path) -> bool:
    """Warn when group or others may read or write the key file; True if it warned."""
    try:
        if not loose_permissions(path):
            return False
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return False
    message = (
        f"private key file {path} is accessible by group or others (mode {mode:04o}); "
        f"other users of this board can copy the device's identity. Run: chmod 600 {path}"
    )
    # Once, as a warning: the application decides where warnings go (the iotx509 command
    # prints it as one line; logging.captureWarnings() sends it to the log).
    warnings.warn(message, InsecureKeyFileWarning, stacklevel=3)
    return True


def check_pair(
    chain: certs.CertificateChain,
    key: keyfile.DeviceKey,
    *,
    cert_source: str = "certificate",
    key_source: str = "private key",
) -> None:
    """THE device pair rule: an RSA certificate, an RSA key, and the key is the certificate's.

    Validity is not part of it (a board at the factory may not know the time yet); the SDK
    checks it apart (:meth:`Credentials.check_validity`). The serial board agent calls this
    before it stores a pair, so both sides refuse the same pairs with the same words, and
    neither imports ``cryptography`` for it.
    """
    certs.require_rsa(chain.leaf, what=f"{cert_source}: the device certificate")
    if key.kind is not None and key.kind != "RSA":
        raise UnsupportedKeyTypeError(
            f"{key_source} is a {key.kind} key; the platform supports only RSA keys",
            source=key_source,
        )
    keyfile.require_pair(key, chain.leaf)
    # OpenSSL's own pair check: the key must be the certificate's (and decrypt).
    keyfile.load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), chain.pem(), key, sn=chain.sn)
