"""Decoding captured frames into layers, from Ethernet down to VXLAN's inner packet.

Pure functions over bytes: no sockets, no kernel. Cut-off or malformed input
never raises; decoding stops and the last layer says what was missing
("Truncated") or what could not be decoded ("Raw"). Application payloads
(UDP, TCP and ICMP data) are not layers: their size is the `payload_len` field.

Field values are ints (flags as the raw bits), addresses are strings, IPv4
options raw bytes. `length` is the size of the layer including its payload:
as the header claims it where the header has a length field, otherwise what
was captured. A frame shorter than an outer header claims ends with a
"Truncated" layer after everything that could still be decoded.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from functools import partial
from typing import Iterable

VXLAN_PORT = 4789


@dataclass(frozen=True)
class Layer:
    """One decoded header: its protocol name and its values."""

    name: str
    fields: dict = field(default_factory=dict, hash=False)

    @property
    def detail(self) -> str:
        """The values in words, without the layer's name."""
        describe = _DETAILS.get(self.name)
        return describe(self.fields) if describe else ""

    @property
    def summary(self) -> str:
        return f"{self.name} {self.detail}".rstrip()


def decode(frame: bytes, vxlan_ports: Iterable[int] = (VXLAN_PORT,)) -> list[Layer]:
    """Decode an Ethernet frame; UDP to a port in `vxlan_ports` is VXLAN."""
    buf = bytes(frame)
    ctx = _Context(frozenset(vxlan_ports))
    layers: list[Layer] = []
    step = (_ethernet, 0, len(buf))
    while step is not None:
        parse, off, end = step
        try:
            layer, step = parse(buf, off, end, ctx)
        except _Short as e:
            layers.append(Layer("Truncated", {"layer": e.layer, "needed": e.needed, "available": e.available}))
            return layers
        except (_Malformed, struct.error, IndexError, ValueError) as e:
            # struct/Index/ValueError would be a bug in a bounds check; a
            # decoder fed with arbitrary bytes still must not crash its caller.
            layers.append(Layer("Raw", {"reason": str(e), "length": max(end - off, 0),
                                        "data": buf[off:min(end, off + 16)].hex()}))
            return layers
        layers.append(layer)
    if ctx.short is not None:
        layers.append(Layer("Truncated", ctx.short))
    return layers


_SHORT_NAMES = {
    "Ethernet": "eth", "802.1Q": "vlan", "ARP": "arp", "IPv4": "ip", "IPv6": "ipv6",
    "UDP": "udp", "TCP": "tcp", "ICMP": "icmp", "ICMPv6": "icmpv6", "VXLAN": "vxlan",
    "Raw": "data", "Truncated": "truncated",
}


def protocols(layers: Iterable[Layer]) -> str:
    """The protocol chain in tshark's style, e.g. eth:ip:udp:vxlan:eth:ip:icmp."""
    return ":".join(_SHORT_NAMES.get(layer.name, layer.name.lower()) for layer in layers)


ICMP_TYPES = {0: "echo reply", 3: "destination unreachable", 5: "redirect", 8: "echo request",
              11: "time exceeded", 12: "parameter problem", 13: "timestamp request", 14: "timestamp reply"}
ICMP_UNREACHABLE = {0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
                    3: "port unreachable", 4: "fragmentation needed", 13: "administratively prohibited"}
ICMPV6_TYPES = {1: "destination unreachable", 2: "packet too big", 3: "time exceeded",
                4: "parameter problem", 128: "echo request", 129: "echo reply",
                133: "router solicitation", 134: "router advertisement",
                135: "neighbor solicitation", 136: "neighbor advertisement", 143: "MLDv2 report"}
IP_PROTOCOLS = {1: "ICMP", 2: "IGMP", 4: "IPIP", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE",
                50: "ESP", 58: "ICMPv6", 132: "SCTP"}


def icmp_type_name(layer: Layer) -> str:
    """'echo request', 'destination unreachable (port unreachable)', 'type 42 code 0', ..."""
    kind, code = layer.fields["type"], layer.fields["code"]
    names = ICMPV6_TYPES if layer.name == "ICMPv6" else ICMP_TYPES
    name = names.get(kind, f"type {kind} code {code}")
    if layer.name == "ICMP" and kind == 3:
        name += f" ({ICMP_UNREACHABLE.get(code, f'code {code}')})"
    return name


