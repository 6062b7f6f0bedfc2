"""A small rtnetlink codec and socket for podnet's per-entry hot paths.

pyroute2's generic message classes cost 80-160 us to encode one message;
programming 1000 remote nodes is 3000 messages, and a pod ADD a dozen, so that
cost alone would miss podnet's latency targets several times over. This module
packs the few message shapes podnet sends per entry (routes, neighbours, FDB
entries, addresses, veth pairs, link flags) with struct, sends them to the
kernel as one batch and reads the acknowledgements back in bulk. pyroute2
still manages the VXLAN device itself (vxlan.py), where clarity matters more
than microseconds.

Errors come back per message; `apply` turns each into its typed NetlinkError
(NotFound, Exists, ...: `error_class` is the one errno -> kind mapping) and
treats the delete of something already gone as done.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import ipaddress
import os
import socket
import struct
import threading

from podnet.netns import socket_in
from podnet.errors import PodnetError

# Message types.
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3

# Header flags.
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800

# Socket options (SOL_NETLINK).
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12

# Multicast groups for change events.
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400

# Routes.
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
RTN_UNICAST, RTN_LOCAL, RTN_BLACKHOLE = 1, 2, 6
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254
RT_TABLE_MAIN = 254
RTNH_F_ONLINK = 4
RTPROT_BOOT, RTPROT_STATIC = 3, 4
RTPROT_PODNET = 80  # Calico's route protocol: marks the routes the agent owns

# Neighbours and FDB.
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
NUD_PERMANENT, NUD_NOARP = 0x80, 0x40
NTF_SELF = 0x02
AF_BRIDGE = 7

# Addresses.
IFA_ADDRESS, IFA_LOCAL = 1, 2

# Links.
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 5, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_IFALIAS = 20
VETH_INFO_PEER = 1
IFF_UP = 0x1

_HDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BBHiHBB")
_IFADDRMSG = struct.Struct("=BBBBI")
_IFINFOMSG = struct.Struct("=BBHiII")
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")


NLMSGERR_ATTR_MSG = 1


class NetlinkError(PodnetError):
    """The kernel refused a netlink request. `NetlinkError(code, ...)` builds the typed subclass
    that `error_class` names for the errno, so callers catch NotFound, Exists, ... instead of
    comparing errno values; `.errno` stays for the rare caller that needs the number."""

    def __new__(cls, code: int, what: str = "", detail: str | None = None):
        if cls is NetlinkError:
            cls = error_class(code)
        return super().__new__(cls)

    def __init__(self, code: int, what: str, detail: str | None = None):
        reason = os.strerror(code) + (f": {detail}" if detail else "")
        super().__init__(f"{what}: {reason} (errno {code})")
        self.errno = code
        self.what = what
        self.detail = detail

    def __reduce__(self):
        return NetlinkError, (self.errno, self.what, self.detail)


class NotFound(NetlinkError):
    """The entry, device or address does not exist (deleting it again is success)."""


class Exists(NetlinkError):
    """The entry or device exists already (a create without replace)."""


class Busy(NetlinkError):
    """The kernel holds the object busy; trying again later may work."""


class Invalid(NetlinkError):
    """The kernel rejected the request's content (the extended-ack text says which part)."""


class PermissionDenied(NetlinkError):
    """The caller lacks the capability (CAP_NET_ADMIN) or the namespace forbids it."""


class Unsupported(NetlinkError):
    """This kernel does not support the request (an attribute, a device kind, a change)."""


class Unreachable(NetlinkError):
    """A route's gateway or an address cannot be used from here."""


class NoBuffers(NetlinkError):
    """A socket buffer overflowed: notifications were lost, or a request could not be queued."""


_ERROR_CLASSES: dict[int, type[NetlinkError]] = {
    _errno.ENOENT: NotFound, _errno.ESRCH: NotFound, _errno.ENODEV: NotFound, _errno.EADDRNOTAVAIL: NotFound,
    _errno.EEXIST: Exists, _errno.ENOTEMPTY: Exists,
    _errno.EBUSY: Busy, _errno.EAGAIN: Busy, _errno.EINTR: Busy,
    _errno.EINVAL: Invalid, _errno.ERANGE: Invalid, _errno.E2BIG: Invalid, _errno.EAFNOSUPPORT: Unsupported,
    _errno.EPERM: PermissionDenied, _errno.EACCES: PermissionDenied,
    _errno.EOPNOTSUPP: Unsupported, _errno.EPROTONOSUPPORT: Unsupported,
    _errno.ENETUNREACH: Unreachable, _errno.EHOSTUNREACH: Unreachable,
    _errno.ENOBUFS: NoBuffers, _errno.ENOMEM: NoBuffers,
}


