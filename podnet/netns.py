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
import stat

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


def open_netns(name_or_path: str | int) -> int:
    """A new descriptor on a namespace: by name or path (trusted callers: the lab, the dataplane's own
    namespaces), or a copy of an open one (a pod's, as the plugin opened it)."""
    if isinstance(name_or_path, int):
        return os.dup(name_or_path)
    path = netns_path(name_or_path)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceNotFound(f"network namespace {path} does not exist") from None
    except OSError as e:
        raise NamespaceError(f"cannot open network namespace {path}: {e.strerror}") from None


NS_GET_NSTYPE = 0xB703  # ioctl: the CLONE_NEW* type of a namespace file
NAMESPACE_TYPES = {0x00020000: "mount", 0x02000000: "cgroup", 0x04000000: "uts", 0x08000000: "ipc",
                   0x10000000: "user", 0x20000000: "pid", CLONE_NEWNET: "network", 0x00000080: "time"}


def namespace_type(fd: int) -> str | None:
    """What kind of namespace an open file is ("network", "mount", ...); None: not a namespace (one ioctl)."""
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return None
    return NAMESPACE_TYPES.get(kind, f"type {kind:#x}")


def is_netns_fd(fd: int) -> bool:
    """Whether an open file is a network namespace (one ioctl)."""
    return namespace_type(fd) == "network"


class NotANamespace(NamespaceError):
    """The path exists but is no namespace file (a regular file, directory, FIFO, device, socket)."""

    def __init__(self, path: str, kind: str):
        super().__init__(f"{path} is a {kind}, not a network namespace")
        self.kind = kind


_KINDS = {stat.S_IFREG: "regular file", stat.S_IFDIR: "directory", stat.S_IFIFO: "FIFO",
          stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFSOCK: "socket"}


def file_kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "special file")


def open_namespace_file(path: str) -> int:
    """Open a namespace file by absolute path without ever blocking or opening anything else: the file
    is looked at through an O_PATH descriptor (which opens nothing: no FIFO waits, no device acts) and
    reopened for real only when it lives on nsfs. The caller checks the namespace's type.

    This is the rule the plugin applies in the runtime's mount namespace (cni/wire.py, step by step);
    here for callers in this process. Raises NamespaceNotFound, NotANamespace or NamespaceError."""
    try:
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceNotFound(f"network namespace {path} does not exist") from None
    except OSError as e:
        raise NamespaceError(f"cannot open network namespace {path}: {e.strerror}") from None
    try:
        st = os.fstat(handle)
        if not stat.S_ISREG(st.st_mode) or st.st_dev != os.stat("/proc/self/ns/net").st_dev:
            raise NotANamespace(path, file_kind(st.st_mode))
        try:
            return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise NamespaceError(f"cannot open network namespace {path}: {e.strerror}") from None
    finally:
        os.close(handle)


def is_netns_path(path: str) -> bool:
    """Whether an absolute path names a live network namespace, looked at without ever blocking
    (open_namespace_file's rule: nothing but an nsfs file is opened)."""
    if not path.startswith("/"):
        return False
    try:
        fd = open_namespace_file(path)
    except (NamespaceNotFound, NamespaceError):
        return False
    try:
        return is_netns_fd(fd)
    finally:
        os.close(fd)


class NetnsFd(int):
    """An open namespace descriptor that names itself by the path it was given as (in messages)."""

    path: str

    def __new__(cls, fd: int, path: str):
        obj = super().__new__(cls, fd)
        obj.path = path
        return obj

    def __str__(self) -> str:
        return self.path

    def __format__(self, spec: str) -> str:
        return format(self.path, spec)


def identity(path_or_fd: str | int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a namespace: equal for two handles on the same namespace; None if unreadable."""
    try:
        st = os.fstat(path_or_fd) if isinstance(path_or_fd, int) else os.stat(path_or_fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def node_namespaces() -> frozenset[tuple[int, int]]:
    """The network namespaces this process can tell are the node's, never a pod's: its own (the
    process's and the calling thread's) and PID 1's (the host's, seen from this PID namespace)."""
    found = (identity(p) for p in ("/proc/self/ns/net", "/proc/thread-self/ns/net", "/proc/1/ns/net"))
    return frozenset(i for i in found if i is not None)


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
