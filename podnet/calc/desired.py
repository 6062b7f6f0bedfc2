"""What one node's kernel should hold, from what the datastore says.

Per remote node that is ready (has an underlay address and a tunnel address):
  neighbour  <remote tunnel IP> lladdr <remote VTEP MAC> PERMANENT
  fdb        <remote VTEP MAC> dst <remote node IP> self permanent
and per remote block, by the vxlanMode of the pool holding it:
  Always       <block> via <remote tunnel IP> dev vxlan.calico onlink
  CrossSubnet  like Always, but a remote node in our own underlay subnet is
               reached directly: <block> via <remote node IP> dev <parent> onlink
  Never        only the direct routes (another mechanism must route the rest)
An address borrowed from another node's block gets a host route the same way,
towards the node that uses it. The node's own blocks get a blackhole route,
so traffic to an unused address of the block dies here instead of looping.

IPv4 uses vxlan.calico over the IPv4 underlay; IPv6 the same entries on
vxlan-v6.calico over the IPv6 underlay (VTEP MAC from the name + "-v6").
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from podnet.calc.config import VxlanConfig
from podnet.calc.state import DesiredState, FdbEntry, Neighbour, Route, VxlanDevice
from podnet.model import IPPool, Node


@dataclass(frozen=True)
class _Family:
    """How one address family reads a node: its underlay, tunnel address and VTEP MAC."""

    version: int

    def address(self, n: Node) -> str | None:
        return n.address if self.version == 4 else n.address6

    def ip(self, n: Node) -> str | None:
        return n.ip if self.version == 4 else n.ip6

    def tunnel(self, n: Node) -> str | None:
        return n.tunnel_address if self.version == 4 else n.tunnel_address6

    def mac(self, n: Node) -> str:
        return n.effective_vtep_mac if self.version == 4 else n.vtep_mac6

    def ready(self, n: Node) -> bool:
        addr, tunnel = self.address(n), self.tunnel(n)
        return bool(addr and tunnel and _version(addr) == self.version and _version(tunnel) == self.version)


@dataclass
class _FamilyState:
    device: VxlanDevice | None
    routes: set
    neighbours: set
    fdb: set
    ready: tuple[str, ...]


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
    nodes, affinities, pools, borrowed = list(nodes), list(affinities), list(pools), list(borrowed)
    v4 = _family_state(_Family(4), local, nodes, affinities, config, underlay_mtu, pools, borrowed)
    v6 = _family_state(_Family(6), local, nodes, affinities, config, underlay_mtu, pools, borrowed)
    return DesiredState(
        device=v4.device,
        routes=frozenset(v4.routes | v6.routes),
        neighbours=frozenset(v4.neighbours | v6.neighbours),
        fdb=frozenset(v4.fdb | v6.fdb),
        remote_nodes=tuple(sorted(set(v4.ready) | set(v6.ready))),
        device6=v6.device,
    )


def _family_state(fam: _Family, local: Node, nodes, affinities, config: VxlanConfig, underlay_mtu,
                  pools, borrowed) -> _FamilyState:
    dev = config.device_name(fam.version)
    device = None
    if fam.ip(local) and local.interface and (fam.version == 4 or fam.tunnel(local)):
        device = VxlanDevice(
            name=dev,
            vni=config.vni,
            port=config.port,
            local_ip=fam.ip(local),
            parent=local.interface,
            mac=fam.mac(local),
            mtu=config.device_mtu(underlay_mtu, fam.version),
            address=fam.tunnel(local),
        )

    ready = {n.name: n for n in nodes if n.name != local.name and fam.ready(n)}
    family_pools = [p for p in pools if p.version == fam.version]
    # In the common all-Always cluster no block needs parsing to learn its mode.
    every_block_always = all(p.vxlan_mode == "Always" for p in family_pools)
    local_subnet = ipaddress.ip_interface(fam.address(local)).network if fam.address(local) else None
    same_subnet: dict[str, bool] = {}
    routes: set[Route] = set()
    neighbours: set[Neighbour] = set()
    fdb: set[FdbEntry] = set()

    for node in ready.values():
        neighbours.add(Neighbour(fam.tunnel(node), fam.mac(node), dev))
        fdb.add(FdbEntry(fam.mac(node), fam.ip(node), dev))

    def route_to(dst: str, owner: str) -> Route | None:
        node = ready[owner]
        mode = "Always" if every_block_always else _mode_of(dst, family_pools)
        if mode in ("CrossSubnet", "Never") and owner not in same_subnet:
            same_subnet[owner] = local_subnet is not None and ipaddress.ip_address(fam.ip(node)) in local_subnet
        if mode in ("CrossSubnet", "Never") and same_subnet[owner]:
            return Route(dst, gateway=fam.ip(node), ifname=local.interface, onlink=True)
        if mode == "Never":
            return None
        return Route(dst, gateway=fam.tunnel(node), ifname=dev, onlink=True)

    for owner, cidr in affinities:
        if _version(cidr) != fam.version:
            continue
        if owner == local.name:
            routes.add(Route(cidr, blackhole=True))
        elif owner in ready:
            r = route_to(cidr, owner)
            if r:
                routes.add(r)

    host_len = 32 if fam.version == 4 else 128
    for ip, user in borrowed:
        if _version(ip) == fam.version and user in ready:
            r = route_to(f"{ip}/{host_len}", user)
            if r:
                routes.add(r)

    if device is None:
        # Without our own VTEP nothing can be encapsulated: keep only what needs no tunnel.
        routes = {r for r in routes if r.blackhole or r.ifname != dev}
        neighbours, fdb = set(), set()
    return _FamilyState(device, routes, neighbours, fdb, tuple(ready) if device else ())


def _version(address_or_cidr: str) -> int:
    return 6 if ":" in address_or_cidr else 4


def _mode_of(cidr: str, pools: list[IPPool]) -> str:
    net = ipaddress.ip_network(cidr)
    for p in pools:
        if net.subnet_of(p.network):
            return p.vxlan_mode
    return "Always"