def error_class(code: int) -> type[NetlinkError]:
    """The one place an errno becomes a kind of failure."""
    return _ERROR_CLASSES.get(code, NetlinkError)


_DELETES = frozenset((17, 21, 25, 29))  # RTM_DELLINK, RTM_DELADDR, RTM_DELROUTE, RTM_DELNEIGH


def is_delete(message: bytes) -> bool:
    """Whether an encoded request removes something (its type is one of the RTM_DEL*)."""
    return _HDR.unpack_from(message)[1] in _DELETES


# Encoding -------------------------------------------------------------------


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return _RTATTR.pack(length, kind) + data + b"\0" * ((4 - length % 4) % 4)


def _ip(addr: str) -> tuple[int, bytes]:
    # inet_pton, not ipaddress: a tenth of the cost, and bulk programming packs thousands.
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        return family, socket.inet_pton(family, addr)
    except OSError:
        raise ValueError(f"{addr!r} is not an IP address") from None


def _net(cidr: str) -> tuple[int, int, bytes]:
    """(family, prefix length, network address packed) of a CIDR; host bits are cleared."""
    addr, _, plen = cidr.partition("/")
    family, packed = _ip(addr)
    bits = len(packed) * 8
    prefixlen = int(plen) if plen else bits
    if not 0 <= prefixlen <= bits:
        raise ValueError(f"{cidr!r}: prefix length out of range")
    if prefixlen < bits:
        mask = ((1 << bits) - 1) ^ ((1 << (bits - prefixlen)) - 1)
        packed = (int.from_bytes(packed, "big") & mask).to_bytes(len(packed), "big")
    return family, prefixlen, packed


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _msg(kind: int, flags: int, body: bytes) -> bytes:
    # Sequence number 0: the socket numbers messages when it sends them.
    return _HDR.pack(_HDR.size + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, 0, 0) + body


_ROUTE_VIA = {(n, n): struct.Struct(f"=IHHII BBBBBBBBI HHI HH{n}s HH{n}s HHI") for n in (4, 16)}


def route_msg(
    kind: int,
    dst: str,
    gateway: str | None = None,
    oif: int | None = None,
    onlink: bool = False,
    scope: int = RT_SCOPE_UNIVERSE,
    rtype: int = RTN_UNICAST,
    proto: int = RTPROT_PODNET,
    table: int = RT_TABLE_MAIN,
    flags: int = 0,
    priority: int = 0,
) -> bytes:
    family, prefixlen, network = _net(dst)
    if gateway and oif and prefixlen and table < 256:  # the bulk shape: a block via a tunnel address
        gw = _ip(gateway)[1]
        shape = _ROUTE_VIA.get((len(network), len(gw)))
        if shape is not None:
            return shape.pack(shape.size, kind, flags | NLM_F_REQUEST | NLM_F_ACK, 0, 0,
                              family, prefixlen, 0, 0, table, proto, scope, rtype, RTNH_F_ONLINK if onlink else 0,
                              8, RTA_TABLE, table, 4 + len(network), RTA_DST, network, 4 + len(gw), RTA_GATEWAY, gw,
                              8, RTA_OIF, oif)
    body = _RTMSG.pack(family, prefixlen, 0, 0, table if table < 256 else 252, proto, scope, rtype,
                       RTNH_F_ONLINK if onlink else 0)
    body += _attr(RTA_TABLE, _U32.pack(table))
    if prefixlen:
        body += _attr(RTA_DST, network)
    if gateway:
        body += _attr(RTA_GATEWAY, _ip(gateway)[1])
    if oif:
        body += _attr(RTA_OIF, _U32.pack(oif))
    if priority:
        body += _attr(RTA_PRIORITY, _U32.pack(priority))
    return _msg(kind, flags, body)


# Whole messages in one pack for the bulk shapes (3 per remote node): header, fixed part and
# attributes with their padding, so an entry costs one struct call instead of a dozen.
_NEIGH_MAC = {alen: struct.Struct(f"=IHHII BBHiHBB HH{alen}s{(4 - alen % 4) % 4}x HH6s2x") for alen in (4, 16)}
_FDB = {alen: struct.Struct(f"=IHHII BBHiHBB HH6s2x HH{alen}s{(4 - alen % 4) % 4}x") for alen in (4, 16)}