# --- decoding -----------------------------------------------------------------
# Each parser reads one header at buf[off:end] and returns its Layer and the
# next step, (parser, offset, end) or None. `end` shrinks as headers with a
# length field say where their payload stops (Ethernet padding is not data).


class _Short(Exception):
    """The header runs past the end of the data."""

    def __init__(self, layer: str, needed: int, available: int):
        super().__init__(f"{layer} needs {needed} bytes, {available} present")
        self.layer, self.needed, self.available = layer, needed, available


class _Malformed(Exception):
    """The bytes are there but cannot be decoded (an impossible or unsupported value)."""


@dataclass
class _Context:
    vxlan_ports: frozenset
    short: dict | None = None  # the first header whose claimed length overran the capture


def _need(off: int, end: int, n: int, what: str) -> None:
    if end - off < n:
        raise _Short(what, n, max(end - off, 0))


def _claim(ctx: _Context, what: str, off: int, length: int, end: int) -> int:
    """Where a layer claiming `length` bytes ends; remember if the data stops sooner."""
    if off + length > end:
        if ctx.short is None:
            ctx.short = {"layer": what, "needed": length, "available": end - off}
        return end
    return off + length


def _undecoded(buf, off, end, ctx, reason):
    raise _Malformed(reason)


def _then(table: dict, key: int, off: int, end: int, reason: str):
    """The step after a header: the parser registered for `key`, or a Raw layer.

    A known protocol with no bytes left still gets its parser, so that a frame
    cut right after a header is reported as truncated rather than complete.
    """
    parse = table.get(key)
    if parse:
        return parse, off, end
    return (partial(_undecoded, reason=reason), off, end) if off < end else None


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _ethernet(buf, off, end, ctx):
    _need(off, end, 14, "Ethernet")
    (ethertype,) = struct.unpack_from("!H", buf, off + 12)
    layer = Layer("Ethernet", {"dst": _mac(buf[off:off + 6]), "src": _mac(buf[off + 6:off + 12]),
                               "ethertype": ethertype, "length": end - off})
    if ethertype < 0x0600:  # a length, not a type: an 802.3 frame (LLC, STP, ...)
        return layer, _then({}, 0, off + 14, end, "802.3 frame (length field), not Ethernet II")
    return layer, _then(_BY_ETHERTYPE, ethertype, off + 14, end, f"ethertype 0x{ethertype:04x} not decoded")


def _vlan(buf, off, end, ctx):
    _need(off, end, 4, "802.1Q")
    tci, ethertype = struct.unpack_from("!HH", buf, off)
    layer = Layer("802.1Q", {"vid": tci & 0x0FFF, "pcp": tci >> 13, "dei": (tci >> 12) & 1,
                             "ethertype": ethertype})
    return layer, _then(_BY_ETHERTYPE, ethertype, off + 4, end, f"ethertype 0x{ethertype:04x} not decoded")


def _arp(buf, off, end, ctx):
    _need(off, end, 8, "ARP")
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", buf, off)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        raise _Malformed(f"ARP for hardware type {htype} / protocol 0x{ptype:04x} not decoded")
    _need(off, end, 28, "ARP")
    return Layer("ARP", {
        "op": op,
        "sender_mac": _mac(buf[off + 8:off + 14]), "sender_ip": str(ipaddress.IPv4Address(buf[off + 14:off + 18])),
        "target_mac": _mac(buf[off + 18:off + 24]), "target_ip": str(ipaddress.IPv4Address(buf[off + 24:off + 28])),
        "length": 28,
    }), None


