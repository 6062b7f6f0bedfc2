"""dataplane/conntrack.forget on a real conntrack table: which entries go, by both ways of finding them."""

from __future__ import annotations

import pytest
from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from podnet.dataplane import conntrack
from podnet.netns import entered
from tests.integration.conftest import scratch_netns

POD, OTHER, CLIENT, SERVICE = "10.244.0.9", "10.244.0.8", "10.1.1.1", "10.96.0.10"


@pytest.fixture
def netns():
    with scratch_netns("ct-") as name:
        yield name


def _add(ct, src, dst, sport, dport, reply_src=None):
    ct.entry("add", timeout=300, tuple_orig=NFCTAttrTuple(saddr=src, daddr=dst, proto=17, sport=sport, dport=dport),
             tuple_reply=NFCTAttrTuple(saddr=reply_src or dst, daddr=src, proto=17, sport=dport, dport=sport))


@pytest.mark.parametrize("match_here_below", [conntrack.MATCH_HERE_BELOW, 0], ids=["one-dump", "kernel-filtered"])
def test_the_pods_entries_go_as_sender_receiver_and_behind_a_dnat(netns, monkeypatch, match_here_below):
    monkeypatch.setattr(conntrack, "MATCH_HERE_BELOW", match_here_below)
    with entered(netns), Conntrack() as ct:
        _add(ct, POD, "10.9.9.9", 5000, 53)  # the pod sends
        _add(ct, CLIENT, POD, 5001, 80)  # the pod receives
        _add(ct, CLIENT, SERVICE, 5002, 80, reply_src=POD)  # the pod receives through a Service's DNAT
        _add(ct, CLIENT, OTHER, 5003, 80)  # another pod's
        assert conntrack.forget([POD, "fd00::9"]) == 3
        assert [(e.tuple_orig.saddr, e.tuple_orig.daddr) for e in ct.dump_entries()] == [(CLIENT, OTHER)]
        assert conntrack.forget([POD]) == 0  # nothing left of it: no error
        assert conntrack.forget([]) == 0
