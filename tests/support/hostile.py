"""Hostile peers on 127.0.0.1, as raw sockets: a server that trickles its answer (the
status line and headers, or the body) a byte at a time, and a bare listener that only
counts the connections made to it (the open port of a port-scan oracle)."""

from __future__ import annotations

import socket
import threading
import time


# A gzip member header (RFC 1952) with FLG.FNAME set: a zero-terminated file name follows.
# A name that never ends decodes to nothing, however many bytes of it arrive.
GZIP_NAMED = bytes([0x1F, 0x8B, 8, 0x08, 0, 0, 0, 0, 0, 3])


class Trickler:
    """Reads a request, then answers one byte every ``every`` seconds: the headers
    (``slow="headers"``) or, after whole headers, a body of ``body_bytes``
    (``slow="body"``); or, with ``slow="encoded"``, after whole headers
    (``Content-Encoding: gzip``, no length), a gzip header whose file name never ends,
    a byte at a time until the client hangs up: every read gets a byte in time and a
    decoding reader gets nothing to return, ever, so only a hard deadline ends it.
    Records each connection's start and end, and whether the client hung up before the
    answer was complete."""

    def __init__(self, slow: str = "headers", every: float = 0.2, body_bytes: int = 2000,
                 content_type: str = "audio/mpeg"):
        self.slow, self.every, self.body_bytes, self.content_type = slow, every, body_bytes, content_type
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/slow"
        self.connections: list[dict[str, float | bool]] = []
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        record: dict[str, float | bool] = {"start": time.monotonic(), "client_hung_up": False}
        with self._lock:
            self.connections.append(record)
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            if self.slow == "encoded":
                self._endless_gzip(conn)
                return
            pad = f"X-Padding: {'p' * self.body_bytes}\r\n" if self.slow == "headers" else ""
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\n{pad}"
                    f"Content-Length: {self.body_bytes}\r\n\r\n").encode()
            body = b"\x00" * self.body_bytes
            if self.slow == "headers":
                slow, fast = head, body
            else:
                conn.sendall(head)
                slow, fast = body, b""
            for n in range(len(slow)):
                if self._stop.is_set():
                    return
                conn.sendall(slow[n:n + 1])
                time.sleep(self.every)
            conn.sendall(fast)
        except OSError:
            record["client_hung_up"] = True
        finally:
            record["end"] = time.monotonic()
            with self._lock:
                self.active -= 1
            conn.close()

    def _endless_gzip(self, conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\nContent-Encoding: gzip\r\n"
                     "Connection: close\r\n\r\n".encode() + GZIP_NAMED)
        while not self._stop.wait(self.every):
            conn.sendall(b"a")  # OSError (the client hung up) ends it

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()


class Listener:
    """An open port that accepts nothing itself: connections made to it wait in its
    backlog, so ``connections()`` can tell whether anyone connected."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        self.sock.setblocking(False)
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def stop(self) -> None:
        self.sock.close()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port
