"""Capturing frames from an interface inside a network namespace.

An AF_PACKET socket sees every frame the interface sends and receives,
before VXLAN decapsulation on the receiving node and after encapsulation on
the sending one. A classic BPF program attached to the socket makes the
kernel drop everything but VXLAN, so a busy interface does not fill the
socket's queue with frames we would throw away.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import time

from podnet import netns as _netns
from podnet.errors import PodnetError
from podnet.observe.packet import VXLAN_PORT
from podnet.observe.pcap import SNAPLEN

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_UDP = 17
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35  # the kernel's receive time, so frames queued before collect() keep their real time
PACKET_OUTGOING = 4
ARPHRD_LOOPBACK = 772
_RCVBUF = 4 << 20


class CaptureError(PodnetError):
    pass


class InterfaceNotFound(CaptureError):
    pass


class NamespaceNotFound(CaptureError, _netns.NamespaceNotFound):
    pass


class CapturePermissionError(CaptureError):
    pass


# --- the filter -------------------------------------------------------------------
# Classic BPF (linux/filter.h): an accumulator A, an index register X, loads
# from the frame at fixed offsets, and conditional jumps that skip forward
# jt/jf instructions. The frame starts at the Ethernet header (offset 0).
_LDH_ABS, _LDB_ABS, _LDH_IND, _LDXB_MSH = 0x28, 0x30, 0x48, 0xB1
_JEQ, _JSET, _RET = 0x15, 0x45, 0x06


def _assemble(program: list) -> list[tuple[int, int, int, int]]:
    """(opcode, k, true-label, false-label) with string labels -> sock_filter tuples."""
    labels, code = {}, []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(code)
        else:
            code.append(item)
    out = []
    for pc, (op, k, jt, jf) in enumerate(code):
        skip = [0 if label is None else labels[label] - pc - 1 for label in (jt, jf)]
        out.append((op, skip[0], skip[1], k))
    return out


def vxlan_filter(port: int = VXLAN_PORT) -> list[tuple[int, int, int, int]]:
    """A BPF program accepting IPv4 or IPv6 UDP frames to `port` (code, jt, jf, k)."""
    return _assemble([
        (_LDH_ABS, 12, None, None),              # A = ethertype
        (_JEQ, ETH_P_IPV6, None, "ipv4"),
        (_LDB_ABS, 14 + 6, None, None),          # IPv6 next header (extension headers not followed)
        (_JEQ, IPPROTO_UDP, None, "reject"),
        (_LDH_ABS, 14 + 40 + 2, None, None),     # UDP destination port
        (_JEQ, port, "accept", "reject"),
        "ipv4",
        (_JEQ, ETH_P_IP, None, "reject"),        # A still holds the ethertype
        (_LDB_ABS, 14 + 9, None, None),          # IPv4 protocol
        (_JEQ, IPPROTO_UDP, None, "reject"),
        (_LDH_ABS, 14 + 6, None, None),          # IPv4 flags and fragment offset
        (_JSET, 0x1FFF, "reject", None),         # later fragments carry no UDP header
        (_LDXB_MSH, 14, None, None),             # X = IPv4 header length (4 * IHL)
        (_LDH_IND, 14 + 2, None, None),          # UDP destination port, at 14 + X + 2
        (_JEQ, port, "accept", "reject"),
        "accept",
        (_RET, SNAPLEN, None, None),             # keep up to SNAPLEN bytes
        "reject",
        (_RET, 0, None, None),
    ])


def _attach(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in program))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }; the kernel copies it.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HP", len(program), ctypes.addressof(code)))


# --- the socket -------------------------------------------------------------------


def _where(ns: str | None) -> str:
    return f"network namespace {ns}" if ns else "this network namespace"


def _open(ifname: str, ns: str | None, filter_port: int | None) -> socket.socket:
    try:
        # Protocol 0: the socket receives nothing until bind(), so no frame
        # from any interface slips in before the filter is attached.
        sock = _netns.socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    except _netns.NamespaceNotFound as e:
        raise NamespaceNotFound(e.message, hint="`ip netns list` shows the namespaces") from None
    except _netns.NamespaceError as e:
        kind = CapturePermissionError if os.geteuid() != 0 else CaptureError
        raise kind(e.message, hint="entering a namespace needs root (CAP_SYS_ADMIN)") from None
    except PermissionError:
        raise CapturePermissionError("opening a packet socket is not permitted",
                                     hint="run as root or with CAP_NET_RAW") from None

    ok = False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        if filter_port is not None:
            _attach(sock, vxlan_filter(filter_port))
        sock.bind((ifname, ETH_P_ALL))  # Python converts the protocol to network order here
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ENETDOWN:
            raise CaptureError(f"interface {ifname} in {_where(ns)} is down",
                               hint=f"ip {'-n ' + ns + ' ' if ns else ''}link set {ifname} up")
        ok = True
        return sock
    except OSError as e:
        if e.errno == errno.ENODEV:
            raise InterfaceNotFound(f"no interface {ifname!r} in {_where(ns)}",
                                    hint=f"ip {'-n ' + ns + ' ' if ns else ''}link shows the interfaces") from None
        if e.errno in (errno.EPERM, errno.EACCES):
            raise CapturePermissionError(f"capturing on {ifname} is not permitted",
                                         hint="run as root or with CAP_NET_RAW") from None
        raise CaptureError(f"cannot capture on {ifname} in {_where(ns)}: {e.strerror}") from e
    finally:
        if not ok:
            sock.close()


def _timestamp(ancillary: list) -> float:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanos = struct.unpack_from("qq", data)
            return seconds + nanos / 1e9
    return time.time()


class CaptureSession:
    """A capture that runs from start() (or `with`) until close().

    Start it before sending traffic, then collect(): frames that arrived in
    between wait in the socket's queue.
    """

    def __init__(self, ifname: str, netns: str | None = None,
                 vxlan_port: int = VXLAN_PORT, only_vxlan: bool = True):
        self.ifname, self.netns = ifname, netns
        self.vxlan_port, self.only_vxlan = vxlan_port, only_vxlan
        self._sock: socket.socket | None = None

    def start(self) -> CaptureSession:
        if self._sock is None:
            self._sock = _open(self.ifname, self.netns, self.vxlan_port if self.only_vxlan else None)
        return self

    def collect(self, count: int | None = 1, timeout: float = 5.0) -> list[tuple[float, bytes]]:
        """Up to `count` frames (None: no limit), waiting at most `timeout` seconds."""
        if self._sock is None:
            raise CaptureError("the capture has not been started", hint="call start() or use `with`")
        frames: list[tuple[float, bytes]] = []
        deadline = time.monotonic() + timeout
        ancillary_size = socket.CMSG_SPACE(16)
        while count is None or len(frames) < count:
            # After the deadline the socket turns non-blocking: what is already
            # queued arrived in time and is still taken.
            self._sock.settimeout(max(deadline - time.monotonic(), 0.0))
            try:
                data, ancillary, _flags, address = self._sock.recvmsg(SNAPLEN, ancillary_size)
            except (TimeoutError, BlockingIOError):
                break
            _ifname, _proto, pkttype, hatype, _mac = address
            if pkttype == PACKET_OUTGOING and hatype == ARPHRD_LOOPBACK:
                continue  # loopback shows each frame twice: going out and coming back in
            frames.append((_timestamp(ancillary), data))
        return frames

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> CaptureSession:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def capture(ifname: str, netns: str | None = None, count: int = 1, timeout: float = 5.0,
            vxlan_port: int = VXLAN_PORT, only_vxlan: bool = True) -> list[tuple[float, bytes]]:
    """Capture up to `count` frames on `ifname` (in namespace `netns`) within `timeout` seconds."""
    with CaptureSession(ifname, netns, vxlan_port=vxlan_port, only_vxlan=only_vxlan) as session:
        return session.collect(count, timeout)