def neigh_msg(kind: int, ifindex: int, ip: str, mac: str | None = None, state: int = NUD_PERMANENT,
              flags: int = 0) -> bytes:
    family, packed = _ip(ip)
    if mac:
        shape = _NEIGH_MAC[len(packed)]
        return shape.pack(shape.size, kind, flags | NLM_F_REQUEST | NLM_F_ACK, 0, 0,
                          family, 0, 0, ifindex, state, 0, 0, 4 + len(packed), NDA_DST, packed, 10, NDA_LLADDR,
                          _mac(mac))
    body = _NDMSG.pack(family, 0, 0, ifindex, state, 0, 0) + _attr(NDA_DST, packed)
    return _msg(kind, flags, body)


def fdb_msg(kind: int, ifindex: int, mac: str, dst: str, flags: int = 0) -> bytes:
    """A VXLAN FDB entry: frames for `mac` are sent to remote VTEP `dst`."""
    packed = _ip(dst)[1]
    shape = _FDB[len(packed)]
    return shape.pack(shape.size, kind, flags | NLM_F_REQUEST | NLM_F_ACK, 0, 0,
                      AF_BRIDGE, 0, 0, ifindex, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0, 10, NDA_LLADDR, _mac(mac),
                      4 + len(packed), NDA_DST, packed)


def addr_msg(kind: int, ifindex: int, address: str, prefixlen: int, scope: int = RT_SCOPE_UNIVERSE,
             flags: int = 0, ifa_flags: int = 0) -> bytes:
    family, packed = _ip(address)
    body = _IFADDRMSG.pack(family, prefixlen, ifa_flags, scope, ifindex)
    body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
    return _msg(kind, flags, body)


def link_set_msg(ifindex: int, up: bool | None = None, mtu: int | None = None, alias: str | None = None) -> bytes:
    flags = change = 0
    if up is not None:
        flags, change = (IFF_UP if up else 0), IFF_UP
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, ifindex, flags, change)
    if mtu:
        body += _attr(IFLA_MTU, _U32.pack(mtu))
    if alias is not None:
        body += _attr(IFLA_IFALIAS, alias.encode() + b"\0")
    return _msg(RTM_NEWLINK, 0, body)


IFLA_AF_SPEC, IFLA_INET_CONF = 26, 1
IPV4_DEVCONF_FORWARDING, IPV4_DEVCONF_PROXY_ARP = 1, 3
RTM_SETNEIGHTBL = 67
NDTA_NAME, NDTA_PARMS = 1, 6
NDTPA_IFINDEX, NDTPA_PROXY_DELAY = 1, 13
_NDTMSG = struct.Struct("=BBH")
_U64 = struct.Struct("=Q")


def link_set_ipv4_conf_msg(ifindex: int, conf: dict[int, int], up: bool | None = None,
                           alias: str | None = None) -> bytes:
    """Set an interface's IPv4 sysctls (net.ipv4.conf.<dev>.*, by IPV4_DEVCONF_* id) in a netlink
    message, optionally with the link state and alias: one round trip instead of a procfs write each."""
    flags = change = 0
    if up is not None:
        flags, change = (IFF_UP if up else 0), IFF_UP
    values = b"".join(_attr(key, _U32.pack(value)) for key, value in conf.items())
    spec = _attr(socket.AF_INET, _attr(IFLA_INET_CONF, values))
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, ifindex, flags, change) + _attr(IFLA_AF_SPEC, spec)
    if alias is not None:
        body += _attr(IFLA_IFALIAS, alias.encode() + b"\0")
    return _msg(RTM_NEWLINK, 0, body)


def arp_proxy_delay_msg(ifindex: int, milliseconds: int) -> bytes:
    """net.ipv4.neigh.<dev>.proxy_delay, as a netlink message (the ARP table's per-device parameters)."""
    parms = _attr(NDTPA_IFINDEX, _U32.pack(ifindex)) + _attr(NDTPA_PROXY_DELAY, _U64.pack(milliseconds))
    body = _NDTMSG.pack(socket.AF_INET, 0, 0) + _attr(NDTA_NAME, b"arp_cache\0") + _attr(NDTA_PARMS, parms)
    return _msg(RTM_SETNEIGHTBL, 0, body)


