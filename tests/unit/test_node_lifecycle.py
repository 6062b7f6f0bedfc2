"""The pure parts of node lifecycle: IPAM's refusal for unregistered nodes, what check judges from kernel
reports, which blocks cleanup must keep, and the records' encodings (a real SQLite store, no agents)."""

from __future__ import annotations

import pytest

from podnet.datastore import keys
from podnet.datastore.resources import Resources
from podnet.datastore.sqlite import SqliteDatastore
from podnet.ipam import Ipam, NodeNotRegistered
from podnet.ipam.maintenance import (
    AddressInUse,
    NodeGc,
    NodeIsLive,
    block_users,
    check,
    kernel_conflicts,
    release_address,
    remove_node,
)
from podnet.model import Block, IPPool, Node, WorkloadEndpoint
from podnet.model.endpoint import ipam_handle, tunnel_handle
from podnet.model.nodestatus import AgentLiveness, GoneEndpoint, KernelReport


@pytest.fixture
def store(tmp_path):
    s = SqliteDatastore(str(tmp_path / "podnet.db"), durable=False)
    Resources(s).apply_pool(IPPool("default-ipv4-ippool", "10.244.0.0/16"))
    yield s
    s.close()


def register(store, ipam, name: str) -> str:
    res = Resources(store)
    res.put_node(Node(name, address="192.0.2.1/24", interface="eth0"))
    tunnel = ipam.auto_assign(name, tunnel_handle(name), {"type": "vxlanTunnelAddress"}, use="Tunnel")
    res.put_node(Node(name, address="192.0.2.1/24", interface="eth0", tunnel_address=tunnel))
    return tunnel


def add_pod(store, ipam, node: str, cid: str) -> str:
    ip = ipam.auto_assign(node, ipam_handle(cid), {"pod": cid})
    Resources(store).put_endpoint(WorkloadEndpoint(node, cid, "eth0", "cali" + cid[:11], (f"{ip}/32",),
                                                   "ee:ee:ee:ee:ee:ee", netns=f"/run/netns/{cid}",
                                                   pod_namespace="default", pod_name=cid))
    return ip


def test_ipam_assigns_nothing_to_a_node_without_a_record(store):
    ipam = Ipam(store)
    with pytest.raises(NodeNotRegistered, match="node-x has no Node record"):
        ipam.auto_assign("node-x", "h1")
    register(store, ipam, "node-1")
    assert ipam.auto_assign("node-1", "h2")
    Resources(store).delete_node("node-1")
    # This allocator remembers node-1's record and block: the write compares the record and fails.
    with pytest.raises(NodeNotRegistered):
        ipam.auto_assign("node-1", "h3")
    with pytest.raises(NodeNotRegistered):  # a fixed address in the node's existing block: refused as well
        ipam.assign_ip("10.244.0.9", "node-1", "h3")
    assert ipam.ips_by_handle("h3") == []


def test_release_of_a_live_pod_or_tunnel_address_is_refused_unless_forced(store):
    ipam, res = Ipam(store), Resources(store)
    tunnel = register(store, ipam, "node-1")
    pod = add_pod(store, ipam, "node-1", "c" * 64)
    for ip, what in ((pod, "pod default/" + "c" * 64), (tunnel, "node-1's VXLAN tunnel address")):
        with pytest.raises(AddressInUse, match=what):
            release_address(ipam, res, ip)
        assert ipam.block_of(ip).block.allocations.get(ipam.block_of(ip).block.ordinal(ip)) is not None
    handle, broken = release_address(ipam, res, pod, force=True)
    assert handle == ipam_handle("c" * 64) and "its traffic stops" in broken[0]
    stray = ipam.auto_assign("node-1", ipam_handle("d" * 64))  # no endpoint: nothing depends on it
    assert release_address(ipam, res, stray) == (ipam_handle("d" * 64), [])


def test_block_cleanup_keeps_a_block_a_live_endpoint_or_tunnel_uses(store):
    ipam, res = Ipam(store), Resources(store)
    tunnel = register(store, ipam, "node-1")
    pod = add_pod(store, ipam, "node-1", "c" * 64)
    block = ipam.block_of(pod).block
    ipam.release_ip(pod)
    ipam.release_ip(tunnel)  # both forced away: the block's allocations say "empty"
    assert ipam.block_of(pod).block.empty
    users = block_users(ipam.block_of(pod).block, res.endpoints(), {tunnel})
    ep = res.endpoints("node-1")[0]
    assert users == [f"tunnel address {tunnel}", f"endpoint node-1/{ep.key_name} ({pod}/32)"]
    gc = NodeGc("node-1", grace_seconds=600)
    for _ in range(4):
        assert gc.run(ipam, res)["blocks_released"] == []
    res.delete_endpoint("node-1", ep.key_name)
    res.put_node(Node("node-1", address="192.0.2.1/24", interface="eth0"))  # no tunnel address any more
    assert gc.run(ipam, res)["blocks_released"] == [block.cidr]  # it was seen empty before: freed now


def test_node_delete_refuses_a_live_agent(store):
    ipam, res = Ipam(store), Resources(store)
    register(store, ipam, "node-1")
    store.keep_alive(keys.liveness("node-1"), AgentLiveness("node-1", "vm", 42, 0, 15, 5).to_json(), 15)
    with pytest.raises(NodeIsLive, match="pid 42 on vm"):
        remove_node(ipam, res, "node-1")
    assert res.node("node-1") is not None
    # Forced, with no agent to withdraw: the record goes, the addresses stay until the liveness ends.
    summary = remove_node(ipam, res, "node-1", force=True, wait=0)
    assert summary["fenced"] and not summary["withdrawn"]
    assert res.node("node-1") is None and ipam.ips_by_handle(tunnel_handle("node-1"))
    assert check(ipam, res, report_wait=0).leaked == []  # held by a live agent: not leaked
    store.end_liveness(keys.liveness("node-1"))
    assert [x["reason"] for x in check(ipam, res).leaked] == ["its node no longer exists"]
    assert remove_node(ipam, res, "node-1")["released"]


