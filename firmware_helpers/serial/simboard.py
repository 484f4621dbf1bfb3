"""A simulated board on a real pseudo-terminal pair, with fault injection and line-speed pacing.

The host opens the slave side (``/dev/pts/N``) exactly as it would open ``/dev/ttyUSB0``; the
board agent runs on the master side. Faults are applied to whole frames as they cross the
simulated line, from a seeded random generator so that a test run can be repeated:

- ``flip_rate`` / ``drop_rate``: probability that a frame (either direction) gets one bit
  flipped / loses one byte (which may be the delimiter, merging two frames);
- ``stall_after`` + ``stall_seconds``: the line stops delivering for a while (bytes wait);
- ``pause_when``: like ``pause_after``, at the first frame the predicate accepts (e.g. the
  first GENKEY), whatever retransmissions came before it;
- ``pause_after``: the board stops at frame N and holds every frame from there on, until
  :meth:`SimBoard.resume` is called or, with ``resume_after_resends``, until the host has sent
  that many more frames (its retransmissions). Tests time a signal or a retry by these events
  of the code under test, never by a clock: ``sim.wait(lambda s: s.paused)``;
- ``reboot_after`` (+ ``reboot_times``): the board loses power while a frame arrives, forgets
  its RAM state (staging, session) and announces itself again;
- ``unplug_after``: the pty is closed, as a USB adapter pulled out;
- ``protocol_version``: the board speaks only this protocol version (default: every version
  the kit speaks; ``1`` is an old board that cannot generate keys);
- ``no_keygen``: a version 2 board that cannot generate keys;
- ``baud``: bytes take ``10 / baud`` seconds each in each direction (8N1), for benchmarks.

``keygen`` replaces the board's key generation (default: real RSA generation on the host);
benchmarks pass a :class:`~firmware_helpers.serial.keygen.BoardCpuModel`, a board whose key is
made on its own CPU. The board generates in the background by default (a deferred GENKEY);
``background_keygen=False`` is a board that answers GENKEY only when its key is made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from firmware_helpers.errors import BoardDisconnectedError, SerialProvisioningError
from firmware_helpers.serial.agent import BoardAgent
from firmware_helpers.serial.board import CredentialStore
from firmware_helpers.serial.framing import DELIMITER, Frame, FrameDecoder
from firmware_helpers.serial.keygen import generate_key_and_csr
from firmware_helpers.serial.link import FdLink
from firmware_helpers.serial.protocol import DEFAULT_MAX_CHUNK

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultPlan:
    """Which faults the simulated line and board inject (all off by default)."""

    flip_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int = 0
    stall_after: int | None = None
    stall_seconds: float = 0.0
    reboot_after: int | None = None
    reboot_times: int = 1
    unplug_after: int | None = None
    pause_after: int | None = None
    pause_when: Callable[[Frame], bool] | None = None
    resume_after_resends: int | None = None
    protocol_version: int | None = None
    no_keygen: bool = False
    baud: int | None = None

    def __post_init__(self) -> None:
        for name in ("flip_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if self.baud is not None and self.baud <= 0:
            raise ValueError("baud must be positive")
        if self.resume_after_resends is not None and (
            (self.pause_after is None and self.pause_when is None) or self.resume_after_resends < 1
        ):
            raise ValueError("resume_after_resends needs pause_after and must be at least 1")


@dataclass
class SimStats:
    frames_in: int = 0
    frames_out: int = 0
    flipped: int = 0
    dropped: int = 0
    stalls: int = 0
    reboots: int = 0
    unplugged: bool = False
    #: the board is holding frames (``pause_after``); ``held`` counts the frames it holds
    paused: bool = False
    held: int = 0
    boards_served: list[str] = field(default_factory=list)


class SimBoard:
    """A board on a pty pair, in a background thread. Use as a context manager in tests."""

    def __init__(
        self,
        store: str | Path,
        *,
        board_id: str | None = None,
        faults: FaultPlan | None = None,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        boards: int = 1,
        swap_delay: float = 0.3,
        record_wire: bool = False,
        keygen: Callable[[int], tuple[bytes, bytes]] = generate_key_and_csr,
        background_keygen: bool = True,
    ) -> None:
        self.store_root = Path(store)
        self.base_id = board_id or f"SIM-{secrets.token_hex(4)}"
        self.faults = faults or FaultPlan()
        self.max_chunk = max_chunk
        self.boards = boards
        self.swap_delay = swap_delay
        self.keygen = keygen
        self.background_keygen = background_keygen
        self._link: FdLink | None = None
        self._send_lock = threading.Lock()
        #: with ``record_wire``: every byte the host sent (``wire_in``) and the board sent
        self.record_wire = record_wire
        self.wire_in = bytearray()
        self.wire_out = bytearray()
        self.stats = SimStats()
        self._rng = random.Random(self.faults.seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master = -1
        self._slave = -1
        self.port = ""
        self._board_index = 0
        self.agent = self._new_agent()
        self._rx_clock = 0.0
        self._tx_clock = 0.0
        self._frames_since_boot = 0
        self._buffer = bytearray()
        self.error: BaseException | None = None
        self.changed = threading.Condition()
        self._held: list[bytes] = []
        self._paused_once = False
        self._resume = threading.Event()

    # --- boards -------------------------------------------------------------------------------

    def board_id_of(self, index: int) -> str:
        return self.base_id if self.boards == 1 else f"{self.base_id}-{index + 1:03d}"

    def store_of(self, index: int) -> Path:
        return self.store_root if self.boards == 1 else self.store_root / self.board_id_of(index)

    def _new_agent(self) -> BoardAgent:
        index = self._board_index
        agent = BoardAgent(
            CredentialStore(self.store_of(index)),
            self.board_id_of(index),
            max_chunk=self.max_chunk,
            version=self.faults.protocol_version,
            keygen=None if self.faults.no_keygen else self.keygen,
            background_keygen=self.background_keygen,
        )
        agent.emit = self._emit
        return agent

    def _emit(self, data: bytes) -> None:
        """A reply the agent's keygen thread produced (the CSR a GET_CSR waits for)."""
        if self._link is not None and not self.stats.unplugged:
            with contextlib.suppress(OSError):
                self._send(self._link, data)
        self._notify()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> SimBoard:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self._master)
        self.port = os.ttyname(self._slave)
        self._thread = threading.Thread(target=self._run, name=f"simboard {self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close()

    def __enter__(self) -> SimBoard:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait(self, predicate: object, timeout: float = 10.0) -> bool:
        """Block until ``predicate(stats)`` is true (tests use it to time a fault or signal)."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self.stats):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(remaining)
        return True

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def _close(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def resume(self) -> None:
        """Let a paused board go on: it answers the held frames in order, then runs normally."""
        self._resume.set()

    def unplug(self) -> None:
        """Close the pty pair, as a USB serial adapter pulled out."""
        self.stats.unplugged = True
        self._close()
        self._notify()

    # --- the line -----------------------------------------------------------------------------

    def _pace(self, clock: float, nbytes: int) -> float:
        """Advance a direction's clock by the line time of ``nbytes``; sleep until it is due."""
        if self.faults.baud is None:
            return clock
        now = time.monotonic()
        clock = max(clock, now) + nbytes * 10 / self.faults.baud
        delay = clock - now
        if delay > 0:
            time.sleep(delay)
        return clock

    def _damage(self, frame: bytes) -> bytes:
        if self.faults.flip_rate and self._rng.random() < self.faults.flip_rate and len(frame) > 1:
            data = bytearray(frame)
            index = self._rng.randrange(len(data) - 1)  # not the delimiter
            data[index] ^= 1 << self._rng.randrange(8)
            frame = bytes(data)
            self.stats.flipped += 1
        if self.faults.drop_rate and self._rng.random() < self.faults.drop_rate and frame:
            index = self._rng.randrange(len(frame))
            frame = frame[:index] + frame[index + 1 :]
            self.stats.dropped += 1
        return frame

    def _send(self, link: FdLink, data: bytes) -> None:
        with self._send_lock:  # the agent's keygen thread sends too: frames never interleave
            self._tx_clock = self._pace(self._tx_clock, len(data))
            data = self._damage(data)
            if self.record_wire:
                self.wire_out += data
            link.write(data)
            self.stats.frames_out += 1

    def _run(self) -> None:
        link = self._link = FdLink(self._master)
        try:
            self._send(link, self.agent.boot())
            self.stats.boards_served.append(self.agent.board_id)
            swap_at: float | None = None
            while not self._stop.is_set():
                if self._resume.is_set() and self.stats.paused:
                    self._release(link)
                if swap_at is not None and time.monotonic() >= swap_at:
                    swap_at = None
                    self._swap(link)
                data = link.read(0.05)
                if not data:
                    continue
                self._rx_clock = self._pace(self._rx_clock, len(data))
                if self.record_wire:
                    self.wire_in += data
                commits = self.agent.commits
                if not self._receive(link, data):
                    return
                if self.agent.commits > commits and self._board_index + 1 < self.boards:
                    swap_at = time.monotonic() + self.swap_delay
        except BoardDisconnectedError:
            if not self.stats.unplugged and not self._stop.is_set():
                raise
        except (SerialProvisioningError, OSError) as exc:
            if not self._stop.is_set() and not self.stats.unplugged:
                self.error = exc
                log.exception("simulated board failed")
        finally:
            self._notify()

    def _swap(self, link: FdLink) -> None:
        """The operator puts the next board on the fixture."""
        self._board_index += 1
        self.agent = self._new_agent()
        self._frames_since_boot = 0
        self._buffer.clear()
        self._send(link, self.agent.boot())
        self.stats.boards_served.append(self.agent.board_id)
        self._notify()

    def _receive(self, link: FdLink, data: bytes) -> bool:
        """Split into frames, inject faults, feed the agent; False once unplugged."""
        self._buffer += data
        while True:
            end = self._buffer.find(DELIMITER)
            if end < 0:
                return True
            frame = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            if frame == DELIMITER:
                continue
            self.stats.frames_in += 1
            self._frames_since_boot += 1
            if self._hold(frame):
                continue
            fate = self._faults_before(link)
            if fate == "gone":
                return False
            if fate == "lost":
                continue
            self._deliver(link, frame)

    def _deliver(self, link: FdLink, frame: bytes) -> None:
        for reply in self.agent.handle(self._damage(frame)):
            self._send(link, reply)
        self.agent.after_replies()
        self._notify()

    def _hold(self, frame: bytes) -> bool:
        """``pause_after``: keep the frame for later instead of answering it."""
        plan, stats = self.faults, self.stats
        if not stats.paused:
            if self._paused_once or not self._pause_here(frame):
                return False
            self._paused_once = True
            stats.paused = True
            stats.stalls += 1
        self._held.append(frame)
        stats.held = len(self._held)
        if plan.resume_after_resends is not None and stats.held > plan.resume_after_resends:
            self._resume.set()
        self._notify()
        return True

    def _pause_here(self, frame: bytes) -> bool:
        plan = self.faults
        if plan.pause_after is not None and self.stats.frames_in >= plan.pause_after:
            return True
        if plan.pause_when is not None:
            decoded = FrameDecoder().feed(frame)
            return any(isinstance(f, Frame) and plan.pause_when(f) for f in decoded)
        return False

    def _release(self, link: FdLink) -> None:
        held, self._held = self._held, []
        self.stats.paused = False
        self._notify()
        for frame in held:
            self._deliver(link, frame)

    def _faults_before(self, link: FdLink) -> str:
        """Apply the scheduled faults that fall on this frame: "ok", "lost" or "gone"."""
        plan, stats = self.faults, self.stats
        if plan.unplug_after is not None and stats.frames_in >= plan.unplug_after:
            self.unplug()
            return "gone"
        if (
            plan.stall_after is not None
            and stats.stalls == 0
            and stats.frames_in >= plan.stall_after
        ):
            stats.stalls += 1
            self._notify()
            self._stop.wait(plan.stall_seconds)
        if (
            plan.reboot_after is not None
            and stats.reboots < plan.reboot_times
            and self._frames_since_boot >= plan.reboot_after
        ):
            stats.reboots += 1
            self._frames_since_boot = 0
            self._buffer.clear()
            self._notify()
            self._send(link, self.agent.boot())  # a key being generated is lost with the RAM
            return "lost"  # this frame was lost with the power
        return "ok"
