"""TX checksum offload of the VXLAN devices: decided by the node's evidence, an explicit setting first."""

from __future__ import annotations

import struct

from podnet.agent.offloads import OffloadKeeper
from podnet.calc.config import VxlanConfig
from podnet.calc.offload import FAILED, NOT_RUN, PASSED, ChecksumEvidence, decide_tx_checksum
from podnet.dataplane.csum_selftest import _inet_sum, inner_checksum_ok

PASS = ChecksumEvidence(PASSED, "138 inner checksums valid")
FAIL = ChecksumEvidence(FAILED, "12 inner checksums bad")
NONE = ChecksumEvidence(NOT_RUN, "unshare: Operation not permitted")


def test_the_kernels_default_stands_unless_the_node_shows_the_bug():
    assert decide_tx_checksum(None, PASS).tx_checksum is True
    assert decide_tx_checksum(None, PASS).source == "self-test"
    off = decide_tx_checksum(None, FAIL)
    assert (off.tx_checksum, off.source) == (False, "self-test") and "12 inner checksums bad" in off.reason
    for evidence in (NONE, None):  # no evidence: the kernel's default (on), and the reason says why
        d = decide_tx_checksum(None, evidence)
        assert (d.tx_checksum, d.source) == (True, "kernel default")
    assert "Operation not permitted" in decide_tx_checksum(None, NONE).reason


def test_an_explicit_setting_wins_over_any_evidence():
    for evidence in (PASS, FAIL, NONE, None):
        assert decide_tx_checksum(False, evidence).tx_checksum is False
        assert decide_tx_checksum(True, evidence).tx_checksum is True
        assert decide_tx_checksum(True, evidence).source == "configuration"
    assert "false in the agent configuration" in decide_tx_checksum(False, PASS).reason


def _frame(l4: bytes, proto: int, port: int = 4789) -> bytes:
    """Ethernet / IPv4 / UDP:port / VXLAN / Ethernet / IPv4 / l4 (outer checksums not looked at)."""
    src, dst = bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2])
    inner_ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, src, dst)
    inner = b"\x66" * 12 + b"\x08\x00" + inner_ip + l4
    udp = struct.pack("!HHHH", 40000, port, 16 + len(inner), 0) + b"\x08\0\0\0\0\x10\0\0" + inner
    outer_ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), bytes(4))
    return b"\x02" * 12 + b"\x08\x00" + outer_ip + udp


def _udp(payload: bytes, good: bool = True) -> bytes:
    head = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0)
    pseudo = bytes([198, 51, 100, 1, 198, 51, 100, 2]) + struct.pack("!BBH", 0, 17, 8 + len(head + payload) - 8)
    csum = 0xFFFF - _inet_sum(pseudo + head + payload)
    return head[:6] + struct.pack("!H", csum if good else csum ^ 0x0101) + payload


def test_the_capture_check_tells_valid_from_mangled_inner_checksums():
    assert inner_checksum_ok(_frame(_udp(b"podnet!"), 17), 4789) is True
    assert inner_checksum_ok(_frame(_udp(b"podnet!", good=False), 17), 4789) is False
    assert inner_checksum_ok(_frame(_udp(b"podnet!"), 17), 8472) is None  # not our tunnel
    assert inner_checksum_ok(b"\x00" * 60, 4789) is None


class FakeEthtool:
    def __init__(self):
        self.state = {"vxlan.calico": True}

    def tx_checksum(self, name):
        return self.state[name]

    def set_tx_checksum(self, name, on):
        self.state[name] = on


def test_the_keeper_runs_the_self_test_once_applies_and_reports(monkeypatch):
    from podnet.agent import offloads

    fake, runs, published = FakeEthtool(), [], []
    monkeypatch.setattr(offloads, "ethtool", fake)
    counters = {"Tcp": 0, "Udp": 0}
    keeper = OffloadKeeper(published.append, lambda config: runs.append(config) or FAIL, lambda: dict(counters))
    keeper.ensure(["vxlan.calico"], VxlanConfig())
    keeper.ensure(["vxlan.calico"], VxlanConfig())
    assert len(runs) == 1 and fake.state["vxlan.calico"] is False
    assert len(published) == 1  # only a changed decision is written
    assert published[0]["offloads"]["vxlan.calico"]["source"] == "self-test"
    assert published[0]["checksumSelfTest"] == {"selftest": FAILED, "detail": "12 inner checksums bad"}
    counters["Tcp"] = 3  # the real underlay delivered bad checksums: reported, once
    keeper.ensure(["vxlan.calico"], VxlanConfig())
    keeper.ensure(["vxlan.calico"], VxlanConfig())
    assert len(published) == 2 and published[-1]["checksumErrors"] == {"Tcp": 3, "Udp": 0}
    keeper.ensure(["vxlan.calico"], VxlanConfig(tx_checksum_offload=True))  # the explicit setting wins
    assert fake.state["vxlan.calico"] is True and published[-1]["offloads"]["vxlan.calico"]["source"] == "configuration"


def test_calicos_checksum_offload_broken_override_is_the_explicit_setting():
    from podnet.model.agentconfig import AgentConfiguration

    def felix(spec):
        return AgentConfiguration.from_manifest({"kind": "FelixConfiguration", "metadata": {"name": "default"},
                                                 "spec": spec})

    broken = felix({"featureDetectOverride": "ChecksumOffloadBroken=true"})
    assert broken.tx_checksum_offload is False and broken.not_applied() == []
    assert felix({"featureDetectOverride": "SNATFullyRandom=false,ChecksumOffloadBroken=false"}).tx_checksum_offload
    assert felix({"featureDetectOverride": "SNATFullyRandom=false"}).tx_checksum_offload is None
    both = felix({"featureDetectOverride": "ChecksumOffloadBroken=true", "vxlanTxChecksumOffload": True})
    assert both.tx_checksum_offload is True  # podnet's own field wins
    again = AgentConfiguration.from_manifest(broken.to_manifest())
    assert again == broken
