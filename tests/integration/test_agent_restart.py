"""An agent killed with SIGKILL and restarted: established flows lose nothing, the kernel sees no churn."""

from __future__ import annotations

import time

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


def test_sigkill_and_restart_loses_no_packet_and_touches_no_entry(lab_factory):
    lab = lab_factory("pnt-s", nodes=2, pods_per_node=1)
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
