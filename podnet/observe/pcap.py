"""Classic libpcap files: what tcpdump -w writes and tshark/Wireshark read.

A 24-byte file header (magic, version 2.4, snap length, link type), then per
frame a 16-byte record header (seconds, microseconds, captured length,
original length) and the captured bytes. Written little-endian; read in
either byte order.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from podnet.errors import PodnetError

MAGIC = 0xA1B2C3D4
MAGIC_NANO = 0xA1B23C4D  # same format with nanosecond timestamps (tcpdump --nano)
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144

_FILE_HEADER = "IHHiIII"  # magic, major, minor, tz offset, sigfigs, snaplen, linktype
_RECORD_HEADER = "IIII"  # seconds, fraction, captured length, original length


class PcapError(PodnetError):
    pass


class PcapWriter:
    """Writes frames to a new pcap file (a path) or to an open binary file object."""

    def __init__(self, target: str | os.PathLike | BinaryIO, snaplen: int = SNAPLEN):
        self._owned = isinstance(target, (str, os.PathLike))
        self._file = open(target, "wb") if self._owned else target
        self.snaplen = snaplen
        self._file.write(struct.pack("<" + _FILE_HEADER, MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))

    def write(self, ts: float, frame: bytes) -> None:
        seconds, micros = divmod(round(ts * 1_000_000), 1_000_000)
        data = bytes(frame[:self.snaplen])
        self._file.write(struct.pack("<" + _RECORD_HEADER, seconds, micros, len(data), len(frame)) + data)

    def close(self) -> None:
        # A file object we were handed belongs to the caller: flush, don't close.
        if self._owned:
            self._file.close()
        else:
            self._file.flush()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_pcap(source: str | os.PathLike | BinaryIO) -> list[tuple[float, bytes]]:
    """All frames of a classic pcap file of Ethernet frames, as (timestamp, bytes)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            data = f.read()
    else:
        data = source.read()
    name = getattr(source, "name", source)

    if len(data) < 24:
        raise PcapError(f"{name}: too short for a pcap file header ({len(data)} bytes)")
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        raise PcapError(f"{name} is pcapng, not classic pcap",
                        hint="convert it: editcap -F pcap in.pcapng out.pcap")
    for order in "<>":
        (magic,) = struct.unpack(order + "I", data[:4])
        if magic in (MAGIC, MAGIC_NANO):
            break
    else:
        raise PcapError(f"{name} is not a pcap file (magic 0x{data[:4].hex()})")
    scale = 1e-9 if magic == MAGIC_NANO else 1e-6
    *_, linktype = struct.unpack_from(order + _FILE_HEADER, data)
    if linktype & 0xFFFF != LINKTYPE_ETHERNET:
        raise PcapError(f"{name} holds link type {linktype}, not Ethernet (1)")

    frames, pos = [], 24
    while pos < len(data):
        if pos + 16 > len(data):
            raise PcapError(f"{name}: cut off inside a record header at byte {pos}")
        seconds, fraction, captured, _original = struct.unpack_from(order + _RECORD_HEADER, data, pos)
        pos += 16
        if pos + captured > len(data):
            raise PcapError(f"{name}: cut off inside a {captured}-byte frame at byte {pos}")
        frames.append((seconds + fraction * scale, data[pos:pos + captured]))
        pos += captured
    return frames
