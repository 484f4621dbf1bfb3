"""The registry lookups of CONNECT, asked off the event loop in one thread-pool job per batch.

Why: the registry's ``authenticate`` reads SQLite, so it must not run on the event loop (one slow
read would stall every connection). But one job per CONNECT made the hand-over itself (the
executor's queue and lock, a thread wake-up, a future and its callback back on the loop) a
large part of the endpoint's own CPU per new connection (issue 16; py-spy: ~0.1 ms of ~2.2).
So CONNECTs are asked together, one job at a time: the first CONNECT schedules a job for the
end of the loop iteration (the iteration's other CONNECTs join it); CONNECTs that arrive while a
job runs wait for it and go in the next one, started as soon as it answers. The answers come
back in one callback per job. Each lookup is answered on its own: one that raises does not stop
the others.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from cryptography import x509

from server_stub.ports import AuthDecision, DeviceDirectory, IssuingCa

T = TypeVar("T")

#: One lookup's answer: the registry's decision, or what it raised.
Outcome = AuthDecision | BaseException


def authenticate_all(
    directory: DeviceDirectory, asked: Sequence[tuple[x509.Certificate, IssuingCa | None]]
) -> list[Outcome]:
    """In the thread pool: the registry's answer to each lookup, in order."""
    authenticate = directory.authenticate
    outcomes: list[Outcome] = []
    for leaf, issuer in asked:
        try:
            outcomes.append(authenticate(leaf, issuer))
        except Exception as exc:  # answered to that CONNECT alone (logged with its cause there)
            outcomes.append(exc)
    return outcomes


class Lookups(Generic[T]):
    """Asks the registry about CONNECTs in batches, one thread-pool job at a time.

    ``T`` is what the caller needs back with each answer (its connection and CONNECT);
    ``answered(waiting, outcome)`` is called on the event loop for each, in arrival order.
    """

    __slots__ = ("_answered", "_busy", "_directory", "_waiting")

    def __init__(self, directory: DeviceDirectory, answered: Callable[[T, Outcome], None]) -> None:
        self._directory = directory
        self._answered = answered
        self._waiting: list[tuple[T, x509.Certificate, IssuingCa | None]] = []
        self._busy = False
        """A job is scheduled or running: new lookups wait for the next one."""

    def ask(self, waiting: T, leaf: x509.Certificate, issuer: IssuingCa | None) -> None:
        """Look ``leaf`` up (attributed to ``issuer`` in the handshake) in the next job; the
        answer comes back through ``answered``."""
        self._waiting.append((waiting, leaf, issuer))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        if not batch:
            self._busy = False
            return
        asked = [(leaf, issuer) for _, leaf, issuer in batch]
        try:
            future = asyncio.get_running_loop().run_in_executor(
                None, authenticate_all, self._directory, asked
            )
        except RuntimeError as exc:  # the executor is shut down: every CONNECT gets that answer
            self._busy = False
            for waiting, _, _ in batch:
                self._answered(waiting, exc)
            return
        future.add_done_callback(functools.partial(self._done, [w for w, _, _ in batch]))

    def _done(self, batch: list[T], future: asyncio.Future[list[Outcome]]) -> None:
        self._start()  # the CONNECTs that arrived meanwhile (or: no job any more)
        if future.cancelled():
            return
        error = future.exception()
        # the job itself failed (not one lookup): every CONNECT of the batch gets that cause
        outcomes = future.result() if error is None else [error] * len(batch)
        for waiting, outcome in zip(batch, outcomes, strict=True):
            self._answered(waiting, outcome)
