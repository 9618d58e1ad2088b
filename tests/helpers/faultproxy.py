"""A TCP proxy on 127.0.0.1 in front of a server that misbehaves on
purpose: it answers the first ``fail`` requests itself with
``503 SlowDown`` (what S3 says when it sheds load), or drops the
connection without an answer, then forwards everything else untouched."""

from __future__ import annotations

import socket
import threading
from typing import List, Tuple

SLOW_DOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
             b"Connection: close\r\n\r\n%s")
BODY = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"


class FaultProxy:
    """``with FaultProxy(("127.0.0.1", port), fail=3, mode="503") as proxy:``
    ``proxy.endpoint`` is where clients connect; ``proxy.faults`` counts
    the requests it answered or dropped itself."""

    def __init__(self, target: Tuple[str, int], fail: int, mode: str = "503") -> None:
        self.target, self.fail, self.mode = target, fail, mode
        self.faults = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._threads: List[threading.Thread] = []
        self._stop = False
        self._lock = threading.Lock()

    def __enter__(self) -> "FaultProxy":
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._sock.close()

    def _take_fault(self) -> bool:
        with self._lock:
            if self.faults < self.fail:
                self.faults += 1
                return True
            return False

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            if self._take_fault():
                client.recv(65536)  # the request's head (its body, if any, is never read)
                if self.mode == "503":
                    client.sendall(SLOW_DOWN % (len(BODY), BODY))
                return  # "drop": close without an answer
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            with upstream:
                pump = threading.Thread(target=_copy, args=(upstream, client), daemon=True)
                pump.start()
                _copy(client, upstream)
                pump.join(timeout=30)


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
