"""The agent's /metrics, /healthz and /readyz, and its JSON logs."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from podnet.netns import entered
from podnet.model import vtep_mac
from tests.integration.witness import wait_for


def get(netns: str, path: str, address: str = "127.0.0.1:9099") -> tuple[int, str]:
    with entered(netns):  # the socket is created in the node's namespace, where the agent listens
        try:
            with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{want}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def test_health_readiness_and_metrics(lab_factory):
    lab = lab_factory("pnt-o", nodes=2, pods_per_node=1)
    ns = lab.node_netns("node-1")
    assert get(ns, "/healthz") == (200, "ok\n")
    code, body = get(ns, "/readyz")
    assert code == 200 and "1 remote nodes programmed" in body
    assert get(ns, "/nope")[0] == 404

    _, text = get(ns, "/metrics")
    assert metric(text, "podnet_remote_nodes_programmed") == 1
    assert metric(text, "podnet_datastore_in_sync") == 1
    assert metric(text, "podnet_cni_requests_total", command="ADD", result="ok") == 1
    assert metric(text, "podnet_ipam_allocations_total", result="ok") == 1
    assert metric(text, "podnet_reconcile_duration_seconds_count") >= 1
    assert metric(text, "podnet_cni_request_duration_seconds_count", command="ADD") == 1

    # Prometheus scrapes Felix's port on every address of the node: here the underlay's, from
    # another node. It serves metrics only (the probes stay on the health port), and the process's
    # and build's metrics beside podnet's own.
    node1 = next(n for n in lab.status()["nodes"] if n["name"] == "node-1")
    code, scraped = get(lab.node_netns("node-2"), "/metrics", f"{node1['underlay_ip']}:9091")
    assert code == 200 and metric(scraped, "podnet_remote_nodes_programmed") == 1
    assert metric(scraped, "process_resident_memory_bytes") > 0
    assert re.search(r'^podnet_build_info\{version="[^"]+"\} 1\.0$', scraped, re.M)
    assert get(ns, "/healthz", "127.0.0.1:9091")[0] == 404

    # A failed request is counted as one.
    code, _, _ = lab.cni("node-1", "ADD", "c-missing", "/run/netns/does-not-exist", "ghost")
    assert code != 0
    _, text = get(ns, "/metrics")
    assert metric(text, "podnet_cni_requests_total", command="ADD", result="error") == 1

    # Drift repaired by the agent is counted.
    other = lab.status()["nodes"][1]
    lab.exec(ns, "bridge", "fdb", "del", vtep_mac("node-2"), "dev", "vxlan.calico", "dst", other["underlay_ip"],
             "self", check=True)
    assert wait_for(lambda: metric(get(ns, "/metrics")[1], "podnet_drift_repairs_total") >= 1)


def test_restarted_agent_becomes_ready_and_logs_json(lab_factory):
    lab = lab_factory("pnt-j", nodes=1, pods_per_node=0)
    lab.restart_agent("node-1", ["--log-format", "json"])
    ns = lab.node_netns("node-1")
    assert wait_for(lambda: get_or_none(ns, "/readyz") == 200)
    with open(lab.log_path("node-1")) as f:
        lines = [l for l in f.read().splitlines() if l.startswith("{")]
    records = [json.loads(l) for l in lines]
    assert records and all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert any("serving CNI requests" in r["msg"] for r in records)


def get_or_none(ns: str, path: str):
    try:
        return get(ns, path)[0]
    except OSError:
        return None
