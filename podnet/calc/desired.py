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


@dataclass(frozen=True)
class FamilyContext:
    """What every remote node's entries of one family are judged against: the local node, its
    VXLAN device (None: no tunnel in this family) and the pools' modes."""

    fam: _Family
    local: Node
    device: VxlanDevice | None
    dev: str
    pools: tuple
    every_block_always: bool
    local_subnet: object

    def ready(self, node: Node) -> bool:
        return node.name != self.local.name and self.fam.ready(node)


def family_context(version: int, local: Node, config: VxlanConfig, underlay_mtu: int | None,
                   pools: Iterable[IPPool] = ()) -> FamilyContext:
    fam = _Family(version)
    dev = config.device_name(version)
    device = None
    if fam.ip(local) and local.interface and (version == 4 or fam.tunnel(local)):
        device = VxlanDevice(
            name=dev,
            vni=config.vni,
            port=config.port,
            local_ip=fam.ip(local),
            parent=local.interface,
            mac=fam.mac(local),
            mtu=config.device_mtu(underlay_mtu, version),
            address=fam.tunnel(local),
        )
    family_pools = tuple(p for p in pools if p.version == version)
    return FamilyContext(
        fam=fam, local=local, device=device, dev=dev, pools=family_pools,
        # In the common all-Always cluster no block needs parsing to learn its mode.
        every_block_always=all(p.vxlan_mode == "Always" for p in family_pools),
        local_subnet=ipaddress.ip_interface(fam.address(local)).network if fam.address(local) else None,
    )


def remote_node_entries(ctx: FamilyContext, node: Node, blocks: Iterable[str],
                        borrowed: Iterable[str]) -> tuple[set, set, set]:
    """(routes, neighbours, FDB entries) one remote node brings in this family: its tunnel
    neighbour and FDB entry, a route per block it owns and per address of another's block it
    uses (`borrowed`). Nothing for a node that is not ready or without our own VTEP."""
    fam, dev = ctx.fam, ctx.dev
    if not ctx.ready(node):
        return set(), set(), set()
    if ctx.device is not None and ctx.every_block_always and not borrowed:
        # The common case, on every node of the cluster at start: no mode to look up.
        tunnel, mac = fam.tunnel(node), fam.mac(node)
        return ({Route(cidr, tunnel, dev, True) for cidr in blocks if _version(cidr) == fam.version},
                {Neighbour(tunnel, mac, dev)}, {FdbEntry(mac, fam.ip(node), dev)})
    routes: set[Route] = set()
    same_subnet: list[bool] = []

    def route_to(dst: str) -> Route | None:
        mode = "Always" if ctx.every_block_always else _mode_of(dst, ctx.pools)
        if mode in ("CrossSubnet", "Never"):
            if not same_subnet:
                same_subnet.append(ctx.local_subnet is not None
                                   and ipaddress.ip_address(fam.ip(node)) in ctx.local_subnet)
            if same_subnet[0]:
                return Route(dst, gateway=fam.ip(node), ifname=ctx.local.interface, onlink=True)
            if mode == "Never":
                return None
        if ctx.device is None:
            return None  # without our own VTEP nothing can be encapsulated
        return Route(dst, gateway=fam.tunnel(node), ifname=dev, onlink=True)

    for cidr in blocks:
        if _version(cidr) == fam.version:
            r = route_to(cidr)
            if r:
                routes.add(r)
    host_len = 32 if fam.version == 4 else 128
    for ip in borrowed:
        if _version(ip) == fam.version:
            r = route_to(f"{ip}/{host_len}")
            if r:
                routes.add(r)
    if ctx.device is None:
        return routes, set(), set()
    return routes, {Neighbour(fam.tunnel(node), fam.mac(node), dev)}, {FdbEntry(fam.mac(node), fam.ip(node), dev)}


def local_node_entries(ctx: FamilyContext, blocks: Iterable[str]) -> set:
    """The node's own blocks get a blackhole route, so traffic to an unused address of the
    block dies here instead of looping."""
    return {Route(cidr, blackhole=True) for cidr in blocks if _version(cidr) == ctx.fam.version}


def _family_state(fam: _Family, local: Node, nodes, affinities, config: VxlanConfig, underlay_mtu,
                  pools, borrowed) -> _FamilyState:
    ctx = family_context(fam.version, local, config, underlay_mtu, pools)
    blocks: dict[str, list[str]] = {}
    for owner, cidr in affinities:
        blocks.setdefault(owner, []).append(cidr)
    used: dict[str, list[str]] = {}
    for ip, user in borrowed:
        used.setdefault(user, []).append(ip)
    routes = local_node_entries(ctx, blocks.get(local.name, ()))
    neighbours: set[Neighbour] = set()
    fdb: set[FdbEntry] = set()
    ready = []
    for node in nodes:
        if not ctx.ready(node):
            continue
        ready.append(node.name)
        r, n, f = remote_node_entries(ctx, node, blocks.get(node.name, ()), used.get(node.name, ()))
        routes |= r
        neighbours |= n
        fdb |= f
    return _FamilyState(ctx.device, routes, neighbours, fdb, tuple(ready) if ctx.device else ())


def _version(address_or_cidr: str) -> int:
    return 6 if ":" in address_or_cidr else 4


def _mode_of(cidr: str, pools: list[IPPool]) -> str:
    net = ipaddress.ip_network(cidr)
    for p in pools:
        if net.subnet_of(p.network):
            return p.vxlan_mode
    return "Always"
