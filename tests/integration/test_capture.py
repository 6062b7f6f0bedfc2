"""Capturing real kernel VXLAN traffic between two namespaces joined by a veth.

Each namespace plays a node: `ul0` is its underlay NIC and `vx0` a VXLAN
device built the way Calico builds vxlan.calico (nolearning, a permanent
neighbour entry and a permanent FDB entry for the other node's VTEP).
Everything lives in namespaces this test creates and always deletes.
"""

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass

import pytest

from podnet.errors import PodnetError
from podnet.observe.capture import (CaptureError, CapturePermissionError, CaptureSession, InterfaceNotFound,
                                    NamespaceNotFound, capture)
from podnet.observe.packet import decode, protocols
from podnet.observe.pcap import PcapWriter

pytestmark = [pytest.mark.root]  # root is checked by tests/integration/conftest.py: a failure, never a skip

VNI = 4096
UNDERLAY = {"ipv4": ("172.31.0.2", "172.31.0.3", 24), "ipv6": ("fd00:31::2", "fd00:31::3", 64)}
OVERLAY = ("10.244.7.1", "10.244.7.2")
VTEP_MACS = ("66:b3:00:00:00:01", "66:1e:00:00:00:02")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def namespaces(count: int):
    """`count` fresh namespaces with unique pnt- names; deleted (with their devices) on exit."""
    tag = uuid.uuid4().hex[:8]
    created = []
    try:
        for i in range(count):
            name = f"pnt-{tag}-{i}"
            run("ip", "netns", "add", name)
            created.append(name)
        yield created
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@dataclass
class Pair:
    ns: list
    underlay: tuple
    family: str
    port: int


@contextlib.contextmanager
def vxlan_nodes(family: str, port: int):
    """Two node namespaces, their veth underlay and a VXLAN device in each."""
    *underlay, prefix = UNDERLAY[family]
    with namespaces(2) as ns:
        run("ip", "-n", ns[0], "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", ns[1])
        for me, other in ((0, 1), (1, 0)):
            n = ns[me]
            extra = ["nodad"] if family == "ipv6" else []  # no 1-2 s wait for duplicate detection
            run("ip", "-n", n, "addr", "add", f"{underlay[me]}/{prefix}", "dev", "ul0", *extra)
            run("ip", "-n", n, "link", "set", "ul0", "up")
            run("ip", "-n", n, "link", "add", "vx0", "address", VTEP_MACS[me], "type", "vxlan", "id", str(VNI),
                "local", underlay[me], "dev", "ul0", "dstport", str(port), "nolearning")
            run("ip", "-n", n, "addr", "add", f"{OVERLAY[me]}/24", "dev", "vx0")
            run("ip", "-n", n, "link", "set", "vx0", "up")
            run("ip", "-n", n, "neigh", "add", OVERLAY[other], "dev", "vx0", "lladdr", VTEP_MACS[other],
                "nud", "permanent")
            run("bridge", "-n", n, "fdb", "append", VTEP_MACS[other], "dev", "vx0", "dst", underlay[other])
        yield Pair(ns, tuple(underlay), family, port)


@pytest.fixture(params=[("ipv4", 4789), ("ipv6", 4789), ("ipv4", 8472)], ids=lambda p: f"{p[0]}-{p[1]}")
def vxlan_pair(request):
    with vxlan_nodes(*request.param) as pair:
        yield pair


