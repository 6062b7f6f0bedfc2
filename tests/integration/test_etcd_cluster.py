"""podnet on etcd: a lab whose agents share a 3-member etcd cluster, and what happens when etcd fails.

Every ADD either succeeds or fails with CNI code 11 (try again later); no address is handed out twice
or leaked; existing pods keep talking while etcd is away; agents keep the kernel as it is and resync.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid

import pytest

from podnet.dataplane import topology
from podnet.datastore.resources import Resources
from podnet.ipam import Ipam
from podnet.lab.lab import Lab, LabSpec
from tests.integration import kernel
from tests.integration.conftest import built_lab, unique
from tests.integration.traffic import Pinger


@pytest.fixture
def etcd_lab():
    with built_lab("pnt-e", nodes=2, pods_per_node=1, datastore="etcd", etcd_members=3) as lab:
        yield lab


def allocations(lab: Lab) -> dict[str, str]:
    with lab.datastore() as store:
        return {ip: a.handle for b in Ipam(store).blocks() for ip, a in b.in_use().items()}


def add_sandboxes(lab: Lab, node: str, count: int, tag: str) -> list[tuple[str, str]]:
    made = []
    for i in range(count):
        ns = f"{lab.name}-{tag}{i}"
        topology.create_netns(ns)
        lab.state.setdefault("netns", []).append(ns)  # lab down removes them, whatever happens
        made.append((node, ns))
    lab._save()
    return made


def cni_add(lab: Lab, node: str, ns: str) -> tuple[int, dict | None, float]:
    started = time.monotonic()
    code, out, raw = lab.cni(node, "ADD", uuid.uuid4().hex, f"/run/netns/{ns}", ns, timeout=60)
    return code, out, time.monotonic() - started


def test_agents_share_etcd_and_pods_talk(etcd_lab):
    a, b = etcd_lab.status()["pods"]
    assert etcd_lab.datastore_url.startswith("etcd://") and etcd_lab.datastore_url.count(",") == 2
    assert kernel.ping(a["netns"], b["ip"]).returncode == 0


def attachments(lab: Lab) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The endpoint records (container id -> host veth) and the cali veths of every node."""
    with lab.datastore() as store:
        endpoints = {e.container_id: e.host_interface for e in Resources(store).endpoints()}
    links = {n["name"]: sorted(l for l in topology.links(n["netns"]) if l.startswith("cali"))
             for n in lab.state["nodes"]}
    return endpoints, links


def test_leader_killed_during_an_allocation_storm(etcd_lab):
    lab = etcd_lab
    before = allocations(lab)
    endpoints_before, links_before = attachments(lab)
    sandboxes = add_sandboxes(lab, "node-1", 20, "s") + add_sandboxes(lab, "node-2", 20, "t")
    leader = lab.etcd.leader()
    clock = threading.Lock()
    spans: dict[int, list[float]] = {}  # sandbox -> [ADD start, ADD end]

    def timed_add(i: int, node: str, ns: str):
        container = uuid.uuid4().hex
        with clock:
            spans[i] = [time.monotonic(), float("inf")]
        try:
            code, out, raw = lab.cni(node, "ADD", container, f"/run/netns/{ns}", ns, timeout=60)
        finally:
            with clock:
                spans[i][1] = time.monotonic()
        return container, code, out

    def in_flight() -> int:
        with clock:
            return sum(1 for _, end in spans.values() if end == float("inf"))

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        futures = [pool.submit(timed_add, i, node, ns) for i, (node, ns) in enumerate(sandboxes)]
        # Kill the leader once the storm is at full width and some ADDs have completed.
        deadline = time.monotonic() + 30
        while not (in_flight() >= 6 and sum(1 for _, e in spans.values() if e != float("inf")) >= 4):
            assert time.monotonic() < deadline, "the storm never got going"
            time.sleep(0.005)
        killed_at = time.monotonic()
        leader.kill()
        results = [f.result() for f in futures]
    overlapping = [i for i, (start, end) in spans.items() if start < killed_at < end]
    assert len(overlapping) >= 6, f"only {len(overlapping)} ADDs were in flight when the leader died"
    assert any(start > killed_at for start, _ in spans.values()), "no ADD started after the kill"
    errors = {out["code"] for _, code, out in results if code}
    assert errors <= {11}, [out for _, code, out in results if code]
    ok = {container: out for container, code, out in results if code == 0}
    failed = [(container, sandboxes[i][1]) for i, (container, code, _) in enumerate(results) if code]
    ok_ips = [out["ips"][0]["address"].split("/")[0] for out in ok.values()]
    assert ok_ips and len(ok_ips) == len(set(ok_ips)), "an address was handed out twice"
    after = allocations(lab)
    # No leak: what is allocated now is what was before plus exactly the successful ADDs.
    assert set(after) == set(before) | set(ok_ips), sorted(set(after) - set(before) - set(ok_ips))
    # Endpoints and veths too: one of each per successful ADD, none left by a failed one.
    endpoints, links = attachments(lab)
    assert set(endpoints) == set(endpoints_before) | set(ok), sorted(set(endpoints) - set(endpoints_before) - set(ok))
    new_veths = {node: sorted(set(names) - set(links_before[node])) for node, names in links.items()}
    assert sorted(v for names in new_veths.values() for v in names) == \
        sorted(out["interfaces"][0]["name"] for out in ok.values()), (new_veths, len(ok))
    assert all(endpoints[c] == out["interfaces"][0]["name"] for c, out in ok.items())
    for container, ns in failed:  # a failed ADD left nothing in its sandbox either
        assert topology.links(ns) == ["lo"], (container, ns, topology.links(ns))
    leader.start()
    lab.record_etcd()


