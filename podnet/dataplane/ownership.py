"""Which kernel entries are podnet's: the one answer for the agent's managers (what they read back,
believe and may delete), the node clean-up (inventory) and `podnet doctor` (what it calls stale or
foreign). Entries of other owners, even on podnet's devices, are never counted, changed or deleted.

* a route: protocol 80 (Calico's, RTPROT_PODNET) in the main table;
* a neighbour (ARP/NDP): on a podnet VXLAN device, PERMANENT, with a link-layer address (what the
  kernel resolves by itself, or the IPv6 stack's own NOARP multicast entries, is not podnet's);
* an FDB entry: on a podnet VXLAN device, permanent, with a destination and a MAC.
"""

from __future__ import annotations

from podnet.dataplane import rtnl


def route(proto: int, table: int = rtnl.RT_TABLE_MAIN) -> bool:
    return proto == rtnl.RTPROT_PODNET and table == rtnl.RT_TABLE_MAIN


def neighbour(on_podnet_device: bool, permanent: bool, lladdr: str | None, ip: str | None) -> bool:
    return on_podnet_device and permanent and bool(lladdr) and bool(ip)


def fdb(on_podnet_device: bool, permanent: bool, mac: str | None, dst: str | None) -> bool:
    return on_podnet_device and permanent and bool(mac) and bool(dst)
