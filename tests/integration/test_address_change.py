"""An underlay address moved back and forth: vxlan.calico follows in place, traffic keeps flowing.

node-2's eth0 address alternates between two addresses ten times (deleted, the other added, the
default route put back: what a DHCP client or an operator does). Each time, node-2's agent
changes its device's local address in place (same ifindex: no route, neighbour or FDB entry
dropped) before it publishes the new address; the other node's FDB follows. A ping between
pods on both nodes runs through every change; its losses are bounded by count.
"""

from __future__ import annotations

import pytest

from podnet.datastore import open_datastore
from podnet.datastore.resources import Resources
from podnet.ipam import Ipam
from podnet.model import vtep_mac
from podnet.model.endpoint import tunnel_handle
from tests.integration import kernel
from tests.integration.conftest import built_lab
from tests.integration.traffic import KernelMonitor, Pinger
from tests.integration.witness import wait_for

CHANGES = 10
ADDRESSES = ("172.31.0.12", "172.31.0.60")
MAX_LOST_PER_CHANGE = 30  # at 100 probes a second: a liveness bound, the gap itself is measured by make bench


@pytest.fixture(scope="module")
def lab():
    with built_lab("pnt-ac", nodes=2, pods_per_node=1) as lab:
        yield lab


def fdb_dsts(ns: str, mac: str) -> set[str]:
    return {f.get("dst") for f in kernel.fdb(ns) if f["mac"] == mac}


def device_local(ns: str) -> str:
    return kernel.link(ns, "vxlan.calico")["linkinfo"]["info_data"]["local"]


def records(lab) -> tuple[list, list]:
    store = open_datastore(lab.datastore_url)
    try:
        return Resources(store).nodes(), Ipam(store).ips_by_handle(tunnel_handle("node-2"))
    finally:
        store.close()


def test_underlay_address_moved_ten_times_keeps_device_entries_and_traffic(lab):
    ns1, ns2 = lab.node_netns("node-1"), lab.node_netns("node-2")
    a = next(p for p in lab.status()["pods"] if p["node"] == "node-1")
    b = next(p for p in lab.status()["pods"] if p["node"] == "node-2")
    mac = vtep_mac("node-2")
    index = kernel.link(ns2, "vxlan.calico")["ifindex"]
    neighbours1 = kernel.neighbours(ns1)
    routes2 = kernel.ip_json(ns2, "route", "show", "proto", "80")
    nodes, tunnel = records(lab)
    assert fdb_dsts(ns1, mac) == {ADDRESSES[0]} and len(tunnel) == 1
    lost = []
    for k in range(CHANGES):
        old, new = ADDRESSES[k % 2], ADDRESSES[(k + 1) % 2]
        with Pinger(a["netns"], b["ip"]) as ab, Pinger(b["netns"], a["ip"]) as ba, KernelMonitor(ns2) as monitor:
            lab.exec(ns2, "ip", "addr", "del", f"{old}/24", "dev", "eth0", check=True)
            lab.exec(ns2, "ip", "addr", "add", f"{new}/24", "dev", "eth0", check=True)
            lab.exec(ns2, "ip", "route", "replace", "default", "via", "172.31.0.1", check=True)
            assert wait_for(lambda: fdb_dsts(ns1, mac) == {new} and device_local(ns2) == new, timeout=10), \
                f"change {k + 1}: node-1's FDB {fdb_dsts(ns1, mac)}, node-2's device local {device_local(ns2)}"
            assert wait_for(lambda: kernel.ping(a["netns"], b["ip"], timeout=1).returncode == 0, timeout=10)
        lost.append((ab.lost, ba.lost))
        assert ab.sent > 30 and ba.sent > 30, "the pings did not run through the change"
        assert ab.lost <= MAX_LOST_PER_CHANGE and ba.lost <= MAX_LOST_PER_CHANGE, f"change {k + 1}: lost {lost[-1]}"
        # In place: the same device, nothing on it deleted (node-2 kept its routes and entries).
        assert kernel.link(ns2, "vxlan.calico")["ifindex"] == index, f"change {k + 1} made vxlan.calico again"
        assert not monitor.deleted("vxlan.calico"), monitor.deleted("vxlan.calico")
    # No leaks, no duplicates: one address on eth0 and one (the tunnel's) on vxlan.calico, the same
    # entries as before, one FDB destination, one node record per node with distinct addresses, the
    # same single tunnel address in IPAM.
    assert [x["local"] for x in kernel.addresses(ns2, "eth0") if x["family"] == "inet"] == [ADDRESSES[CHANGES % 2]]
    assert [x["local"] for x in kernel.addresses(ns2, "vxlan.calico") if x["family"] == "inet"] == [tunnel[0]]
    assert kernel.neighbours(ns1) == neighbours1
    assert kernel.ip_json(ns2, "route", "show", "proto", "80") == routes2
    assert fdb_dsts(ns1, mac) == {ADDRESSES[CHANGES % 2]}
    nodes_after, tunnel_after = records(lab)
    assert [n.name for n in nodes_after] == [n.name for n in nodes]
    assert len({n.address for n in nodes_after}) == len(nodes_after)
    assert len({n.tunnel_address for n in nodes_after}) == len(nodes_after)
    assert next(n for n in nodes_after if n.name == "node-2").address == f"{ADDRESSES[CHANGES % 2]}/24"
    assert tunnel_after == tunnel
    print(f"packets lost per change (node-1 -> node-2, node-2 -> node-1) at 100/s: {lost}")
