"""Node lifecycle on live labs: liveness, node delete refused or fenced, guarded releases, ipam check/gc,
and nodes joining and leaving through `podnet lab node`.

Every "no address lives twice" claim is checked by reading every namespace of the lab (nodes and pods)
with iproute2, independently of podnet."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from podnet.dataplane import topology
from podnet.datastore import keys
from podnet.datastore.resources import Resources
from podnet.ipam import Ipam
from tests.integration import kernel
from tests.integration.witness import wait_for

POOL = ipaddress.ip_network("10.244.0.0/16")


def cli(lab, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podnet", "--lab", lab.name, *args], capture_output=True,
                          text=True, timeout=timeout)


def pool_addresses_by_node(lab) -> dict[str, set[str]]:
    """Pool address -> the nodes whose kernels hold it: on the node itself (tunnel address), in a pod
    of the node (its eth0), or as a host route to a veth of the node. Read from every namespace."""
    pods_of = {p["netns"]: p["node"] for p in lab.state["pods"]}
    held: dict[str, set[str]] = {}
    for ns in kernel.netns_list():
        if not ns.startswith(lab.prefix):
            continue
        node = pods_of.get(ns) or next((n["name"] for n in lab.state["nodes"] if n["netns"] == ns), None)
        if node is None:
            continue
        for link in kernel.ip_json(ns, "addr", "show"):
            for a in link.get("addr_info", []):
                if ipaddress.ip_address(a["local"]) in POOL:
                    held.setdefault(a["local"], set()).add(node)
        if ns not in pods_of:
            for r in kernel.routes(ns):
                dst = r["dst"].split("/")[0]
                if r.get("dev", "").startswith("cali") and dst != "default" and ipaddress.ip_address(dst) in POOL:
                    held.setdefault(dst, set()).add(node)
    return held


def assert_no_address_on_two_nodes(lab) -> dict[str, set[str]]:
    held = pool_addresses_by_node(lab)
    twice = {ip: nodes for ip, nodes in held.items() if len(nodes) > 1}
    assert not twice, f"addresses live on two nodes: {twice}"
    return held


def fresh_netns(lab, name: str) -> str:
    ns = f"{lab.prefix}{name}"
    lab.state["netns"].append(ns)  # lab down removes it whatever happens
    lab._save()
    topology.create_netns(ns)
    return ns


@pytest.mark.parametrize("datastore", ["sqlite", "etcd"])
def test_node_delete_refuses_a_live_node_and_force_fences_it(lab_factory, datastore):
    lab = lab_factory("pnt-nl", nodes=3, pods_per_node=1, datastore=datastore)
    before = {n["name"]: n for n in lab.status()["nodes"]}
    pods = {p["node"]: p for p in lab.status()["pods"]}
    gone = before["node-2"]
    with lab.datastore() as store:
        assert set(store.live(keys.LIVENESS)) == {keys.liveness(n) for n in before}  # every agent is alive
    assert_no_address_on_two_nodes(lab)

    # Refused: the agent runs. Nothing changes.
    out = cli(lab, "node", "delete", "node-2")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "node-2's agent is running" in out.stderr and "--force" in out.stderr
    with lab.datastore() as store:
        assert Resources(store).node("node-2").tunnel_address == gone["tunnel_ip"]
        assert Ipam(store).ips_by_handle("vxlan-tunnel-addr-node-2") == [gone["tunnel_ip"]]

    # Forced: fenced. The agent withdraws its kernel state, then its addresses are released.
    out = cli(lab, "node", "delete", "node-2", "--force")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "fenced" in out.stdout
    node2 = lab.node_netns("node-2")
    assert kernel.link(node2, "vxlan.calico") is None
    assert not [n for n in topology.links(node2) if n.startswith("cali")]
    assert not [r for r in kernel.routes(node2) if r.get("protocol") in ("80", 80)]
    assert not [a for link in kernel.ip_json(pods["node-2"]["netns"], "addr", "show")
                for a in link.get("addr_info", []) if ipaddress.ip_address(a["local"]) in POOL]
    assert wait_for(lambda: next(n for n in lab.status()["nodes"] if n["name"] == "node-2")["fenced"])
    with lab.datastore() as store:
        assert Resources(store).node("node-2") is None
        assert keys.liveness("node-2") not in store.live(keys.LIVENESS)
        assert not any(b.node == "node-2" for b in Ipam(store).blocks())
    for other in ("node-1", "node-3"):
        ns = lab.node_netns(other)
        assert wait_for(lambda: gone["underlay_ip"] not in {f.get("dst") for f in kernel.fdb(ns)})

    # The fenced node serves no ADD, and never hands out an address (its old tunnel address least of all).
    ns = fresh_netns(lab, "late-pod")
    code, result, raw = lab.cni("node-2", "ADD", uuid.uuid4().hex, f"/run/netns/{ns}", "late")
    assert code != 0 and result["code"] == 105 and "deleted from the cluster" in result["msg"], raw
    assert "Traceback" not in raw
    assert not [a for link in kernel.ip_json(ns, "addr", "show") for a in link.get("addr_info", [])
                if ipaddress.ip_address(a["local"]) in POOL]

    # The next node to join may get node-2's old addresses: node-2 no longer holds them.
    joined = lab.join_node()
    lab.add_pod(joined["name"], "newcomer")
    held = assert_no_address_on_two_nodes(lab)
    assert all("node-2" not in nodes for nodes in held.values())

    # A bystander pod keeps talking, to old and new nodes alike.
    newcomer = next(p for p in lab.status()["pods"] if p["name"] == "newcomer")
    assert kernel.ping(pods["node-1"]["netns"], pods["node-3"]["ip"]).returncode == 0
    assert wait_for(lambda: kernel.ping(pods["node-1"]["netns"], newcomer["ip"]).returncode == 0, timeout=10)
    check = cli(lab, "ipam", "check")
    assert check.returncode == 0, check.stdout

    # Restarting the fenced agent joins the cluster again, with addresses nobody else holds.
    lab.restart_agent("node-2")
    lab.wait_converged()
    rejoined = next(n for n in lab.status()["nodes"] if n["name"] == "node-2")
    assert rejoined["ready"] and not rejoined["fenced"] and rejoined["tunnel_ip"]
    assert_no_address_on_two_nodes(lab)


def test_a_fenced_agent_that_cannot_withdraw_keeps_its_addresses_from_the_next_node(lab_factory):
    """The agent of node-2 is frozen (SIGSTOP) when it is deleted by force: it cannot withdraw, so its
    addresses stay reserved, and the node that joins meanwhile gets others. Thawed, it withdraws."""
    lab = lab_factory("pnt-nf", nodes=3, pods_per_node=1)
    pods = {p["node"]: p for p in lab.status()["pods"]}
    agent = next(n for n in lab.state["nodes"] if n["name"] == "node-2")
    os.kill(agent["pid"], signal.SIGSTOP)
    try:
        out = cli(lab, "node", "delete", "node-2", "--force", "--wait", "2")
        assert out.returncode == 1 and "has not withdrawn" in out.stdout, out.stdout + out.stderr
        joined = lab.join_node()
        lab.add_pod(joined["name"], "newcomer")
        held = assert_no_address_on_two_nodes(lab)  # node-2's kernel still holds its tunnel and pod address
        assert {ip for ip, nodes in held.items() if "node-2" in nodes} >= {pods["node-2"]["ip"]}
    finally:
        os.kill(agent["pid"], signal.SIGCONT)
    assert wait_for(lambda: kernel.link(lab.node_netns("node-2"), "vxlan.calico") is None, timeout=30)
    with lab.datastore() as store:
        assert wait_for(lambda: keys.liveness("node-2") not in store.live(keys.LIVENESS), timeout=30)
    assert cli(lab, "ipam", "gc", "--yes").returncode == 0
    assert cli(lab, "ipam", "check").returncode == 0
    held = assert_no_address_on_two_nodes(lab)
    assert all("node-2" not in nodes for nodes in held.values())
    newcomer = next(p for p in lab.status()["pods"] if p["name"] == "newcomer")
    assert wait_for(lambda: kernel.ping(pods["node-1"]["netns"], newcomer["ip"]).returncode == 0, timeout=10)


def test_a_stopped_agent_leaves_at_once_so_delete_needs_no_force(lab_factory):
    lab = lab_factory("pnt-ns", nodes=2, pods_per_node=0)
    lab.stop_agent("node-2")  # a graceful stop ends its liveness record
    with lab.datastore() as store:
        assert keys.liveness("node-2") not in store.live(keys.LIVENESS)
        assert keys.liveness("node-1") in store.live(keys.LIVENESS)
    out = cli(lab, "node", "delete", "node-2")
    assert out.returncode == 0 and "node node-2 deleted" in out.stdout, out.stderr


def test_release_of_an_address_in_use_is_refused_and_block_cleanup_keeps_its_block(lab_factory):
    # Blocks of 4 addresses, so a pod can be alone in a block of its own.
    lab = lab_factory("pnt-nr", nodes=2, pods_per_node=1, block_size=30)
    pods = {p["node"]: p for p in lab.status()["pods"]}
    tunnel2 = next(n for n in lab.status()["nodes"] if n["name"] == "node-2")["tunnel_ip"]
    pod_ip = pods["node-2"]["ip"]
    for ip, what in ((pod_ip, "pod default/pod-2-1 on node node-2"), (tunnel2, "node node-2's VXLAN tunnel")):
        out = cli(lab, "ipam", "release", "--ip", ip)
        assert out.returncode == 1 and "is in use" in out.stderr and what in out.stderr, out.stderr
        assert "--force" in out.stderr and "Traceback" not in out.stderr
        assert "in use by handle" in cli(lab, "ipam", "show", "--ip", ip).stdout
    # node-2's agent collects garbage on every pass, and looks after its tunnel address every 3 s.
    lab.restart_agent("node-2", ["--resync-interval", "0.2", "--ipam-gc-grace", "600", "--liveness-ttl", "3"])
    lab.wait_converged()
    with lab.datastore() as store:
        ipam = Ipam(store)
        alone = None
        for i in range(4):
            ip = lab.add_pod("node-2", f"extra-{i}")["ip"]
            if len(ipam.block_of(ip).block.allocations) == 1:
                alone = ip
                break
        assert alone, "no pod got a block of its own"
        cidr = ipam.block_of(alone).block.cidr
    # Forced: it says what breaks. Now the block holds no allocation, but a live endpoint.
    out = cli(lab, "ipam", "release", "--ip", alone, "--force")
    assert out.returncode == 0 and "released" in out.stdout and "warning: pod default/extra-" in out.stdout, out
    with lab.datastore() as store:
        assert Ipam(store).block(cidr).block.empty
    seen = set()
    # Many GC passes (each writes the status file with a new time): the block must survive them all.
    assert wait_for(lambda: seen.add((lab.agent_status("node-2") or {}).get("last_reconcile")) or len(seen) > 8,
                    timeout=30)
    with lab.datastore() as store:
        assert Ipam(store).block(cidr) is not None
    assert kernel.ping(pods["node-1"]["netns"], alone).returncode == 0
    # A tunnel address released by force is taken back by its agent before IPAM can hand it out.
    out = cli(lab, "ipam", "release", "--ip", tunnel2, "--force")
    assert out.returncode == 0 and "warning: it is node node-2's VXLAN tunnel address" in out.stdout, out
    with lab.datastore() as store:
        assert wait_for(lambda: Ipam(store).ips_by_handle("vxlan-tunnel-addr-node-2") == [tunnel2], timeout=30)
    assert kernel.ping(pods["node-1"]["netns"], pod_ip).returncode == 0


@pytest.mark.parametrize("datastore", ["sqlite", "etcd"])
def test_ipam_check_and_gc_find_and_fix_an_endpoint_whose_netns_was_deleted(lab_factory, datastore):
    # The agents answer check's request for a fresh kernel report at once (a watch), whatever the period.
    lab = lab_factory("pnt-nc", nodes=2, pods_per_node=1, datastore=datastore)
    victim = next(p for p in lab.status()["pods"] if p["node"] == "node-2")
    assert cli(lab, "ipam", "check").returncode == 0
    topology.delete_netns(victim["netns"])  # the sandbox is gone; no DEL ever comes

    def finding():
        out = cli(lab, "ipam", "check")
        return out if "its network namespace" in out.stdout else None

    out = wait_for(finding, timeout=30, interval=0.5)
    assert out and out.returncode == 1, out
    assert victim["ip"] in out.stdout and "podnet ipam gc" in out.stdout
    dry = cli(lab, "ipam", "gc")
    assert dry.returncode == 0 and "dry run" in dry.stdout
    with lab.datastore() as store:
        assert Resources(store).endpoints("node-2")  # nothing changed
    done = cli(lab, "ipam", "gc", "--yes")
    assert done.returncode == 0 and victim["ip"] in done.stdout, done.stdout + done.stderr
    with lab.datastore() as store:
        assert Resources(store).endpoints("node-2") == []
        assert Ipam(store).block_of(victim["ip"]).block.allocations.get(
            Ipam(store).block_of(victim["ip"]).block.ordinal(victim["ip"])) is None
    assert cli(lab, "ipam", "check").returncode == 0


def test_ipam_check_reports_an_address_live_in_the_wrong_kernel(lab_factory):
    lab = lab_factory("pnt-nk", nodes=2, pods_per_node=1)
    lab.restart_agent("node-1", ["--liveness-ttl", "3"])
    lab.wait_converged()
    other = next(p for p in lab.status()["pods"] if p["node"] == "node-2")
    # node-1 answers for node-2's pod address: a veth and a host route, as a stale attachment would leave.
    peer = fresh_netns(lab, "stale")
    topology.add_veth_between(lab.node_netns("node-1"), "calistale0001", peer, "eth0")
    subprocess.run(["ip", "-n", lab.node_netns("node-1"), "route", "add", f"{other['ip']}/32", "dev", "calistale0001",
                    "scope", "link"], check=True)

    def conflict():
        out = cli(lab, "ipam", "check", "-o", "/dev/stdout")
        return out if "IPAM gives it to node node-2" in out.stdout else None

    out = wait_for(conflict, timeout=30, interval=0.5)
    assert out and out.returncode == 1, out
    report, _ = json.JSONDecoder().raw_decode(out.stdout)
    found = {(c["ip"], c["node"]): c for c in report["kernel_conflicts"]}
    assert set(found) <= {(other["ip"], "node-1"), (other["ip"], "node-2")}  # nothing else
    assert found[(other["ip"], "node-1")]["reason"] == "IPAM gives it to node node-2"
    assert "calistale0001" in found[(other["ip"], "node-1")]["holder"]
    if (other["ip"], "node-2") in found:  # node-2 holds it rightly, and is told who else does
        assert found[(other["ip"], "node-2")]["reason"] == "also live on node node-1: one address on two nodes"


def test_lab_node_add_and_delete_through_the_cli(lab_factory):
    lab = lab_factory("pnt-na", nodes=2, pods_per_node=1)
    out = cli(lab, "lab", "node", "add", "--name", lab.name)
    assert out.returncode == 0 and "node-3 joined" in out.stdout, out.stdout + out.stderr
    lab.load()
    status = {n["name"]: n for n in lab.status()["nodes"]}
    assert status["node-3"]["ready"] and status["node-3"]["tunnel_ip"]
    for node in ("node-1", "node-2"):  # every node routes to the newcomer
        assert any(r.get("gateway") == status["node-3"]["tunnel_ip"] for r in kernel.routes(lab.node_netns(node)))
    out = cli(lab, "lab", "node", "delete", "--name", lab.name, "node-3")
    assert out.returncode == 0 and "node-3 left" in out.stdout, out.stdout + out.stderr
    lab.load()
    assert lab.node_netns("node-3") not in kernel.netns_list()
    with lab.datastore() as store:
        assert Resources(store).node("node-3") is None
    for node in ("node-1", "node-2"):
        ns = lab.node_netns(node)
        assert wait_for(lambda: not any(r.get("gateway") == status["node-3"]["tunnel_ip"] for r in kernel.routes(ns)))
    # The next node is node-4: names are never reused within a lab.
    out = cli(lab, "lab", "node", "add", "--name", lab.name)
    assert out.returncode == 0 and "node-4 joined" in out.stdout, out.stdout + out.stderr
    lab.load()
    assert_no_address_on_two_nodes(lab)
