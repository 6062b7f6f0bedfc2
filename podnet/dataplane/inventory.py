"""What a node's kernel holds of podnet's addresses, and taking it all back (a fenced node).

A node holds an address when it answers for it: a tunnel address sits on a
VXLAN device, and a pod's address is reached by the host route to its veth
(`<ip>/32 dev cali... scope link`). Reading those two tables tells which
addresses live here without entering any pod's namespace.
"""

from __future__ import annotations

import ipaddress
import socket

from podnet.dataplane import ownership, rtnl
from podnet.model.endpoint import HOST_VETH_PREFIX


def links(sock: rtnl.RtnlSocket) -> dict[int, str]:
    """ifindex -> name of every link of the namespace."""
    out = {}
    for _, payload in sock.dump(rtnl.link_dump_msg()):
        link = rtnl.parse_link(payload)
        out[link["index"]] = link["ifname"]
    return out


def held_addresses(sock: rtnl.RtnlSocket, devices: tuple[str, ...]) -> dict[str, str]:
    """Address -> what holds it on this node: "tunnel <device>" or "pod <host veth>"."""
    names = links(sock)
    out: dict[str, str] = {}
    for _, payload in sock.dump(rtnl.addr_dump_msg()):
        addr = rtnl.parse_addr(payload)
        if names.get(addr["index"]) in devices and addr["address"] and addr["scope"] == 0:
            out[addr["address"]] = f"tunnel {names[addr['index']]}"
    for family in (socket.AF_INET, socket.AF_INET6):
        full = 32 if family == socket.AF_INET else 128
        for _, payload in sock.dump(rtnl.route_dump_msg(family)):
            route = rtnl.parse_route(payload)
            name = names.get(route["oif"] or 0, "")
            dst, _, plen = route["dst"].partition("/")
            if name.startswith(HOST_VETH_PREFIX) and int(plen) == full and route["gateway"] is None:
                out[str(ipaddress.ip_address(dst))] = f"pod {name}"
    return out


def link_exists(sock: rtnl.RtnlSocket, name: str) -> bool:
    return name in links(sock).values()


def withdraw(sock: rtnl.RtnlSocket, devices: tuple[str, ...], host_veths: list[str]) -> list[str]:
    """Remove the node's podnet state from the kernel: the pods' veth pairs (the pod's end, its address and
    its host route go with them) and the VXLAN devices (their address, routes, neighbour and FDB entries
    go with them); then the routes podnet installed on other devices (CrossSubnet's direct routes).
    Returns what was removed. Only what podnet made is touched: the named veths and devices, and
    routes of podnet's own protocol."""
    names = set(links(sock).values())
    removed = []
    for name in [*host_veths, *devices]:
        if name in names and sock.request([rtnl.link_del_msg(ifname=name)])[0] == 0:
            removed.append(name)
    for family in (socket.AF_INET, socket.AF_INET6):
        for _, payload in sock.dump(rtnl.route_dump_msg(family, proto=rtnl.RTPROT_PODNET)):
            route = rtnl.parse_route(payload)
            if not ownership.route(route["proto"], route["table"]):
                continue
            msg = rtnl.route_msg(rtnl.RTM_DELROUTE, route["dst"], gateway=route["gateway"], oif=route["oif"],
                                 rtype=route["type"])
            if sock.request([msg])[0] == 0:
                removed.append(f"route {route['dst']}")
    return removed

