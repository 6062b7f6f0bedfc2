"""A 3-node lab: every pod reaches every other, and each node's kernel holds the seed's entries."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from podnet.lab.lab import LabSpec
from podnet.model import vtep_mac
from tests.integration import kernel
from tests.integration.witness import wait_for
from tests.integration.conftest import built_lab

NODES = 3


@pytest.fixture(scope="module")
def lab():
    with built_lab("pnt-c", nodes=NODES, pods_per_node=2) as lab:
        yield lab


def remote_expectations(status: dict, node: str) -> tuple[set, set, set]:
    """The seed's three entries for every other node, built from lab status (not from podnet's calc)."""
    routes, neighs, fdbs = set(), set(), set()
    for other in status["nodes"]:
        if other["name"] == node:
            continue
        for block in other["blocks"]:
            routes.add((block, other["tunnel_ip"]))
        neighs.add((other["tunnel_ip"], vtep_mac(other["name"])))
        fdbs.add((vtep_mac(other["name"]), other["underlay_ip"]))
    return routes, neighs, fdbs


def vxlan_routes(netns: str) -> set:
    return {(r["dst"] if "/" in r["dst"] else r["dst"] + "/32", r["gateway"]) for r in kernel.routes(netns)
            if r.get("dev") == "vxlan.calico"}


def permanent_neighbours(netns: str) -> set:
    return {(n["dst"], n["lladdr"]) for n in kernel.neighbours(netns) if "PERMANENT" in n.get("state", [])}


def fdb_entries(netns: str) -> set:
    return {(f["mac"], f["dst"]) for f in kernel.fdb(netns) if f.get("dst") and "permanent" in f.get("state", "")}


def test_every_pod_pings_every_other_pod(lab):
    pods = lab.status()["pods"]
    assert len(pods) == NODES * 2
    failures = []
    for src, dst in itertools.permutations(pods, 2):
        result = kernel.ping(src["netns"], dst["ip"])
        if result.returncode != 0:
            failures.append(f"{src['name']} -> {dst['name']} ({dst['ip']})")
        elif src["node"] != dst["node"]:
            assert "ttl=62" in result.stdout, result.stdout  # two routing hops: both nodes
    assert not failures, failures


def test_each_node_holds_the_seed_entries(lab):
    status = lab.status()
    for node in status["nodes"]:
        ns = node["netns"]
        want_routes, want_neigh, want_fdb = remote_expectations(status, node["name"])
        assert len(want_routes) == NODES - 1

        dev = kernel.link(ns, "vxlan.calico")
        info = dev["linkinfo"]["info_data"]
        assert dev["mtu"] == 1450
        assert dev["address"] == vtep_mac(node["name"])
        assert info["id"] == 4096 and info["port"] == 4789 and info["local"] == node["underlay_ip"]
        assert info["learning"] is False and info["link"] == "eth0"
        assert [(a["local"], a["prefixlen"]) for a in kernel.addresses(ns, "vxlan.calico") if a["family"] == "inet"] \
            == [(node["tunnel_ip"], 32)]

        routes = kernel.routes(ns)
        vx = [r for r in routes if r.get("dev") == "vxlan.calico"]
        assert {(r["dst"], r["gateway"]) for r in vx} == want_routes
        assert all("onlink" in r["flags"] and r["protocol"] == "80" for r in vx)
        assert {r["dst"] for r in routes if r.get("type") == "blackhole"} == set(node["blocks"])
        assert permanent_neighbours(ns) == want_neigh
        assert fdb_entries(ns) == want_fdb


def test_pods_are_attached_as_the_seed_shows(lab):
    status = lab.status()
    nodes = {n["name"]: n for n in status["nodes"]}
    for pod in status["pods"]:
        node_ns = nodes[pod["node"]]["netns"]
        host_if = pod["interface"]
        assert host_if.startswith("cali") and len(host_if) == 15
        host = kernel.link(node_ns, host_if)
        assert host["address"] == "ee:ee:ee:ee:ee:ee"
        assert kernel.sysctl(node_ns, f"net/ipv4/conf/{host_if}/proxy_arp") == "1"
        assert kernel.sysctl(node_ns, f"net/ipv4/neigh/{host_if}/proxy_delay") == "0"
        host_route = [r for r in kernel.routes(node_ns) if r["dst"] == pod["ip"]]
        assert host_route and host_route[0]["dev"] == host_if and host_route[0]["scope"] == "link"

        eth0 = kernel.link(pod["netns"], "eth0")
        assert eth0["mtu"] == 1450
        assert [(a["local"], a["prefixlen"]) for a in kernel.addresses(pod["netns"], "eth0") if a["family"] == "inet"] \
            == [(pod["ip"], 32)]
        pod_routes = {(r["dst"], r.get("gateway"), r.get("scope")) for r in kernel.routes(pod["netns"])}
        assert pod_routes == {("default", "169.254.1.1", "global"), ("169.254.1.1", None, "link")}
        assert ipaddress.ip_address(pod["ip"]) in ipaddress.ip_network(nodes[pod["node"]]["blocks"][0])


@pytest.mark.parametrize("entry", ["route", "neighbour", "fdb"])
def test_an_entry_deleted_by_hand_comes_back(lab, entry):
    status = lab.status()
    node, other = status["nodes"][0], status["nodes"][1]
    ns = node["netns"]
    mac = vtep_mac(other["name"])
    if entry == "route":
        cmd = ["ip", "route", "del", other["blocks"][0]]
        present = lambda: (other["blocks"][0], other["tunnel_ip"]) in vxlan_routes(ns)  # noqa: E731
    elif entry == "neighbour":
        cmd = ["ip", "neigh", "del", other["tunnel_ip"], "dev", "vxlan.calico"]
        present = lambda: (other["tunnel_ip"], mac) in permanent_neighbours(ns)  # noqa: E731
    else:
        cmd = ["bridge", "fdb", "del", mac, "dev", "vxlan.calico", "dst", other["underlay_ip"], "self"]
        present = lambda: (mac, other["underlay_ip"]) in fdb_entries(ns)  # noqa: E731
    assert present()
    lab.exec(ns, *cmd, check=True)
    assert wait_for(present), f"{entry} was not restored"
    pod_a = next(p for p in status["pods"] if p["node"] == node["name"])
    pod_b = next(p for p in status["pods"] if p["node"] == other["name"])
    assert kernel.ping(pod_a["netns"], pod_b["ip"]).returncode == 0


def test_a_foreign_permanent_fdb_entry_is_removed(lab):
    """Stale FDB entries (calico issue 7281) must not survive a resync."""
    ns = lab.status()["nodes"][0]["netns"]
    lab.exec(ns, "bridge", "fdb", "append", "66:00:00:00:00:99", "dev", "vxlan.calico", "dst", "172.31.0.250",
             "self", "permanent", check=True)
    assert wait_for(lambda: ("66:00:00:00:00:99", "172.31.0.250") not in fdb_entries(ns))


def test_a_removed_node_vanishes_from_every_other_node(lab_factory):
    lab = lab_factory("pnt-r", nodes=3, pods_per_node=1)
    before = lab.status()
    gone = before["nodes"][2]
    lab.remove_node(gone["name"])
    for node in before["nodes"][:2]:
        ns = node["netns"]
        assert wait_for(lambda: not any(gw == gone["tunnel_ip"] for _, gw in vxlan_routes(ns))), "route left behind"
        assert wait_for(lambda: gone["tunnel_ip"] not in {ip for ip, _ in permanent_neighbours(ns)})
        assert wait_for(lambda: gone["underlay_ip"] not in {dst for _, dst in fdb_entries(ns)})
        # The surviving node's entries are intact.
        want_routes, _, _ = remote_expectations(lab.status(), node["name"])
        assert vxlan_routes(ns) == want_routes and len(want_routes) == 1
    a, b = lab.status()["pods"]
    assert kernel.ping(a["netns"], b["ip"]).returncode == 0


def test_a_new_node_appears_on_every_node(lab_factory):
    lab = lab_factory("pnt-j", nodes=2, pods_per_node=1)
    lab.add_node("node-3", LabSpec().node_address(3))
    pod = lab.add_pod("node-3", "late")
    status = lab.status()
    for node in status["nodes"]:
        want_routes, want_neigh, want_fdb = remote_expectations(status, node["name"])
        assert vxlan_routes(node["netns"]) == want_routes
        assert permanent_neighbours(node["netns"]) == want_neigh
        assert fdb_entries(node["netns"]) == want_fdb
    for other in status["pods"]:
        if other["name"] != "late":
            assert kernel.ping(other["netns"], pod["ip"]).returncode == 0
