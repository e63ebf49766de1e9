"""A TCP front for several Prefect API processes: round robin over the ones that accept.

It stands in for the load balancer of a real installation, so that workers, flow runs and the
shim have one address while one API process is killed under them.
"""

from __future__ import annotations

import itertools
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Failover:
    """Listens on 127.0.0.1:port; each connection goes to the next upstream that accepts it."""

    upstream_ports: list[int]
    #: Connections forwarded, by upstream port.
    forwarded: dict[int, int] = field(default_factory=dict)
    _listener: socket.socket | None = None
    _closed: bool = False

    def start(self) -> Failover:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(256)
        self._listener = listener
        self._turn = itertools.cycle(range(len(self.upstream_ports)))
        self._lock = threading.Lock()
        threading.Thread(target=self._accept_loop, daemon=True, name="failover").start()
        return self

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            first = next(self._turn)
        ports = self.upstream_ports[first:] + self.upstream_ports[:first]
        for port in ports:
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue
            upstream.settimeout(None)
            with self._lock:
                self.forwarded[port] = self.forwarded.get(port, 0) + 1
            threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
            _pipe(upstream, client)
            return
        client.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
