"""Who this node is: its underlay address, its record in the datastore, its tunnel address."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

from pyroute2 import IPRoute

from podnet.dataplane.rtnl import RT_SCOPE_UNIVERSE  # a global address: the only kind an underlay is found by
from podnet.datastore.resources import Resources
from podnet.errors import PodnetError
from podnet.ipam import Ipam, NoUsablePool
from podnet.model import Node, vtep_mac
from podnet.model.endpoint import tunnel_handle, tunnel_handle6

log = logging.getLogger(__name__)


class RegistrationError(PodnetError):
    pass


def may_move_underlay(address: dict, own_devices) -> bool:
    """Whether an address notification (kernel_events: family, scope, index, address) can change what
    find_underlay and find_underlay6 answer: a global address on an interface podnet did not make.
    Every pod's host-side veth gets a link-local IPv6 address; following those would read all the
    node's addresses once per pod, and that, at a few hundred pods, slowed every ADD."""
    return address.get("scope") == RT_SCOPE_UNIVERSE and address.get("index") not in own_devices


def find_underlay(ipr: IPRoute, interface: str | None, address: str | None) -> tuple[str, str]:
    """(address with prefix, interface) of the node's underlay.

    Given an interface: its first global IPv4 address. Given an address: the
    interface that holds it (with the prefix it holds it with, which
    CrossSubnet needs). Given neither: the interface of the default route.
    """
    addrs = []
    for msg in ipr.get_addr(family=2):
        if msg["scope"] != RT_SCOPE_UNIVERSE:
            continue
        name = ipr.link("get", index=msg["index"])[0].get_attr("IFLA_IFNAME")
        addrs.append((f"{msg.get_attr('IFA_LOCAL') or msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}", name))
    if address:
        want = ipaddress.ip_interface(address).ip if "/" in address else ipaddress.ip_address(address)
        for cidr, name in addrs:
            if ipaddress.ip_interface(cidr).ip == want and (interface is None or name == interface):
                return cidr, name
        raise RegistrationError(
            f"no interface holds the node address {address}",
            "pass the address that is configured on the underlay interface (--address) or name it (--interface)",
        )
    if interface is None:
        for route in ipr.get_default_routes(family=2):
            oif = route.get_attr("RTA_OIF")
            if oif:
                interface = ipr.link("get", index=oif)[0].get_attr("IFLA_IFNAME")
                break
        else:
            raise RegistrationError("cannot tell the underlay interface: no default route", "pass --interface")
    for cidr, name in addrs:
        if name == interface:
            return cidr, name
    raise RegistrationError(
        f"interface {interface} has no IPv4 address", "unable to find the parent interface: give it the node's address"
    )


def find_underlay6(ipr: IPRoute, interface: str) -> str | None:
    """The interface's first global IPv6 address with its prefix, if it has one."""
    for msg in ipr.get_addr(family=10):
        if msg["scope"] != RT_SCOPE_UNIVERSE:
            continue
        if ipr.link("get", index=msg["index"])[0].get_attr("IFLA_IFNAME") == interface:
            return f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"
    return None


def _tunnel_address(ipam: Ipam, node: Node, version: int, current: str | None) -> str | None:
    """The node's tunnel address of one family: kept if IPAM still has it, else allocated.
    None when the cluster has no usable pool of that family (IPv6 is optional)."""
    handle = tunnel_handle(node.name) if version == 4 else tunnel_handle6(node.name)
    owned = ipam.ips_by_handle(handle)
    if current in owned:
        return current
    if owned:
        return owned[0]
    attrs = {"type": "vxlanTunnelAddress" if version == 4 else "vxlanV6TunnelAddress", "node": node.name}
    try:
        address = ipam.auto_assign(node.name, handle, attrs, version=version, use="Tunnel", labels=node.labels)
    except NoUsablePool:
        if version == 4:
            raise
        return None
    log.info("IPv%d tunnel address of %s is %s", version, node.name, address)
    return address


def register(resources: Resources, ipam: Ipam, name: str, address: str, interface: str,
             labels: dict | None = None, address6: str | None = None) -> Node:
    """Create or refresh the node record and make sure it has its tunnel addresses.

    The record is written first: IPAM assigns addresses only to a node that has one."""
    existing = resources.node(name)
    node = Node(
        name=name,
        address=address,
        interface=interface,
        vtep_mac=vtep_mac(name),
        labels=labels if labels is not None else (existing.labels if existing else {}),
        address6=address6,
        tunnel_address=existing.tunnel_address if existing else None,
        tunnel_address6=existing.tunnel_address6 if existing and address6 else None,
    )
    if node != existing:
        resources.put_node(node)
    tunnel = _tunnel_address(ipam, node, 4, node.tunnel_address)
    tunnel6 = _tunnel_address(ipam, node, 6, node.tunnel_address6) if address6 else None
    registered = dataclasses.replace(node, tunnel_address=tunnel, tunnel_address6=tunnel6)
    if registered != node:
        resources.put_node(registered)
    if registered != existing:
        log.info("registered node %s: %s on %s, VTEP %s", name, address, interface, registered.vtep_mac)
    return registered
