"""RSA keys for batch issuance, generated in worker processes on every core.

Key generation dominates issuing a batch (tens of milliseconds per 2048-bit key, with a long
tail), so :func:`key_stream` runs it in a process pool and yields keys as they finish (keys are
interchangeable). Workers only compute: they return (PKCS#1 PEM, DER public key), never write a
file, ignore Ctrl-C (the parent decides) and exit if the parent dies. Split from
:mod:`firmware_helpers.issuing`, which draws SNs, signs and writes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from firmware_helpers.defaults import DEFAULT_KEY_SIZE
from firmware_helpers.errors import IssuanceError

#: Key-generation tasks kept in flight per worker: enough to keep every core busy, few enough that
#: Ctrl-C stops promptly.
IN_FLIGHT_PER_JOB = 4
#: Returns (PKCS#1 PEM of a new private key, DER SubjectPublicKeyInfo of its public key).
KeySource = Callable[[], tuple[bytes, bytes]]


def generate_key_material(key_size: int = DEFAULT_KEY_SIZE) -> tuple[bytes, bytes]:
    """A new RSA key as (PKCS#1 PEM, DER public key). Runs in the worker processes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def _worker_init() -> None:
    """Leave Ctrl-C to the parent, and exit if the parent dies (even by SIGKILL)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` is cheapest; with other threads running (an embedding app), fork is unsafe."""
    if threading.active_count() > 1:
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("fork")


def make_pool(jobs: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=jobs, mp_context=_pool_context(), initializer=_worker_init
    )


def key_stream(
    count: int, key_size: int, jobs: int, key_source: KeySource | None
) -> Generator[tuple[bytes, bytes], None, None]:
    """Yield ``count`` new keys as they finish (keys are interchangeable, order does not matter)."""
    if key_source is not None or jobs == 1:
        for _ in range(count):
            yield key_source() if key_source else generate_key_material(key_size)
        return
    pool = make_pool(jobs)
    pending: set[Future[tuple[bytes, bytes]]] = set()
    submitted = 0
    try:
        while submitted < count or pending:
            while submitted < count and len(pending) < jobs * IN_FLIGHT_PER_JOB:
                pending.add(pool.submit(generate_key_material, key_size))
                submitted += 1
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()
    except BrokenProcessPool as exc:
        # Raised by result() of a running job, and by submit() once the pool noticed the death:
        # which one depends on timing, so both are mapped here, once.
        raise IssuanceError(
            "a key-generation worker process died (out of memory, killed, or -- "
            "when the caller runs other threads and workers start via forkserver "
            "-- a main module that is not guarded by if __name__ == '__main__')"
        ) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
