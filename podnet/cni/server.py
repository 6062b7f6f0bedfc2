"""The agent's end of the plugin socket: one thread per request, root callers only."""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import struct

from podnet.cni import handler
from podnet.cni.wire import MAGIC, sockaddr

log = logging.getLogger(__name__)

_MAX_REQUEST = 16 << 20


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock: socket.socket = self.request
        sock.settimeout(30)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != 0:
            log.warning("refused a CNI request from uid %d", uid)
            return
        f = sock.makefile("rb")
        header = f.readline(128).split()
        if len(header) != 3 or header[0] != MAGIC:
            return
        env_len, in_len = int(header[1]), int(header[2])
        if env_len + in_len > _MAX_REQUEST:
            return
        env_raw, stdin = f.read(env_len), f.read(in_len)
        env = dict(item.split("=", 1) for item in env_raw.decode().split("\0") if "=" in item)
        code, out = handler.handle(self.server.ctx, env, stdin)
        sock.sendall(f"{code}\n".encode() + out)


class CniServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 256  # a burst of pods (kubelet starts many at once) must queue, not be refused

    def __init__(self, address: str, ctx: handler.NodeContext):
        self.ctx = ctx
        self.address = address
        path = sockaddr(address)
        if not path.startswith("\0"):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            if os.path.exists(path):
                os.unlink(path)
        super().__init__(path, _Handler)
        if not path.startswith("\0"):
            os.chmod(path, 0o600)
