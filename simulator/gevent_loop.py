"""The SDK's network driver on gevent: paho's socket I/O from gevent's hub (epoll).

Why: Locust runs on gevent. paho's own loop calls ``select()``, which refuses file descriptors
>= 1024 (FD_SETSIZE), and the SDK's default driver (:class:`device_sdk.network.SelectorDriver`)
would run its thread as one more greenlet polling through gevent's ``selectors`` shim. This
driver gives paho's external-loop callbacks straight to the hub instead: one read watcher per
connection, a writer greenlet only while output is pending, ``loop_misc`` (keep-alive) from one
shared timer; no thread, no socket pair per device.

It implements :class:`device_sdk.network.NetworkDriver`: pass it as
``DeviceClient(..., network=shared_loop())``. paho's callbacks (so the client's ``on_message``)
then run in the connection's reader greenlet and must not block on network results of the same
connection (spawn a greenlet for that).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.hub import get_hub

from device_sdk.network import MISC_INTERVAL

log = logging.getLogger(__name__)

READ = 1
WRITE = 2
MQTT_ERR_SUCCESS = 0
MQTT_ERR_AGAIN = -1


@dataclass
class _Conn:
    sock: Any
    reader: gevent.Greenlet | None = None
    writer: gevent.Greenlet | None = None
    watchers: list[Any] = field(default_factory=list)
    closed: bool = False


class GeventLoop:
    """A :class:`~device_sdk.network.NetworkDriver`: attached paho clients do their network I/O
    on gevent's hub.

    Use one loop per process (:func:`shared_loop`). ``attach`` must happen before the client's
    ``connect()`` (``DeviceClient`` does it); never call ``loop_start``/``loop_forever`` on an
    attached client.
    """

    def __init__(self, misc_interval: float = MISC_INTERVAL) -> None:
        self.misc_interval = misc_interval
        self._conns: dict[Any, _Conn] = {}  # paho client -> its live connection
        self._misc: gevent.Greenlet | None = None

    def __len__(self) -> int:
        """Connections currently watched."""
        return len(self._conns)

    def fds(self) -> list[int]:
        """The file descriptors of the watched connections."""
        return [conn.sock.fileno() for conn in self._conns.values() if not conn.closed]

    def attach(self, client: Any) -> None:
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        if self._misc is None or self._misc.dead:
            self._misc = gevent.spawn(self._misc_loop)

    # --- paho's callbacks ----------------------------------------------------------------------

    def _on_open(self, client: Any, userdata: Any, sock: Any) -> None:
        old = self._conns.pop(client, None)
        if old is not None:
            self._stop(old)
        conn = _Conn(sock)
        self._conns[client] = conn
        conn.reader = gevent.spawn(self._read_loop, client, conn)

    def _on_close(self, client: Any, userdata: Any, sock: Any) -> None:
        conn = self._conns.get(client)
        if conn is not None and conn.sock is sock:
            del self._conns[client]
            self._stop(conn)

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        conn = self._conns.get(client)
        if conn is None or conn.sock is not sock or conn.closed:
            return
        if conn.writer is None or conn.writer.dead:
            conn.writer = gevent.spawn(self._write_loop, client, conn)

    def _on_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        """Nothing to do: the writer greenlet ends by itself once ``want_write()`` is False."""

    # --- greenlets -----------------------------------------------------------------------------

    def _stop(self, conn: _Conn) -> None:
        """Stop watching before paho closes the socket (a watcher on a closed fd is an error)."""
        conn.closed = True
        for watcher in conn.watchers:
            watcher.stop()
        current = gevent.getcurrent()
        for greenlet in (conn.reader, conn.writer):
            if greenlet is not None and greenlet is not current and not greenlet.dead:
                greenlet.kill(block=False)

    def _read_loop(self, client: Any, conn: _Conn) -> None:
        hub = get_hub()
        watcher = hub.loop.io(conn.sock.fileno(), READ)
        conn.watchers.append(watcher)
        try:
            while not conn.closed:
                pending = getattr(conn.sock, "pending", None)
                if not (pending and pending()):
                    hub.wait(watcher)
                if conn.closed:
                    return
                rc = client.loop_read(max_packets=16)
                if rc not in (MQTT_ERR_SUCCESS, MQTT_ERR_AGAIN):
                    return  # paho closed the socket and called on_disconnect
        except gevent.GreenletExit:
            pass
        except Exception:  # pragma: no cover - keep one broken client from hurting the rest
            log.exception("reading an MQTT socket failed")
        finally:
            watcher.close()

    def _write_loop(self, client: Any, conn: _Conn) -> None:
        hub = get_hub()
        watcher = hub.loop.io(conn.sock.fileno(), WRITE)
        conn.watchers.append(watcher)
        try:
            while not conn.closed and client.want_write():
                rc = client.loop_write()
                if rc not in (MQTT_ERR_SUCCESS, MQTT_ERR_AGAIN) or conn.closed:
                    return
                if client.want_write():
                    hub.wait(watcher)
        except gevent.GreenletExit:
            pass
        except Exception:  # pragma: no cover
            log.exception("writing an MQTT socket failed")
        finally:
            watcher.close()

    def _misc_loop(self) -> None:
        """Keep-alive pings and ping timeouts for every attached connection."""
        while True:
            gevent.sleep(self.misc_interval)
            for client in list(self._conns):
                try:
                    client.loop_misc()
                except Exception:  # pragma: no cover
                    log.exception("MQTT keep-alive handling failed")


_SHARED: GeventLoop | None = None


def shared_loop() -> GeventLoop:
    """The process's one loop (created on first use)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = GeventLoop()
    return _SHARED
