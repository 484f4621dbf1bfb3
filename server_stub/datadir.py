"""The server's data directory: database, admin token and its own TLS identity.

Layout (created on first start, kept across restarts)::

    DATA_DIR/               0700
      registry.sqlite3      accounts, products, CAs, devices, associations
      admin-token           0600, the default account's API token
      server-ca.pem         the server's TLS CA, for devices to trust
      tls/ca.key            0600, the server TLS CA's key
      tls/server.pem        the server certificate (SANs localhost, 127.0.0.1, ::1, --hostname)
      tls/server.key        0600
      ports.json            the running server's ports (removed on a clean stop)
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from device_sdk.certs import load_certificate, load_private_key, require_rsa_key
from device_sdk.errors import CredentialError
from device_sdk.fileio import PRIVATE_FILE_MODE, atomic_write, ensure_private_dir
from firmware_helpers.pki import CertifiedKey, create_ca, issue_server_certificate
from server_stub.errors import ServerStartupError
from server_stub.registry import DEFAULT_ACCOUNT, Registry

log = logging.getLogger(__name__)

DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
#: A server certificate closer than this to its end is re-issued at start.
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "registry.sqlite3"

    @property
    def admin_token(self) -> Path:
        return self.root / "admin-token"

    @property
    def server_ca(self) -> Path:
        return self.root / "server-ca.pem"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def ports(self) -> Path:
        return self.root / "ports.json"

    @property
    def lock(self) -> Path:
        return self.root / "server.lock"

    def create(self) -> DataDir:
        try:
            ensure_private_dir(self.root)
            ensure_private_dir(self.tls)
        except OSError as exc:
            raise ServerStartupError(
                f"cannot create the data directory {self.root}: {exc.strerror or exc}"
            ) from exc
        return self


def _wanted_sans(hostnames: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys((*DEFAULT_SANS, *hostnames)))


def _covers(cert: x509.Certificate, names: list[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    for name in names:
        try:
            if str(ipaddress.ip_address(name)) not in ips:
                return False
        except ValueError:
            if name not in dns:
                return False
    return True


def _load_pair(cert_path: Path, key_path: Path) -> CertifiedKey | None:
    if not cert_path.exists() or not key_path.exists():
        return None
    try:
        cert = load_certificate(cert_path.read_bytes(), source=str(cert_path))
        key = require_rsa_key(load_private_key(key_path.read_bytes(), source=str(key_path)))
    except (OSError, CredentialError) as exc:
        raise ServerStartupError(f"the server's TLS identity is unreadable: {exc}") from exc
    return CertifiedKey(cert, key)


def server_identity(data: DataDir, hostnames: tuple[str, ...] = ()) -> CertifiedKey:
    """The server's TLS certificate, made (or renewed, or widened to new names) as needed."""
    ca = _load_pair(data.server_ca, data.tls / "ca.key")
    if ca is None:
        log.info("creating the server's TLS CA in %s", data.root)
        ca = create_ca("iot-x509-kit reference server CA", days=3650)
        atomic_write(data.tls / "ca.key", ca.key_pem(), mode=PRIVATE_FILE_MODE)
        atomic_write(data.server_ca, ca.cert_pem())
    names = _wanted_sans(hostnames)
    server = _load_pair(data.tls / "server.pem", data.tls / "server.key")
    fresh = server is not None and (
        server.certificate.not_valid_after_utc - datetime.now(UTC) > RENEW_BEFORE
        and _covers(server.certificate, names)
        and server.certificate.issuer == ca.certificate.subject
    )
    if server is None or not fresh:
        log.info("issuing the server certificate for %s", ", ".join(names))
        server = issue_server_certificate(ca, names)
        server.write(data.tls / "server.pem", data.tls / "server.key")
    return server


def ensure_default_account(registry: Registry, data: DataDir) -> str:
    """The default account's token; created (or re-issued, if its file was lost) as needed."""
    if registry.store.account_by_name(DEFAULT_ACCOUNT) is None:
        _record, token = registry.create_account(DEFAULT_ACCOUNT)
        atomic_write(data.admin_token, (token + "\n").encode(), mode=PRIVATE_FILE_MODE)
        return token
    if not data.admin_token.exists():
        log.warning("%s is missing: issuing a new token for the default account", data.admin_token)
        token = registry.rotate_token(DEFAULT_ACCOUNT)
        atomic_write(data.admin_token, (token + "\n").encode(), mode=PRIVATE_FILE_MODE)
        return token
    return data.admin_token.read_text().strip()
