"""What one node's kernel should hold, from what the datastore says.

Per remote node that is ready (has an underlay address and a tunnel address):
  route      <remote block> via <remote tunnel IP> dev vxlan.calico onlink
  neighbour  <remote tunnel IP> lladdr <remote VTEP MAC> PERMANENT
  fdb        <remote VTEP MAC> dst <remote node IP> self permanent
and for the node's own blocks a blackhole route, so traffic to an unused
address of the block dies here instead of looping back out.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from podnet.calc.config import VxlanConfig
from podnet.calc.state import DesiredState, FdbEntry, Neighbour, Route, VxlanDevice
from podnet.model import Node


def compute_desired(
    local: Node,
    nodes: Iterable[Node],
    affinities: Iterable[tuple[str, str]],
    config: VxlanConfig,
    underlay_mtu: int | None,
) -> DesiredState:
    """`affinities`: (node name, block CIDR) for every claimed IPv4 block."""
    dev = config.device
    device = None
    if local.ip and local.interface:
        device = VxlanDevice(
            name=dev,
            vni=config.vni,
            port=config.port,
            local_ip=local.ip,
            parent=local.interface,
            mac=local.effective_vtep_mac,
            mtu=config.device_mtu(underlay_mtu),
            address=local.tunnel_address,
        )

    ready = {n.name: n for n in nodes if n.name != local.name and _is_ready_v4(n)}
    routes: set[Route] = set()
    neighbours: set[Neighbour] = set()
    fdb: set[FdbEntry] = set()

    for name, node in ready.items():
        mac = node.effective_vtep_mac
        neighbours.add(Neighbour(node.tunnel_address, mac, dev))
        fdb.add(FdbEntry(mac, node.ip, dev))

    for owner, cidr in affinities:
        if ipaddress.ip_network(cidr).version != 4:
            continue
        if owner == local.name:
            routes.add(Route(cidr, blackhole=True))
        elif owner in ready:
            routes.add(Route(cidr, gateway=ready[owner].tunnel_address, ifname=dev, onlink=True))

    if device is None:
        # Without our own VTEP nothing can be encapsulated: program no remote entries.
        routes = {r for r in routes if r.blackhole}
        neighbours, fdb = set(), set()

    return DesiredState(
        device=device,
        routes=frozenset(routes),
        neighbours=frozenset(neighbours),
        fdb=frozenset(fdb),
        remote_nodes=tuple(sorted(ready)) if device else (),
    )


def _is_ready_v4(node: Node) -> bool:
    return bool(
        node.address
        and node.tunnel_address
        and ipaddress.ip_interface(node.address).version == 4
        and ipaddress.ip_address(node.tunnel_address).version == 4
    )
