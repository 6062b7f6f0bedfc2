"""The filter layer on a dual-stack lab: a policy holds for IPv6 as for IPv4 (its selector sets exist per
family), IPv6 anti-spoofing, and IPv6 neighbour discovery to the node still works."""

from __future__ import annotations

import sys
import textwrap

import pytest

from podnet.datastore.resources import Resources
from podnet.model.kinds import lookup
from podnet.model.policy import parse_policy
from tests.integration.conftest import built_lab

LISTEN6 = textwrap.dedent("""
    import socket
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::", 9999)); s.settimeout(1.5)
    got = []
    try:
        while True:
            got.append(s.recvfrom(100)[0].decode())
    except socket.timeout:
        pass
    print(",".join(got))
""")
SEND6 = ("import socket,sys\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\ns.bind((sys.argv[1],0))\n"
         "[s.sendto(sys.argv[3].encode(),(sys.argv[2],9999)) for _ in range(3)]")


@pytest.fixture(scope="module")
def lab():
    with built_lab("pol6-", nodes=2, pods_per_node=0, ipv6=True) as lab:
        for node, name in (("node-1", "a"), ("node-2", "b"), ("node-1", "c")):
            lab.add_pod(node, name, "x", labels={"pod": name})
        yield lab


def _pod(lab, name):
    return next(p for p in lab.state["pods"] if p["name"] == name)


def _ping(lab, src, ip) -> bool:
    return lab.exec(_pod(lab, src)["netns"], "ping", "-c", "1", "-W", "1", ip).returncode == 0


def test_a_policy_holds_for_both_families(lab):
    b = _pod(lab, "b")
    assert len(b["ips"]) == 2 and all(_ping(lab, "a", ip) for ip in b["ips"])  # control: no policy
    policy = parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": "only-c", "namespace": "x"},
                           "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
                                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}})
    with lab.datastore() as store:
        Resources(store).write(lookup("NetworkPolicy"), policy, "apply")
    lab.wait_filter()
    try:
        assert [_ping(lab, "a", ip) for ip in b["ips"]] == [False, False]
        assert [_ping(lab, "c", ip) for ip in b["ips"]] == [True, True]
    finally:
        with lab.datastore() as store:
            Resources(store).remove(lookup("NetworkPolicy"), "knp.default.only-c", "x")
        lab.wait_filter()


def test_ipv6_anti_spoofing(lab):
    import subprocess

    a, b = _pod(lab, "a"), _pod(lab, "b")
    own6 = next(ip for ip in a["ips"] if ":" in ip)
    b6 = next(ip for ip in b["ips"] if ":" in ip)
    spoof = own6.rsplit(":", 1)[0] + ":beef"
    lab.exec(a["netns"], "ip", "-6", "addr", "add", f"{spoof}/128", "dev", "eth0", "nodad", check=True)
    listener = subprocess.Popen(["ip", "netns", "exec", b["netns"], sys.executable, "-c", LISTEN6],
                                stdout=subprocess.PIPE, text=True)
    try:
        import time

        time.sleep(0.3)
        lab.exec(a["netns"], sys.executable, "-c", SEND6, own6, b6, "own", check=True)
        lab.exec(a["netns"], sys.executable, "-c", SEND6, spoof, b6, "spoofed", check=True)
        got = listener.communicate(timeout=10)[0].strip().split(",")
    finally:
        listener.kill()
        listener.wait()
        lab.exec(a["netns"], "ip", "-6", "addr", "del", f"{spoof}/128", "dev", "eth0")
    assert "own" in got and "spoofed" not in got
