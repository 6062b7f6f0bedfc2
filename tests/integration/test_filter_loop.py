"""The agent's filter loop on a real store and a real nftables table in a scratch namespace: it follows
endpoints, pods, namespaces and policies change by change, and after a failed calculation it starts
again from a complete listing, never from half of one."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from podnet.agent import filter_loop as filter_loop_module
from podnet.agent.filter_loop import FilterLoop
from podnet.calc.filter_calc import compute_filter
from podnet.calc.policy import FilterConfig, policy_endpoint
from podnet.datastore.resources import Resources
from podnet.datastore.sqlite import SqliteDatastore
from podnet.model import WorkloadEndpoint
from podnet.model.kinds import lookup
from podnet.model.kube import Namespace, Pod
from podnet.model.policy import parse_policy
from podnet.netns import entered
from tests.integration.conftest import unique

NODE = "n1"


def endpoint(i: int, ns: str = "x") -> WorkloadEndpoint:
    return WorkloadEndpoint(node=NODE, container_id=f"c{i}", interface="eth0", host_interface=f"cali{i:011d}",
                            ips=(f"10.244.0.{i}/32",), mac="", pod_namespace=ns, pod_name=f"p{i}")


POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": "x"},
          "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}}


@pytest.fixture
def loop(tmp_path):
    ns = unique("pnfl-")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    store = SqliteDatastore(os.path.join(tmp_path, "store.db"), durable=False)
    res = Resources(store)
    with entered(ns):  # the loop's threads (and their libnftables contexts) are born in the namespace
        lp = FilterLoop(NODE, store, FilterConfig(), None, resync_interval=3600)
        lp.start()
    try:
        yield lp, res, ns
    finally:
        lp.shutdown()
        time.sleep(0.3)
        store.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def settled(lp: FilterLoop, store) -> None:
    _, rev = store.list("/podnet/none/")
    deadline = time.monotonic() + 20
    while lp.status.revision < rev or not lp.status.ok:
        assert time.monotonic() < deadline, f"the filter loop did not catch up: {lp.status}"
        time.sleep(0.02)


def listing(ns: str, kind: str, name: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", kind, "inet", "podnet", name],
                          capture_output=True, text=True, check=True).stdout


def expected(res: Resources):
    pods = {f"{p.namespace}/{p.name}": p for p in res.list(lookup("Pod"))}
    namespaces = {n.name: n for n in res.list(lookup("Namespace"))}
    eps = [policy_endpoint(w, pods.get(f"{w.pod_namespace}/{w.pod_name}"), namespaces.get(w.pod_namespace))
           for w in res.endpoints()]
    return compute_filter(NODE, eps, [parse_policy(POLICY)] if res.list(lookup("NetworkPolicy"), "x") else [], [])


def test_endpoint_pod_and_namespace_changes_reach_the_table(loop):
    lp, res, ns = loop
    res.write(lookup("Namespace"), Namespace("x", {}), "apply")
    res.write(lookup("Namespace"), Namespace("y", {"team": "red"}), "apply")
    res.write(lookup("NetworkPolicy"), parse_policy(POLICY), "apply")
    res.put_endpoint(endpoint(1))
    res.write(lookup("Pod"), Pod("x", "p1", {"app": "web"}, ()), "apply")
    res.put_endpoint(endpoint(2, "y"))
    settled(lp, res.store)
    assert "jump pi-knp/x/knp.default.web" in listing(ns, "chain", "tw-cali00000000001")
    sets = [name for name in lp.manager.believed.sets if name.startswith("s4-")]
    assert len(sets) == 1 and lp.manager.believed.sets[sets[0]].elements == frozenset()
    # The namespace's label brings its pod into the policy's source set: by a label change alone.
    res.write(lookup("Namespace"), Namespace("y", {"team": "blue"}), "apply")
    settled(lp, res.store)
    assert "10.244.0.2" in listing(ns, "set", sets[0])
    # The pod loses its label: no policy selects it, its chain accepts.
    res.write(lookup("Pod"), Pod("x", "p1", {"app": "db"}, ()), "apply")
    settled(lp, res.store)
    chain = listing(ns, "chain", "tw-cali00000000001")
    assert "jump" not in chain and "accept" in chain
    assert lp.manager.believed.sets == expected(res).sets
    assert lp.manager.believed.chains == expected(res).chains


def test_a_failed_calculation_starts_again_from_a_complete_listing(loop, monkeypatch):
    lp, res, ns = loop
    res.write(lookup("Namespace"), Namespace("x", {}), "apply")
    res.write(lookup("NetworkPolicy"), parse_policy(POLICY), "apply")
    for i in range(1, 4):
        res.put_endpoint(endpoint(i))
        res.write(lookup("Pod"), Pod("x", f"p{i}", {"app": "web"}, ()), "apply")
    settled(lp, res.store)
    # The next calculation fails once; what the loop programs afterwards must still hold the policy.
    fails = {"left": 1}
    seen = []
    real = filter_loop_module.FilterCalculator.update

    def update(self, **changes):
        if fails["left"]:
            fails["left"] -= 1
            raise RuntimeError("injected")
        rs = real(self, **changes)
        seen.append(dict(rs.endpoint_policies))
        return rs

    monkeypatch.setattr(filter_loop_module.FilterCalculator, "update", update)
    res.put_endpoint(endpoint(4))
    res.write(lookup("Pod"), Pod("x", "p4", {"app": "web"}, ()), "apply")
    settled(lp, res.store)
    assert fails["left"] == 0 and seen
    # Every table programmed after the failure had the policy on every endpoint it knew.
    for programmed in seen:
        assert all(p["Ingress"] == ["x/knp.default.web"] for p in programmed.values()), programmed
    assert set(seen[-1]) == {f"cali{i:011d}" for i in range(1, 5)}
    assert lp.manager.believed.chains == expected(res).chains
    assert lp.manager.believed.sets == expected(res).sets


def test_records_gone_while_the_view_did_not_watch_are_removed_by_the_next_listing(loop):
    lp, res, ns = loop
    for i in (1, 2):
        res.put_endpoint(endpoint(i))
    settled(lp, res.store)
    assert set(lp.status.interfaces) == {"cali00000000001", "cali00000000002"}
    # A record the view saw that the store no longer has (deleted while a watch had fallen behind).
    ghost = "/podnet/endpoints/n1/ghost"
    with lp.view.lock:
        lp.view._put("endpoints", ghost, json.dumps(endpoint(9).to_manifest()).encode())
    lp.dirty.set()
    wait_for(lambda: "cali00000000009" in lp.status.interfaces)
    lp.view.relist()
    wait_for(lambda: "cali00000000009" not in lp.status.interfaces)
    assert set(lp.status.interfaces) == {"cali00000000001", "cali00000000002"}
    assert "cali00000000009" not in listing(ns, "map", "to-wl")


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
