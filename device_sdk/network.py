"""Network drivers: who does a paho client's socket I/O (instead of paho's ``select()`` loop).

Why: paho's ``loop()`` (and ``loop_start``/``loop_forever``) calls ``select()``, which cannot
watch file descriptors >= 1024 (FD_SETSIZE). In a process with more than ~1,000 open files the
MQTT socket lands above that limit, paho takes select's ``ValueError`` for a lost connection and
the device looks rejected right after its TLS handshake. It also costs each client a thread
busy with its own ``select()``.

paho 2.x offers an external-loop interface instead: ``on_socket_open``/``on_socket_close`` and
``on_socket_register_write``/``on_socket_unregister_write`` say when a socket appears and when it
has output pending; the driver calls ``loop_read()``/``loop_write()`` when the socket is ready
and ``loop_misc()`` (keep-alive) about once a second. A driver is anything with an
:meth:`NetworkDriver.attach` method; :class:`SelectorDriver` is the default: one thread with one
``selectors.DefaultSelector`` (epoll on Linux, no descriptor limit) for every client of the
process (:func:`default_driver`). Other event loops (e.g. gevent's hub) plug in the same way.

Contract for a driver: paho callbacks (``on_connect``, ``on_message``, ...) run wherever the
driver calls ``loop_read``/``loop_write``/``loop_misc``; ``attach`` happens before the client's
``connect()``; the socket callbacks may be called from any thread.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

#: How often every connection's ``loop_misc()`` runs (keep-alive PINGREQ, ping timeouts).
MISC_INTERVAL = 1.0


@runtime_checkable
class NetworkDriver(Protocol):
    """Runs the network I/O of paho clients (see the module's contract)."""

    def attach(self, client: mqtt.Client) -> None:
        """Install the four ``on_socket_*`` callbacks on ``client``: from now on this driver
        reads, writes and keeps alive every socket the client opens."""


@dataclass(eq=False)
class _Conn:
    client: mqtt.Client
    sock: Any
    fd: int
    writing: bool = False
    closed: bool = False


class SelectorDriver:
    """One thread, one selector, many clients: the SDK's default network driver.

    Thread-safety: the socket callbacks (from the thread that connects, from the application's
    ``publish`` and from this driver's thread) change the selector's registrations under a
    lock; epoll takes such changes into account even while the thread waits in ``select()``.
    """

    def __init__(self, misc_interval: float = MISC_INTERVAL, name: str = "iotx509-network") -> None:
        self.misc_interval = misc_interval
        self.name = name
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}  # fd -> live connection
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def __len__(self) -> int:
        """Connections currently watched."""
        with self._lock:
            return len(self._conns)

    @property
    def thread(self) -> threading.Thread | None:
        """The driver's thread (started by the first socket), where paho callbacks run."""
        return self._thread

    def attach(self, client: mqtt.Client) -> None:
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    # --- paho's socket callbacks (any thread) --------------------------------------------------

    def _on_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        conn = _Conn(client, sock, sock.fileno())
        with self._lock:
            stale = self._conns.pop(conn.fd, None)
            if stale is not None:  # the fd was closed without paho telling us; it is reused now
                stale.closed = True
                self._unregister(stale)
            self._conns[conn.fd] = conn
            self._selector.register(conn.fd, selectors.EVENT_READ, conn)
            self._ensure_thread()

    def _on_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        """Called before paho closes the socket: stop watching its descriptor now."""
        with self._lock:
            for fd, conn in list(self._conns.items()):
                if conn.sock is sock:
                    conn.closed = True
                    del self._conns[fd]
                    self._unregister(conn)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._refresh(sock)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._refresh(sock)

    def _refresh(self, sock: Any) -> None:
        """Watch for writability exactly while the client has output pending.

        Deciding from ``want_write()`` under the driver's lock (rather than trusting the
        register/unregister calls, which paho makes without a lock from the application's
        thread and from this driver's thread) leaves no window where a publish waits unsent.
        """
        with self._lock:
            conn = self._find(sock)
            if conn is not None:
                self._sync_writing(conn)

    def _sync_writing(self, conn: _Conn) -> None:
        writing = conn.client.want_write()
        if conn.writing == writing:
            return
        conn.writing = writing
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
        try:
            self._selector.modify(conn.fd, events, conn)
        except (KeyError, ValueError, OSError):
            pass

    def _find(self, sock: Any) -> _Conn | None:
        try:
            fd = sock.fileno()
        except OSError:
            return None
        conn = self._conns.get(fd)
        return conn if conn is not None and conn.sock is sock and not conn.closed else None

    def _unregister(self, conn: _Conn) -> None:
        try:
            self._selector.unregister(conn.fd)
        except (KeyError, ValueError, OSError):
            pass

    # --- the thread ----------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if os.getpid() != self._pid:  # forked: the parent's thread does not exist here
            raise RuntimeError("a SelectorDriver cannot be used across fork(); make a new one")
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        next_misc = time.monotonic() + self.misc_interval
        while True:
            timeout = max(0.0, next_misc - time.monotonic())
            try:
                ready = self._selector.select(timeout)
            except OSError:  # pragma: no cover - a descriptor vanished under us; try again
                log.debug("select failed", exc_info=True)
                continue
            for key, events in ready:
                self._service(key.data, events)
            now = time.monotonic()
            if now >= next_misc:
                next_misc = now + self.misc_interval
                with self._lock:
                    conns = list(self._conns.values())
                for conn in conns:
                    if not conn.closed:
                        self._guard(conn.client.loop_misc)

    def _service(self, conn: _Conn, events: int) -> None:
        client = conn.client
        if events & selectors.EVENT_WRITE and not conn.closed:
            self._guard(client.loop_write)
            with self._lock:
                if not conn.closed:
                    self._sync_writing(conn)
        if events & selectors.EVENT_READ and not conn.closed:
            for _ in range(64):
                rc = self._guard(client.loop_read)
                if conn.closed or rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                # TLS may hold decrypted bytes that the socket no longer signals.
                pending = getattr(conn.sock, "pending", None)
                if not (pending and pending()):
                    break

    @staticmethod
    def _guard(step: Any) -> int:
        """One paho step; an exception hurts only its own client (paho closes on errors)."""
        try:
            return int(step())
        except Exception:
            log.exception("MQTT network step failed")
            return -2


_DEFAULT: SelectorDriver | None = None
_DEFAULT_LOCK = threading.Lock()


def default_driver() -> SelectorDriver:
    """The process's shared driver (made on first use; a new one after ``fork()``)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT._pid != os.getpid():
            _DEFAULT = SelectorDriver()
        return _DEFAULT


__all__ = ["MISC_INTERVAL", "NetworkDriver", "SelectorDriver", "default_driver"]
