"""The agent's end of the plugin socket: a pool of threads blocked in accept(), root callers only.

Each thread takes the next connection straight from the kernel and serves it
to the end, so a request costs no thread start and no hand-over from a
dispatcher (~0.2 ms of every plugin call with a thread per connection).
Requests beyond the pool's size wait in the listen queue, which is deep
enough for a burst of pods; IPAM is serialised per node anyway.

A pool thread never waits long for a request to arrive: the plugin sends its
whole request right after connecting, so a thread that has not got all of it
within FAST_WAIT hands the connection to one reader thread, which finishes
reading many slow connections at once (a selector) and runs each completed
request on a thread of its own. A request not complete READ_DEADLINE after
accept() is answered with code 11 and closed. So clients that connect and send
nothing, or trickle, cannot take the pool from an unrelated DEL.
"""

from __future__ import annotations

import array
import errno
import json
import logging
import os
import select
import selectors
import socket
import struct
import threading
import time

from podnet.cni import handler, wire
from podnet.cni import protocol as p
from podnet.cni.wire import sockaddr

log = logging.getLogger(__name__)

_CREDS = struct.Struct("3i")
POOL_SIZE = 64  # requests served at once; one waiting on an unreachable store must not hold up the rest
BACKLOG = 256  # a burst of pods (kubelet starts many at once) must queue, not be refused
FAST_WAIT = 0.1  # seconds a pool thread waits for a request before handing it to the reader thread
SLOW_LIMIT = 1024  # connections the reader thread holds at once; beyond that the oldest is answered 11
SLOW_WORKERS = 16  # slow requests (completed by the reader thread) running at once
_FD_SPACE = socket.CMSG_SPACE(4 * 4)  # room for a few descriptors: more than one is a protocol error


