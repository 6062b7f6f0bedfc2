"""podman 4.3 (CNI backend, runc) on a lab node, with podnet as the network."""

from __future__ import annotations

import os
import re

from tests.runtimes.leaks import footprint, in_blocks, node_blocks, remote_pod


def _address(output: str) -> str:
    m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)", output)
    assert m, output
    assert m.group(2) == "32", output
    return m.group(1)


def test_container_on_node_1_reaches_a_pod_on_node_2(runtime_lab, podman):
    before = footprint(runtime_lab)
    other = remote_pod(runtime_lab, "node-2")
    proc = podman.run("pinger", "/bin/sh", "-c",
                      f"ip -4 addr show dev eth0 && ip -4 route && ping -c 1 -W 2 {other['ip']}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ip = _address(proc.stdout)
    assert in_blocks(ip, node_blocks(runtime_lab, "node-1"))
    assert "default via 169.254.1.1 dev eth0" in proc.stdout
    assert "ttl=62" in proc.stdout and "1 packets received" in proc.stdout

    info = podman.inspect("pinger")
    cid = info["Id"]
    assert info["State"]["Status"] == "exited"
    calls = podman.calls(cid)
    add = next(c for c in calls if c["env"]["CNI_COMMAND"] == "ADD")
    assert add["code"] == 0 and add["env"]["CNI_NETNS"].startswith("/run/netns/netns-")
    assert "K8S_POD_NAME=pinger" in add["env"]["CNI_ARGS"]

    # The container has exited: podman has already torn its network down (DEL with prevResult).
    assert footprint(runtime_lab) == before
    dels = [c for c in calls if c["env"]["CNI_COMMAND"] == "DEL"]
    assert dels and all(c["code"] == 0 for c in dels) and dels[0]["prevResult"]
    assert not os.path.exists(add["env"]["CNI_NETNS"])

    rm = podman.rm("pinger")
    assert rm.returncode == 0, rm.stderr
    assert podman.inspect("pinger") is None
    assert footprint(runtime_lab) == before
    assert podman.libcni.entries(cid) == []


def test_podman_in_a_private_mount_namespace(runtime_lab, podman):
    """Started as under `ip netns exec`, with a mount namespace of its own (its root a slave), podman
    bind-mounts the container's namespace at /run/netns/netns-<id> where the agent cannot see it. The plugin opens
    it where podman runs and hands the agent the descriptor, so the container is attached all the same."""
    before = footprint(runtime_lab)
    other = remote_pod(runtime_lab, "node-2")
    podman.private_mounts = True
    try:
        # (retried: a new pod's first packets may wait for the agent's filter layer to learn its endpoint)
        proc = podman.run("private", "/bin/sh", "-c", f"ip -4 addr show dev eth0 && for i in 1 2 3 4 5; do "
                          f"ping -c 1 -W 2 {other['ip']} && exit 0; done; exit 1", rm=True)
    finally:
        podman.private_mounts = False
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert in_blocks(_address(proc.stdout), node_blocks(runtime_lab, "node-1"))
    assert "1 packets received" in proc.stdout
    calls = [c for c in podman.calls() if "K8S_POD_NAME=private" in c["env"].get("CNI_ARGS", "")]
    assert [c["env"]["CNI_COMMAND"] for c in calls][:1] == ["ADD"] and all(c["code"] == 0 for c in calls), calls
    assert footprint(runtime_lab) == before


def test_run_rm_leaves_nothing(runtime_lab, podman):
    before = footprint(runtime_lab)
    proc = podman.run("once", "/bin/sh", "-c", "ip -4 addr show dev eth0", rm=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert in_blocks(_address(proc.stdout), node_blocks(runtime_lab, "node-1"))
    assert podman.inspect("once") is None
    assert footprint(runtime_lab) == before


def test_pod_on_node_2_reaches_a_running_container(runtime_lab, podman):
    """A long-running container answers a ping from the other node, and `podman rm -f` cleans up."""
    before = footprint(runtime_lab)
    proc = podman.run("server", "/bin/sleep", "inf", extra=("--detach",))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        info = podman.inspect("server")
        ip = info["NetworkSettings"]["Networks"][podman.network]["IPAddress"]
        assert in_blocks(ip, node_blocks(runtime_lab, "node-1"))
        other = remote_pod(runtime_lab, "node-2")
        out = runtime_lab.exec(other["netns"], "ping", "-c", "1", "-W", "2", ip)
        assert out.returncode == 0, out.stdout + out.stderr
        assert len(footprint(runtime_lab)["allocations"]) == len(before["allocations"]) + 1
    finally:
        assert podman.rm("server").returncode == 0
    assert footprint(runtime_lab) == before


def test_a_container_that_fails_to_start_gives_its_address_back(runtime_lab, podman):
    """The network is set up before runc starts the process; podman DELs after the failed start."""
    before = footprint(runtime_lab)
    proc = podman.run("broken", "/bin/does-not-exist", rm=True)
    assert proc.returncode != 0
    podman.rm("broken")
    assert footprint(runtime_lab) == before
    calls = [c for c in podman.calls() if "K8S_POD_NAME=broken" in c["env"].get("CNI_ARGS", "")]
    commands = [c["env"]["CNI_COMMAND"] for c in calls]
    assert "ADD" in commands and commands[-1] == "DEL", commands