def test_kernel_conflicts_name_the_wrong_node_the_free_address_and_the_double():
    reports = {
        "node-1": KernelReport("node-1", 0, {"10.0.0.1": "tunnel vxlan.calico", "10.0.0.5": "pod caliA"}),
        "node-2": KernelReport("node-2", 0, {"10.0.0.5": "pod caliB", "10.0.0.9": "pod caliC"}),
    }
    allocated = {"10.0.0.1": ("vxlan-tunnel-addr-node-1", "node-1"), "10.0.0.5": ("k8s-pod-network.x", "node-1")}
    found = {(c["ip"], c["node"]): c["reason"] for c in kernel_conflicts(reports, allocated)}
    assert found == {("10.0.0.5", "node-2"): "also live on node node-1: one address on two nodes",
                     ("10.0.0.9", "node-2"): "free in IPAM: it can be handed to another pod or node"}


def test_records_round_trip():
    report = KernelReport("n", 1.5, {"10.0.0.1": "pod caliA"}, (GoneEndpoint("k", "/run/netns/x", "caliA",
                                                                             ("10.0.0.1/32",)),))
    assert KernelReport.from_json(report.to_json()) == report
    live = AgentLiveness("n", "host", 7, 1.0, 15.0, 5.0)
    assert AgentLiveness.from_json(live.to_json()) == live
    block = Block.new("10.0.0.0/26", "n")
    assert block_users(block, [], {"10.0.1.1"}) == []


def test_netns_check_of_the_kernel_report_never_blocks(tmp_path):
    import os

    from podnet.agent.lifecycle import is_netns_path

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    regular = tmp_path / "file"
    regular.write_text("")
    assert not is_netns_path(str(fifo))
    assert not is_netns_path(str(regular))
    assert not is_netns_path(str(tmp_path))
    assert not is_netns_path(str(tmp_path / "missing")) and not is_netns_path("")
    assert is_netns_path("/proc/self/ns/net")
    assert not is_netns_path("/proc/self/ns/uts")  # a namespace, but not a network one


def test_check_asks_for_fresh_reports_and_ignores_a_delete_in_flight(store):
    """A stand-in agent answers check's request: its kernel still holds a pod address whose DEL is
    finishing (IPAM releases it meanwhile), and a stale route to an address IPAM gives to another node.
    Only the second is a conflict."""
    import threading

    ipam, res = Ipam(store), Resources(store)
    register(store, ipam, "node-1")
    register(store, ipam, "node-2")
    leaving = add_pod(store, ipam, "node-1", "a" * 64)
    elsewhere = add_pod(store, ipam, "node-2", "b" * 64)
    store.keep_alive(keys.liveness("node-1"), AgentLiveness("node-1", "vm", 1, 0, 3, 1).to_json(), 3)
    store.delete(keys.liveness("node-2"))
    answered = threading.Event()
    start = store.revision() + 1  # the request comes after this

    def agent():
        with store.watch(keys.KERNEL_REPORT_REQUEST, start) as watch:
            events = watch.next_events(timeout=10)
        held = {leaving: "pod caliA", elsewhere: "pod caliStale"}
        store.put(keys.kernel_report("node-1"), KernelReport("node-1", 0, held, (), events[-1].mod_revision).to_json())
        res.delete_endpoint("node-1", res.endpoints("node-1")[0].key_name)  # the DEL finishes
        ipam.release_handle(ipam_handle("a" * 64))
        answered.set()

    thread = threading.Thread(target=agent)
    thread.start()
    try:
        report = check(Ipam(store), res, report_wait=10)
    finally:
        thread.join()
    assert answered.is_set() and report.unreported_nodes == []
    assert [(c["ip"], c["node"], c["reason"]) for c in report.kernel_conflicts] == [
        (elsewhere, "node-1", "IPAM gives it to node node-2")]


def test_gc_never_releases_a_leaked_address_a_kernel_still_holds(store):
    """An ADD that died halfway: an address without an endpoint, but its veth and route are on the node."""
    import threading

    from podnet.ipam.maintenance import gc

    ipam, res = Ipam(store), Resources(store)
    register(store, ipam, "node-1")
    held = ipam.auto_assign("node-1", ipam_handle("c" * 64))
    gone = ipam.auto_assign("node-1", ipam_handle("d" * 64))
    store.keep_alive(keys.liveness("node-1"), AgentLiveness("node-1", "vm", 1, 0, 3, 1).to_json(), 3)
    start = store.revision() + 1

    def agent():
        with store.watch(keys.KERNEL_REPORT_REQUEST, start) as watch:
            asked = watch.next_events(timeout=10)[-1].mod_revision
        store.put(keys.kernel_report("node-1"), KernelReport("node-1", 0, {held: "pod caliHalf"}, (), asked).to_json())

    thread = threading.Thread(target=agent)
    thread.start()
    try:
        report, done = gc(ipam, res, apply=True, report_wait=10)
    finally:
        thread.join()
    assert sorted(x["ip"] for x in report.leaked) == sorted([held, gone])
    assert done["released"] == [gone] and done["kept_held"] == [held]
    assert ipam.ips_by_handle(ipam_handle("c" * 64)) == [held]
