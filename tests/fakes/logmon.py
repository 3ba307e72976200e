"""Drain many task stdout FIFOs from one thread, the way Nomad's logmon reads ``.stdout.fifo``.

Like logmon, each FIFO is created and opened for reading before the task starts (so the
driver's non-blocking open for writing finds a reader), and a FIFO that reports end-of-file
(its last writer closed) is not read again.
"""

from __future__ import annotations

import os
import selectors
import threading


class Logmon:
    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._received: dict[str, bytearray] = {}
        self._eof: set[str] = set()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="fake-logmon", daemon=True)
        self._thread.start()

    def add(self, path: str) -> str:
        """Create the FIFO ``path`` and start reading it; returns ``path``."""
        os.mkfifo(path, 0o600)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with self._lock:
            self._received[path] = bytearray()
            self._sel.register(fd, selectors.EVENT_READ, path)
        os.write(self._wake_w, b"x")
        return path

    def received(self, path: str) -> bytes:
        with self._lock:
            return bytes(self._received.get(path, b""))

    def eof(self, path: str) -> bool:
        with self._lock:
            return path in self._eof

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._sel.select(timeout=1.0):
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                with self._lock:
                    if data:
                        self._received[key.data] += data
                    else:  # the last writer closed: logmon stops here too
                        self._eof.add(key.data)
                        self._sel.unregister(key.fd)
                        os.close(key.fd)

    def close(self) -> None:
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        with self._lock:
            for key in list(self._sel.get_map().values()):
                self._sel.unregister(key.fd)
                if key.data is not None:
                    os.close(key.fd)
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