def _ipv4(buf, off, end, ctx):
    _need(off, end, 20, "IPv4")
    ver_ihl, tos, total, ident, frag, ttl, proto, checksum = struct.unpack_from("!BBHHHBBH", buf, off)
    version, ihl = ver_ihl >> 4, (ver_ihl & 0x0F) * 4
    if version != 4:
        raise _Malformed(f"IPv4 ethertype but IP version {version}")
    if ihl < 20:
        raise _Malformed(f"IPv4 header length {ihl} is below the minimum of 20")
    _need(off, end, ihl, "IPv4")
    if total == 0:  # BIG TCP / TSO leave it 0 on packets bigger than 64 KiB
        total = end - off
    if total < ihl:
        raise _Malformed(f"IPv4 total length {total} is shorter than its header ({ihl})")
    payload_end = _claim(ctx, "IPv4", off, total, end)
    frag_offset = (frag & 0x1FFF) * 8
    layer = Layer("IPv4", {
        "src": str(ipaddress.IPv4Address(buf[off + 12:off + 16])),
        "dst": str(ipaddress.IPv4Address(buf[off + 16:off + 20])),
        "ttl": ttl, "proto": proto, "length": total, "header_len": ihl, "tos": tos, "id": ident,
        "flags": frag >> 13, "frag_offset": frag_offset, "checksum": checksum,
        "options": buf[off + 20:off + ihl],
    })
    if frag_offset:  # only the first fragment carries the transport header
        return layer, _then({}, 0, off + ihl, payload_end, f"IPv4 fragment at offset {frag_offset}")
    return layer, _then(_BY_IP_PROTO, proto, off + ihl, payload_end, f"IP protocol {proto} not decoded")


_IPV6_SKIPPABLE = {0, 43, 60}  # hop-by-hop, routing, destination options: all "next, length, ..."


def _ipv6(buf, off, end, ctx):
    _need(off, end, 40, "IPv6")
    first, payload_length, next_header, hop_limit = struct.unpack_from("!IHBB", buf, off)
    if first >> 28 != 6:
        raise _Malformed(f"IPv6 ethertype but IP version {first >> 28}")
    payload_end = _claim(ctx, "IPv6", off, 40 + payload_length, end)
    proto, pos, skipped = next_header, off + 40, []
    while proto in _IPV6_SKIPPABLE:
        _need(pos, payload_end, 8, "IPv6 extension header")
        skipped.append(proto)
        proto, pos = buf[pos], pos + (buf[pos + 1] + 1) * 8
    if pos > payload_end:
        raise _Malformed("IPv6 extension header runs past the packet")
    layer = Layer("IPv6", {
        "src": str(ipaddress.IPv6Address(buf[off + 8:off + 24])),
        "dst": str(ipaddress.IPv6Address(buf[off + 24:off + 40])),
        "hop_limit": hop_limit, "proto": proto, "next_header": next_header,
        "ext_headers": tuple(skipped), "payload_length": payload_length, "length": 40 + payload_length,
        "traffic_class": (first >> 20) & 0xFF, "flow_label": first & 0xFFFFF,
    })
    if proto == 44:
        return layer, _then({}, 0, pos, payload_end, "IPv6 fragment")
    return layer, _then(_BY_IP_PROTO, proto, pos, payload_end, f"IP protocol {proto} not decoded")


def _udp(buf, off, end, ctx):
    _need(off, end, 8, "UDP")
    sport, dport, length, checksum = struct.unpack_from("!HHHH", buf, off)
    if length < 8:
        raise _Malformed(f"UDP length {length} is below the header's 8 bytes")
    payload_end = _claim(ctx, "UDP", off, length, end)
    layer = Layer("UDP", {"sport": sport, "dport": dport, "length": length, "checksum": checksum,
                          "payload_len": payload_end - off - 8})
    if dport in ctx.vxlan_ports:
        return layer, (_vxlan, off + 8, payload_end)
    return layer, None


def _vxlan(buf, off, end, ctx):
    _need(off, end, 8, "VXLAN")
    flags, word = struct.unpack_from("!B3xI", buf, off)
    layer = Layer("VXLAN", {"flags": flags, "vni": word >> 8, "length": end - off})
    return layer, (_ethernet, off + 8, end)


_TCP_FLAGS = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"]


def _tcp(buf, off, end, ctx):
    _need(off, end, 20, "TCP")
    sport, dport, seq, ack, offset_flags, window, checksum, urgent = struct.unpack_from("!HHIIHHHH", buf, off)
    header_len = (offset_flags >> 12) * 4
    if header_len < 20:
        raise _Malformed(f"TCP header length {header_len} is below the minimum of 20")
    _need(off, end, header_len, "TCP")
    return Layer("TCP", {
        "sport": sport, "dport": dport, "seq": seq, "ack": ack, "flags": offset_flags & 0x1FF,
        "window": window, "header_len": header_len, "checksum": checksum, "urgent": urgent,
        "payload_len": end - off - header_len, "length": end - off,
    }), None


