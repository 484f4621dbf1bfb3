"""The real platform side for the SDK's renewal tests: the reference server process (HTTP API +
MQTT over mutual TLS) with an account, an X.509 product and a CA registered with proof of
possession, and the customer's real signer (:class:`firmware_helpers.signer.Signer`) serving
the CA's renewal requests over the HTTP API from a thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from device_sdk.naming import DeviceFileName
from firmware_helpers.pki import CertifiedKey, create_ca, issue_device_certificate
from firmware_helpers.platform_client import PlatformClient, UploadFile
from firmware_helpers.signer import Signer
from server_stub.launcher import RunningServer, running_server
from tests.common import wait_for


@dataclass
class RenewalPlatform:
    server: RunningServer
    api: PlatformClient
    ca: CertifiedKey
    product_key: str
    root: Path
    signer: Signer
    rounds: int = 0
    _n: int = field(default=0, repr=False)

    def device(
        self, prefix: str, *, left: float = 0.1, days: int = 10, directory: Path | None = None
    ) -> tuple[str, Path, Path, CertifiedKey]:
        """An associated device whose certificate has ``left`` of its validity remaining,
        written as the platform names the files; returns (name, cert, key, pair)."""
        self._n += 1
        name = f"{prefix}-{self._n}"
        now = datetime.now(UTC) - timedelta(days=days * (1 - left))
        pair = issue_device_certificate(
            self.ca, name, product_key=self.product_key, days=days, now=now
        )
        self.api.associate(
            self.ca.sn,
            UploadFile(
                "a.csv",
                f"ProductKey,DeviceName,CertSN\n{self.product_key},{name},{pair.sn}\n".encode(),
                "text/csv",
            ),
        )
        names = DeviceFileName(self.product_key, name, self.ca.sn)
        directory = directory or self.root / "devices"
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / names.cert_name, directory / names.key_name
        pair.write(cert, key)
        return name, cert, key, pair

    def settled_sns(self, device_name: str, expected: set[str], timeout: float = 20.0) -> set[str]:
        """The device's SNs once they are ``expected`` (or at ``timeout``, for the assert).

        The server retires the old SN on the first CONNECT with the new one in a background
        job, so the device can report RENEWED a moment before the association changes: the
        test waits for that change (a state of the server), not for a fixed time.
        """
        seen: set[str] = set()

        def settled() -> bool:
            nonlocal seen
            seen = set(self.association_sns(device_name))
            return seen == expected

        wait_for(settled, timeout)
        return seen

    def association_sns(self, device_name: str) -> dict[str, dict[str, object]]:
        """The device's associations by certificate SN (with their state)."""
        return {
            str(a["certSn"]): a
            for a in self.api.associations(self.ca.sn)
            if a.get("deviceName") == device_name
        }


@contextlib.contextmanager
def renewal_platform(root: Path, *, serve: bool = True) -> Iterator[RenewalPlatform]:
    """The server (no per-device request interval: the tests restart devices at once) and,
    with ``serve``, the signer polling every 0.1 s in a thread."""
    with running_server(root / "data", extra_args=["--renewal-min-interval", "0"]) as server:
        api = PlatformClient(server.http_url, server.token)
        product_key = str(api.create_product("renewing_sensors")["productKey"])
        ca = create_ca("SDK Renewal Test CA")
        api.register_ca_with_proof("sdk_renewal_ca", ca)
        signer = Signer(api, ca, ledger_path=root / "sn-ledger.jsonl", days=365)
        platform = RenewalPlatform(server, api, ca, product_key, root, signer)
        stop = threading.Event()
        thread = None
        if serve:

            def count(_report: object) -> None:
                platform.rounds += 1

            thread = threading.Thread(
                target=signer.serve,
                args=(stop,),
                kwargs={"interval": 0.1, "on_round": count},
                daemon=True,
            )
            thread.start()
        try:
            yield platform
        finally:
            stop.set()
            if thread is not None:
                thread.join(10)
