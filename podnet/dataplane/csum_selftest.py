"""The node's evidence about VXLAN TX checksum offload: a self-test through a tunnel, and error counters.

`run()` builds a VXLAN tunnel between two anonymous network namespaces (unshared by a short-lived
thread; held only by file descriptors, so they vanish with this process even if it crashes), with TX
checksum offload on the VXLAN devices as the kernel sets it, and sends a TCP stream and UDP datagrams
through it. The underlay veth has TX checksum offload off, so the kernel must compute the inner
checksums it deferred on the way out, as a NIC would: the receiver's capture checks every inner TCP
and UDP checksum, its stack counts checksum errors, and the data must arrive intact. A node whose
kernel mangles offloaded VXLAN checksums (Calico issue 3145) fails here; a NIC that mangles them
(Calico issue 11435) shows in `checksum_errors()` on the receiving node instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import socket
import struct
import threading
import time
from typing import Callable

from pyroute2 import IPRoute

from podnet.calc.offload import FAILED, NOT_RUN, PASSED, ChecksumEvidence
from podnet.dataplane import ethtool
from podnet.errors import PodnetError
from podnet.netns import CLONE_NEWNET, entered, socket_in

_libc = ctypes.CDLL(None, use_errno=True)

UNDERLAY = ("192.0.2.1", "192.0.2.2")  # TEST-NET-1, only inside the test's own namespaces
INNER = ("198.51.100.1", "198.51.100.2")  # TEST-NET-2
MACS = ("66:00:00:00:cc:01", "66:00:00:00:cc:02")
TCP_BYTES = 256 * 1024  # enough for segmentation offload to build large segments
UDP_SIZES = (64, 600, 1200)
ETH_P_ALL, SOL_PACKET, PACKET_AUXDATA, SO_RCVBUFFORCE = 0x0003, 263, 8, 33
TP_STATUS_CSUMNOTREADY = 0x8  # the frame's checksum is still deferred: nothing to check in its bytes


def checksum_errors() -> dict[str, int]:
    """The calling thread's namespace's checksum error counters: {"Tcp": InCsumErrors, "Udp": ...}."""
    with open("/proc/thread-self/net/snmp") as f:
        lines = [line.split() for line in f]
    out = {}
    for head, values in zip(lines[::2], lines[1::2]):
        proto = head[0].rstrip(":")
        if proto in ("Tcp", "Udp") and "InCsumErrors" in head:
            out[proto] = int(values[head.index("InCsumErrors")])
    return out


def _anonymous_netns() -> int:
    """A new network namespace, held by the returned descriptor only."""
    got: dict = {}

    def unshare():
        if _libc.unshare(CLONE_NEWNET) != 0:
            got["error"] = os.strerror(ctypes.get_errno())
        else:
            got["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    t = threading.Thread(target=unshare, name="csum-selftest-unshare")
    t.start()
    t.join()
    if "fd" not in got:
        raise OSError(f"unshare(CLONE_NEWNET): {got.get('error')}")
    return got["fd"]


def _inet_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def inner_checksum_ok(frame: bytes, vxlan_port: int) -> bool | None:
    """Whether the inner TCP/UDP checksum of a VXLAN-in-IPv4 frame is valid; None: not such a frame."""
    if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0xF) * 4
    if frame[23] != 17:
        return None
    udp = 14 + ihl
    if struct.unpack_from("!H", frame, udp + 2)[0] != vxlan_port:
        return None
    inner = udp + 8 + 8 + 14  # UDP, VXLAN, inner Ethernet
    if len(frame) < inner + 20 or frame[inner - 2:inner] != b"\x08\x00":
        return None
    iihl = (frame[inner] & 0xF) * 4
    proto = frame[inner + 9]
    total = struct.unpack_from("!H", frame, inner + 2)[0]
    l4 = frame[inner + iihl:inner + total]
    if proto not in (6, 17) or not l4:
        return None
    if proto == 17 and struct.unpack_from("!H", l4, 6)[0] == 0:
        return True  # UDP without a checksum
    pseudo = frame[inner + 12:inner + 20] + struct.pack("!BBH", 0, proto, len(l4))
    return _inet_sum(pseudo + l4) == 0xFFFF


def _wire(ipr: IPRoute, side: int, peer_fd: int | None, vni: int, port: int, mtu: int) -> None:
    if peer_fd is not None:
        ipr.link("add", ifname="under0", kind="veth", peer={"ifname": "under0", "net_ns_fd": peer_fd})
    under = ipr.link_lookup(ifname="under0")[0]
    ipr.addr("add", index=under, address=UNDERLAY[side], prefixlen=24)
    ipr.link("add", ifname="vxlan0", kind="vxlan", vxlan_id=vni, vxlan_port=port, vxlan_learning=0,
             vxlan_local=UNDERLAY[side], vxlan_link=under, address=MACS[side], mtu=mtu)
    vx = ipr.link_lookup(ifname="vxlan0")[0]
    ipr.addr("add", index=vx, address=INNER[side], prefixlen=24)
    other = 1 - side
    ipr.neigh("replace", ifindex=vx, dst=INNER[other], lladdr=MACS[other], state=0x80)  # NUD_PERMANENT
    ipr.fdb("append", ifindex=vx, lladdr=MACS[other], dst=UNDERLAY[other])
    for index in (under, vx):
        ipr.link("set", index=index, state="up")
    ethtool.set_tx_checksum("under0", False)  # the deferred checksums are computed before the wire


def _capture(ns: int) -> socket.socket:
    """A packet socket on the receiver's underlay, big enough to hold the whole exchange until it is read."""
    sock = socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind(("under0", 0))
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    return sock


