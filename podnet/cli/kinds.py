"""How each kind of model/kinds.py is shown: table columns (default and wide) and its document.

A column is (HEADING, function of the resource, the context). The context carries what a column
needs beyond the resource itself (blocks per node), computed only when a shown column asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


class Context:
    """Facts some columns need, read once on first use."""

    def __init__(self, resources):
        self.resources = resources
        self._blocks_by_node: dict[str, list[str]] | None = None

    def blocks_of(self, node: str) -> list[str]:
        if self._blocks_by_node is None:
            from podnet.model.kinds import lookup

            self._blocks_by_node = {}
            for b in self.resources.list(lookup("IPAMBlock")):
                if b.node:
                    self._blocks_by_node.setdefault(b.node, []).append(b.cidr)
        return self._blocks_by_node.get(node, [])


Column = tuple[str, Callable]


@dataclass(frozen=True)
class View:
    columns: tuple[Column, ...]
    wide: tuple[Column, ...] = ()  # added after the default columns by -o wide
    document: Callable | None = None  # the JSON/YAML form of one resource; default: its manifest
    list_kind: bool = True  # several resources print as a calicoctl <Kind>List


def _join(values) -> str:
    return ",".join(values)


def _block_document(b) -> dict:
    return {"cidr": b.cidr, "affinity": b.affinity, "allocated": len(b.allocations), "free": b.free,
            "allocations": {ip: {"handle": a.handle, **a.attrs} for ip, a in b.in_use().items()}}


VIEWS: dict[str, View] = {
    "IPPool": View(
        (("NAME", lambda p, c: p.name), ("CIDR", lambda p, c: p.cidr), ("BLOCK", lambda p, c: p.block_size),
         ("VXLAN", lambda p, c: p.vxlan_mode), ("NAT", lambda p, c: p.nat_outgoing),
         ("DISABLED", lambda p, c: p.disabled), ("SELECTOR", lambda p, c: p.node_selector)),
        wide=(("IPIP", lambda p, c: p.ipip_mode), ("USES", lambda p, c: _join(p.allowed_uses)))),
    "Node": View(
        (("NAME", lambda n, c: n.name), ("ADDRESS", lambda n, c: n.address), ("INTERFACE", lambda n, c: n.interface),
         ("TUNNEL-IP", lambda n, c: n.tunnel_address), ("VTEP-MAC", lambda n, c: n.effective_vtep_mac),
         ("BLOCKS", lambda n, c: _join(c.blocks_of(n.name)))),
        wide=(("ADDRESS6", lambda n, c: n.address6), ("TUNNEL-IP6", lambda n, c: n.tunnel_address6),
              ("VTEP-MAC6", lambda n, c: n.vtep_mac6 if n.address6 else None),
              ("LABELS", lambda n, c: _join(f"{k}={v}" for k, v in sorted(n.labels.items()))))),
    "AgentConfiguration": View(
        (("NAME", lambda a, c: a.name), ("VNI", lambda a, c: a.vni), ("PORT", lambda a, c: a.port),
         ("MTU", lambda a, c: a.mtu), ("MTU-IFACE-PATTERN", lambda a, c: a.mtu_iface_pattern),
         ("TX-CHECKSUM", lambda a, c: a.tx_checksum_offload))),
    "WorkloadEndpoint": View(
        (("NODE", lambda e, c: e.node), ("POD", lambda e, c: e.pod_name), ("NAMESPACE", lambda e, c: e.pod_namespace),
         ("INTERFACE", lambda e, c: e.interface), ("HOST-IF", lambda e, c: e.host_interface),
         ("IPS", lambda e, c: _join(e.ips)), ("CONTAINER", lambda e, c: e.container_id[:12])),
        wide=(("NAME", lambda e, c: e.key_name), ("MAC", lambda e, c: e.mac), ("NETNS", lambda e, c: e.netns),
              ("NETWORK", lambda e, c: e.network))),
    "IPAMConfiguration": View(
        (("NAME", lambda i, c: i.name), ("STRICT-AFFINITY", lambda i, c: i.strict_affinity),
         ("MAX-BLOCKS-PER-HOST", lambda i, c: i.max_blocks_per_host))),
    "IPReservation": View(
        (("NAME", lambda r, c: r.name), ("RESERVED-CIDRS", lambda r, c: _join(r.reserved_cidrs)))),
    "IPAMBlock": View(
        (("CIDR", lambda b, c: b.cidr), ("AFFINITY", lambda b, c: b.affinity),
         ("IN-USE", lambda b, c: len(b.allocations)), ("FREE", lambda b, c: b.free)),
        document=_block_document, list_kind=False),
    "NetworkPolicy": View(
        (("NAMESPACE", lambda p, c: p.namespace), ("NAME", lambda p, c: p.name),
         ("ORDER", lambda p, c: _order(p.order)), ("SELECTOR", lambda p, c: p.selector),
         ("TYPES", lambda p, c: _join(p.types))),
        wide=(("INGRESS", lambda p, c: len(p.ingress)), ("EGRESS", lambda p, c: len(p.egress)))),
    "GlobalNetworkPolicy": View(
        (("NAME", lambda p, c: p.name), ("ORDER", lambda p, c: _order(p.order)),
         ("SELECTOR", lambda p, c: p.selector), ("NAMESPACE-SELECTOR", lambda p, c: p.namespace_selector),
         ("TYPES", lambda p, c: _join(p.types))),
        wide=(("INGRESS", lambda p, c: len(p.ingress)), ("EGRESS", lambda p, c: len(p.egress)))),
    "Namespace": View(
        (("NAME", lambda n, c: n.name), ("LABELS", lambda n, c: _labels(n.labels))), list_kind=False),
    "Pod": View(
        (("NAMESPACE", lambda p, c: p.namespace), ("NAME", lambda p, c: p.name),
         ("LABELS", lambda p, c: _labels(p.labels)),
         ("PORTS", lambda p, c: _join(f"{x.name}={x.port}/{x.protocol}" for x in p.ports))), list_kind=False),
}


def _order(order):
    return "" if order is None else f"{order:g}"


def _labels(labels) -> str:
    return _join(f"{k}={v}" for k, v in sorted(labels.items()))


def view(kind_name: str) -> View:
    return VIEWS[kind_name]
