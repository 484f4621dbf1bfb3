"""Drive many paho-mqtt clients from gevent's event loop instead of paho's ``select()`` loop.

Why: Locust runs on gevent. paho's network loop (``loop_start``/``loop_forever``) calls
``select.select``; gevent's monkey-patched ``select`` first polls with the real ``select()``,
which refuses file descriptors >= 1024 (FD_SETSIZE). paho takes that ``ValueError`` as a lost
connection, so under Locust a process stalls at about 320-340 connected clients (measured:
321 of 1,500 after 60 s, no error raised anywhere). Each ``loop_start`` also costs a thread (a
greenlet under gevent) and a socket pair per client.

paho's documented external-loop interface avoids all of it: ``on_socket_open``/``close`` and
``on_socket_register_write``/``unregister_write`` tell us when a socket appears and when it has
data to send; we then call ``loop_read``/``loop_write`` when gevent's hub (epoll) says the socket
is ready, and ``loop_misc`` (keep-alive) from one shared timer. One read watcher per connection,
a writer greenlet only while output is pending, no socket pair, no thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.hub import get_hub

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
    """Attach paho ``Client`` objects; their network I/O then runs on gevent's hub.

    Use one loop per process (:func:`shared_loop`). ``attach`` must happen before the client's
    ``connect()``; do not call ``loop_start``/``loop_forever`` on an attached client.
    """

    def __init__(self, misc_interval: float = 2.0) -> None:
        self.misc_interval = misc_interval
        self._conns: dict[Any, _Conn] = {}  # paho client -> its live connection
        self._misc: gevent.Greenlet | None = None

    def __len__(self) -> int:
        return len(self._conns)

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
