"""containerd 1.6 on a lab node, driven over the CRI as kubelet drives it, with podnet as the network."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import uuid

from podnet.model.endpoint import endpoint_name, host_veth_name
from tests.integration import kernel
from tests.integration.witness import wait_for
from tests.runtimes.leaks import footprint, in_blocks, node_blocks, remote_pod


def in_netns(netns_path: str, *cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run a host tool in a sandbox's network namespace only (nsenter, like the runtime does)."""
    return subprocess.run(["nsenter", f"--net={netns_path}", *cmd], capture_output=True, text=True, timeout=timeout)


def ping(netns_path: str, ip: str) -> subprocess.CompletedProcess:
    return in_netns(netns_path, "ping", "-c", "1", "-W", "2", ip)


def reaches(netns_path: str, ip: str) -> bool:
    """Waited for (a liveness bound only): the agent's filter layer drops a new sandbox's traffic until it
    has programmed the endpoint."""
    return bool(wait_for(lambda: ping(netns_path, ip).returncode == 0, timeout=15))


def test_cri_version(containerd):
    v = containerd.client.version()
    assert v.runtime_name == "containerd"
    assert v.runtime_api_version == "v1"
    assert v.runtime_version.startswith("1.")
    assert containerd.loaded_networks()[-1] == "k8s-pod-network"


def test_run_pod_sandbox_gets_its_address_from_podnet(runtime_lab, containerd):
    before = footprint(runtime_lab)
    sandbox = containerd.run_sandbox("web", namespace="shop")
    try:
        status = containerd.client.sandbox_status(sandbox).status
        assert status.state == containerd.client.pb.SANDBOX_READY
        ip = status.network.ip
        assert ip and in_blocks(ip, node_blocks(runtime_lab, "node-1")), (ip, node_blocks(runtime_lab, "node-1"))

        after = footprint(runtime_lab)
        assert after["allocations"] == sorted(before["allocations"] + [ip])
        assert endpoint_name(sandbox, "eth0") in set(after["endpoints"]) - set(before["endpoints"])
        assert len(after["links"]) == len(before["links"]) + 1

        # Inside the sandbox: the /32 and the single way out that podnet programs.
        pid = containerd.sandbox_pid(sandbox)
        addrs = json.loads(in_netns(f"/proc/{pid}/ns/net", "ip", "-j", "-4", "addr", "show", "eth0").stdout)
        assert [(a["local"], a["prefixlen"]) for a in addrs[0]["addr_info"]] == [(ip, 32)]
        routes = json.loads(in_netns(f"/proc/{pid}/ns/net", "ip", "-j", "-4", "route", "show").stdout)
        assert {"dst": "default", "gateway": "169.254.1.1"}.items() <= next(
            r for r in routes if r["dst"] == "default").items()

        # What containerd sent: ADD with the sandbox's namespace and kubelet-style CNI_ARGS.
        add, = containerd.calls(sandbox)
        assert add["env"]["CNI_COMMAND"] == "ADD" and add["code"] == 0
        assert add["env"]["CNI_NETNS"] == containerd.sandboxes[sandbox]
        args = dict(kv.split("=", 1) for kv in add["env"]["CNI_ARGS"].split(";"))
        assert args["K8S_POD_NAMESPACE"] == "shop" and args["K8S_POD_NAME"] == "web"
        assert args["K8S_POD_INFRA_CONTAINER_ID"] == sandbox
    finally:
        containerd.remove_sandbox(sandbox)
    assert footprint(runtime_lab) == before


def test_sandbox_on_node_1_reaches_a_pod_on_node_2_across_vxlan(runtime_lab, containerd):
    sandbox = containerd.run_sandbox("pinger")
    try:
        ip = containerd.client.sandbox_status(sandbox).status.network.ip
        other = remote_pod(runtime_lab, "node-2")
        netns = f"/proc/{containerd.sandbox_pid(sandbox)}/ns/net"
        assert reaches(netns, other["ip"])
        out = ping(netns, other["ip"])
        assert out.returncode == 0, out.stdout + out.stderr
        assert "ttl=62" in out.stdout  # two routing hops: node-1, then node-2 after decapsulation
        assert reaches(f"/run/netns/{other['netns']}", ip)
    finally:
        containerd.remove_sandbox(sandbox)


