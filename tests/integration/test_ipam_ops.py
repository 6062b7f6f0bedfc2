"""IPAM operations on a live lab: borrowing with /32 routes, node delete, check and release, GC."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from podnet.datastore import open_datastore
from podnet.datastore.resources import Resources
from podnet.ipam import Ipam
from podnet.ipam.allocator import IpamConfig
from tests.integration import kernel
from tests.integration.witness import wait_for


def cli(lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podnet", "--datastore", lab.datastore_url, *args],
                          capture_output=True, text=True, timeout=60)


def clients(lab):
    store = open_datastore(lab.datastore_url)
    return store, Resources(store), Ipam(store)


def test_borrowed_address_gets_a_host_route_on_every_other_node(lab_factory):
    # Blocks of 16 and one block per node: node-1's 16th pod must borrow from another block.
    lab = lab_factory("pnt-b", nodes=2, pods_per_node=0, pool="10.99.0.0/26", block_size=28)
    store, res, ipam = clients(lab)
    try:
        ipam.set_config(IpamConfig(max_blocks_per_host=1))
        pods = [lab.add_pod("node-1", f"b{i}") for i in range(16)]
        borrowed = [p for p in pods if ipam.block_of(p["ip"]).block.node != "node-1"]
        assert len(borrowed) == 1
        ip = borrowed[0]["ip"]
        node1_tunnel = res.node("node-1").tunnel_address
        route = lambda: next((r for r in kernel.routes(lab.node_netns("node-2")) if r["dst"] == ip), None)  # noqa
        assert wait_for(lambda: route() is not None)
        assert route()["gateway"] == node1_tunnel and route()["dev"] == "vxlan.calico"
        out = cli(lab, "ipam", "show", "--show-borrowed")
        assert ip in out.stdout and "node-1" in out.stdout
        other = lab.add_pod("node-2", "peer")
        assert kernel.ping(other["netns"], ip).returncode == 0
        lab.delete_pod(borrowed[0]["name"])
        assert wait_for(lambda: route() is None)
    finally:
        store.close()


def test_node_delete_removes_it_everywhere(lab_factory):
    lab = lab_factory("pnt-d", nodes=3, pods_per_node=1)
    status = lab.status()
    gone = status["nodes"][2]
    lab.stop_agent(gone["name"])  # the node is down; an admin removes it
    out = cli(lab, "node", "delete", gone["name"])
    assert out.returncode == 0, out.stderr
    assert "released 2 addresses" in out.stdout  # its tunnel address and its pod's
    store, res, ipam = clients(lab)
    try:
        assert res.node(gone["name"]) is None
        assert ipam.node_block_cidrs(gone["name"], 4) == []
        assert not any(b.node == gone["name"] for b in ipam.blocks())
        assert res.endpoints(gone["name"]) == []
    finally:
        store.close()
    for node in status["nodes"][:2]:
        ns = node["netns"]
        assert wait_for(lambda: not any(r.get("gateway") == gone["tunnel_ip"] for r in kernel.routes(ns)))
        assert wait_for(lambda: gone["tunnel_ip"] not in {n["dst"] for n in kernel.neighbours(ns)})
        assert wait_for(lambda: gone["underlay_ip"] not in {f.get("dst") for f in kernel.fdb(ns)})
    assert cli(lab, "node", "delete", "no-such-node").returncode == 1


def test_check_finds_leaks_and_release_fixes_them(lab_factory, tmp_path):
    lab = lab_factory("pnt-k", nodes=1, pods_per_node=1)
    assert cli(lab, "ipam", "check").returncode == 0
    store, res, ipam = clients(lab)
    try:
        leaked = ipam.auto_assign("node-1", f"k8s-pod-network.{uuid.uuid4().hex}", {"pod": "ghost"})
        ep = res.endpoints("node-1")[0]
        ipam.release_handle(ep.handle)  # an endpoint whose address vanished
    finally:
        store.close()
    report = tmp_path / "report.json"
    out = cli(lab, "ipam", "check", "-o", str(report))
    assert out.returncode == 1
    assert "1 leaked addresses, 1 endpoints without addresses, 0 blocks" in out.stdout
    data = json.loads(report.read_text())
    assert [x["ip"] for x in data["leaked"]] == [leaked]
    assert data["endpoints_without_ips"][0]["endpoint"] == ep.key_name
    out = cli(lab, "ipam", "release", "--from-report", str(report))
    assert out.returncode == 0 and "released 1 of 1" in out.stdout
    assert "is not assigned" in cli(lab, "ipam", "show", "--ip", leaked).stdout


def test_agent_collects_leaked_addresses_and_empty_blocks(lab_factory):
    lab = lab_factory("pnt-g", nodes=1, pods_per_node=0)
    store, res, ipam = clients(lab)
    try:
        old = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
        stale = ipam.auto_assign("node-1", f"k8s-pod-network.{uuid.uuid4().hex}", {"timestamp": old})
        fresh = ipam.auto_assign("node-1", f"k8s-pod-network.{uuid.uuid4().hex}",
                                 {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        spare = "10.244.255.192/26"
        assert ipam._claim("node-1", 4, spare)
        lab.restart_agent("node-1", ["--resync-interval", "0.2", "--ipam-gc-grace", "600"])
        assert wait_for(lambda: ipam.block_of(stale).block.allocations.get(ipam.block_of(stale).block.ordinal(stale))
                        is None)
        assert wait_for(lambda: spare not in ipam.node_block_cidrs("node-1", 4))
        rec = ipam.block_of(fresh)
        assert rec.block.allocations.get(rec.block.ordinal(fresh)) is not None  # within the grace period
        assert res.node("node-1").tunnel_address in ipam.ips_by_handle("vxlan-tunnel-addr-node-1")
    finally:
        store.close()


def test_pods_choose_their_pool_by_config_or_arg_and_nodes_by_selector(lab_factory):
    import ipaddress

    from podnet.model import IPPool

    lab = lab_factory("pnt-p", nodes=2, pods_per_node=1)
    with lab.datastore() as store:
        Resources(store).apply_pool(IPPool("extra", "10.99.0.0/16"))
        # A pool only nodes labelled zone=b may use.
        Resources(store).apply_pool(IPPool("zone-b", "10.98.0.0/16", node_selector="zone == 'b'"))
    extra, zone_b = ipaddress.ip_network("10.99.0.0/16"), ipaddress.ip_network("10.98.0.0/16")
    remote = next(p for p in lab.status()["pods"] if p["node"] == "node-2")

    def add(pod: str, config: dict | None = None, args: str = "") -> str:
        from podnet.dataplane import topology

        ns = f"{lab.name}-{pod}"
        topology.create_netns(ns)
        lab.state["netns"].append(ns)
        env_args = f";{args}" if args else ""
        code, out, raw = lab.cni("node-1", "ADD", uuid.uuid4().hex, f"/run/netns/{ns}", pod + env_args,
                                 config=config)
        assert code == 0, raw
        return out["ips"][0]["address"].split("/")[0]

    by_config = dict(lab.network_config(), ipam={"type": "podnet-ipam", "ipv4_pools": ["extra"]})
    ip = add("byconf", by_config)
    assert ipaddress.ip_address(ip) in extra
    ip2 = add("byarg", args="IPV4POOLS=10.99.0.0/16")
    assert ipaddress.ip_address(ip2) in extra
    for addr in (ip, ip2):  # the new block is routed everywhere
        assert wait_for(lambda: kernel.ping(remote["netns"], addr).returncode == 0)
    # node-1 has no labels: the zone-b pool does not select it, not even when a pod asks for it...
    assert not ipaddress.ip_address(add("plain")) in zone_b
    zoned = dict(lab.network_config(), ipam={"type": "podnet-ipam", "ipv4_pools": ["zone-b"]})
    from podnet.dataplane import topology

    topology.create_netns(f"{lab.name}-refused")
    lab.state["netns"].append(f"{lab.name}-refused")
    code, out, _ = lab.cni("node-1", "ADD", uuid.uuid4().hex, f"/run/netns/{lab.name}-refused", "refused",
                           config=zoned)
    assert code != 0 and out["code"] == 102 and "zone-b" in out["msg"]
    # ...until the node carries the label.
    lab.restart_agent("node-1", ["--label", "zone=b"])
    lab.wait_converged()
    ip3 = add("zoned", zoned)
    assert ipaddress.ip_address(ip3) in zone_b
    with lab.datastore() as store:
        ipam = Ipam(store)
        assert [p.name for p in ipam.usable_pools(4, node="node-1")] == ["default-ipv4-ippool", "extra", "zone-b"]
        assert [p.name for p in ipam.usable_pools(4, node="node-2")] == ["default-ipv4-ippool", "extra"]
