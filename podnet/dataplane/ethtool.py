"""TX checksum offload of an interface, through the ethtool ioctl (no ethtool binary needed)."""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

from podnet.errors import PodnetError

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM = 0x16, 0x17


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
