"""Connection tracking entries of a pod's addresses, removed when the pod goes.

The filter table accepts ESTABLISHED and RELATED packets before any policy (calc/policy.py), as Felix
does. An entry outlives the pod it was made for: UDP's for 30-180 s, an established TCP connection's
for days. When IPAM gives the address to another pod, packets of the old flow would reach the new pod
through that accept, whatever its policy says. So, as Felix does on a workload's removal, a CNI DEL
deletes every entry whose original tuple (source or destination) or reply source is one of the pod's
addresses, in the node's network namespace, where the forward hook tracked them, before the addresses
go back to IPAM.

The kernel filters the dumps by address (CTA_FILTER, Linux 5.8 and later), so the work is the kernel's
pass over its table, not a decode of every entry here. Where it refuses such a filter (older kernels;
this one for IPv6 tuples), the dump is of the address family only and matched here.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Iterable

from podnet.dataplane import rtnl

log = logging.getLogger(__name__)

_WHERE = (("tuple_orig", "saddr"), ("tuple_orig", "daddr"), ("tuple_reply", "saddr"))  # reply: e.g. a Service's DNAT


def forget(addresses: Iterable[str]) -> int:
    """Delete the conntrack entries to or from `addresses` (bare IPs) in the calling thread's network
    namespace; how many went. An entry that went meanwhile is no error. rtnl.NetlinkError (typed) when
    the kernel refuses; when this kernel cannot track connections over netlink, the error of opening
    the socket."""
    from pyroute2 import Conntrack
    from pyroute2.netlink.exceptions import NetlinkError as Pyroute2Error

    addresses = [a for a in addresses if a]
    if not addresses:
        return 0
    try:
        ct = Conntrack()
    except OSError as e:  # nf_conntrack_netlink missing: nothing is tracked that could be asked about
        raise rtnl.NetlinkError(e.errno or errno.EPROTONOSUPPORT, "open a conntrack netlink socket") from None
    deleted = 0
    try:
        for ip in addresses:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            seen: set[bytes] = set()
            for direction, field in _WHERE:
                for tuple_nla in _matching(ct, family, ip, direction, field):
                    key = repr(tuple_nla).encode()
                    if key in seen:
                        continue
                    seen.add(key)
                    try:
                        _delete(ct, family, tuple_nla)
                        deleted += 1
                    except Pyroute2Error as e:
                        if e.code != errno.ENOENT:  # ENOENT: it expired or went meanwhile
                            raise rtnl.NetlinkError(e.code, f"delete the conntrack entries of {ip}") from None
    except Pyroute2Error as e:
        raise rtnl.NetlinkError(e.code, "read the conntrack table") from None
    finally:
        ct.close()
    return deleted


def _matching(ct, family: int, ip: str, direction: str, field: str) -> list:
    """The original tuples (netlink attributes) of the entries whose `direction` tuple has `field` == ip."""
    from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
    from pyroute2.netlink.exceptions import NetlinkError as Pyroute2Error
    from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_GET, NFCTAttrTuple, nfct_msg

    want = NFCTAttrTuple(family=family, **{field: ip})
    want.attrs()  # computes want.flags
    flags = "CTA_FILTER_ORIG_FLAGS" if direction == "tuple_orig" else "CTA_FILTER_REPLY_FLAGS"
    msg = nfct_msg.create_from(**{direction: want}, cta_filter={"attrs": [[flags, want.flags]]})
    msg["nfgen_family"] = family
    try:
        found = list(ct.request(msg, IPCTNL_MSG_CT_GET, msg_flags=NLM_F_REQUEST | NLM_F_DUMP))
    except Pyroute2Error as e:
        if e.code not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        msg = nfct_msg()
        msg["nfgen_family"] = family  # the family's entries only, matched below
        found = list(ct.request(msg, IPCTNL_MSG_CT_GET, msg_flags=NLM_F_REQUEST | NLM_F_DUMP))
    attr = "CTA_TUPLE_ORIG" if direction == "tuple_orig" else "CTA_TUPLE_REPLY"
    out = []
    for m in found:
        tuple_nla = m.get_attr(attr)
        ips = tuple_nla.get_attr("CTA_TUPLE_IP") if tuple_nla is not None else None
        names = ("CTA_IP_V6_SRC", "CTA_IP_V6_DST") if family == socket.AF_INET6 else ("CTA_IP_V4_SRC", "CTA_IP_V4_DST")
        value = ips.get_attr(names[0] if field == "saddr" else names[1]) if ips is not None else None
        if value is not None and _same(value, ip):
            out.append(m.get_attr("CTA_TUPLE_ORIG"))
    return out


def _delete(ct, family: int, tuple_orig) -> None:
    from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
    from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_DELETE, nfct_msg

    msg = nfct_msg.create_from(tuple_orig=tuple_orig)
    msg["nfgen_family"] = family
    list(ct.request(msg, IPCTNL_MSG_CT_DELETE, msg_flags=NLM_F_REQUEST | NLM_F_ACK))


def _same(a: str, b: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(a) == ipaddress.ip_address(b)
