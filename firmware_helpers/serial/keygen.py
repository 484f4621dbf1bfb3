"""The board's side of version 2: make a key pair where it will live, and a CSR signed by it.

The key never leaves this module's caller except into the board's own store, at COMMIT: the
host gets only the CSR. The CSR carries the public key and the signature that proves the board
holds the private key -- nothing else: an empty subject and no attributes or extensions, since
the host names the device and decides every field of the certificate.

A board whose key lives in a secure element or a TPM implements the same message with the
element: it asks the element to generate the key in a slot (the "key" kept staged is then the
slot's reference, not key material), has the element sign the CSR's to-be-signed bytes, and at
COMMIT binds the slot to the received certificate. See ``docs/serial-protocol.md``.

:class:`BoardCpuModel` is the benchmarks' model of a board that makes its key on its own CPU.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device_sdk import renewal_keys
from device_sdk.certificate import pem_blocks
from device_sdk.fileio import atomic_write
from firmware_helpers.defaults import DEFAULT_KEY_SIZE


def generate_key_and_csr(bits: int) -> tuple[bytes, bytes]:
    """(PKCS#1 PEM of a new RSA key, DER of a PKCS#10 request signed with it, empty subject).

    The SDK's one builder (:func:`device_sdk.renewal_keys.generate_key_and_csr`, also used when a
    device renews) makes both; only the wire form (DER) is this module's.
    """
    made = renewal_keys.generate_key_and_csr(None, bits=bits)
    return made.key_pem, pem_blocks(made.csr_pem.encode("ascii"), b"CERTIFICATE REQUEST")[0]


# --- the board-CPU model (benchmarks) ---------------------------------------------------------


@dataclass(frozen=True)
class PooledKey:
    """A key made before a timed run, with the time its generation (key + CSR) took."""

    bits: int
    key_pem: bytes
    csr_der: bytes
    seconds: float


def generate_key_pool(count: int, *, bits: int = DEFAULT_KEY_SIZE) -> list[PooledKey]:
    """``count`` keys made one after another, each timed (key and CSR together).

    One at a time, so that each time is that of one uncontended core: the model of a board's
    own CPU (see :class:`BoardCpuModel`).
    """
    pool = []
    for _ in range(count):
        start = time.perf_counter()
        key, csr = generate_key_and_csr(bits)
        pool.append(PooledKey(bits, key, csr, time.perf_counter() - start))
    return pool


def write_key_pool(path: str | Path, keys: list[PooledKey]) -> None:
    """Write ``keys`` for ``iotx509 sim board --key-pool`` (JSON lines, mode 0600)."""
    lines = [
        json.dumps(
            {
                "bits": k.bits,
                "key": k.key_pem.decode("ascii"),
                "csr": base64.b64encode(k.csr_der).decode("ascii"),
                "seconds": k.seconds,
            }
        )
        for k in keys
    ]
    atomic_write(Path(path), ("\n".join(lines) + "\n").encode("ascii"), mode=0o600)


class BoardCpuModel:
    """``keygen(bits)`` for a simulated board whose key is made on its own CPU, not the host's.

    A factory board generates its key on its own processor, so N boards generate N keys at once.
    Simulated boards all run on the host, whose few cores would serialise the N generations and
    make the host's CPU, not the protocol, the bottleneck of a many-port benchmark. This model
    takes each key from a pool made before the timed run (:func:`generate_key_pool`) and *waits*
    the time that key's generation measured -- sleeping, using no host CPU -- so the board takes
    as long as it would on a core of its own. Each key is used once; an empty pool is an error,
    never a silent reuse. Only ``iotx509 sim board --key-pool FILE`` uses it (benchmarks);
    the default simulated board generates its keys for real.
    """

    log_note = " (board-CPU model: a pooled key, its measured generation time waited)"

    def __init__(self, path: str | Path, *, sleep: Callable[[float], None] = time.sleep) -> None:
        """``sleep`` is how the board's time passes (tests record it instead)."""
        self.path = Path(path)
        self._sleep = sleep
        try:
            lines = self.path.read_text(encoding="ascii").splitlines()
            self._pool = [_pooled(json.loads(line)) for line in lines if line.strip()]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read the key pool {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int:
        return len(self._pool)

    def __call__(self, bits: int) -> tuple[bytes, bytes]:
        with self._lock:
            index = next((i for i, k in enumerate(self._pool) if k.bits == bits), None)
            if index is None:
                raise ValueError(f"the key pool {self.path} has no unused RSA-{bits} key left")
            key = self._pool.pop(index)
        self._sleep(key.seconds)
        return key.key_pem, key.csr_der


def _pooled(entry: dict[str, object]) -> PooledKey:
    bits, seconds = entry["bits"], entry["seconds"]
    key, csr = entry["key"], entry["csr"]
    if not (
        isinstance(bits, int)
        and isinstance(seconds, int | float)
        and isinstance(key, str)
        and isinstance(csr, str)
    ):
        raise ValueError("an entry needs bits, key, csr and seconds")
    return PooledKey(bits, key.encode("ascii"), base64.b64decode(csr), float(seconds))
