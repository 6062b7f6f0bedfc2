"""Nothing a lab does sends a packet from the host's own namespace to a non-loopback address.

A lab's underlay addresses (172.31.0.0/24) may exist outside this machine too; a connection opened
from the host's namespace would leave the machine. Every socket connect made in-process while
podnet's commands run against an etcd lab is checked for the namespace it comes from.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest

from podnet.cli.main import main
from podnet.netns import entered
from tests.integration.conftest import built_lab


@pytest.fixture(scope="module")
def etcd_lab():
    with built_lab("pnt-i", nodes=2, pods_per_node=1, datastore="etcd") as lab:
        yield lab


@pytest.fixture
def connects(monkeypatch):
    """Every (address, came from the host's namespace) this process connects to while the test runs."""
    host = os.stat("/proc/self/ns/net").st_ino
    seen: list[tuple[str, bool]] = []
    original = socket.socket.connect

    def connect(self, address):
        if isinstance(address, tuple):
            seen.append((address[0], os.stat("/proc/thread-self/ns/net").st_ino == host))
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def off_box_from_host(seen) -> list[str]:
    return [addr for addr, from_host in seen if from_host and not addr.startswith("127.") and addr != "::1"]


@pytest.mark.parametrize("argv", [
    ["trace", "{lab}", "pod-1-1", "pod-2-1", "--brief"],
    ["doctor", "{lab}"],
    ["get", "nodes"],
    ["ipam", "show"],
    ["describe", "node", "node-1"],
], ids=["trace", "doctor", "get", "ipam", "describe"])
def test_commands_on_an_etcd_lab_talk_only_from_its_namespaces(etcd_lab, connects, argv, capsys):
    if "{lab}" in argv:
        argv = [a if a != "{lab}" else "--lab" for a in argv]
        argv.insert(argv.index("--lab") + 1, etcd_lab.name)
    else:
        argv = ["--lab", etcd_lab.name] + argv
    main(argv)
    assert connects, "the command reached etcd somehow; this test must see it"
    assert off_box_from_host(connects) == [], connects


def test_a_store_opened_in_a_namespace_keeps_talking_from_it(etcd_lab, connects):
    with entered(etcd_lab.underlay_netns):
        from podnet.datastore import open_datastore

        store = open_datastore(etcd_lab.datastore_url)
    try:
        store.list("/podnet/")  # from the host's namespace
        t = threading.Thread(target=store.revision)  # from a thread that never entered anything
        t.start()
        t.join()
    finally:
        store.close()
    assert connects and off_box_from_host(connects) == [], connects
