"""The agent's end of the plugin socket: a pool of threads blocked in accept(), root callers only.

Each thread takes the next connection straight from the kernel and serves it
to the end, so a request costs no thread start and no hand-over from a
dispatcher (~0.2 ms of every plugin call with a thread per connection).
Requests beyond the pool's size wait in the listen queue, which is deep
enough for a burst of pods; IPAM is serialised per node anyway.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading

from podnet.cni import handler
from podnet.cni.wire import MAGIC, sockaddr

log = logging.getLogger(__name__)

_MAX_REQUEST = 16 << 20
_CREDS = struct.Struct("3i")
POOL_SIZE = 64  # requests served at once; one waiting on an unreachable store must not hold up the rest
BACKLOG = 256  # a burst of pods (kubelet starts many at once) must queue, not be refused


class CniServer:
    def __init__(self, address: str, ctx: handler.NodeContext, pool_size: int = POOL_SIZE):
        self.ctx = ctx
        self.address = address
        self.pool_size = pool_size
        path = sockaddr(address)
        if not path.startswith("\0"):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            if os.path.exists(path):
                os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(path)
            if not path.startswith("\0"):
                os.chmod(path, 0o600)
            self.sock.listen(BACKLOG)
        except BaseException:
            self.sock.close()
            raise
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until shutdown(): this thread and pool_size - 1 more, all started from here (so
        they are in this thread's network namespace). poll_interval: accepted and unused (the
        threads wake on connections and on shutdown, they do not poll)."""
        self._threads = [threading.Thread(target=self._serve, name=f"cni server {i}", daemon=True)
                         for i in range(1, self.pool_size)]
        for t in self._threads:
            t.start()
        self._serve()
        for t in self._threads:
            t.join(timeout=5)

    def shutdown(self) -> None:
        """Stop accepting; requests being served finish. Wakes every thread blocked in accept()."""
        self._stopped.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError as e:
                if self._stopped.is_set() or e.errno in (errno.EINVAL, errno.EBADF):
                    return
                log.warning("accepting a CNI connection failed: %s", e)
                continue
            try:
                self._serve_one(conn)
            except Exception:  # one broken request must not take a server thread with it
                log.exception("serving a CNI request failed")
            finally:
                conn.close()

    def _serve_one(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        _, uid, _ = _CREDS.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
        if uid != 0:
            log.warning("refused a CNI request from uid %d", uid)
            return
        with conn.makefile("rb") as f:
            header = f.readline(128).split()
            if len(header) != 3 or header[0] != MAGIC:
                return
            env_len, in_len = int(header[1]), int(header[2])
            if env_len + in_len > _MAX_REQUEST:
                return
            env_raw, stdin = f.read(env_len), f.read(in_len)
        env = dict(item.split("=", 1) for item in env_raw.decode().split("\0") if "=" in item)
        code, out = handler.handle(self.ctx, env, stdin)
        conn.sendall(f"{code}\n".encode() + out)
