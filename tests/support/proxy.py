"""A TCP forwarder between a client and a server, able to misbehave on purpose."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class FaultyProxy:
    """Forwards 127.0.0.1:port to upstream_port.

    refuse_first: the first N connections are accepted and closed at once (a dropped handshake).
    bytes_per_second: caps the server-to-client direction, so a transfer lasts long enough to be
    interrupted while it runs.
    """

    upstream_port: int
    refuse_first: int = 0
    bytes_per_second: int | None = None
    connections: int = 0
    accepted_at: list[float] = field(default_factory=list)
    _listener: socket.socket | None = None
    _closed: bool = False

    def start(self) -> FaultyProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept_loop, daemon=True).start()
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
            self.connections += 1
            self.accepted_at.append(time.monotonic())
            if self.connections <= self.refuse_first:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, self.bytes_per_second), daemon=True
            ).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, rate: int | None) -> None:
        chunk = 65536 if rate is None else max(1024, rate // 20)
        try:
            while data := source.recv(chunk):
                sink.sendall(data)
                if rate is not None:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
