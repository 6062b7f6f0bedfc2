"""sysctls of the calling thread's network namespace (the kernel resolves /proc/sys/net per thread)."""

from __future__ import annotations

import os

from podnet.errors import PodnetError


class SysctlError(PodnetError):
    pass


def write(path: str, value: str | int) -> None:
    """Set a sysctl given as a /proc/sys path or a dotted name (net.ipv4.ip_forward)."""
    full = _full(path)
    try:
        fd = os.open(full, os.O_WRONLY)
    except OSError as e:
        raise SysctlError(f"cannot set {full}: {e.strerror}") from None
    try:
        os.write(fd, str(value).encode())
    except OSError as e:
        raise SysctlError(f"cannot set {full} to {value}: {e.strerror}") from None
    finally:
        os.close(fd)


def read(path: str) -> str:
    with open(_full(path)) as f:
        return f.read().strip()


def conf_path(family: int, ifname: str, key: str) -> str:
    return f"/proc/sys/net/ipv{family}/conf/{ifname}/{key}"


def neigh_path(family: int, ifname: str, key: str) -> str:
    return f"/proc/sys/net/ipv{family}/neigh/{ifname}/{key}"


def _full(path: str) -> str:
    # Dotted names cannot name interfaces with dots (vxlan.calico): those need the path form.
    return path if path.startswith("/") else "/proc/sys/" + path.replace(".", "/")
