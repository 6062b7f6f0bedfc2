"""AgentConfiguration (Calico's FelixConfiguration) changes apply live, without restarting the agent."""

from __future__ import annotations

import re
import subprocess
import sys

from podnet.datastore import open_datastore
from podnet.datastore.resources import Resources
from podnet.model.agentconfig import AgentConfiguration
from tests.integration import kernel
from tests.integration.witness import wait_for
from tests.integration.traffic import Pinger


def apply(lab, config: AgentConfiguration) -> None:
    store = open_datastore(lab.datastore_url)
    try:
        Resources(store).apply_agent_config(config)
    finally:
        store.close()


def mtu(lab, node: str) -> int:
    return kernel.link(lab.node_netns(node), "vxlan.calico")["mtu"]


def tx_checksum(lab, node: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", lab.node_netns(node), "ethtool", "-k", "vxlan.calico"],
                         capture_output=True, text=True, check=True).stdout
    return re.search(r"tx-checksum-ip-generic: (\w+)", out).group(1)


def offload_status(lab, node: str) -> dict | None:
    store = open_datastore(lab.datastore_url)
    try:
        return Resources(store).node_status(node)
    finally:
        store.close()


def describe_node(lab, node: str) -> str:
    return subprocess.run([sys.executable, "-m", "podnet", "--datastore", lab.datastore_url, "describe", "node", node],
                          capture_output=True, text=True, check=True).stdout


def test_mtu_checksum_and_per_node_overrides_apply_live_without_loss(lab_factory):
    lab = lab_factory("pnt-a", nodes=2, pods_per_node=1)
    a, b = lab.status()["pods"]
    # By default TX checksum offload stays as the kernel sets it (on) where the node's self-test passes,
    # whatever the kernel's version; the node's status and `podnet describe node` say why.
    assert mtu(lab, "node-1") == 1450 and tx_checksum(lab, "node-1") == "on"
    assert wait_for(lambda: offload_status(lab, "node-1") is not None)
    decided = offload_status(lab, "node-1")["offloads"]["vxlan.calico"]
    assert (decided["txChecksumOffload"], decided["source"]) == (True, "self-test"), decided
    assert "checksums through a VXLAN tunnel were valid" in describe_node(lab, "node-1")
    with Pinger(a["netns"], b["ip"]) as ping:
        apply(lab, AgentConfiguration("default", mtu=1400, tx_checksum_offload=False))
        assert wait_for(lambda: mtu(lab, "node-1") == 1400 and mtu(lab, "node-2") == 1400)
        assert wait_for(lambda: tx_checksum(lab, "node-1") == "off" and tx_checksum(lab, "node-2") == "off")
        assert wait_for(lambda: "off (configuration)" in describe_node(lab, "node-2"))
        apply(lab, AgentConfiguration("node.node-2", mtu=1300))
        assert wait_for(lambda: mtu(lab, "node-2") == 1300)
        assert mtu(lab, "node-1") == 1400
        apply(lab, AgentConfiguration("default", mtu_iface_pattern="^eth[0-9]+$", tx_checksum_offload=True))
        assert wait_for(lambda: mtu(lab, "node-1") == 1450 and tx_checksum(lab, "node-1") == "on")
    assert ping.sent > 20 and ping.received == ping.sent, f"{ping.sent - ping.received} of {ping.sent} lost"
    # A new pod gets the tunnel's current MTU.
    late = lab.add_pod("node-2", "late")
    assert kernel.link(late["netns"], "eth0")["mtu"] == 1300


def test_vni_and_port_change_reprograms_every_node(lab_factory):
    lab = lab_factory("pnt-v", nodes=2, pods_per_node=1)
    a, b = lab.status()["pods"]
    apply(lab, AgentConfiguration("default", vni=5000, port=8472))

    def changed(node):
        link = kernel.link(lab.node_netns(node), "vxlan.calico")  # None while it is being recreated
        info = link["linkinfo"]["info_data"] if link else {}
        return info.get("id") == 5000 and info.get("port") == 8472

    assert wait_for(lambda: changed("node-1") and changed("node-2"))
    # The recreated device got its routes, neighbour and FDB entries back.
    assert wait_for(lambda: kernel.ping(a["netns"], b["ip"]).returncode == 0)
    assert any(r.get("dev") == "vxlan.calico" for r in kernel.routes(lab.node_netns("node-1")))