def link_del_msg(ifindex: int = 0, ifname: str | None = None) -> bytes:
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, ifindex, 0, 0)
    if ifname:
        body += _attr(IFLA_IFNAME, ifname.encode() + b"\0")
    return _msg(RTM_DELLINK, 0, body)


def link_get_msg(ifindex: int = 0, ifname: str | None = None) -> bytes:
    """Ask for one link, by index or by name (RtnlSocket.get_link)."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, ifindex, 0, 0)
    if ifname:
        body += _attr(IFLA_IFNAME, ifname.encode() + b"\0")
    return _msg(RTM_GETLINK, 0, body)


def veth_msg(name: str, mac: str, mtu: int, peer_name: str, peer_netns_fd: int, peer_mac: str | None = None,
             up: bool = True) -> bytes:
    """Create a veth pair whose peer is born inside another namespace (no move needed)."""
    peer = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, IFF_UP if up else 0, IFF_UP if up else 0)
    peer += _attr(IFLA_IFNAME, peer_name.encode() + b"\0") + _attr(IFLA_MTU, _U32.pack(mtu))
    peer += _attr(IFLA_NET_NS_FD, _U32.pack(peer_netns_fd))
    if peer_mac:
        peer += _attr(IFLA_ADDRESS, _mac(peer_mac))
    info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, IFF_UP if up else 0, IFF_UP if up else 0)
    body += _attr(IFLA_IFNAME, name.encode() + b"\0") + _attr(IFLA_ADDRESS, _mac(mac))
    body += _attr(IFLA_MTU, _U32.pack(mtu)) + _attr(IFLA_LINKINFO, info)
    return _msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


# The encoders, by public names, for the other netlink family this layer serves (dataplane/conntrack.py).
attr, request_msg, packed_address = _attr, _msg, _ip


def dump_msg(kind: int, fixed: bytes, attrs: bytes = b"") -> bytes:
    return _HDR.pack(_HDR.size + len(fixed) + len(attrs), kind, NLM_F_REQUEST | NLM_F_DUMP, 0, 0) + fixed + attrs


def route_dump_msg(family: int = socket.AF_INET, table: int = RT_TABLE_MAIN, proto: int = 0) -> bytes:
    # With NETLINK_GET_STRICT_CHK the kernel filters on table and protocol for us.
    fixed = _RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, proto, 0, 0, 0)
    return dump_msg(RTM_GETROUTE, fixed, _attr(RTA_TABLE, _U32.pack(table)))


def neigh_dump_msg(family: int, ifindex: int = 0) -> bytes:
    """Neighbours (or, with AF_BRIDGE, FDB entries) of one device; the kernel filters.

    Strict checking wants the device in an NDA_IFINDEX attribute for ARP/NDP
    dumps but in the header for FDB dumps."""
    if family == AF_BRIDGE:
        return dump_msg(RTM_GETNEIGH, _NDMSG.pack(family, 0, 0, ifindex, 0, 0, 0))
    attrs = _attr(NDA_IFINDEX, _U32.pack(ifindex)) if ifindex else b""
    return dump_msg(RTM_GETNEIGH, _NDMSG.pack(family, 0, 0, 0, 0, 0, 0), attrs)


def link_dump_msg() -> bytes:
    return dump_msg(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0))


def addr_dump_msg(family: int = socket.AF_UNSPEC, ifindex: int = 0) -> bytes:
    return dump_msg(RTM_GETADDR, _IFADDRMSG.pack(family, 0, 0, 0, ifindex))


# Decoding -------------------------------------------------------------------


def parse_attrs(data: bytes, offset: int) -> dict[int, bytes]:
    attrs = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < 4:
            break
        attrs[kind & 0x3FFF] = data[offset + 4: offset + length]
        offset += (length + 3) & ~3
    return attrs


def _addr_str(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return str(ipaddress.ip_address(raw))


def _mac_str(raw: bytes | None) -> str | None:
    return ":".join(f"{b:02x}" for b in raw) if raw else None


def parse_route(payload: bytes) -> dict:
    family, dst_len, _, _, table, proto, scope, rtype, flags = _RTMSG.unpack_from(payload)
    attrs = parse_attrs(payload, _RTMSG.size)
    dst = _addr_str(attrs.get(RTA_DST)) or ("0.0.0.0" if family == socket.AF_INET else "::")
    return {
        "dst": f"{dst}/{dst_len}",
        "gateway": _addr_str(attrs.get(RTA_GATEWAY)),
        "oif": _U32.unpack(attrs[RTA_OIF])[0] if RTA_OIF in attrs else None,
        "table": _U32.unpack(attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table,
        "proto": proto,
        "scope": scope,
        "type": rtype,
        "onlink": bool(flags & RTNH_F_ONLINK),
        "metric": _U32.unpack(attrs[RTA_PRIORITY])[0] if RTA_PRIORITY in attrs else 0,
    }


def parse_neigh(payload: bytes) -> dict:
    family, _, _, ifindex, state, flags, _ = _NDMSG.unpack_from(payload)
    attrs = parse_attrs(payload, _NDMSG.size)
    return {
        "family": family,
        "ifindex": ifindex,
        "state": state,
        "flags": flags,
        "dst": _addr_str(attrs.get(NDA_DST)),
        "lladdr": _mac_str(attrs.get(NDA_LLADDR)),
    }


def parse_link(payload: bytes) -> dict:
    """A link's index, name, MTU, MAC, state, kind and IFLA_LINK (a veth's peer, a VLAN's parent).

    A VXLAN device also gets `vxlan`: its identity from IFLA_INFO_DATA (see parse_vxlan_info)."""
    _, _, _, index, flags, _ = _IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload, _IFINFOMSG.size)
    kind = None
    info = {}
    if IFLA_LINKINFO in attrs:
        info = parse_attrs(attrs[IFLA_LINKINFO], 0)
        if IFLA_INFO_KIND in info:
            kind = info[IFLA_INFO_KIND].rstrip(b"\0").decode()
    link = {
        "index": index,
        "ifname": attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
        "mtu": _U32.unpack(attrs[IFLA_MTU])[0] if IFLA_MTU in attrs else None,
        "address": _mac_str(attrs.get(IFLA_ADDRESS)),
        "up": bool(flags & IFF_UP),
        "kind": kind,
        "link": _U32.unpack(attrs[IFLA_LINK])[0] if IFLA_LINK in attrs else None,
        "alias": attrs[IFLA_IFALIAS].rstrip(b"\0").decode(errors="replace") if IFLA_IFALIAS in attrs else None,
    }
    if kind == "vxlan":
        link["vxlan"] = parse_vxlan_info(info.get(IFLA_INFO_DATA, b""))
    return link


# IFLA_VXLAN_* attribute numbers (linux/if_link.h).
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING = 1, 3, 4, 7
IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6 = 15, 17


def vxlan_change_msg(ifindex: int, local: str | None = None, parent: int | None = None) -> bytes:
    """Change an existing VXLAN device's local address (and parent) in place: the kernel keeps
    the device, and so every route, neighbour and FDB entry on it (the VNI cannot change so)."""
    data = b""
    if local:
        family, packed = _ip(local)
        data += _attr(IFLA_VXLAN_LOCAL if family == socket.AF_INET else IFLA_VXLAN_LOCAL6, packed)
    if parent:
        data += _attr(IFLA_VXLAN_LINK, _U32.pack(parent))
    info = _attr(IFLA_INFO_KIND, b"vxlan\0") + _attr(IFLA_INFO_DATA, data)
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, ifindex, 0, 0) + _attr(IFLA_LINKINFO, info)
    return _msg(RTM_NEWLINK, 0, body)


def parse_vxlan_info(data: bytes) -> dict:
    """A VXLAN device's IFLA_INFO_DATA: VNI, UDP port, local address (IPv4 `local` or IPv6 `local6`),
    parent ifindex and whether it learns MACs; None for what the kernel did not say."""
    attrs = parse_attrs(data, 0)

    def u32(key: int) -> int | None:
        return _U32.unpack_from(attrs[key])[0] if len(attrs.get(key, b"")) >= 4 else None

    return {
        "vni": u32(IFLA_VXLAN_ID),
        "port": struct.unpack_from("!H", attrs[IFLA_VXLAN_PORT])[0]
        if len(attrs.get(IFLA_VXLAN_PORT, b"")) >= 2 else None,
        "local": str(ipaddress.IPv4Address(attrs[IFLA_VXLAN_LOCAL][:4]))
        if len(attrs.get(IFLA_VXLAN_LOCAL, b"")) >= 4 else None,
        "local6": str(ipaddress.IPv6Address(attrs[IFLA_VXLAN_LOCAL6][:16]))
        if len(attrs.get(IFLA_VXLAN_LOCAL6, b"")) >= 16 else None,
        "parent": u32(IFLA_VXLAN_LINK),
        "learning": bool(attrs[IFLA_VXLAN_LEARNING][0]) if attrs.get(IFLA_VXLAN_LEARNING) else None,
    }


# Address flags (IFA_F_*, linux/if_addr.h) and the attribute carrying all 32 bits of them.
IFA_FLAGS = 8
IFA_F_NODAD, IFA_F_DADFAILED, IFA_F_TENTATIVE, IFA_F_PERMANENT = 0x02, 0x08, 0x40, 0x80


def parse_addr_flags(payload: bytes) -> int:
    """An address message's IFA_F_* flags: IFA_FLAGS when present (it holds all of them), else the header's."""
    _, _, flags, _, _ = _IFADDRMSG.unpack_from(payload)
    attrs = parse_attrs(payload, _IFADDRMSG.size)
    return _U32.unpack_from(attrs[IFA_FLAGS])[0] if len(attrs.get(IFA_FLAGS, b"")) >= 4 else flags


def parse_addr(payload: bytes) -> dict:
    family, prefixlen, _, scope, index = _IFADDRMSG.unpack_from(payload)
    attrs = parse_attrs(payload, _IFADDRMSG.size)
    addr = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    return {"family": family, "prefixlen": prefixlen, "scope": scope, "index": index, "address": _addr_str(addr)}


def iter_messages(data: bytes):
    """(type, flags, seq, payload) for every netlink message in a datagram."""
    offset = 0
    while offset + _HDR.size <= len(data):
        length, kind, flags, seq, _ = _HDR.unpack_from(data, offset)
        if length < _HDR.size:
            break
        yield kind, flags, seq, data[offset + _HDR.size: offset + length]
        offset += (length + 3) & ~3


# The socket -----------------------------------------------------------------

_BATCH_BYTES = 60 * 1024  # stay under the kernel's per-send limit with room to spare
_SO_ATTACH_FILTER = 26
_BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_BPF_RET_K = 0x06  # BPF_RET | BPF_K
_NLMSG_PID_OFFSET = 12  # struct nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32
_NLMSG_TYPE_OFFSET = 4
_IFINDEX_OFFSET = 20  # the header, then ifinfomsg's and ndmsg's index, both 4 bytes in
_BPF_LD_H_ABS = 0x28  # BPF_LD | BPF_H | BPF_ABS
_BPF_ACCEPT, _BPF_DROP = 0xFFFFFFFF, 0


def _be32(value: int) -> int:
    """A host-order u32 as BPF's absolute loads (big-endian) see it."""
    return int.from_bytes(struct.pack("=I", value & 0xFFFFFFFF), "big")


