"""CrossSubnet, Never and natOutgoing on a lab with two underlay subnets behind a router."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest

from podnet.datastore import open_datastore
from podnet.datastore.resources import Resources
from podnet.lab.lab import Lab, LabSpec
from podnet.observe.capture import CaptureSession
from podnet.observe.packet import decode
from tests.integration import kernel
from tests.integration.witness import wait_for
from tests.integration.conftest import unique


@pytest.fixture(scope="module")
def lab():
    # node-1 and node-3 share subnet 172.31.0.0/24; node-2 is in 172.31.1.0/24 behind the router.
    lab = Lab(unique("pnt-x"))
    try:
        lab.up(LabSpec(nodes=3, pods_per_node=1, subnets=2, vxlan_mode="CrossSubnet", nat_outgoing=True))
        yield lab
    finally:
        lab.down()


def set_pool(lab: Lab, **changes) -> None:
    store = open_datastore(lab.datastore_url)
    try:
        res = Resources(store)
        res.apply_pool(dataclasses.replace(res.pool("default-ipv4-ippool"), **changes))
    finally:
        store.close()


def block_route(lab: Lab, on: str, to: str) -> dict | None:
    status = lab.status()
    block = next(n for n in status["nodes"] if n["name"] == to)["blocks"][0]
    return next((r for r in kernel.routes(lab.node_netns(on)) if r["dst"] == block), None)


def pods(lab: Lab) -> dict:
    return {p["node"]: p for p in lab.status()["pods"]}


def frames_during_ping(lab: Lab, src: dict, dst_ip: str, only_vxlan: bool) -> list[bytes]:
    node = src["node"]
    with CaptureSession("eth0", lab.node_netns(node), only_vxlan=only_vxlan) as cap:
        assert kernel.ping(src["netns"], dst_ip, count=2).returncode == 0
        return [f for _, f in cap.collect(count=None, timeout=0.5)]


def test_same_subnet_goes_direct_and_unencapsulated(lab):
    route = block_route(lab, "node-1", "node-3")
    assert route["dev"] == "eth0" and route["gateway"] == "172.31.0.13" and "onlink" in route["flags"]
    p = pods(lab)
    assert frames_during_ping(lab, p["node-1"], p["node-3"]["ip"], only_vxlan=True) == []
    plain = frames_during_ping(lab, p["node-1"], p["node-3"]["ip"], only_vxlan=False)
    icmp = [decode(f) for f in plain if any(l.name == "ICMP" for l in decode(f))]
    assert icmp, "the pod's ICMP should cross the underlay as is"
    ip = next(l for l in icmp[0] if l.name == "IPv4")
    assert {ip.fields["src"], ip.fields["dst"]} == {p["node-1"]["ip"], p["node-3"]["ip"]}
    assert not any(l.name == "VXLAN" for layers in icmp for l in layers)


def test_across_subnets_goes_through_vxlan(lab):
    route = block_route(lab, "node-1", "node-2")
    assert route["dev"] == "vxlan.calico"
    p = pods(lab)
    frames = frames_during_ping(lab, p["node-1"], p["node-2"]["ip"], only_vxlan=True)
    assert frames
    layers = decode(frames[0])
    assert next(l for l in layers if l.name == "VXLAN").fields["vni"] == 4096
    outer = next(l for l in layers if l.name == "IPv4")
    assert {outer.fields["src"], outer.fields["dst"]} == {"172.31.0.11", "172.31.1.12"}


def test_mode_changes_reprogram_live(lab):
    p = pods(lab)
    try:
        set_pool(lab, vxlan_mode="Always")
        assert wait_for(lambda: block_route(lab, "node-1", "node-3")["dev"] == "vxlan.calico")
        assert kernel.ping(p["node-1"]["netns"], p["node-3"]["ip"]).returncode == 0

        set_pool(lab, vxlan_mode="Never")
        assert wait_for(lambda: block_route(lab, "node-1", "node-2") is None)
        assert block_route(lab, "node-1", "node-3")["dev"] == "eth0"
        assert kernel.ping(p["node-1"]["netns"], p["node-3"]["ip"]).returncode == 0
    finally:
        set_pool(lab, vxlan_mode="CrossSubnet")
    assert wait_for(lambda: (block_route(lab, "node-1", "node-2") or {}).get("dev") == "vxlan.calico")
    assert block_route(lab, "node-1", "node-3")["dev"] == "eth0"


def _seen_from_external(lab: Lab, src: dict) -> str:
    ext = lab.status()["external"]
    with CaptureSession("eth0", ext["netns"], only_vxlan=False) as cap:
        assert kernel.ping(src["netns"], ext["ip"]).returncode == 0
        for _, frame in cap.collect(count=None, timeout=0.5):
            layers = decode(frame)
            if any(l.name == "ICMP" and l.fields.get("type") == 8 for l in layers):
                return next(l for l in layers if l.name == "IPv4").fields["src"]
    raise AssertionError("no echo request reached the external host")


def test_nat_outgoing_masquerades_to_the_node_address(lab):
    p = pods(lab)
    assert _seen_from_external(lab, p["node-1"]) == "172.31.0.11"
    assert _seen_from_external(lab, p["node-2"]) == "172.31.1.12"


def test_pod_to_pod_is_not_masqueraded(lab):
    p = pods(lab)
    with CaptureSession("eth0", p["node-3"]["netns"], only_vxlan=False) as cap:
        assert kernel.ping(p["node-1"]["netns"], p["node-3"]["ip"]).returncode == 0
        srcs = {next(l for l in decode(f) if l.name == "IPv4").fields["src"]
                for _, f in cap.collect(count=None, timeout=0.3)
                if any(l.name == "ICMP" and l.fields.get("type") == 8 for l in decode(f))}
    assert srcs == {p["node-1"]["ip"]}


def test_masquerade_never_uses_the_vxlan_port(lab):
    ruleset = subprocess.run(["ip", "netns", "exec", lab.node_netns("node-1"), "nft", "list", "table", "ip",
                              "podnet"], capture_output=True, text=True, check=True).stdout
    assert "masquerade to :4790-65535" in ruleset
    # A UDP flow from source port 4789 in the pod leaves the node with another source port.
    p, ext = pods(lab), lab.status()["external"]
    with CaptureSession("eth0", ext["netns"], only_vxlan=False) as cap:
        subprocess.run(["ip", "netns", "exec", p["node-1"]["netns"], "python3", "-c",
                        "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                        f"s.bind(('0.0.0.0', 4789)); s.sendto(b'x', ('{ext['ip']}', 9))"], check=True)
        udp = [next(l for l in decode(f) if l.name == "UDP") for _, f in cap.collect(count=None, timeout=0.5)
               if any(l.name == "UDP" for l in decode(f))]
    assert udp and all(u.fields["sport"] != 4789 for u in udp)
    assert all(4790 <= u.fields["sport"] <= 65535 for u in udp)


def test_turning_nat_off_removes_the_table(lab):
    try:
        set_pool(lab, nat_outgoing=False)
        assert wait_for(lambda: subprocess.run(["ip", "netns", "exec", lab.node_netns("node-1"), "nft", "list",
                                                "table", "ip", "podnet"], capture_output=True).returncode != 0)
    finally:
        set_pool(lab, nat_outgoing=True)
    assert wait_for(lambda: subprocess.run(["ip", "netns", "exec", lab.node_netns("node-1"), "nft", "list",
                                            "table", "ip", "podnet"], capture_output=True).returncode == 0)
