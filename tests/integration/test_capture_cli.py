"""`podnet capture` on a lab node: a ping between pods on two nodes is captured on node-1's underlay,
printed layer by layer, written to a pcap file, and tshark reads the same packets from that file.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import podnet
from podnet.cli.main import main
from podnet.observe.packet import decode, protocols
from podnet.observe.pcap import read_pcap

from .kernel import ping

REPO = Path(podnet.__file__).resolve().parents[1]
FIELDS = ["frame.protocols", "vxlan.vni", "ip.src", "ip.dst", "eth.src", "eth.dst"]


def printed_packets(out: str) -> list[dict]:
    """The packets `podnet capture` printed: per packet its headline and {layer label: detail}."""
    packets = []
    for line in out.splitlines():
        if re.match(r"#\d+ ", line):
            packets.append({"headline": line, "layers": {}})
        elif packets and line.startswith("  ") and line.strip():
            label, detail = re.match(r"\s+((?:outer |inner )?\S+)\s+(.*)$", line).groups()
            packets[-1]["layers"][label] = detail
    return packets


def addresses(detail: str) -> tuple[str, str]:
    src, dst = re.match(r"(\S+) -> (\S+)", detail).groups()
    return src, dst


def tshark_rows(path: Path) -> list[dict]:
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", *sum((["-e", f] for f in FIELDS), [])],
                         capture_output=True, text=True, check=True).stdout
    return [dict(zip(FIELDS, line.split("\t"))) for line in out.splitlines()]


def test_capture_prints_each_layer_and_tshark_reads_the_same_packets(lab_factory, tmp_path):
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed (apt-get install -y tshark; make test does it)")
    lab = lab_factory(nodes=2, pods_per_node=1)
    status = lab.status()
    nodes = {n["name"]: n for n in status["nodes"]}
    a, b = ({p["node"]: p for p in status["pods"]}[n] for n in ("node-1", "node-2"))
    pcap = tmp_path / "node-1.pcap"

    proc = subprocess.Popen([sys.executable, "-m", "podnet", "capture", "--node", "node-1", "--lab", lab.name,
                             "--count", "4", "--timeout", "20", "-w", str(pcap)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        first = proc.stdout.readline()  # printed once the capture socket listens
        assert first.startswith("capturing VXLAN (UDP 4789) on eth0 of node-1"), first + proc.stderr.read()
        assert ping(a["netns"], b["ip"], count=2).returncode == 0
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.rstrip().endswith(f"4 packets captured, written to {pcap}")

    packets = printed_packets(out)
    frames = read_pcap(pcap)
    rows = tshark_rows(pcap)
    assert len(packets) == len(frames) == len(rows) == 4
    u1, u2 = nodes["node-1"]["underlay_ip"], nodes["node-2"]["underlay_ip"]
    m1, m2 = nodes["node-1"]["vtep_mac"], nodes["node-2"]["vtep_mac"]
    kinds = []
    for printed, (_, frame), row in zip(packets, frames, rows):
        layers = printed["layers"]
        # What podnet decoded from the file is what it printed and what tshark reads.
        chain = protocols(decode(frame))
        assert chain == "eth:ip:udp:vxlan:eth:ip:icmp"
        assert [p for p in row["frame.protocols"].split(":") if p not in ("ethertype", "data")] == chain.split(":")
        assert list(layers) == ["outer Ethernet", "outer IPv4", "outer UDP", "VXLAN", "inner Ethernet", "inner IPv4",
                                "inner ICMP"]
        assert layers["VXLAN"] == f"flags I  VNI {row['vxlan.vni']}" and row["vxlan.vni"] == "4096"
        outer_ip, inner_ip = addresses(layers["outer IPv4"]), addresses(layers["inner IPv4"])
        outer_eth, inner_eth = addresses(layers["outer Ethernet"]), addresses(layers["inner Ethernet"])
        assert row["ip.src"].split(",") == [outer_ip[0], inner_ip[0]]
        assert row["ip.dst"].split(",") == [outer_ip[1], inner_ip[1]]
        assert row["eth.src"].split(",") == [outer_eth[0], inner_eth[0]]
        assert row["eth.dst"].split(",") == [outer_eth[1], inner_eth[1]]
        assert layers["outer UDP"].split("  ")[0].endswith("-> 4789")
        # And it is the seed article's packet: node addresses outside, VTEP MACs and pod addresses inside.
        if inner_ip == (a["ip"], b["ip"]):
            kinds.append("request")
            assert (outer_ip, inner_eth) == ((u1, u2), (m1, m2))
            assert "ICMP echo request" in printed["headline"]
        else:
            kinds.append("reply")
            assert (outer_ip, inner_ip, inner_eth) == ((u2, u1), (b["ip"], a["ip"]), (m2, m1))
            assert "ICMP echo reply" in printed["headline"]
    assert sorted(kinds) == ["reply", "reply", "request", "request"]


def test_capture_errors(lab_factory, capsys, tmp_path):
    lab = lab_factory(nodes=1, pods_per_node=0)
    capsys.readouterr()
    assert main(["capture", "--node", "node-9", "--lab", lab.name]) == 1
    assert "no node named node-9" in capsys.readouterr().err
    # Without --lab this host must be the node: the root namespace is not node-1.
    assert main(["capture", "--node", "node-1", "--datastore", lab.datastore_url]) == 1
    assert "node-1 is not this host" in capsys.readouterr().err
    # Nothing crosses a lone node: the capture times out empty, and the pcap file holds no packet.
    assert main(["capture", "--node", "node-1", "--lab", lab.name, "--timeout", "0.3",
                 "-w", str(tmp_path / "empty.pcap")]) == 0
    assert capsys.readouterr().out.endswith("0 packets captured, written to " + str(tmp_path / "empty.pcap") + "\n")
    assert read_pcap(tmp_path / "empty.pcap") == []
