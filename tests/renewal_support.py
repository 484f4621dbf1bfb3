"""What the renewal signer's tests (``tests/firmware/test_signer.py``) and the renewal end-to-end
tests (``tests/server/test_renewal_e2e.py``) share, written once: a running server with one
product and one CA registered with proof (:func:`renewal_env`), the signer working for that CA
(:meth:`RenewalEnv.signer`), a CSR (:func:`csr_pem`) and the ``iotx509 ca signer --once``
command line (:func:`signer_command`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from firmware_helpers.pki import CertifiedKey, create_ca
from firmware_helpers.platform_client import PlatformClient
from firmware_helpers.signer import Signer
from server_stub.launcher import RunningServer, running_server


@dataclass
class RenewalEnv:
    """A running server, its account's client, the product and the registered CA."""

    server: RunningServer
    client: PlatformClient
    ca: CertifiedKey
    product_key: str
    root: Path
    n: int = 0

    @property
    def ledger(self) -> Path:
        """The CA's SN ledger the signer uses unless a test gives its own."""
        return self.root / "sn-ledger.jsonl"

    def name(self, prefix: str) -> str:
        """A DeviceName not used before in this environment."""
        self.n += 1
        return f"{prefix}-{self.n}"

    def signer(self, **kwargs: Any) -> Signer:
        """The signer for this CA (``ledger_path`` defaults to :attr:`ledger`)."""
        kwargs.setdefault("ledger_path", self.ledger)
        return Signer(self.client, self.ca, **kwargs)


@contextmanager
def renewal_env(
    root: Path, *, product: str, ca_name: str, ca_cn: str, server_args: Sequence[str] = ()
) -> Iterator[RenewalEnv]:
    """A server on ``root / "data"`` with ``product`` created and a new CA registered as
    ``ca_name`` with proof of possession."""
    with running_server(root / "data", extra_args=server_args) as server:
        client = PlatformClient(server.http_url, server.token)
        product_key = str(client.create_product(product)["productKey"])
        ca = create_ca(ca_cn)
        client.register_ca_with_proof(ca_name, ca)
        yield RenewalEnv(server, client, ca, product_key, root)


def csr_pem(key: Any, common_name: str | None = None) -> str:
    """A CSR signed by ``key``, its subject empty or ``CN=common_name``."""
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(Encoding.PEM).decode()


def signer_command(*args: str, token: str | None) -> subprocess.CompletedProcess[str]:
    """``iotx509 ca signer ARGS --once`` in a process of its own, with ``--token`` when given
    (never from the environment)."""
    token_args = ["--token", token] if token is not None else []
    return subprocess.run(
        [sys.executable, "-m", "iotx509", "ca", "signer", *args, *token_args, "--once"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "IOTX509_TOKEN"},
        timeout=120,
    )