def test_stop_and_remove_leave_no_address_veth_or_endpoint(runtime_lab, containerd):
    client = containerd.client
    before = footprint(runtime_lab)
    sandbox = containerd.run_sandbox("short-lived")
    netns = containerd.sandboxes[sandbox]
    assert netns and os.path.exists(netns)
    assert footprint(runtime_lab) != before

    client.stop_sandbox(sandbox)  # DEL with the namespace (and prevResult)
    assert footprint(runtime_lab) == before
    assert client.sandbox_status(sandbox).status.state == client.pb.SANDBOX_NOTREADY
    assert not os.path.exists(netns), "containerd closes the namespace on StopPodSandbox"

    client.remove_sandbox(sandbox)  # a second DEL, with an empty CNI_NETNS
    containerd.sandboxes.pop(sandbox, None)
    assert footprint(runtime_lab) == before
    assert sandbox not in {s.id for s in client.sandboxes()}
    assert containerd.libcni.entries(sandbox) == []

    calls = [(c["env"]["CNI_COMMAND"], c["env"]["CNI_NETNS"], c["prevResult"], c["code"])
             for c in containerd.calls(sandbox)]
    assert calls == [("ADD", netns, False, 0), ("DEL", netns, True, 0), ("DEL", "", False, 0)], calls


def test_stopping_twice_is_harmless(runtime_lab, containerd):
    """kubelet may call StopPodSandbox more than once; every DEL after the first finds nothing to do."""
    before = footprint(runtime_lab)
    sandbox = containerd.run_sandbox("twice")
    containerd.client.stop_sandbox(sandbox)
    containerd.client.stop_sandbox(sandbox)
    containerd.remove_sandbox(sandbox)
    assert footprint(runtime_lab) == before
    assert all(c["code"] == 0 for c in containerd.calls(sandbox))


