"""The byte pipe under the protocol: a pyserial port (any URL) or a raw file descriptor.

pyserial's errors are mapped here, once: a port that cannot be opened is
:class:`PortOpenError`, a port that goes away mid-transfer (USB unplugged, pty closed) is
:class:`BoardDisconnectedError`.
"""

from __future__ import annotations

import errno
import os
import select
import time
from typing import Any, Protocol

from firmware_helpers.errors import BoardDisconnectedError, PortOpenError

DEFAULT_BAUD = 115200

try:  # pyserial lets termios errors through (e.g. tcdrain on a pty whose other side closed)
    import termios

    _TERMIOS_ERRORS: tuple[type[Exception], ...] = (termios.error,)
except ImportError:  # pragma: no cover - not POSIX
    _TERMIOS_ERRORS = ()


class Link(Protocol):
    """What the host and the agent need from a serial line."""

    def read(self, timeout: float) -> bytes:
        """Whatever arrived within ``timeout`` seconds (``b""`` if nothing)."""
        ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class SerialLink:
    """A port opened with ``serial.serial_for_url``: device paths, ptys, ``socket://``, ``loop://``."""

    def __init__(self, port: Any, url: str) -> None:
        self.port = port
        self.url = url

    @classmethod
    def open(cls, url: str, *, baud: int = DEFAULT_BAUD) -> SerialLink:
        import serial

        try:
            port = serial.serial_for_url(url, baudrate=baud, timeout=0.1, write_timeout=10)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise PortOpenError(
                f"cannot open serial port {url!r}: {exc}. Check the path or URL (e.g. "
                "/dev/ttyUSB0, socket://host:port, loop://) and that no other program holds it."
            ) from exc
        return cls(port, url)

    def read(self, timeout: float) -> bytes:
        import serial

        try:
            # Changing pyserial's timeout reconfigures the port (tcsetattr): only when it matters.
            wanted = max(0.0, timeout)
            if abs((self.port.timeout or 0.0) - wanted) > 0.05 * max(wanted, 0.01):
                self.port.timeout = wanted
            first = bytes(self.port.read(1))
            if not first:
                return b""
            waiting = self.port.in_waiting
            return first + (bytes(self.port.read(waiting)) if waiting else b"")
        except (serial.SerialException, OSError, *_TERMIOS_ERRORS) as exc:
            raise BoardDisconnectedError(
                f"serial port {self.url} went away: {exc} (board unplugged or powered off?)"
            ) from exc

    def write(self, data: bytes) -> None:
        import serial

        try:
            self.port.write(data)
            self.port.flush()
        except (serial.SerialException, OSError, *_TERMIOS_ERRORS) as exc:
            raise BoardDisconnectedError(
                f"serial port {self.url} went away while writing: {exc} (board unplugged or "
                "powered off?)"
            ) from exc

    def close(self) -> None:
        try:
            self.port.close()
        except Exception:  # closing a port that already went away must not hide the real error
            pass


class FdLink:
    """A raw file descriptor, e.g. the master side of a pseudo-terminal pair."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False

    def read(self, timeout: float) -> bytes:
        if self.closed:
            raise BoardDisconnectedError("link closed")
        try:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
            if not ready:
                return b""
            return os.read(self.fd, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:
                time.sleep(min(timeout, 0.05))
                return b""  # pty master with no slave open yet: nobody is talking
            raise BoardDisconnectedError(f"link went away: {exc}") from exc
        except ValueError as exc:  # select on a closed descriptor
            raise BoardDisconnectedError(f"link went away: {exc}") from exc

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                select.select([], [self.fd], [], 0.1)
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return  # no reader on the other side: like a UART with nothing attached
                raise BoardDisconnectedError(f"link went away: {exc}") from exc
            view = view[written:]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)