def _be16(value: int) -> int:
    return int.from_bytes(struct.pack("=H", value), "big")


def notification_filter(ignore_ports: set[int], links: set[int] | None = None) -> list[tuple[int, int, int, int]]:
    """The BPF program of RtnlSocket.filter_notifications: (code, jt, jf, k) instructions."""
    ports = sorted(p for p in ignore_ports if p)
    indexed = (RTM_NEWLINK, RTM_DELLINK, RTM_NEWNEIGH, RTM_DELNEIGH)
    wanted = sorted(links) if links is not None else []
    # Layout: [pid checks] [type checks] ret accept | [index checks] ret drop | ret accept | ret drop
    n_pid = 1 + len(ports)
    n_type = (1 + len(indexed) + 1) if links is not None else 0
    n_index = (1 + len(wanted) + 1) if links is not None else 0
    accept = n_pid + n_type + n_index
    drop = accept + 1
    prog: list[tuple[int, int, int, int]] = [(_BPF_LD_W_ABS, 0, 0, _NLMSG_PID_OFFSET)]
    for port in ports:
        i = len(prog)
        prog.append((_BPF_JEQ_K, drop - i - 1, 0, _be32(port)))
    if links is not None:
        index_start = n_pid + n_type
        prog.append((_BPF_LD_H_ABS, 0, 0, _NLMSG_TYPE_OFFSET))
        for kind in indexed:
            i = len(prog)
            prog.append((_BPF_JEQ_K, index_start - i - 1, 0, _be16(kind)))
        prog.append((_BPF_RET_K, 0, 0, _BPF_ACCEPT))  # other kinds: not filtered by interface
        prog.append((_BPF_LD_W_ABS, 0, 0, _IFINDEX_OFFSET))
        for index in wanted:
            i = len(prog)
            prog.append((_BPF_JEQ_K, accept - i - 1, 0, _be32(index)))
        prog.append((_BPF_RET_K, 0, 0, _BPF_DROP))
    prog += [(_BPF_RET_K, 0, 0, _BPF_ACCEPT), (_BPF_RET_K, 0, 0, _BPF_DROP)]
    return prog


