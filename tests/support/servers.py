"""Shared machinery for the threaded loopback test servers (origin, TCP echo).

One accept thread (woken for shutdown through a socketpair, no polling) and one thread per
connection. ``stop()`` shuts every live connection down (which wakes blocking recv/send),
then joins all threads with a deadline and closes every socket.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time

__all__ = ["ThreadedTCPServer", "format_host"]

STOP_TIMEOUT = 5.0


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ThreadedTCPServer:
    """Base class: subclasses implement ``serve_connection(conn, conn_id)``."""

    thread_name = "test-server"

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.errors: list[BaseException] = []  # unexpected (non-OSError) handler errors
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._accepted = 0
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ThreadedTCPServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, 0))
            listener.listen(1024)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"{self.thread_name}-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join threads (bounded). Idempotent."""
        if self._listener is None:
            return
        self._stopping.set()
        assert self._wake_w is not None and self._wake_r is not None
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        deadline = time.monotonic() + STOP_TIMEOUT
        if self._accept_thread is not None:
            self._accept_thread.join(STOP_TIMEOUT)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftover = list(self._conns)
            self._conns.clear()
        for conn in leftover:
            conn.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._listener = None
        alive = [t.name for t in threads if t.is_alive()]
        if self._accept_thread is not None and self._accept_thread.is_alive():
            alive.append(self._accept_thread.name)
        if alive:
            raise RuntimeError(f"{type(self).__name__} threads did not stop: {alive}")

    def __enter__(self) -> ThreadedTCPServer:
        return self if self._listener is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ info
    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def authority(self) -> str:
        """``host:port`` (IPv6 in brackets)."""
        return f"{format_host(self.host)}:{self.port}"

    @property
    def connections_accepted(self) -> int:
        with self._lock:
            return self._accepted

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def wait_until(self, predicate: object, timeout: float = 5.0, what: str = "condition") -> None:
        """Poll ``predicate()`` until true (raises TimeoutError)."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{type(self).__name__}: timed out waiting for {what}")
            time.sleep(0.005)

    # ------------------------------------------------------------------ internals
    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                events = sel.select()
                if self._stopping.is_set():
                    return
                if not any(key.fileobj is self._listener for key, _ in events):
                    continue
                try:
                    conn, _addr = self._listener.accept()
                except OSError:
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with self._lock:
                    self._accepted += 1
                    conn_id = self._accepted
                    self._conns.add(conn)
                    self._threads = {t for t in self._threads if t.is_alive()}
                    t = threading.Thread(
                        target=self._run_connection,
                        args=(conn, conn_id),
                        name=f"{self.thread_name}-conn-{conn_id}",
                        daemon=True,
                    )
                    self._threads.add(t)
                t.start()

    def _run_connection(self, conn: socket.socket, conn_id: int) -> None:
        try:
            self.serve_connection(conn, conn_id)
        except OSError:
            pass
        except Exception as e:
            self.errors.append(e)
        finally:
            self.close_connection(conn)

    def serve_connection(self, conn: socket.socket, conn_id: int) -> None:
        raise NotImplementedError

    def close_connection(self, conn: socket.socket, *, reset: bool = False) -> None:
        """Close (idempotent). ``reset=True`` -> SO_LINGER 0, so the peer gets an RST."""
        with self._lock:
            if conn not in self._conns:
                return
            self._conns.discard(conn)
            if reset:
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def graceful_close(self, conn: socket.socket, linger: float = 2.0) -> None:
        """Send FIN, drain what the peer still sends (so unread input does not turn the
        close into an RST that could destroy data in flight), then close."""
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(linger)
            deadline = time.monotonic() + linger
            while time.monotonic() < deadline and conn.recv(65536):
                pass
        self.close_connection(conn)
