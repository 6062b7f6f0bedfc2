"""The masquerade ruleset for pools with natOutgoing (nftables syntax). Pure.

Pod traffic from a natOutgoing pool to anywhere outside every pool leaves with
the node's address. Traffic between pools (pod to pod) keeps its source.
The source port is never 4789: a masqueraded flow on the VXLAN port would be
taken for tunnel traffic by the receiving node (Calico issue 12244).
"""

from __future__ import annotations

from typing import Iterable

from podnet.model import IPPool

TABLE = "podnet"
MASQUERADE_PORTS = "4790-65535"  # above the VXLAN port: it can never be picked


def nat_ruleset(pools: Iterable[IPPool], vxlan_device: str = "vxlan.calico", family: int = 4) -> str | None:
    """The whole table, to be applied atomically; None when no pool asks for NAT."""
    pools = [p for p in pools if p.version == family]
    nat = sorted(p.cidr for p in pools if p.nat_outgoing and not p.disabled)
    if not nat:
        return None
    everything = sorted(p.cidr for p in pools)
    fam, addr = ("ip", "ipv4_addr") if family == 4 else ("ip6", "ipv6_addr")
    match = f"{fam} saddr @nat-pools {fam} daddr != @all-pools oifname != \"{vxlan_device}\""
    return "\n".join([
        f"table {fam} {TABLE} {{",
        f"  set nat-pools {{ type {addr}; flags interval; elements = {{ {', '.join(nat)} }} }}",
        f"  set all-pools {{ type {addr}; flags interval; elements = {{ {', '.join(everything)} }} }}",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f"    {match} meta l4proto {{ tcp, udp }} masquerade to :{MASQUERADE_PORTS}",
        f"    {match} masquerade",
        "  }",
        "}",
    ]) + "\n"