def _icmp(buf, off, end, ctx):
    _need(off, end, 8, "ICMP")  # every ICMPv4 message starts with 8 bytes
    kind, code, checksum, id_, seq = struct.unpack_from("!BBHHH", buf, off)
    fields = {"type": kind, "code": code, "checksum": checksum, "length": end - off,
              "payload_len": end - off - 8}
    if kind in (0, 8, 13, 14):
        fields.update(id=id_, seq=seq)
    elif kind == 3 and code == 4:  # "fragmentation needed" carries the next hop's MTU
        fields["mtu"] = seq
    return Layer("ICMP", fields), None


def _icmpv6(buf, off, end, ctx):
    _need(off, end, 8, "ICMPv6")
    kind, code, checksum, word = struct.unpack_from("!BBHI", buf, off)
    fields = {"type": kind, "code": code, "checksum": checksum, "length": end - off,
              "payload_len": end - off - 8}
    if kind in (128, 129):
        fields.update(id=word >> 16, seq=word & 0xFFFF)
    elif kind == 2:
        fields["mtu"] = word
    elif kind in (135, 136):
        _need(off, end, 24, "ICMPv6")
        fields["target"] = str(ipaddress.IPv6Address(buf[off + 8:off + 24]))
        fields["payload_len"] = end - off - 24
    return Layer("ICMPv6", fields), None


_BY_ETHERTYPE = {0x0800: _ipv4, 0x86DD: _ipv6, 0x0806: _arp, 0x8100: _vlan, 0x88A8: _vlan}
_BY_IP_PROTO = {1: _icmp, 6: _tcp, 17: _udp, 58: _icmpv6}


# --- describing ------------------------------------------------------------------


def _ip_detail(f: dict) -> str:
    proto = IP_PROTOCOLS.get(f["proto"], str(f["proto"]))
    hops = f"ttl {f['ttl']}" if "ttl" in f else f"hop limit {f['hop_limit']}"
    text = f"{f['src']} -> {f['dst']}  {hops}  proto {proto}  len {f['length']}"
    if f.get("options"):
        text += f"  options {len(f['options'])} bytes"
    if f.get("flags", 0) & 1 or f.get("frag_offset"):
        text += f"  fragment at {f['frag_offset']}" + (" (more follow)" if f["flags"] & 1 else "")
    return text


def tcp_flags(flags: int) -> str:
    """'SYN,ACK' for 0x12."""
    return ",".join(name for bit, name in enumerate(_TCP_FLAGS) if flags >> bit & 1) or "none"


def _tcp_detail(f: dict) -> str:
    return (f"{f['sport']} -> {f['dport']}  [{tcp_flags(f['flags'])}]  seq {f['seq']}  ack {f['ack']}"
            f"  win {f['window']}  len {f['payload_len']}")


def _icmp_detail(name: str, f: dict) -> str:
    text = icmp_type_name(Layer(name, f))
    if "id" in f:
        text += f" id {f['id']} seq {f['seq']}"
    if "mtu" in f:
        text += f" mtu {f['mtu']}"
    if "target" in f:
        text += f" target {f['target']}"
    return text


def _arp_detail(f: dict) -> str:
    if f["op"] == 1:
        return f"who has {f['target_ip']}? tell {f['sender_ip']} ({f['sender_mac']})"
    if f["op"] == 2:
        return f"{f['sender_ip']} is at {f['sender_mac']} (to {f['target_ip']})"
    return f"op {f['op']} {f['sender_ip']} -> {f['target_ip']}"


_DETAILS = {
    "Ethernet": lambda f: f"{f['src']} -> {f['dst']}",
    "802.1Q": lambda f: f"vlan {f['vid']}  priority {f['pcp']}",
    "ARP": _arp_detail,
    "IPv4": _ip_detail,
    "IPv6": _ip_detail,
    "UDP": lambda f: f"{f['sport']} -> {f['dport']}",
    "TCP": _tcp_detail,
    "VXLAN": lambda f: f"flags {'I' if f['flags'] & 0x08 else '-'}  VNI {f['vni']}",
    "ICMP": partial(_icmp_detail, "ICMP"),
    "ICMPv6": partial(_icmp_detail, "ICMPv6"),
    "Raw": lambda f: f"{f['length']} bytes not decoded: {f['reason']}",
    "Truncated": lambda f: f"{f['layer']} needs {f['needed']} bytes, only {f['available']} captured",
}