_FLAGS, _FLAGS_SEQ = struct.Struct("=H"), struct.Struct("=HI")  # a header's flags (offset 6), then its sequence


class RtnlSocket:
    """One NETLINK_ROUTE socket, optionally in another namespace. Thread-safe. The same framing,
    acknowledgements and dumps serve NETLINK_NETFILTER (`protocol`; dataplane/conntrack.py)."""

    def __init__(self, netns: str | int | None = None, groups: int = 0, small: bool = False,
                 protocol: int = socket.NETLINK_ROUTE):
        """`small`: for a socket that sends a few messages and is closed (a pod's, during a CNI
        ADD): default kernel buffers and a 64 KiB receive buffer, which are cheaper to set up."""
        self.netns = netns
        self.sock = socket_in(netns, socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        if not small:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            try:  # root may exceed rmem_max; a big buffer keeps bulk acks and event bursts from overflowing
                self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        self.sock.bind((0, groups))
        self._seq = 0
        self._lock = threading.Lock()
        # One receive buffer for the socket's life: recv(1 MiB) would allocate a fresh 1 MiB
        # object per datagram, which costs more than decoding the acknowledgements in it.
        self._buf = bytearray(64 << 10 if small else 1 << 20)
        self.last_details: dict[int, str] = {}  # batch position -> the kernel's extended-ack text

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def port_id(self) -> int:
        """The kernel's id for this socket; change notifications carry the id of the socket that caused them."""
        return self.sock.getsockname()[0]

    def filter_notifications(self, ignore_ports: set[int], links: set[int] | None = None) -> None:
        """Have the kernel drop, before they reach this socket, notifications a listener would only
        discard: those caused by the sockets `ignore_ports` (port ids; the kernel stamps route,
        address and neighbour changes with the requester's), and, when `links` is given, link and
        neighbour changes of interfaces whose index is not in it (link changes carry no requester,
        so every veth a CNI ADD creates would otherwise wake the listener). Replaces any earlier
        filter. A classic BPF socket filter; each notification is a datagram of its own."""
        program = notification_filter(ignore_ports, links)
        buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *insn) for insn in program))
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, struct.pack("HL", len(program), ctypes.addressof(buf)))

    def request(self, messages: list[bytes]) -> list[int]:
        """Send messages in as few datagrams as fit; return each one's errno (0 = done)."""
        results: list[int] = []
        details: dict[int, str] = {}
        with self._lock:
            i = 0
            while i < len(messages):
                batch, size = [], 0
                while i < len(messages) and (not batch or size + len(messages[i]) <= _BATCH_BYTES):
                    batch.append(messages[i])
                    size += len(messages[i])
                    i += 1
                codes, texts = self._send_batch(batch)
                details.update({len(results) + n: t for n, t in texts.items()})
                results += codes
            self.last_details = details
        return results

    def _send_batch(self, batch: list[bytes]) -> tuple[list[int], dict[int, str]]:
        # Only the last message asks for an acknowledgement: the kernel handles a datagram's
        # messages in order and answers a failure whether asked or not, so once the last one is
        # answered every failure before it has been too. 3000 entries then cost one reply to
        # read, not 3000 (each acknowledgement is a datagram of its own).
        first = self._seq + 1
        buf = bytearray(b"".join(batch))
        offset, last = 0, len(batch) - 1
        for n, m in enumerate(batch):
            self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
            flags = _FLAGS.unpack_from(buf, offset + 6)[0]
            _FLAGS_SEQ.pack_into(buf, offset + 6, flags | NLM_F_ACK if n == last else flags & ~NLM_F_ACK, self._seq)
            offset += len(m)
        self.sock.send(buf)
        last_seq = self._seq
        errors: dict[int, int] = {}
        details: dict[int, str] = {}
        while last_seq not in errors:
            for kind, _, seq, payload in iter_messages(self._recv()):
                if kind == NLMSG_ERROR:
                    errors[seq] = -_I32.unpack_from(payload)[0]
                    if errors[seq] and len(payload) > 20:
                        text = parse_attrs(payload, 20).get(NLMSGERR_ATTR_MSG)
                        if text:
                            details[seq] = text.rstrip(b"\0").decode(errors="replace")
        seqs = [(first + n) & 0xFFFFFFFF or 1 for n in range(len(batch))]
        return [errors.get(s, 0) for s in seqs], {n: details[s] for n, s in enumerate(seqs) if s in details}

    def apply(self, messages: list[bytes], what) -> list[NetlinkError | None]:
        """Send messages as one batch; per message None (done) or its typed error. A delete of
        what is already gone is done: deletes are idempotent here, so no caller judges errno.
        `what`: each message's description, as a list or a function of its position (called
        only for a failure: describing 20,000 entries that succeed costs more than sending them)."""
        describe = what if callable(what) else what.__getitem__
        out: list[NetlinkError | None] = []
        for n, code in enumerate(self.request(messages)):
            err = NetlinkError(code, describe(n), self.last_details.get(n)) if code else None
            if isinstance(err, NotFound) and is_delete(messages[n]):
                err = None
            out.append(err)
        return out

    def check(self, messages: list[bytes], what: str, ignore: tuple[int, ...] = ()) -> None:
        """Like request(), but raise NetlinkError for the first failure not in `ignore`."""
        for n, code in enumerate(self.request(messages)):
            if code and code not in ignore:
                raise NetlinkError(code, what, self.last_details.get(n))

    def get_link(self, ifindex: int = 0, ifname: str | None = None) -> dict | None:
        """One link (parse_link's fields) by index or name; None when there is no such link."""
        with self._lock:
            self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
            msg = bytearray(link_get_msg(ifindex, ifname))
            struct.pack_into("=I", msg, 8, self._seq)
            self.sock.send(bytes(msg))
            found = None
            while True:
                for kind, _, seq, payload in iter_messages(self._recv()):
                    if seq != self._seq:
                        continue
                    if kind == RTM_NEWLINK:
                        found = parse_link(payload)
                    elif kind == NLMSG_ERROR:  # the acknowledgement ends the reply
                        code = -_I32.unpack_from(payload)[0]
                        if code in (_errno.ENODEV, _errno.ENOENT):
                            return None
                        if code:
                            raise NetlinkError(code, f"get link {ifname or ifindex}")
                        return found

    def dump(self, message: bytes, retries: int = 5) -> list[tuple[int, bytes]]:
        """(type, payload) of every message in a dump; retried if the table changed mid-dump."""
        with self._lock:
            for _ in range(retries):
                self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
                msg = bytearray(message)
                struct.pack_into("=I", msg, 8, self._seq)
                self.sock.send(bytes(msg))
                out, interrupted, done = [], False, False
                while not done:
                    for kind, flags, seq, payload in iter_messages(self._recv()):
                        if seq != self._seq:
                            continue
                        if flags & NLM_F_DUMP_INTR:
                            interrupted = True
                        if kind == NLMSG_DONE:
                            # A dump that fails to start reports its error here.
                            code = -_I32.unpack_from(payload)[0] if len(payload) >= 4 else 0
                            if code:
                                raise NetlinkError(code, "netlink dump")
                            done = True
                            break
                        if kind == NLMSG_ERROR:
                            code = -_I32.unpack_from(payload)[0]
                            if code:
                                raise NetlinkError(code, "netlink dump")
                            done = True
                            break
                        out.append((kind, payload))
                if not interrupted:
                    return out
        raise NetlinkError(_errno.EINTR, "netlink dump kept being interrupted by concurrent changes")

    def recv_events(self) -> list[tuple[int, bytes]]:
        """For a socket bound to multicast groups: the next batch of change notifications."""
        return [(kind, payload) for kind, _, _, payload in iter_messages(self._recv())]

    def recv_events_from(self) -> list[tuple[int, bytes, int]]:
        """Like recv_events, with the port id of the socket whose request caused each change
        (0 when the kernel itself or a tool without one did)."""
        data = self._recv()
        out, offset = [], 0
        while offset + _HDR.size <= len(data):
            length, kind, _, _, pid = _HDR.unpack_from(data, offset)
            if length < _HDR.size:
                break
            out.append((kind, data[offset + _HDR.size: offset + length], pid))
            offset += (length + 3) & ~3
        return out

    def _recv(self) -> bytes:
        n = self.sock.recv_into(self._buf)
        return bytes(memoryview(self._buf)[:n])