def ping(ns: str, address: str) -> None:
    run("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "5", address)


def test_capture_sees_encapsulated_ping(vxlan_pair, tmp_path):
    pair = vxlan_pair
    a = pair.ns[0]
    # Two captures on the sending node's underlay: the filtered one must see
    # only VXLAN, the unfiltered one shows what the filter kept out.
    with CaptureSession("ul0", a, vxlan_port=pair.port) as vxlan_only, \
            CaptureSession("ul0", a, only_vxlan=False) as everything:
        ping(a, OVERLAY[1])
        frames = vxlan_only.collect(count=2, timeout=5)
        unfiltered = everything.collect(count=None, timeout=0.5)

    assert len(frames) == 2
    decoded = [decode(frame, vxlan_ports=(pair.port,)) for _, frame in frames]
    ip = "ip" if pair.family == "ipv4" else "ipv6"
    assert [protocols(layers) for layers in decoded] == [f"eth:{ip}:udp:vxlan:eth:ip:icmp"] * 2

    request = next(layers for layers in decoded if layers[-1].fields["type"] == 8)
    reply = next(layers for layers in decoded if layers[-1].fields["type"] == 0)
    for layers, (src, dst), (inner_src, inner_dst) in (
            (request, pair.underlay, OVERLAY), (reply, pair.underlay[::-1], OVERLAY[::-1])):
        outer_ip, udp, vx, inner_eth, inner_ip = (layers[i].fields for i in (1, 2, 3, 4, 5))
        assert (outer_ip["src"], outer_ip["dst"]) == (src, dst)
        assert udp["dport"] == pair.port
        assert vx == {"flags": 0x08, "vni": VNI, "length": udp["length"] - 8}
        assert {inner_eth["src"], inner_eth["dst"]} == set(VTEP_MACS)
        assert (inner_ip["src"], inner_ip["dst"]) == (inner_src, inner_dst)
    # The underlay resolved the other node first (ARP or neighbour discovery);
    # only the unfiltered capture saw that.
    assert any("vxlan" not in protocols(decode(frame)) for _, frame in unfiltered)
    assert sum("vxlan" in protocols(decode(frame, vxlan_ports=(pair.port,))) for _, frame in unfiltered) == 2

    # tshark must read the same packets from our pcap file.
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed (apt-get install -y tshark; make test does it)")
    path = tmp_path / "vxlan.pcap"
    with PcapWriter(path) as writer:
        for ts, frame in frames:
            writer.write(ts, frame)
    out = run("tshark", "-r", str(path), "-d", f"udp.port=={pair.port},vxlan", "-T", "fields",
              "-e", "frame.protocols", "-e", "vxlan.vni", "-e", "ip.src", "-e", "ip.dst",
              "-e", "ipv6.src", "-e", "ipv6.dst").stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == len(decoded)
    for row, layers in zip(rows, decoded):
        chain, vni, ip_src, ip_dst, ip6_src, ip6_dst = row
        # tshark also names the ethertype field and the ICMP data as protocols.
        assert ":".join(p for p in chain.split(":") if p not in ("ethertype", "data")) == protocols(layers)
        assert int(vni) == VNI
        for name, src, dst in (("IPv4", ip_src, ip_dst), ("IPv6", ip6_src, ip6_dst)):
            ours = [layer.fields for layer in layers if layer.name == name]
            assert src == ",".join(f["src"] for f in ours)
            assert dst == ",".join(f["dst"] for f in ours)


def test_capture_times_out_empty_on_a_quiet_link():
    with vxlan_nodes("ipv4", 4789) as pair:
        assert capture("ul0", pair.ns[0], count=1, timeout=0.3) == []


NOBODY = 65534


def unprivileged(body):
    """body() run by a fork of this process that has become nobody (no capabilities left); its JSON result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            os.write(write_end, json.dumps(body()).encode())
        except BaseException as e:  # the parent sees what went wrong
            os.write(write_end, json.dumps(f"{type(e).__name__}: {e}").encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        answer = f.read()
    os.waitpid(pid, 0)
    return json.loads(answer)


def _denied(ns: str | None) -> str:
    try:
        capture("lo", ns, timeout=0.1)
    except CapturePermissionError as e:
        return "denied" if e.hint else "denied without a hint"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "captured"


def test_typed_errors():
    with namespaces(1) as (ns,):
        with pytest.raises(InterfaceNotFound, match="nosuch0"):
            CaptureSession("nosuch0", ns).start()
        with pytest.raises(CaptureError, match="down"):  # a new namespace's lo starts down
            capture("lo", ns, timeout=0.1)
        missing = f"pnt-{uuid.uuid4().hex[:8]}-absent"
        with pytest.raises(NamespaceNotFound) as caught:
            capture("eth0", missing)
        assert isinstance(caught.value, PodnetError) and caught.value.hint

        # Without root: neither a packet socket nor entering a namespace is allowed. The unprivileged side
        # is this process forked, giving up root without an exec: it reaches no file, so neither a project
        # in /root (0700 on Debian) nor a / that others may not enter keeps it from running.
        assert unprivileged(lambda: [_denied(ns_) for ns_ in (None, ns)]) == ["denied", "denied"]

