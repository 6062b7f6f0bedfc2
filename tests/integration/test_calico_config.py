"""A Calico user's conflist, unchanged, on a real node: podnet's plugin installed under Calico's name.

The runtime (the chain runner of test_chaining) executes the conflist's `calico` entry, which is podnet's
plugin; the agent reads Calico's fields with Calico's meaning (issue 12).
"""

from __future__ import annotations

import ipaddress
import os
import uuid

import pytest

from podnet.cni.install import install_plugin
from podnet.datastore.resources import Resources
from tests.integration import kernel
from tests.integration.conftest import built_lab
from tests.integration.test_chaining import Attachment, ChainError, ChainRunner
from tests.integration.witness import footprint


@pytest.fixture(scope="module")
def lab():
    with built_lab("pnt-cal", nodes=1, pods_per_node=0) as lab:
        yield lab


@pytest.fixture(scope="module")
def bin_dir(lab, tmp_path_factory):
    path = tmp_path_factory.mktemp("calico-bin")
    install_plugin(str(path), name="calico")
    return str(path)


@pytest.fixture(scope="module")
def pool(lab):
    with lab.datastore() as store:
        [pool] = [p for p in Resources(store).pools() if p.version == 4]
    return pool


def calico_conflist(pool, log_file: str, version: str = "0.3.1", **fields) -> dict:
    """Calico's stock conflist (calico.yaml's cni_network_config), as its install-cni fills it in."""
    entry = {
        "type": "calico",
        "log_level": "debug",
        "log_file_path": log_file,
        "datastore_type": "kubernetes",
        "nodename": "node-1",
        "mtu": 0,
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "ipv4_pools": [pool.cidr]},
        "policy": {"type": "k8s"},
        "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"},
        **fields,
    }
    return {"name": "k8s-pod-network", "cniVersion": version, "plugins": [entry]}


def attachment(netns: str, args: str = "") -> Attachment:
    base = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-{uuid.uuid4().hex[:4]}"
    return Attachment(uuid.uuid4().hex, netns, args=base + (f";{args}" if args else ""))


def free_address(lab, pool) -> str:
    """An address of the pool that no block holds yet, from its last /26 (the lab's allocations start low)."""
    net = ipaddress.ip_network(pool.cidr)
    return str(net.network_address + net.num_addresses - 10)


def test_calicos_conflist_with_a_fixed_address(lab, bin_dir, pool, sandbox, tmp_path):
    before = footprint(lab)
    log_file = str(tmp_path / "cni.log")
    runner = ChainRunner(calico_conflist(pool, log_file), [bin_dir], lab.node_netns("node-1"))
    wanted = free_address(lab, pool)
    att = attachment(sandbox(), f"IP={wanted}")
    result = runner.add(att)
    assert [ip["address"] for ip in result["ips"]] == [f"{wanted}/32"]
    pod_ns = os.path.basename(att.netns)
    # mtu 0: the agent's pod MTU, the node's vxlan.calico MTU (the underlay's less VXLAN's 50 bytes).
    vxlan_mtu = kernel.link(lab.node_netns("node-1"), "vxlan.calico")["mtu"]
    assert kernel.link(pod_ns, "eth0")["mtu"] == vxlan_mtu
    assert wanted in footprint(lab)["allocations"]
    # log_level debug and log_file_path: the request, its configuration, and the kubernetes datastore warning.
    text = open(log_file).read()
    assert f"ADD {att.container_id} default/" in text and "ok in" in text and wanted in text
    assert '"datastore_type": "kubernetes"' in text and "[WARNING] datastore_type kubernetes" in text
    runner.delete(att, result)
    assert footprint(lab) == before


def test_version_0_2_0_result_and_runtime_config_ips(lab, bin_dir, pool, sandbox, tmp_path):
    before = footprint(lab)
    wanted = str(ipaddress.ip_address(free_address(lab, pool)) + 1)
    conflist = calico_conflist(pool, str(tmp_path / "cni.log"), version="0.2.0")
    conflist["plugins"][0]["capabilities"] = {"ips": True}
    runner = ChainRunner(conflist, [bin_dir], lab.node_netns("node-1"))
    att = attachment(sandbox())
    att.capability_args = {"ips": [f"{wanted}/32"]}
    result = runner.add(att)
    assert result["cniVersion"] == "0.2.0" and result["ip4"]["ip"] == f"{wanted}/32"
    assert result["ip4"]["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}] and "ips" not in result
    runner.delete(att, result)
    assert footprint(lab) == before


def test_an_address_in_use_or_outside_every_pool_is_refused(lab, bin_dir, pool, sandbox, tmp_path):
    runner = ChainRunner(calico_conflist(pool, str(tmp_path / "cni.log")), [bin_dir], lab.node_netns("node-1"))
    wanted = free_address(lab, pool)
    first = attachment(sandbox(), f"IP={wanted}")
    result = runner.add(first)
    before = footprint(lab)
    with pytest.raises(ChainError) as taken:
        runner.add(attachment(sandbox(), f"IP={wanted}"))
    assert taken.value.out["code"] == 102 and "already in use" in taken.value.out["msg"]
    with pytest.raises(ChainError) as outside:
        runner.add(attachment(sandbox(), "IP=192.0.2.10"))
    assert outside.value.out["code"] == 102 and "in no enabled IPv4 pool" in outside.value.out["msg"]
    assert footprint(lab) == before  # the refused ADDs left nothing behind
    runner.delete(first, result)


@pytest.mark.parametrize("fields,fragment", [
    ({"nodename": "node-9"}, "nodename 'node-9' is not this node's agent's node 'node-1'"),
    ({"datastore_type": "etcdv3", "etcd_endpoints": "http://127.0.0.1:2379"}, "names etcd"),
])
def test_a_config_that_names_another_node_or_datastore_is_refused(lab, bin_dir, pool, sandbox, tmp_path, fields,
                                                                  fragment):
    before = footprint(lab)
    runner = ChainRunner(calico_conflist(pool, str(tmp_path / "cni.log"), **fields), [bin_dir],
                         lab.node_netns("node-1"))
    att = attachment(sandbox())
    with pytest.raises(ChainError) as refused:
        runner.add(att)
    assert refused.value.out["code"] == 7 and fragment in refused.value.out["msg"], refused.value.out
    assert footprint(lab) == before
    runner.delete(att, None)  # DEL still succeeds: it must, whatever the config says
    assert "[ERROR]" in open(tmp_path / "cni.log").read()
