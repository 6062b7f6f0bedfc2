"""An agent killed with SIGKILL and restarted: established flows lose nothing, the kernel sees no churn."""

from __future__ import annotations

import time

import pytest

from podnet.lab import processes
from podnet.model import vtep_mac
from tests.integration import kernel
from tests.integration.traffic import KernelMonitor, Pinger


def wait_ready(lab, node: str, since: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = lab.agent_status(node)
        if st and st.get("ready") and st.get("last_reconcile", 0) > since:
            return
        time.sleep(0.05)
    raise AssertionError(f"the agent of {node} did not come back")


@pytest.mark.parametrize("datastore", ["sqlite", "etcd"])
def test_sigkill_and_restart_loses_no_packet_and_touches_no_entry(lab_factory, datastore):
    lab = lab_factory("pnt-s", nodes=2, pods_per_node=1, datastore=datastore)
    a, b = lab.status()["pods"]
    ns = lab.node_netns("node-1")
    before = (kernel.routes(ns), kernel.neighbours(ns), kernel.fdb(ns))
    old = lab._node("node-1")
    with Pinger(a["netns"], b["ip"]) as ping, KernelMonitor(ns) as monitor:
        lab.stop_agent("node-1", kill=True)
        assert not processes.alive(old["pid"], old["pid_start"])
        time.sleep(0.5)  # the node runs without an agent for a while
        started = time.time()
        lab.restart_agent("node-1")
        wait_ready(lab, "node-1", started)
        time.sleep(0.3)
    assert ping.sent > 50, "the ping did not run through the restart"
    assert ping.lost == 0, f"{ping.lost} of {ping.sent} packets lost"
    assert monitor.deleted() == [], monitor.deleted()
    assert (kernel.routes(ns), kernel.neighbours(ns), kernel.fdb(ns)) == before


def test_the_monitor_sees_deletions(lab_factory):
    """The witness above would see churn: a deletion by hand (repaired by the agent) shows up."""
    lab = lab_factory("pnt-m", nodes=2, pods_per_node=0)
    ns = lab.node_netns("node-1")
    other = lab.status()["nodes"][1]
    with KernelMonitor(ns) as monitor:
        lab.exec(ns, "bridge", "fdb", "del", vtep_mac("node-2"), "dev", "vxlan.calico", "dst",
                 other["underlay_ip"], "self", check=True)
        lab.exec(ns, "ip", "neigh", "del", other["tunnel_ip"], "dev", "vxlan.calico", check=True)
    assert monitor.deleted(vtep_mac("node-2")) and monitor.deleted(other["tunnel_ip"])


@pytest.mark.parametrize("datastore", ["sqlite", "etcd"])
def test_underlay_address_change_moves_every_fdb_entry(lab_factory, datastore):
    lab = lab_factory("pnt-u", nodes=3, pods_per_node=1, datastore=datastore)
    ns2 = lab.node_netns("node-2")
    old, new = "172.31.0.12", "172.31.0.99"
    mac = vtep_mac("node-2")
    lab.exec(ns2, "ip", "addr", "del", f"{old}/24", "dev", "eth0", check=True)
    lab.exec(ns2, "ip", "addr", "add", f"{new}/24", "dev", "eth0", check=True)
    lab.exec(ns2, "ip", "route", "replace", "default", "via", "172.31.0.1", check=True)
    started = time.monotonic()
    for other in ("node-1", "node-3"):
        ns = lab.node_netns(other)

        def moved():
            dsts = {f.get("dst") for f in kernel.fdb(ns) if f["mac"] == mac}
            return dsts == {new}

        deadline = time.monotonic() + 5
        while not moved() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert moved(), f"{other}: FDB for node-2 is {[f for f in kernel.fdb(ns) if f['mac'] == mac]}"
    print(f"FDB entries followed in {1e3 * (time.monotonic() - started):.0f} ms")  # measured by make bench too
    # node-2 changes its own vxlan.calico's local address in place; pods reach it again.
    a = next(p for p in lab.status()["pods"] if p["node"] == "node-1")
    b = next(p for p in lab.status()["pods"] if p["node"] == "node-2")
    deadline = time.monotonic() + 5
    while kernel.ping(a["netns"], b["ip"], timeout=1).returncode != 0:
        assert time.monotonic() < deadline, "pods across nodes did not reach each other again"
    local = kernel.link(ns2, "vxlan.calico")["linkinfo"]["info_data"]["local"]
    assert local == new