def _checked(sock: socket.socket, port: int) -> dict:
    """Every captured frame's inner checksum: {"valid": n, "bad": n, "deferred": n}."""
    seen = {"valid": 0, "bad": 0, "deferred": 0}
    while True:
        try:
            frame, anc, _flags, _addr = sock.recvmsg(65535, socket.CMSG_SPACE(20), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return seen
        status = next((struct.unpack_from("I", data)[0] for level, kind, data in anc
                       if level == SOL_PACKET and kind == PACKET_AUXDATA), 0)
        if status & TP_STATUS_CSUMNOTREADY:
            seen["deferred"] += 1
            continue
        ok = inner_checksum_ok(frame, port)
        if ok is not None:
            seen["valid" if ok else "bad"] += 1


def _exchange(a: int, b: int, port: int, timeout: float) -> tuple[bool, str, dict]:
    """Send the stream and the datagrams from a to b; (all arrived intact, what went wrong, counters)."""
    payload = hashlib.sha256(b"podnet").digest() * (TCP_BYTES // 32)
    with entered(b):
        before = checksum_errors()
    listener = socket_in(b, socket.AF_INET, socket.SOCK_STREAM)
    udp_in = socket_in(b, socket.AF_INET, socket.SOCK_DGRAM)
    received = {"tcp": b"", "udp": []}
    try:
        listener.bind((INNER[1], 0))
        listener.listen(1)
        listener.settimeout(timeout)
        udp_in.bind((INNER[1], 0))
        udp_in.settimeout(timeout)

        def serve():
            try:
                conn, _ = listener.accept()
                conn.settimeout(timeout)
                with conn:
                    chunks = []
                    while chunk := conn.recv(65536):
                        chunks.append(chunk)
                    received["tcp"] = b"".join(chunks)
            except OSError:
                pass

        server = threading.Thread(target=serve, name="csum-selftest-server", daemon=True)
        server.start()
        with socket_in(a, socket.AF_INET, socket.SOCK_DGRAM) as out:
            for size in UDP_SIZES:
                out.sendto(payload[:size], (INNER[1], udp_in.getsockname()[1]))
        deadline = time.monotonic() + timeout
        while len(received["udp"]) < len(UDP_SIZES) and time.monotonic() < deadline:
            try:
                received["udp"].append(udp_in.recv(65535))
            except socket.timeout:
                break
        with socket_in(a, socket.AF_INET, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            try:
                client.connect((INNER[1], listener.getsockname()[1]))
                client.sendall(payload)
                client.shutdown(socket.SHUT_WR)
            except OSError as e:
                received["tcp_error"] = str(e)
            server.join(timeout)
    finally:
        listener.close()
        udp_in.close()
    with entered(b):
        after = checksum_errors()
    errors = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    problems = []
    if received["tcp"] != payload:
        problems.append(f"TCP delivered {len(received['tcp'])} of {len(payload)} bytes intact"
                        + (f" ({received['tcp_error']})" if "tcp_error" in received else ""))
    if sorted(map(len, received["udp"])) != sorted(UDP_SIZES):
        problems.append(f"{len(received['udp'])} of {len(UDP_SIZES)} UDP datagrams arrived")
    return not problems, "; ".join(problems), errors


def run(vni: int = 4096, port: int = 4789, mtu: int = 1450, timeout: float = 3.0,
        tamper: Callable[[int, int], object] | None = None) -> ChecksumEvidence:
    """The self-test through a VXLAN tunnel; NOT_RUN with the reason when it cannot be built.

    `tamper(sender_netns_fd, receiver_netns_fd)` runs once the tunnel is wired: tests use it to
    mangle packets on the way and see the self-test fail."""
    fds: list[int] = []
    iprs: list[IPRoute] = []
    capture = None
    try:
        fds = [_anonymous_netns(), _anonymous_netns()]
        for fd in fds:
            with entered(fd):
                iprs.append(IPRoute())
        with entered(fds[0]):
            _wire(iprs[0], 0, fds[1], vni, port, mtu)
        with entered(fds[1]):
            _wire(iprs[1], 1, None, vni, port, mtu)
        if tamper is not None:
            tamper(fds[0], fds[1])
        with entered(fds[0]):
            offload = ethtool.tx_checksum("vxlan0")
        if not offload:
            return ChecksumEvidence(NOT_RUN, "this kernel creates VXLAN devices without TX checksum offload")
        capture = _capture(fds[1])
        delivered, problems, errors = _exchange(fds[0], fds[1], port, timeout)
        seen = _checked(capture, port)
    except (OSError, PodnetError, Exception) as e:  # pyroute2's NetlinkError and friends
        return ChecksumEvidence(NOT_RUN, f"could not build the test tunnel: {e}")
    finally:
        if capture is not None:
            capture.close()
        for ipr in iprs:
            ipr.close()
        for fd in fds:
            os.close(fd)
    counted = ", ".join(f"{k} InCsumErrors +{v}" for k, v in sorted(errors.items()))
    summary = (f"{seen['valid']} inner checksums valid, {seen['bad']} bad on the receiver's underlay; {counted}")
    if seen["bad"] or any(errors.values()):
        return ChecksumEvidence(FAILED, summary + (f"; {problems}" if problems else ""))
    if not delivered:
        return ChecksumEvidence(NOT_RUN, f"inconclusive: {problems} ({summary})")
    if not seen["valid"]:
        return ChecksumEvidence(NOT_RUN, f"inconclusive: no inner checksum could be checked ({summary})")
    return ChecksumEvidence(PASSED, f"{TCP_BYTES // 1024} KiB of TCP and {len(UDP_SIZES)} UDP datagrams arrived "
                                    f"intact; {summary}")
