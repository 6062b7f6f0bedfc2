"""Offload features of an interface, through the ethtool ioctl (no ethtool binary needed).

`tx_checksum`/`set_tx_checksum` are the agent's: TX checksum offload of a VXLAN
device in the caller's namespace. `features` reads any feature by the name
`ethtool -k` shows, in any namespace, for `podnet doctor`.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
from typing import Iterable

from podnet.netns import socket_in
from podnet.errors import PodnetError

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM = 0x16, 0x17
ETHTOOL_GSTRINGS, ETHTOOL_GSSET_INFO, ETHTOOL_GFEATURES = 0x1B, 0x37, 0x3A
ETH_SS_FEATURES, ETH_GSTRING_LEN = 4, 32


class EthtoolError(PodnetError):
    pass


def _call(ifname: str, cmd: int, data: int = 0) -> int:
    # struct ethtool_value {u32 cmd; u32 data}, pointed to from struct ifreq's union.
    value = (ctypes.c_uint32 * 2)(cmd, data)
    ifreq = bytearray(struct.pack("16sP", ifname.encode(), ctypes.addressof(value)) + b"\0" * 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
        except OSError as e:
            raise EthtoolError(f"ethtool on {ifname}: {e.strerror}") from None
    return value[1]


def tx_checksum(ifname: str) -> bool:
    return bool(_call(ifname, ETHTOOL_GTXCSUM))


def set_tx_checksum(ifname: str, on: bool) -> None:
    _call(ifname, ETHTOOL_STXCSUM, 1 if on else 0)


def _ioctl(sock: socket.socket, ifname: str, buf) -> None:
    """SIOCETHTOOL with `buf` (a ctypes buffer the kernel reads and fills) as the ifreq's data."""
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(buf)).ljust(40, b"\0")
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError as e:
        raise EthtoolError(f"ethtool on {ifname}: {e.strerror}") from None


def features(ifname: str, wanted: Iterable[str] | None = None, netns: str | None = None) -> dict[str, bool]:
    """What `ethtool -k` shows: feature name -> active, for the named features (default: all).

    `netns`: the namespace holding the interface (a name or path; None: the caller's own)."""
    sock = socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        info = ctypes.create_string_buffer(struct.pack("=IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0))
        _ioctl(sock, ifname, info)
        count = struct.unpack_from("=IIQI", info.raw)[3]
        strings = ctypes.create_string_buffer(struct.pack("=III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, 0)
                                              + bytes(ETH_GSTRING_LEN * count))
        _ioctl(sock, ifname, strings)
        names = [strings.raw[12 + ETH_GSTRING_LEN * i:12 + ETH_GSTRING_LEN * (i + 1)].split(b"\0")[0].decode()
                 for i in range(count)]
        blocks = (count + 31) // 32
        feats = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_GFEATURES, blocks) + bytes(16 * blocks))
        _ioctl(sock, ifname, feats)
    finally:
        sock.close()
    wanted = set(wanted) if wanted is not None else None
    out = {}
    for i, name in enumerate(names):
        if wanted is None or name in wanted:
            _available, _requested, active, _never = struct.unpack_from("=IIII", feats.raw, 8 + 16 * (i // 32))
            out[name] = bool(active >> (i % 32) & 1)
    return out
