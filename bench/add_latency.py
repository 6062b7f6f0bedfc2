"""Pod ADD latency, sequential: podnet against Debian's ptp + host-local, same run, same layout.

podnet is measured with both its plugin executables against the same agent: the static C one
(cni-plugin/podnet-cni.c, "podnet", the one install-cni installs when built) and the Python shim
("podnet-shim"). Layout for each side: a node namespace and a fresh pod namespace per pod.
podnet's node is a 1-node lab (its agent runs in the node namespace and
serves the plugin over an abstract unix socket); ptp's node is a
namespace built the same way (eth0 on a veth with an address and a default
route). Each plugin is run the way a runtime runs it: CNI_* environment,
network config on stdin, as a subprocess started from a thread that has
entered the node namespace (no side pays for `ip netns exec`). The plugins
take turns pod by pod, the first of each round rotating, so machine noise spreads over all.
Pod namespaces are all created before the timed loop and deleted after it,
so the kernel's asynchronous namespace teardown never overlaps a measurement.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

from bench.common import Cleanup, busy_percent, cpu_snapshot, progress, ratio, summary_ms
from podnet.dataplane import topology
from podnet.netns import entered

NAME = "add_latency"
PTP_DIR = "/usr/lib/cni"
# The static plugin against ptp (issue 12); the shim keeps its own, looser targets.
TARGETS = {"p50_ratio": 0.6, "p99_ratio": 1.0, "shim_p50_ratio": 1.0, "shim_p99_ratio": 2.0}


class PluginFailed(RuntimeError):
    pass


class Side:
    """One plugin under test: how to invoke it, and where."""

    def __init__(self, label: str, node_ns: str, plugin: str, cni_path: str, config: dict):
        self.label = label
        self.node_ns = node_ns
        self.plugin = plugin
        self.cni_path = cni_path
        self.stdin = json.dumps(config).encode()
        self.add: list[float] = []
        self.dele: list[float] = []
        self.warm: list[float] = []
        self.pods: list[tuple[str, str, str]] = []  # (pod name, container id, netns)

    def env(self, command: str, container_id: str, netns: str, pod: str) -> dict:
        return {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": f"/run/netns/{netns}" if netns else "",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": self.cni_path,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};"
                        f"K8S_POD_INFRA_CONTAINER_ID={container_id}",
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        }

    def invoke(self, command: str, container_id: str, netns: str, pod: str) -> tuple[float, bytes]:
        """Run the plugin once from inside the node namespace; (seconds, stdout)."""
        env = self.env(command, container_id, netns, pod)
        with entered(self.node_ns):
            t0 = time.perf_counter()
            proc = subprocess.run([self.plugin], input=self.stdin, env=env, capture_output=True, timeout=60)
            took = time.perf_counter() - t0
        if proc.returncode != 0:
            raise PluginFailed(f"{self.label} {command} {pod} exited {proc.returncode}: "
                               f"{proc.stdout.decode(errors='replace')[:400]} {proc.stderr.decode(errors='replace')[:400]}")
        if command == "ADD":
            result = json.loads(proc.stdout)
            if not result.get("ips"):
                raise PluginFailed(f"{self.label} ADD {pod} returned no address: {proc.stdout[:300]!r}")
        return took, proc.stdout


def _version_floor(side: Side, n: int) -> list[float]:
    """CNI VERSION: the cost of starting the plugin process at all (no network work)."""
    out = []
    env = {"CNI_COMMAND": "VERSION", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    with entered(side.node_ns):
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run([side.plugin], input=side.stdin, env=env, capture_output=True, timeout=30, check=True)
            out.append(time.perf_counter() - t0)
    return out


def _links(ns: str) -> list[str]:
    return [n for n in topology.links(ns) if n not in ("lo", "eth0", "vxlan.calico")]


def run(tag: str, quick: bool) -> dict:
    from podnet.cni.install import install_plugin
    from podnet.lab.lab import Lab, LabSpec

    n_pods, n_warm = (60, 10) if quick else (200, 20)
    params = {"pods": n_pods, "warmup": n_warm, "order": "rotating (each plugin goes first in turn)",
              "peer": "ptp + host-local (/usr/lib/cni)",
              "podnet": "the static C plugin; podnet-shim: the Python shim; one agent serves both"}
    if not os.access(os.path.join(PTP_DIR, "ptp"), os.X_OK):
        raise RuntimeError(f"{PTP_DIR}/ptp is missing: apt-get install -y containernetworking-plugins")
    lab = Lab(f"pnb-{tag}-add", progress=lambda m: None)
    data_dir = tempfile.mkdtemp(prefix=f"pnb-{tag}-hostlocal-")
    with Cleanup() as c:
        c.push("host-local data dir", lambda: shutil.rmtree(data_dir, ignore_errors=True))
        c.push(f"lab {lab.name}", lab.down)
        progress(f"add_latency: 1-node podnet lab {lab.name} and a ptp node namespace")
        lab.up(LabSpec(nodes=1, pods_per_node=0))
        podnet_node = lab.node_netns("node-1")
        # ptp's node: built like a lab node (eth0 on a veth, address, default route).
        ptp_node = c.netns(f"pnb-{tag}-ptp-node")
        ptp_ul = c.netns(f"pnb-{tag}-ptp-ul")
        topology.add_veth_between(ptp_node, "eth0", ptp_ul, "veth-ptp")
        topology.configure_host(ptp_ul, "veth-ptp", "172.31.0.1/24")
        topology.configure_host(ptp_node, "eth0", "172.31.0.11/24", "172.31.0.1")

        static = install_plugin(lab.bin_dir, kind="static")  # `make plugin` builds it
        shim = install_plugin(lab.bin_dir, name="podnet-shim", kind="python")
        podnet = Side("podnet", podnet_node, static, lab.bin_dir, lab.network_config())
        podnet_shim = Side("podnet-shim", podnet_node, shim, lab.bin_dir, lab.network_config())
        ptp = Side("ptp", ptp_node, os.path.join(PTP_DIR, "ptp"), PTP_DIR, {
            "cniVersion": "1.0.0", "name": "bench", "type": "ptp",
            "ipam": {"type": "host-local", "subnet": "10.250.0.0/16", "dataDir": data_dir},
        })
        total = n_pods + n_warm
        sides = (podnet, podnet_shim, ptp)
        progress(f"add_latency: creating {len(sides) * total} pod namespaces (untimed)")
        for k, side in enumerate(sides):
            for i in range(total):
                ns = c.netns(f"pnb-{tag}-{k}-{i}")
                side.pods.append((f"bench-{side.label}-{i}", uuid.uuid4().hex, ns))

        progress("add_latency: plugin start floor (CNI VERSION, 30 each)")
        floor = {side.label: summary_ms(_version_floor(side, 30)) for side in sides}

        def turn(i: int):
            return sides[i % len(sides):] + sides[:i % len(sides)]

        progress(f"add_latency: ADD {n_warm} warm-up + {n_pods} measured pods per plugin, taking turns")
        m0 = cpu_snapshot()
        try:
            for i in range(total):
                for side in turn(i):
                    pod, cid, ns = side.pods[i]
                    took, _ = side.invoke("ADD", cid, ns, pod)
                    (side.warm if i < n_warm else side.add).append(took)
                if (i + 1) % 50 == 0:
                    progress(f"add_latency: {i + 1}/{total} pods added per plugin")
        finally:
            machine_busy = busy_percent(m0, cpu_snapshot())
            progress("add_latency: DEL every pod (timed, informational)")
            del_errors = []
            for i in range(total):
                for side in turn(i):
                    if i >= len(side.pods):
                        continue
                    pod, cid, ns = side.pods[i]
                    try:
                        took, _ = side.invoke("DEL", cid, ns, pod)
                        side.dele.append(took)
                    except PluginFailed as e:
                        del_errors.append(str(e))
        leftovers = {"podnet": _links(podnet_node), "ptp": _links(ptp_node)}
        leaked_handles = _podnet_handles(lab)

    res = {"podnet": summary_ms(podnet.add), "podnet_shim": summary_ms(podnet_shim.add), "ptp": summary_ms(ptp.add)}
    ratios = {"p50": ratio(res["podnet"]["p50"], res["ptp"]["p50"]),
              "p99": ratio(res["podnet"]["p99"], res["ptp"]["p99"]),
              "shim_p50": ratio(res["podnet_shim"]["p50"], res["ptp"]["p50"]),
              "shim_p99": ratio(res["podnet_shim"]["p99"], res["ptp"]["p99"])}
    return {
        "params": params,
        "add": res,
        "ratios": ratios,
        "targets": TARGETS,
        "pass": {
            "p50": ratios["p50"] is not None and ratios["p50"] <= TARGETS["p50_ratio"],
            "p99": ratios["p99"] is not None and ratios["p99"] <= TARGETS["p99_ratio"],
            "shim_p50": ratios["shim_p50"] is not None and ratios["shim_p50"] <= TARGETS["shim_p50_ratio"],
            "shim_p99": ratios["shim_p99"] is not None and ratios["shim_p99"] <= TARGETS["shim_p99_ratio"],
        },
        "warmup": {"podnet": summary_ms(podnet.warm), "podnet_shim": summary_ms(podnet_shim.warm),
                   "ptp": summary_ms(ptp.warm)},
        "del": {"podnet": summary_ms(podnet.dele), "podnet_shim": summary_ms(podnet_shim.dele),
                "ptp": summary_ms(ptp.dele),
                "p50_ratio": ratio(summary_ms(podnet.dele).get("p50"), summary_ms(ptp.dele).get("p50"))},
        "version_floor": floor,
        "machine_busy_percent_during_adds": machine_busy,
        "checks": {
            "links_left_after_del": leftovers,
            "del_errors": del_errors,
            "podnet_ipam_handles_left": leaked_handles,
        },
        "samples_ms": {side.label.replace("-", "_"): [round(x * 1e3, 3) for x in side.add] for side in sides},
    }


def _podnet_handles(lab) -> list[str]:
    """IPAM handles other than node tunnel addresses still held after every DEL (should be none)."""
    from podnet.datastore import open_datastore
    from podnet.ipam import Ipam

    try:
        store = open_datastore(lab.datastore_url)
    except Exception:  # noqa: BLE001
        return ["(could not open the lab datastore)"]
    try:
        return sorted(h for h in Ipam(store).handles() if "tunnel" not in h)
    finally:
        store.close()
