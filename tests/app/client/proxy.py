"""A TCP proxy in front of the test server that a test can cut, to break connections the way a network
does: every open connection at once (``cut``), or whatever the server sends next after N bytes (``arm``).
It keeps the bytes clients sent, so a test can read the headers of each request."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class CuttableProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._open: list[tuple[socket.socket, socket.socket]] = []
        self._sent: list[bytearray] = []  # client -> server bytes, per connection
        self._armed: int | None = None  # server -> client bytes left before the next cut
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            sent = bytearray()
            with self._lock:
                self._open.append((downstream, upstream))
                self._sent.append(sent)
            threading.Thread(target=self._pump_up, args=(downstream, upstream, sent), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, downstream), daemon=True).start()

    def _pump_up(self, downstream: socket.socket, upstream: socket.socket, sent: bytearray) -> None:
        with contextlib.suppress(OSError):
            while chunk := downstream.recv(65536):
                sent.extend(chunk)
                upstream.sendall(chunk)
        _close(upstream, downstream)

    def _pump_down(self, upstream: socket.socket, downstream: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := upstream.recv(65536):
                with self._lock:
                    budget = self._armed
                    if budget is not None and len(chunk) >= budget:
                        self._armed = None
                        self.cuts += 1
                    elif budget is not None:
                        self._armed = budget - len(chunk)
                if budget is not None and len(chunk) >= budget:
                    downstream.sendall(chunk[:budget])
                    break
                downstream.sendall(chunk)
        _close(upstream, downstream)

    def arm(self, after_bytes: int) -> None:
        """Cut the connection that carries the server's next ``after_bytes`` bytes, once, right there."""
        with self._lock:
            self._armed = after_bytes

    def cut(self, *, once_one_is_open: bool = False) -> None:
        """Break every open connection, as a network outage would; new connections still go through.

        ``once_one_is_open``: first wait (up to 10 s) until the proxy holds a connection. A client's connection
        is established in the kernel before the proxy's thread has accepted it and connected upstream, and the
        client may meanwhile have sent megabytes into the kernel's buffers: a cut then found nothing to break."""
        deadline = time.monotonic() + 10
        while once_one_is_open and not self._open:
            if time.monotonic() > deadline:
                raise AssertionError("the proxy held no connection to cut within 10 s")
            time.sleep(0.01)
        with self._lock:
            pairs, self._open = self._open, []
            self.cuts += 1
        for pair in pairs:
            _close(*pair)

    def request_heads(self, path_part: str) -> list[dict[str, str]]:
        """The headers (lower-cased names) of every GET whose path contains ``path_part``, in order."""
        with self._lock:
            streams = [bytes(sent) for sent in self._sent]
        heads = []
        for raw in streams:
            for block in raw.split(b"\r\n\r\n"):
                lines = block.decode("latin-1").split("\r\n")
                if lines and lines[0].startswith("GET ") and path_part in lines[0]:
                    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                    heads.append({name.lower(): value for name, value in fields.items()})
        return heads

    def close(self) -> None:
        self.listener.close()
        self.cut()


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
