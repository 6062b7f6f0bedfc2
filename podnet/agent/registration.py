"""Who this node is: its underlay address, its record in the datastore, its tunnel address."""

from __future__ import annotations

import ipaddress
import logging

from pyroute2 import IPRoute

from podnet.datastore.resources import Resources
from podnet.errors import PodnetError
from podnet.ipam import Ipam
from podnet.model import Node, vtep_mac
from podnet.model.endpoint import tunnel_handle

log = logging.getLogger(__name__)


class RegistrationError(PodnetError):
    pass


def find_underlay(ipr: IPRoute, interface: str | None, address: str | None) -> tuple[str, str]:
    """(address with prefix, interface) of the node's underlay.

    Given an interface: its first global IPv4 address. Given an address: the
    interface that holds it (with the prefix it holds it with, which
    CrossSubnet needs). Given neither: the interface of the default route.
    """
    addrs = []
    for msg in ipr.get_addr(family=2):
        if msg["scope"] != 0:
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


def register(resources: Resources, ipam: Ipam, name: str, address: str, interface: str,
             labels: dict | None = None) -> Node:
    """Create or refresh the node record and make sure it has a tunnel address."""
    existing = resources.node(name)
    node = Node(
        name=name,
        address=address,
        interface=interface,
        vtep_mac=vtep_mac(name),
        tunnel_address=existing.tunnel_address if existing else None,
        labels=labels if labels is not None else (existing.labels if existing else {}),
    )
    handle = tunnel_handle(name)
    owned = ipam.ips_by_handle(handle)
    if node.tunnel_address not in owned:
        tunnel = owned[0] if owned else ipam.auto_assign(
            name, handle, {"type": "vxlanTunnelAddress", "node": name}, version=4, use="Tunnel", labels=node.labels
        )
        node = Node(node.name, node.address, node.interface, node.vtep_mac, tunnel, node.labels)
        log.info("tunnel address of %s is %s", name, tunnel)
    if node != existing:
        resources.put_node(node)
        log.info("registered node %s: %s on %s, VTEP %s", name, address, interface, node.vtep_mac)
    return node