def test_etcd_away_pods_keep_talking_adds_fail_fast_and_agents_resync(etcd_lab):
    lab = etcd_lab
    a, b = lab.status()["pods"]
    ns1 = lab.node_netns("node-1")
    routes_before = kernel.routes(ns1)
    before = allocations(lab)
    (node, sandbox), = add_sandboxes(lab, "node-1", 1, "d")
    with Pinger(a["netns"], b["ip"]) as ping:
        for member in lab.etcd.members:
            member.stop()
        time.sleep(1.0)
        code, out, took = cni_add(lab, node, sandbox)
        assert code != 0 and out["code"] == 11, out
        assert took < 5.0, f"ADD took {took:.1f}s to fail"
        assert kernel.routes(ns1) == routes_before  # the agent kept the kernel as it was
        for member in lab.etcd.members:
            member.start()
        lab.record_etcd()
        lab.etcd.wait_ready()
    assert ping.lost == 0, f"{ping.lost} of {ping.sent} lost while etcd was away"
    assert allocations(lab) == before  # the failed ADD took nothing
    # The agents resynced: a node that joins now is programmed everywhere, and new pods work.
    lab.add_node("node-3", LabSpec().node_address(3))
    late = lab.add_pod("node-3", "late")
    assert kernel.ping(a["netns"], late["ip"]).returncode == 0


@pytest.mark.parametrize("datastore", ["sqlite", "etcd"])
def test_four_nodes_adding_fifty_pods_each_at_once(datastore):
    lab = Lab(unique("pnt-c"))
    try:
        lab.up(LabSpec(nodes=4, pods_per_node=0, datastore=datastore, etcd_members=3 if datastore == "etcd" else 1))
        sandboxes = [sb for n in range(1, 5) for sb in add_sandboxes(lab, f"node-{n}", 50, f"n{n}p")]
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(lambda sb: cni_add(lab, *sb), sandboxes))
        failed = [out for code, out, _ in results if code]
        assert not failed, failed[:3]
        ips = [out["ips"][0]["address"].split("/")[0] for _, out, _ in results]
        assert len(set(ips)) == 200
        # Every pod answers a pod on another node.
        probes = {n: lab.add_pod(f"node-{n}", f"probe{n}") for n in range(1, 5)}
        unreachable = []
        for (node, _), ip in zip(sandboxes, ips):
            src = probes[1 if node != "node-1" else 2]
            if kernel.ping(src["netns"], ip).returncode != 0:
                unreachable.append((node, ip))
        assert not unreachable, unreachable[:5]
    finally:
        lab.down()
