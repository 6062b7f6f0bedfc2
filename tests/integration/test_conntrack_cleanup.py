"""A pod's connection tracking entries go with it (dataplane/conntrack.py, called by CNI DEL): a flow
an old pod had cannot reach the next pod that IPAM gives its address to, past that pod's policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pyroute2 import Conntrack

from podnet.datastore.resources import Resources
from podnet.lab import processes
from podnet.model.kinds import lookup
from podnet.model.policy import parse_policy
from podnet.netns import entered
from tests.integration.conftest import built_lab

PROBE = os.path.join(os.path.dirname(__file__), "netpol_probe.py")
PORT, SPORT = 7000, 40100


def _serve(lab, pod: dict) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", pod["netns"], sys.executable, PROBE, "serve", str(PORT)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lab.state.setdefault("processes", []).append(
        {"pid": proc.pid, "pid_start": processes.start_time(proc.pid), "what": f"server {pod['name']}"})
    lab._save()
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _reaches(client: dict, ip: str) -> bool:
    """One UDP probe from a fixed source port: the same 5-tuple every time."""
    target = {"key": "k", "ip": ip, "proto": "udp", "port": PORT, "sport": SPORT}
    out = subprocess.run(["ip", "netns", "exec", client["netns"], sys.executable, PROBE, "probe"],
                         input=json.dumps({"targets": [target], "timeout": 1.0}), capture_output=True, text=True,
                         timeout=30, check=True)
    return json.loads(out.stdout)["k"]


def _entries_of(lab, ip: str) -> list[tuple[str, str]]:
    with entered(lab.node_netns("node-1")):
        with Conntrack() as ct:
            return [(e.tuple_orig.saddr, e.tuple_orig.daddr) for e in ct.dump_entries()
                    if ip in (e.tuple_orig.saddr, e.tuple_orig.daddr)]


def test_a_deleted_pods_flows_do_not_reach_the_next_pod_with_its_address():
    with built_lab("ct-", nodes=1, pods_per_node=0) as lab:
        servers = []
        try:
            client = lab.add_pod("node-1", "client", "y", labels={"app": "client"}, wait_filter=True)
            old = lab.add_pod("node-1", "old", "x", labels={"app": "server"}, wait_filter=True)
            servers.append(_serve(lab, old))
            address = old["ip"]
            assert _reaches(client, address)
            # Felix's order: established flows first, so a deny stops new flows only.
            with lab.datastore() as store:
                Resources(store).write(lookup("NetworkPolicy"), parse_policy(
                    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}}), "apply")
            lab.wait_filter()
            assert _reaches(client, address)
            assert (client["ip"], address) in _entries_of(lab, address)

            lab.delete_pod("old", "x")
            assert _entries_of(lab, address) == []  # CNI DEL took them with the pod

            new = lab.add_pod("node-1", "new", "x", labels={"app": "server"}, wait_filter=True, ips=[address])
            assert new["ip"] == address
            servers.append(_serve(lab, new))
            assert not _reaches(client, address)  # the old 5-tuple is a new flow now: the deny holds
        finally:
            for proc in servers:
                proc.kill()
                proc.wait()
