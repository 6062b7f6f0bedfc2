"""Describing decoded packets for people: a headline saying what the packet is,
then one line per header. In a VXLAN packet the headers before the VXLAN
header are marked "outer" (the node-to-node packet) and those after it
"inner" (the pod's own packet, carried as the payload).
"""

from __future__ import annotations

import time
from typing import Sequence

from podnet.observe.packet import IP_PROTOCOLS, Layer, icmp_type_name, tcp_flags

_LABEL_WIDTH = 15


def format_packet(layers: Sequence[Layer], index: int | None = None, timestamp: float | None = None) -> str:
    """A multi-line description: headline, then each layer with its values."""
    head = []
    if index is not None:
        head.append(f"#{index}")
    if timestamp is not None:
        head.append(_clock(timestamp))
    head.append(headline(layers))
    lines = ["  ".join(head)]

    vxlan = _vxlan_index(layers)
    for i, layer in enumerate(layers):
        label, note = layer.name, ""
        if vxlan is not None and i != vxlan and layer.name != "Truncated":
            side = "outer" if i < vxlan else "inner"
            label = f"{side} {layer.name}"
            if layer.name == "Ethernet":
                note = "(node NICs)" if side == "outer" else "(vxlan.calico MACs)"
            elif i == vxlan - 1:  # the UDP header that carries the VXLAN header
                note = "(VXLAN)"
        line = f"  {label:<{_LABEL_WIDTH}} {layer.detail}"
        lines.append(f"{line}  {note}" if note else line)
    return "\n".join(lines)


def headline(layers: Sequence[Layer]) -> str:
    """What the packet is, in one phrase: 'VXLAN-encapsulated ICMP echo request a -> b'."""
    vxlan = _vxlan_index(layers)
    if vxlan is None:
        text = _describe(layers)
    else:
        inner = layers[vxlan + 1:]
        text = "VXLAN-encapsulated " + (_describe(inner) if inner and inner[0].name == "Ethernet" else "frame")
    if layers and layers[-1].name == "Truncated":
        text += " (truncated)"
    return text


def _vxlan_index(layers: Sequence[Layer]) -> int | None:
    return next((i for i, layer in enumerate(layers) if layer.name == "VXLAN"), None)


def _describe(layers: Sequence[Layer]) -> str:
    """The innermost thing we understood, with its addresses."""
    ip = next((layer.fields for layer in reversed(layers) if layer.name in ("IPv4", "IPv6")), None)
    for layer in reversed(layers):
        f = layer.fields
        if layer.name in ("ICMP", "ICMPv6") and ip:
            return f"{layer.name} {icmp_type_name(layer)} {ip['src']} -> {ip['dst']}"
        if layer.name in ("UDP", "TCP") and ip:
            text = f"{layer.name} {_endpoint(ip['src'], f['sport'])} -> {_endpoint(ip['dst'], f['dport'])}"
            if layer.name == "TCP":
                text += f"  [{tcp_flags(f['flags'])}]"
            return text
        if layer.name == "ARP":
            return f"ARP {layer.detail}"
        if layer.name in ("IPv4", "IPv6"):
            proto = IP_PROTOCOLS.get(f["proto"], f"protocol {f['proto']}")
            return f"{layer.name} packet {f['src']} -> {f['dst']} carrying {proto}"
        if layer.name == "Ethernet":
            return f"Ethernet frame {f['src']} -> {f['dst']}"
    return "undecodable frame"


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _clock(ts: float) -> str:
    seconds, micros = divmod(round(ts * 1_000_000), 1_000_000)
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{micros:06d}"
