"""A loopback port that keeps what HTTP clients send it: the head of each connection's first request, read whole
and kept, then one answer given (or none: the connection is closed unanswered). It shows what a client sends,
a Qdrant client's `api-key` header say, and is no server of anything."""

from __future__ import annotations

import socket
import threading


class HeadersListener:
    """Listens on 127.0.0.1 and a free port (`url`) in a daemon thread until `close`, or `most` connections."""

    def __init__(self, answer: bytes | None = None, most: int = 50) -> None:
        self.answer = answer  # sent, as is, to each request read; None: closed without a word
        self.heads: list[str] = []
        self._most = most
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set() and len(self.heads) < self._most:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    try:
                        chunk = conn.recv(4096)
                    except OSError:  # reset or silent: what it sent so far is all there is
                        break
                    if not chunk:
                        break
                    head += chunk
                if head:  # a connection closed before it sent a byte is no request
                    self.heads.append(head.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
                    if self.answer is not None:
                        conn.sendall(self.answer)

    @property
    def request_lines(self) -> list[str]:
        """Each request's first line (`GET / HTTP/1.1`)."""
        return [head.split("\r\n", 1)[0] for head in self.heads]

    def api_keys(self) -> set[str]:
        """The `api-key` headers sent (a Qdrant server's key)."""
        return {line.split(":", 1)[1].strip() for head in self.heads for line in head.split("\r\n")[1:]
                if line.lower().startswith("api-key:")}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
