"""`lab down` leaves nothing behind: no namespace, no process, no file; also after `lab up` was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from podnet.lab.lab import LAB_ROOT, Lab, LabSpec
from podnet.lab import processes
from tests.integration import kernel
from tests.integration.conftest import unique


def podnet_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podnet", *args], capture_output=True, text=True, **kw)


def agent_pids(name: str) -> list[int]:
    """Processes whose command line names this lab: its agents (whatever state file says)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "podnet" in cmd and " agent " in cmd and f"/{name}/" in cmd and processes._state(int(entry)) != "Z":
                pids.append(int(entry))
    return pids


def test_up_status_down_through_the_cli():
    name = unique("pnt-l")
    try:
        up = podnet_cli("lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "1", timeout=120)
        assert up.returncode == 0, up.stderr
        status = json.loads(podnet_cli("lab", "status", "--name", name, "-o", "json").stdout)
        assert [n["name"] for n in status["nodes"]] == ["node-1", "node-2"]
        for n in status["nodes"]:
            assert n["netns"] == f"{name}-{n['name']}" and n["underlay_interface"] == "eth0"
            assert n["tunnel_ip"] and n["blocks"] and n["underlay_ip"].startswith("172.31.0.")
        assert len(status["pods"]) == 2 and all(p["ip"] and p["netns"] and p["node"] for p in status["pods"])
        assert len(agent_pids(name)) == 2
        a, b = status["pods"]
        assert kernel.ping(a["netns"], b["ip"]).returncode == 0
    finally:
        down = podnet_cli("lab", "down", "--name", name, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not [n for n in kernel.netns_list() if n.startswith(name)]
    assert agent_pids(name) == []
    assert not os.path.exists(os.path.join(LAB_ROOT, name))
    # Down twice is fine.
    assert podnet_cli("lab", "down", "--name", name).returncode == 0


def test_down_after_up_was_killed_halfway():
    name = unique("pnt-k")
    proc = subprocess.Popen([sys.executable, "-m", "podnet", "lab", "up", "--name", name, "--nodes", "4",
                             "--pods-per-node", "3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Kill it once it is mid-build: namespaces exist and at least one agent runs.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not agent_pids(name):
            time.sleep(0.01)
        assert agent_pids(name), "lab up never got as far as starting an agent"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert [n for n in kernel.netns_list() if n.startswith(name)], "nothing was left to clean up"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        down = podnet_cli("lab", "down", "--name", name, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not [n for n in kernel.netns_list() if n.startswith(name)]
    assert agent_pids(name) == []
    assert not os.path.exists(os.path.join(LAB_ROOT, name))


def test_a_failed_up_cleans_up_after_itself():
    name = unique("pnt-f")
    lab = Lab(name)
    try:
        # A pool of one address: node-1's tunnel takes it, node-2's agent finds none (nothing left even to
        # borrow) and exits, so lab up fails halfway.
        lab.up(LabSpec(nodes=2, pods_per_node=0, pool="10.99.0.0/32", block_size=32))
    except Exception:
        pass
    else:
        lab.down()
        raise AssertionError("lab up should have failed")
    assert not [n for n in kernel.netns_list() if n.startswith(name)]
    assert agent_pids(name) == []


def test_nat_outgoing_lab_has_an_external_host_and_every_command_names_the_lab_alike():
    name = unique("pnt-n")
    try:
        up = podnet_cli("lab", "up", "--lab", name, "--nodes", "1", "--pods-per-node", "1", "--nat-outgoing",
                        timeout=120)
        assert up.returncode == 0, up.stderr
        # --name and --lab say the same, before or after the verb.
        status = json.loads(podnet_cli("--lab", name, "lab", "status", "-o", "json").stdout)
        assert status == json.loads(podnet_cli("lab", "status", "--name", name, "-o", "json").stdout)
        ext = status["external"]
        assert ext and ext["netns"].startswith(name) and ext["ip"].startswith("198.18.")
        shown = podnet_cli("lab", "status", "--lab", name).stdout
        assert f"external host (outside the pools, for natOutgoing): {ext['ip']}" in shown
        pod = status["pods"][0]
        assert kernel.ping(pod["netns"], ext["ip"]).returncode == 0
        listed = json.loads(podnet_cli("lab", "list", "-o", "json").stdout)
        assert {"name": name, "nodes": 1, "pods": 1, "datastore": "sqlite", "complete": True} in listed
        version = podnet_cli("version", "--lab", name)
        assert version.returncode == 0, version.stderr
        assert "Agents running:    1" in version.stdout and "node-1" in version.stdout
        import podnet

        assert version.stdout.count(podnet.__version__) == 2  # the client's and the agent's
        pools = podnet_cli("get", "ippools", "-o", "json", "--lab", name)
        assert pools.returncode == 0 and json.loads(pools.stdout)["items"][0]["spec"]["natOutgoing"] is True
    finally:
        down = podnet_cli("lab", "down", "--name", name, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not [n for n in kernel.netns_list() if n.startswith(name)]