def test_concurrent_sandboxes_get_distinct_reachable_addresses(runtime_lab, containerd):
    before = footprint(runtime_lab)
    names = [f"burst-{i}" for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = [pool.submit(containerd.run_sandbox, n) for n in names]
        sandboxes = [f.result() for f in futures if f.exception() is None]
        errors = [f.exception() for f in futures if f.exception() is not None]
    try:
        assert not errors, errors
        ips = [containerd.client.sandbox_status(s).status.network.ip for s in sandboxes]
        assert len(set(ips)) == len(names)
        assert all(in_blocks(ip, node_blocks(runtime_lab, "node-1")) for ip in ips)
        other = remote_pod(runtime_lab, "node-2")
        unreachable = [ip for ip in ips if not reaches(f"/run/netns/{other['netns']}", ip)]
        assert not unreachable
    finally:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
            list(pool.map(containerd.remove_sandbox, sandboxes))
    assert footprint(runtime_lab) == before


def test_sandbox_survives_an_agent_restart(runtime_lab, containerd):
    """The plugin talks to the agent per call: a restarted agent serves the DEL of a pod it did not ADD."""
    before = footprint(runtime_lab)
    sandbox = containerd.run_sandbox("restart")
    runtime_lab.restart_agent("node-1")
    runtime_lab.wait_converged()
    other = remote_pod(runtime_lab, "node-2")
    assert reaches(f"/proc/{containerd.sandbox_pid(sandbox)}/ns/net", other["ip"])
    containerd.remove_sandbox(sandbox)
    assert footprint(runtime_lab) == before


# Kubernetes' sandbox restart and containerd's DEL ordering ------------------------------------------------
# When a pod's sandbox dies, kubelet runs a new sandbox for the same pod (same namespace, name and uid, the
# next attempt, a new sandbox ID) and only then stops and removes the old one: both exist at once, both are
# the same Kubernetes pod, and the old one's DELs arrive after the new one's ADD. containerd sends two DELs
# per sandbox: StopPodSandbox with the namespace and the cached prevResult, RemovePodSandbox with an empty
# CNI_NETNS and no prevResult.


def _run_attempt(containerd, name: str, namespace: str, uid: str, attempt: int) -> str:
    """RunPodSandbox as kubelet sends it for attempt `attempt` of one pod."""
    request = containerd.sandbox_request(name, namespace)
    request.config.metadata.uid = uid
    request.config.metadata.attempt = attempt
    return containerd.track(containerd.client.RunPodSandbox(request).pod_sandbox_id)


def _host_if(containerd, sandbox: str) -> str:
    add = next(c for c in containerd.calls(sandbox) if c["env"]["CNI_COMMAND"] == "ADD")
    return json.loads(add["stdout"])["interfaces"][0]["name"]


def test_a_restarted_sandbox_keeps_its_network_when_the_old_one_is_stopped_and_removed(runtime_lab, containerd):
    client = containerd.client
    before = footprint(runtime_lab)
    name, namespace, uid = f"restart-{uuid.uuid4().hex[:6]}", "shop", str(uuid.uuid4())
    peer = remote_pod(runtime_lab, "node-2")
    old = _run_attempt(containerd, name, namespace, uid, 0)
    new = None
    try:
        old_ip = client.sandbox_status(old).status.network.ip
        new = _run_attempt(containerd, name, namespace, uid, 1)
        new_ip = client.sandbox_status(new).status.network.ip
        assert new != old and new_ip != old_ip
        new_netns = f"/proc/{containerd.sandbox_pid(new)}/ns/net"
        assert reaches(new_netns, peer["ip"])

        # Both are pod shop/<name>: the old one keeps Calico's veth name, the new one gets its own.
        calico_name = host_veth_name(namespace, name, "")
        assert _host_if(containerd, old) == calico_name != _host_if(containerd, new)
        node = runtime_lab.node_netns("node-1")
        new_if = kernel.link(node, _host_if(containerd, new))
        assert new_if is not None

        client.stop_sandbox(old)  # DEL with the old namespace and prevResult
        assert kernel.link(node, calico_name) is None
        assert ping(new_netns, peer["ip"]).returncode == 0  # at once: it was reachable before
        client.remove_sandbox(old)  # DEL with an empty CNI_NETNS
        containerd.sandboxes.pop(old, None)

        # The new sandbox is untouched: the same veth (same index), its address, its endpoint; traffic both ways.
        assert kernel.link(node, _host_if(containerd, new))["ifindex"] == new_if["ifindex"]
        after = footprint(runtime_lab)
        assert after["allocations"] == sorted(before["allocations"] + [new_ip])
        assert set(after["endpoints"]) - set(before["endpoints"]) == {endpoint_name(new, "eth0")}
        assert ping(new_netns, peer["ip"]).returncode == 0  # at once: it was reachable before
        assert reaches(f"/run/netns/{peer['netns']}", new_ip)

        calls = [(c["env"]["CNI_COMMAND"], bool(c["env"]["CNI_NETNS"]), c["prevResult"], c["code"])
                 for c in containerd.calls(old)]
        assert calls == [("ADD", True, False, 0), ("DEL", True, True, 0), ("DEL", False, False, 0)], calls
    finally:
        for sandbox in (old, new):
            if sandbox and sandbox in containerd.sandboxes:
                containerd.remove_sandbox(sandbox)
    assert footprint(runtime_lab) == before


def test_del_ordering_repeated_over_restarts_leaves_nothing(runtime_lab, containerd):
    """Five attempts of one pod, each started before the previous one is stopped and removed, the way
    kubelet restarts a crashing sandbox: every DEL succeeds, each in containerd's order, the live sandbox
    always reaches the other node, and at the end nothing is left."""
    client = containerd.client
    before = footprint(runtime_lab)
    name, uid = f"crashloop-{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
    peer = remote_pod(runtime_lab, "node-2")
    previous = None
    made = []
    try:
        for attempt in range(5):
            current = _run_attempt(containerd, name, "default", uid, attempt)
            made.append(current)
            if previous is not None:
                client.stop_sandbox(previous)
                client.stop_sandbox(previous)  # kubelet may stop twice
                client.remove_sandbox(previous)
                containerd.sandboxes.pop(previous, None)
            pid = containerd.sandbox_pid(current)
            assert reaches(f"/proc/{pid}/ns/net", peer["ip"]), attempt
            previous = current
        client.stop_sandbox(previous)
        client.remove_sandbox(previous)
        containerd.sandboxes.pop(previous, None)
    finally:
        for sandbox in made:
            if sandbox in containerd.sandboxes:
                containerd.remove_sandbox(sandbox)
    assert footprint(runtime_lab) == before
    for sandbox in made:
        calls = [(c["env"]["CNI_COMMAND"], bool(c["env"]["CNI_NETNS"]), c["prevResult"], c["code"])
                 for c in containerd.calls(sandbox)]
        assert calls[0] == ("ADD", True, False, 0), calls
        assert calls[1] == ("DEL", True, True, 0), calls
        assert calls[-1] == ("DEL", False, False, 0), calls
        assert all(c[3] == 0 for c in calls), calls
        assert containerd.libcni.entries(sandbox) == []


def test_a_chained_plugin_missing_from_the_bin_dir_leaks_until_ipam_gc(runtime_lab, containerd, tmp_path):
    """The conflist install-cni no longer writes: podnet then a plugin that is not installed (issue 11,
    class 7). containerd's ADD fails at the plugin; its cleanup DEL runs the chain in reverse and stops at
    the missing plugin, so podnet's DEL never runs, and containerd forgets the sandbox but keeps its
    namespace. Once that namespace is gone, `podnet ipam check` reports what podnet made (from the node's
    kernel report) and `ipam gc` frees it."""
    import sys

    import grpc
    import pytest

    from tests.integration.witness import wait_for
    from tests.runtimes.runtime_util import podnet_conflist

    before = footprint(runtime_lab)
    calls_before = len(containerd.calls())
    chained = podnet_conflist()
    chained["plugins"].append({"type": "not-installed", "capabilities": {"portMappings": True}})
    containerd.use_network(chained)
    try:
        with pytest.raises(grpc.RpcError) as failed:
            containerd.client.RunPodSandbox(containerd.sandbox_request("doomed"))
        assert "not-installed" in str(failed.value.details()), failed.value.details()
    finally:
        containerd.use_network(podnet_conflist())
    calls = containerd.calls()[calls_before:]
    assert [(c["env"]["CNI_COMMAND"], c["code"]) for c in calls] == [("ADD", 0)], calls  # its DEL never came
    left = footprint(runtime_lab)
    assert len(left["endpoints"]) == len(before["endpoints"]) + 1, left
    # containerd keeps the sandbox's namespace when its network teardown failed (and forgets the sandbox):
    # the veth inside is alive, so nothing but the runtime knows it is a leak. Removing containerd's
    # leaked namespace, as an administrator cleaning up would, leaves podnet's endpoint without it.
    netns = calls[0]["env"]["CNI_NETNS"]
    assert os.path.exists(netns), "containerd removed the namespace after all"
    assert subprocess.run(["ip", "netns", "del", os.path.basename(netns)]).returncode == 0

    def check() -> dict:
        path = tmp_path / "report.json"
        out = subprocess.run([sys.executable, "-m", "podnet", "--lab", runtime_lab.name, "ipam", "check", "-o",
                              str(path)], capture_output=True, text=True, timeout=120)
        return json.loads(path.read_text()) if out.returncode == 1 else {}

    report = wait_for(lambda: (r := check()) and r.get("endpoints_gone") and r, timeout=60)
    assert report and len(report["endpoints_gone"]) == 1, report
    gc = subprocess.run([sys.executable, "-m", "podnet", "--lab", runtime_lab.name, "ipam", "gc", "--yes"],
                        capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert footprint(runtime_lab) == before
