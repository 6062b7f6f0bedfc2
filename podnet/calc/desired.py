"""What one node's kernel should hold, from what the datastore says.

Per remote node that is ready (has an underlay address and a tunnel address):
  neighbour  <remote tunnel IP> lladdr <remote VTEP MAC> PERMANENT
  fdb        <remote VTEP MAC> dst <remote node IP> self permanent
and per remote block, by the vxlanMode of the pool holding it:
  Always       <block> via <remote tunnel IP> dev vxlan.calico onlink
  CrossSubnet  like Always, but a remote node in our own underlay subnet is
               reached directly: <block> via <remote node IP> dev <parent> onlink
  Never        only the direct routes (another mechanism must route the rest)
An address borrowed from another node's block gets a /32 the same way,
towards the node that uses it. The node's own blocks get a blackhole route,
so traffic to an unused address of the block dies here instead of looping.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from podnet.calc.config import VxlanConfig
from podnet.calc.state import DesiredState, FdbEntry, Neighbour, Route, VxlanDevice
from podnet.model import IPPool, Node


def compute_desired(
    local: Node,
    nodes: Iterable[Node],
    affinities: Iterable[tuple[str, str]],
    config: VxlanConfig,
    underlay_mtu: int | None,
    pools: Iterable[IPPool] = (),
    borrowed: Iterable[tuple[str, str]] = (),
) -> DesiredState:
    """`affinities`: (node, block CIDR) of every claimed block; `borrowed`: (address, node using it)
    for addresses in use outside their block's node. A block in no pool is treated as vxlanMode Always."""
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
    v4_pools = [p for p in pools if p.version == 4]
    local_subnet = ipaddress.ip_interface(local.address).network if local.address else None
    routes: set[Route] = set()
    neighbours: set[Neighbour] = set()
    fdb: set[FdbEntry] = set()

    for node in ready.values():
        mac = node.effective_vtep_mac
        neighbours.add(Neighbour(node.tunnel_address, mac, dev))
        fdb.add(FdbEntry(mac, node.ip, dev))

    def route_to(dst: str, owner: str) -> Route | None:
        node = ready[owner]
        mode = _mode_of(dst, v4_pools)
        same_subnet = local_subnet is not None and ipaddress.ip_address(node.ip) in local_subnet
        if mode in ("CrossSubnet", "Never") and same_subnet:
            return Route(dst, gateway=node.ip, ifname=local.interface, onlink=True)
        if mode == "Never":
            return None
        return Route(dst, gateway=node.tunnel_address, ifname=dev, onlink=True)

    for owner, cidr in affinities:
        if ipaddress.ip_network(cidr).version != 4:
            continue
        if owner == local.name:
            routes.add(Route(cidr, blackhole=True))
        elif owner in ready:
            r = route_to(cidr, owner)
            if r:
                routes.add(r)

    for ip, user in borrowed:
        if ipaddress.ip_address(ip).version == 4 and user in ready:
            r = route_to(f"{ip}/32", user)
            if r:
                routes.add(r)

    if device is None:
        # Without our own VTEP nothing can be encapsulated: keep only what needs no tunnel.
        routes = {r for r in routes if r.blackhole or r.ifname != dev}
        neighbours, fdb = set(), set()

    return DesiredState(
        device=device,
        routes=frozenset(routes),
        neighbours=frozenset(neighbours),
        fdb=frozenset(fdb),
        remote_nodes=tuple(sorted(ready)) if device else (),
    )


def _mode_of(cidr: str, pools: list[IPPool]) -> str:
    net = ipaddress.ip_network(cidr)
    for p in pools:
        if net.subnet_of(p.network):
            return p.vxlan_mode
    return "Always"


def _is_ready_v4(node: Node) -> bool:
    return bool(
        node.address
        and node.tunnel_address
        and ipaddress.ip_interface(node.address).version == 4
        and ipaddress.ip_address(node.tunnel_address).version == 4
    )