class BadRequest(Exception):
    """The request cannot be served; answered with the spec error it carries."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.error = p.CniError(code, msg, details)


class _Incoming:
    """One connection's request, read incrementally: the header (with any descriptor), then the body."""

    def __init__(self, conn: socket.socket, peer_pid: int):
        self.conn = conn
        self.peer_pid = peer_pid
        self.accepted = time.monotonic()
        self.buf = bytearray()
        self.fds: list[int] = []
        self.head: tuple[int, int, str] | None = None  # env_len, stdin_len, netns token

    def read_some(self) -> bool:
        """Read what is there without waiting; True when the request is complete. Raises BadRequest,
        or ConnectionError when the peer went away."""
        while True:
            try:
                data, ancdata, _, _ = self.conn.recvmsg(1 << 16, _FD_SPACE, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return False
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                    self.fds.extend(fds)
            if not data:
                raise ConnectionError("the plugin closed the connection before sending its request")
            self.buf += data
            if self.head is None:
                self._parse_header()
            if self.head is not None and len(self.buf) >= self.head[0] + self.head[1]:
                return True

    def _parse_header(self) -> None:
        end = self.buf.find(b"\n", 0, wire.MAX_HEADER)
        if end < 0:
            if len(self.buf) >= wire.MAX_HEADER:
                raise BadRequest(p.INVALID_ENVIRONMENT, "the plugin's request does not start with a PODNET header")
            return
        words = bytes(self.buf[:end]).split()
        del self.buf[:end + 1]
        if words[:1] == [wire.OLD_MAGIC]:
            raise BadRequest(p.INVALID_ENVIRONMENT, "the podnet plugin executable is older than the podnet agent",
                             "run `podnet install-cni` again to install the plugin that matches the agent")
        if (len(words) != 4 or words[0] != wire.MAGIC or not words[1].isdigit() or not words[2].isdigit()):
            raise BadRequest(p.INVALID_ENVIRONMENT, "the plugin's request header is malformed",
                             f"expected '{wire.MAGIC.decode()} <env bytes> <stdin bytes> <netns>'")
        env_len, in_len = int(words[1]), int(words[2])
        if env_len > wire.MAX_ENV:
            raise BadRequest(p.INVALID_ENVIRONMENT, f"the CNI_* environment is {env_len} bytes, over the limit "
                                                    f"of {wire.MAX_ENV}")
        if in_len > wire.MAX_CONFIG:
            # Not 11: a configuration this large can never be served, retrying cannot help.
            raise BadRequest(p.INVALID_CONFIG, f"the network configuration is {in_len} bytes, over the limit "
                                               f"of {wire.MAX_CONFIG}")
        self.head = (env_len, in_len, words[3].decode("ascii", "replace"))

    def parts(self) -> tuple[dict[str, str], bytes, handler.GivenNetns]:
        env_len, in_len, token = self.head
        body = bytes(self.buf)
        try:
            env_text = body[:env_len].decode()
        except UnicodeDecodeError:
            raise BadRequest(p.INVALID_ENVIRONMENT, "a CNI_* environment variable is not valid UTF-8") from None
        env = dict(item.split("=", 1) for item in env_text.split("\0") if "=" in item)
        if len(self.fds) > 1 or (self.fds and token != wire.NETNS_FD) or (token == wire.NETNS_FD and not self.fds):
            raise BadRequest(p.INVALID_ENVIRONMENT, "the plugin sent a namespace descriptor that does not match "
                                                    f"its header ({token!r} with {len(self.fds)} descriptors)")
        return env, body[env_len:env_len + in_len], handler.GivenNetns(token, self.fds[0] if self.fds else None)

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        self.conn.close()


def _answer(conn: socket.socket, code: int, out: bytes) -> None:
    try:
        conn.setblocking(True)
        conn.settimeout(5)
        conn.sendall(f"{code}\n".encode() + out)
    except OSError as e:  # the plugin is gone (its runtime timed out): nothing more to tell it
        log.info("could not answer the CNI plugin: %s", e)


def _refuse(incoming: _Incoming, err: p.CniError) -> None:
    log.warning("refused a CNI request: %s", err)
    _answer(incoming.conn, 1, json.dumps(err.to_json(p.LATEST)).encode())


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
        self._selector = selectors.DefaultSelector()
        self._slow_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._slow_workers = threading.BoundedSemaphore(SLOW_WORKERS)

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until shutdown(): this thread, pool_size - 1 more and the slow-request reader, all
        started from here (so they, and the threads they start, are in this thread's network
        namespace). poll_interval: accepted and unused (the threads wake on connections and on
        shutdown, they do not poll)."""
        self._threads = [threading.Thread(target=self._serve, name=f"cni server {i}", daemon=True)
                         for i in range(1, self.pool_size)]
        self._threads.append(threading.Thread(target=self._read_slow, name="cni slow reader", daemon=True))
        for t in self._threads:
            t.start()
        self._serve()
        for t in self._threads:
            t.join(timeout=5)
        with self._slow_lock:
            for key in list(self._selector.get_map().values()):
                if key.data is not None:
                    key.data.close()
            self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def shutdown(self) -> None:
        """Stop accepting; requests being served finish. Wakes every thread blocked in accept()."""
        self._stopped.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._wake()

    # The pool ----------------------------------------------------------------------------------------

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
                self._take(conn)
            except Exception:  # one broken request must not take a server thread with it
                log.exception("serving a CNI request failed")
                conn.close()

    def _take(self, conn: socket.socket) -> None:
        pid, uid, _ = _CREDS.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
        if uid != 0:
            log.warning("refused a CNI request from uid %d", uid)
            conn.close()
            return
        incoming = _Incoming(conn, pid)
        deadline = incoming.accepted + FAST_WAIT
        try:
            while not incoming.read_some():
                left = deadline - time.monotonic()
                if left <= 0:
                    self._park(incoming)  # slow or silent: the reader thread finishes it
                    return
                poller = select.poll()
                poller.register(conn, select.POLLIN)
                poller.poll(left * 1000)  # wait for more of the request, or the deadline
        except BadRequest as e:
            _refuse(incoming, e.error)
            incoming.close()
            return
        except (ConnectionError, OSError) as e:
            log.info("a CNI plugin connection ended early: %s", e)
            incoming.close()
            return
        self._run(incoming)

    def _run(self, incoming: _Incoming) -> None:
        """Serve a complete request and close its connection (and any descriptor it brought)."""
        try:
            try:
                env, stdin, netns = incoming.parts()
            except BadRequest as e:
                _refuse(incoming, e.error)
                return
            code, out = handler.handle(self.ctx, env, stdin, netns=netns, peer_pid=incoming.peer_pid,
                                       deadline=incoming.accepted + wire.REQUEST_DEADLINE)
            _answer(incoming.conn, code, out)
        finally:
            incoming.close()

    # Slow requests -----------------------------------------------------------------------------------

    def _park(self, incoming: _Incoming) -> None:
        incoming.conn.setblocking(False)
        with self._slow_lock:
            held = [key.data for key in self._selector.get_map().values() if key.data is not None]
            if len(held) >= SLOW_LIMIT:
                oldest = min(held, key=lambda i: i.accepted)
                self._selector.unregister(oldest.conn)
                self._expire(oldest, "the agent holds too many unfinished requests")
            self._selector.register(incoming.conn, selectors.EVENT_READ, incoming)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # full (the reader has wakes pending anyway) or closed (shut down)
            pass

    def _expire(self, incoming: _Incoming, why: str) -> None:
        err = p.CniError(p.TRY_AGAIN_LATER, "the podnet agent did not receive the whole request in time", why)
        log.warning("CNI request from pid %d: %s", incoming.peer_pid, why)
        try:
            incoming.conn.send(f"1\n{json.dumps(err.to_json(p.LATEST))}".encode(), socket.MSG_DONTWAIT)
        except OSError:
            pass
        incoming.close()

    def _read_slow(self) -> None:
        while not self._stopped.is_set():
            with self._slow_lock:
                held = [key.data for key in self._selector.get_map().values() if key.data is not None]
            timeout = None
            if held:
                timeout = max(0.0, min(i.accepted for i in held) + wire.READ_DEADLINE - time.monotonic())
            events = self._selector.select(timeout)
            now = time.monotonic()
            with self._slow_lock:
                for key, _ in events:
                    if key.data is None:
                        try:
                            os.read(self._wake_r, 4096)
                        except OSError:
                            pass
                        continue
                    incoming = key.data
                    if self._selector.get_map().get(key.fd) is not key:
                        continue  # answered and closed meanwhile (to make room)
                    try:
                        done = incoming.read_some()
                    except BadRequest as e:
                        self._selector.unregister(incoming.conn)
                        _refuse(incoming, e.error)
                        incoming.close()
                        continue
                    except OSError as e:
                        self._selector.unregister(incoming.conn)
                        log.info("a CNI plugin connection ended early: %s", e)
                        incoming.close()
                        continue
                    if done:
                        self._selector.unregister(incoming.conn)
                        self._start_slow(incoming)
                for key in list(self._selector.get_map().values()):
                    incoming = key.data
                    if incoming is not None and now - incoming.accepted >= wire.READ_DEADLINE:
                        self._selector.unregister(incoming.conn)
                        self._expire(incoming, f"no complete request {wire.READ_DEADLINE:.0f} s after connecting")

    def _start_slow(self, incoming: _Incoming) -> None:
        if not self._slow_workers.acquire(blocking=False):
            err = p.CniError(p.TRY_AGAIN_LATER, "the podnet agent is busy with slow requests", "retry")
            _refuse(incoming, err)
            incoming.close()
            return

        def run() -> None:
            try:
                self._run(incoming)
            except Exception:
                log.exception("serving a CNI request failed")
            finally:
                self._slow_workers.release()

        threading.Thread(target=run, name="cni slow request", daemon=True).start()
