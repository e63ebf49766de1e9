"""A TCP forwarder that a test can cut and mend, as if the service behind it went down and back.

`cut()` resets every forwarded connection and stops listening, so new connections are refused
(ECONNREFUSED, what a stopped Redis gives); `mend()` listens on the same port again. The service
itself keeps running: only the clients that reach it through the proxy lose it.
"""

from __future__ import annotations

import socket
import struct
import threading


class CuttableProxy:
    """Forwards 127.0.0.1:`port` to `upstream_host`:`upstream_port` while not cut."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        #: Connections forwarded since the proxy started.
        self.connections = 0
        self._port = 0
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def cut_now(self) -> bool:
        return self._listener is None

    def start(self) -> CuttableProxy:
        """Listen (on a free port the first time, on the same one after a cut)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port))
        listener.listen(128)
        self._port = int(listener.getsockname()[1])
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            live, self._live = self._live, set()
        if listener is not None:
            listener.close()
        for sock in live:
            _reset(sock)

    def mend(self) -> None:
        """Forward again, on the same port."""
        if self.cut_now:
            self.start()

    def close(self) -> None:
        self.cut()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                address = (self.upstream_host, self.upstream_port)
                upstream = socket.create_connection(address, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut while this one was being accepted
                    _reset(client)
                    _reset(upstream)
                    continue
                self._live.update((client, upstream))
                self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._live.discard(source)
                self._live.discard(sink)
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a dead peer's host answers."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
