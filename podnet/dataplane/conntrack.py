"""Connection tracking entries of a pod's addresses, removed when the pod goes.

The filter table accepts ESTABLISHED and RELATED packets before any policy (calc/policy.py), as Felix
does. An entry outlives the pod it was made for: UDP's for 30-180 s, an established TCP connection's
for days. When IPAM gives the address to another pod, packets of the old flow would reach the new pod
through that accept, whatever its policy says. So, as Felix does on a workload's removal, a CNI DEL
deletes every entry whose original tuple (source or destination) or reply source is one of the pod's
addresses, in the node's network namespace, where the forward hook tracked them, before the addresses
go back to IPAM.

Through the kernel layer's netlink socket (rtnl.RtnlSocket on NETLINK_NETFILTER, ctnetlink messages
built here). With many entries the kernel filters each dump by address (CTA_FILTER, Linux 5.8 and
later; where it refuses, as this one does for IPv6 tuples, the family's dump is matched here); with few,
one dump of the family is matched here (MATCH_HERE_BELOW). A deletion echoes the entry's original tuple.
"""

from __future__ import annotations

import socket
import struct
from typing import Iterable

from podnet.dataplane import rtnl

NETLINK_NETFILTER = 12
_CTNETLINK = 1 << 8  # NFNL_SUBSYS_CTNETLINK, in the message type's high byte
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_FILTER = 1, 2, 25
CTA_TUPLE_IP = 1
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
CTA_FILTER_FLAG_CTA_IP_SRC, CTA_FILTER_FLAG_CTA_IP_DST = 1 << 0, 1 << 1
_NESTED = 0x8000  # NLA_F_NESTED
_NFGENMSG = struct.Struct("=BBH")  # family, version (NFNETLINK_V0), resource id (big-endian, 0)

# Which tuple names the address where: the pod as the sender, the pod as the receiver, and the pod as
# the receiver behind a DNAT (a Service's address in the original tuple, the pod's in the reply).
_WHERE = ((CTA_TUPLE_ORIG, "src"), (CTA_TUPLE_ORIG, "dst"), (CTA_TUPLE_REPLY, "src"))


# Every dump walks the kernel's whole hash table (262,144 buckets: about 3 ms, however few entries it
# holds). With few entries one dump of the family, matched here, beats three filtered walks per address;
# with many, decoding them all here would cost more than the walks.
MATCH_HERE_BELOW = 2000


def forget(addresses: Iterable[str]) -> int:
    """Delete the conntrack entries to or from `addresses` (bare IPs) in the calling thread's network
    namespace; how many went. An entry that went meanwhile is no error. rtnl.NetlinkError (typed) when
    the kernel refuses; OSError when it cannot track connections over netlink."""
    by_family: dict[int, set[bytes]] = {}
    for ip in addresses:
        if ip:
            family, packed = rtnl.packed_address(ip)
            by_family.setdefault(family, set()).add(packed)
    if not by_family:
        return 0
    count = _entries_tracked()
    originals: set[tuple[int, bytes]] = set()  # (family, original tuple): an entry may match twice
    with rtnl.RtnlSocket(None, small=True, protocol=NETLINK_NETFILTER) as sock:
        for family, wanted in by_family.items():
            if count is not None and count < MATCH_HERE_BELOW:
                originals.update((family, o) for o in _matching(sock, family, wanted, filtered=False))
            else:
                for packed in wanted:
                    originals.update((family, o) for o in _matching(sock, family, {packed}, filtered=True))
        if not originals:
            return 0
        msgs = [_ct_msg(IPCTNL_MSG_CT_DELETE, family, _attr(CTA_TUPLE_ORIG, o, nested=True)) for family, o in originals]
        for err in sock.apply(msgs, lambda n: "delete a conntrack entry of a removed pod"):
            if err is not None and not isinstance(err, rtnl.NotFound):  # NotFound: it expired meanwhile
                raise err
    return len(msgs)


def _entries_tracked() -> int | None:
    """How many entries the calling thread's namespace tracks; None when it cannot be read."""
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _matching(sock: rtnl.RtnlSocket, family: int, wanted: set[bytes], filtered: bool) -> list[bytes]:
    """The original tuples (attribute payloads) of the entries that name an address of `wanted` where
    _WHERE says. `filtered` (one address): three dumps the kernel filters; else one dump of the family."""
    v6 = family == socket.AF_INET6
    src, dst = (CTA_IP_V6_SRC, CTA_IP_V6_DST) if v6 else (CTA_IP_V4_SRC, CTA_IP_V4_DST)
    dumps = []
    if filtered:
        (packed,) = wanted
        for tuple_kind, side in _WHERE:
            ip_attr, flag = (src, CTA_FILTER_FLAG_CTA_IP_SRC) if side == "src" else (dst, CTA_FILTER_FLAG_CTA_IP_DST)
            filt = _attr(CTA_FILTER_ORIG_FLAGS if tuple_kind == CTA_TUPLE_ORIG else CTA_FILTER_REPLY_FLAGS,
                         struct.pack("=I", flag))
            tup = _attr(tuple_kind, _attr(CTA_TUPLE_IP, _attr(ip_attr, packed), nested=True), nested=True)
            try:
                dumps.append(sock.dump(_ct_dump(family, tup + _attr(CTA_FILTER, filt, nested=True))))
            except (rtnl.Invalid, rtnl.Unsupported):
                dumps = [sock.dump(_ct_dump(family))]  # the kernel will not filter: match everything here
                break
    else:
        dumps.append(sock.dump(_ct_dump(family)))
    out = []
    for found in dumps:
        for _, payload in found:
            attrs = rtnl.parse_attrs(payload, _NFGENMSG.size)
            if CTA_TUPLE_ORIG in attrs and _names(attrs, wanted, src, dst):
                out.append(attrs[CTA_TUPLE_ORIG])
    return out


def _names(attrs: dict, wanted: set[bytes], src: int, dst: int) -> bool:
    for tuple_kind, side in _WHERE:
        tup = attrs.get(tuple_kind)
        ips = rtnl.parse_attrs(tup, 0).get(CTA_TUPLE_IP) if tup is not None else None
        if ips is not None and rtnl.parse_attrs(ips, 0).get(src if side == "src" else dst) in wanted:
            return True
    return False


def _attr(kind: int, data: bytes, nested: bool = False) -> bytes:
    return rtnl.attr(kind | (_NESTED if nested else 0), data)


def _ct_msg(kind: int, family: int, attrs: bytes) -> bytes:
    return rtnl.request_msg(_CTNETLINK | kind, 0, _NFGENMSG.pack(family, 0, 0) + attrs)


def _ct_dump(family: int, attrs: bytes = b"") -> bytes:
    return rtnl.dump_msg(_CTNETLINK | IPCTNL_MSG_CT_GET, _NFGENMSG.pack(family, 0, 0), attrs)
