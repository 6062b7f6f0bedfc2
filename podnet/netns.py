"""Entering network namespaces, one thread at a time (below every layer: the datastore uses it too).

A network namespace is a per-thread attribute in Linux, so a thread can step
into a pod's namespace, open a socket there (the socket stays bound to that
namespace for life) and step back, without forking and without disturbing the
process's other threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket

from podnet.errors import PodnetError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceNotFound(PodnetError):
    pass


class NamespaceError(PodnetError):
    pass


def netns_path(name_or_path: str) -> str:
    """A name from `ip netns` becomes /run/netns/<name>; a path stays as it is."""
    return name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)


def open_netns(name_or_path: str) -> int:
    path = netns_path(name_or_path)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceNotFound(f"network namespace {path} does not exist") from None
    except OSError as e:
        raise NamespaceError(f"cannot open network namespace {path}: {e.strerror}") from None


NS_GET_NSTYPE = 0xB703  # ioctl: the CLONE_NEW* type of a namespace file


def is_netns_fd(fd: int) -> bool:
    """Whether an open file is a network namespace (one ioctl)."""
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(f"setns into {what} failed: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name_or_path: str | int):
    """Run the body with the calling thread inside the namespace."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = name_or_path if isinstance(name_or_path, int) else open_netns(name_or_path)
    try:
        _setns(target, str(name_or_path))
        try:
            yield
        finally:
            # If we cannot get back, this thread would silently act on the
            # wrong namespace from now on; that must not go unnoticed.
            try:
                _setns(own, "the thread's own namespace")
            except NamespaceError as e:
                raise SystemExit(f"fatal: {e}") from None
    finally:
        os.close(own)
        if not isinstance(name_or_path, int):
            os.close(target)


def socket_in(ns: str | int | None, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace `ns` (None: the caller's own)."""
    if ns is None:
        return socket.socket(family, type_, proto)
    with entered(ns):
        return socket.socket(family, type_, proto)


def same_namespace(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(netns_path(a)), os.stat(netns_path(b))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


class Netns:
    """A handle on a network namespace (an open /proc/.../ns/net), comparable by identity."""

    def __init__(self, fd: int):
        self.fd = fd
        st = os.fstat(fd)
        self.id = (st.st_dev, st.st_ino)

    def __del__(self):
        try:
            os.close(self.fd)
        except OSError:
            pass


def current() -> Netns:
    """The calling thread's network namespace, held open."""
    return Netns(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))


@contextlib.contextmanager
def staying_in(ns: Netns):
    """Run the body in namespace ns: a no-op when the thread is already there (the common case)."""
    st = os.stat("/proc/thread-self/ns/net")
    if (st.st_dev, st.st_ino) == ns.id:
        yield
        return
    with entered(ns.fd):
        yield
