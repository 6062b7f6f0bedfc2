"""`podnet lab up | status | down`.

Every resource is written to the lab's state file *before* it is created, so
`lab down` can remove everything even after `lab up` was killed halfway; it
also sweeps namespaces carrying the lab's prefix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

from podnet.cni.install import install_plugin
from podnet.dataplane import topology
from podnet.netns import entered
from podnet.datastore import keys, open_datastore
from podnet.datastore.resources import Resources
from podnet.errors import PodnetError
from podnet.ipam import Ipam
from podnet.ipam.maintenance import remove_node
from podnet.model.nodestatus import LIVENESS_TTL_SECONDS
from podnet.lab import processes
from podnet.lab.etcd import EtcdCluster
from podnet.lab.etcd import data_root as etcd_data_root
from podnet.model import IPPool

LAB_ROOT = os.environ.get("PODNET_LAB_ROOT", "/run/podnet/labs")
NETWORK_NAME = "k8s-pod-network"



def enter_net(netns: str) -> list[str]:
    """The command prefix that runs a program in a lab namespace: its network namespace only.

    `ip netns exec` would also give the program a private mount namespace with /sys mounted again,
    which fails where / is not a mount point (a chroot) and is not what a runtime does."""
    return ["nsenter", f"--net=/run/netns/{netns}"]

class LabError(PodnetError):
    pass


@dataclass(frozen=True)
class LabSpec:
    nodes: int = 2
    pods_per_node: int = 1
    underlay: str = "172.31.0.0/24"
    pool: str = "10.244.0.0/16"
    block_size: int = 26
    mtu: int = 1500
    datastore: str = "sqlite"
    subnets: int = 1  # underlay subnets, joined by the underlay namespace acting as a router
    vxlan_mode: str = "Always"
    nat_outgoing: bool = False
    etcd_members: int = 1  # with datastore "etcd": members started in the underlay namespace
    ipv6: bool = False  # dual stack: an IPv6 underlay, an IPv6 pool, pods with one address of each family
    underlay6: str = "fd31::/64"
    pool6: str = "fd00:10:244::/48"
    resync_interval: float = 30.0  # the agents' periodic resync (tests of event-driven repair raise it)

    def __post_init__(self):
        net = ipaddress.ip_network(self.underlay)
        if net.num_addresses < 10 + self.nodes + 2:
            raise LabError(f"underlay {self.underlay} is too small for {self.nodes} nodes (they start at .11)")
        if self.nodes < 1 or self.pods_per_node < 0:
            raise LabError("a lab needs at least one node and a non-negative number of pods per node")
        if not 1 <= self.subnets <= 8:
            raise LabError("a lab has 1 to 8 underlay subnets")
        if self.datastore not in ("sqlite", "etcd"):
            raise LabError(f"datastore {self.datastore!r} is not sqlite or etcd")
        if self.datastore == "etcd" and self.etcd_members not in (1, 3, 5):
            raise LabError("an etcd cluster has 1, 3 or 5 members")

    def subnet(self, s: int) -> ipaddress.IPv4Network:
        """Subnet s: the underlay network shifted by s times its own size (172.31.0.0/24, 172.31.1.0/24, ...)."""
        net = ipaddress.ip_network(self.underlay)
        return ipaddress.ip_network(f"{net.network_address + s * net.num_addresses}/{net.prefixlen}")

    def subnet_of_node(self, i: int) -> int:
        return (i - 1) % self.subnets

    def node_address(self, i: int) -> str:
        net = self.subnet(self.subnet_of_node(i))
        return f"{net.network_address + 10 + i}/{net.prefixlen}"

    def gateway(self, s: int = 0) -> str:
        return str(self.subnet(s).network_address + 1)

    def subnet6(self, s: int) -> ipaddress.IPv6Network:
        net = ipaddress.ip_network(self.underlay6)
        return ipaddress.ip_network(f"{net.network_address + (s << (128 - net.prefixlen))}/{net.prefixlen}")

    def node_address6(self, i: int) -> str:
        net = self.subnet6(self.subnet_of_node(i))
        return f"{net.network_address + 0x10 + i}/{net.prefixlen}"

    def gateway6(self, s: int = 0) -> str:
        return str(self.subnet6(s).network_address + 1)

    def bridge(self, s: int) -> str:
        return f"br{s}"


class Lab:
    def __init__(self, name: str = "podnet", progress=None):
        if not name.replace("-", "").isalnum() or len(name) > 20:
            raise LabError(f"lab name {name!r} must be letters, digits and '-', at most 20 characters")
        self.name = name
        self.root = os.path.join(LAB_ROOT, name)
        self.state_path = os.path.join(self.root, "state.json")
        self.bin_dir = os.path.join(self.root, "bin")
        self.progress = progress or (lambda msg: None)
        self.state: dict = {}
        self.etcd: EtcdCluster | None = None  # when this process started the lab's etcd

    # Names ---------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return f"{self.name}-"

    def node_netns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    def pod_netns(self, pod: str) -> str:
        return f"{self.prefix}pod-{pod}" if not pod.startswith("pod-") else f"{self.prefix}{pod}"

    @property
    def underlay_netns(self) -> str:
        return f"{self.prefix}underlay"

    @property
    def datastore_url(self) -> str:
        # A lab lives and dies with this machine's uptime: no need to fsync every commit.
        return self.state.get("datastore") or f"sqlite://{os.path.join(self.root, 'podnet.db')}?durable=false"

    def log_path(self, node: str) -> str:
        return os.path.join(self.root, f"{node}.log")

    def status_path(self, node: str) -> str:
        return os.path.join(self.root, f"{node}.status.json")

    @contextlib.contextmanager
    def datastore(self, create: bool = False):
        """The lab's datastore, opened from where it can be reached: an etcd lab's store listens in
        the underlay namespace, so the calling thread enters it while it uses the store. Only
        building the lab creates it: a lab whose store file is gone says so."""
        url = self.datastore_url
        with entered(self.underlay_netns) if url.startswith("etcd") else contextlib.nullcontext():
            store = open_datastore(url, create=create)
            try:
                yield store
            finally:
                store.close()

    # State file ------------------------------------------------------------

    def exists(self) -> bool:
        return os.path.exists(self.state_path)

    def load(self) -> dict:
        try:
            with open(self.state_path) as f:
                self.state = json.load(f)
        except FileNotFoundError:
            raise LabError(f"no lab named {self.name} is up", "start one with `podnet lab up`") from None
        except ValueError:
            self.state = {"name": self.name, "netns": [], "nodes": [], "pods": [], "corrupt": True}
        return self.state

    def _save(self) -> None:
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1)
        os.replace(tmp, self.state_path)

    def _intend_netns(self, name: str) -> None:
        self.state.setdefault("netns", []).append(name)
        self._save()
        topology.create_netns(name)

    # Up --------------------------------------------------------------------

    def up(self, spec: LabSpec, pod_names: list[str] | None = None, datastore_url: str | None = None) -> dict:
        if self.exists():
            raise LabError(f"lab {self.name} is already up", f"run `podnet lab down --name {self.name}` first")
        leftovers = [n for n in topology.list_netns() if n.startswith(self.prefix)]
        if leftovers:
            raise LabError(f"namespaces of an earlier lab {self.name} remain: {', '.join(leftovers)}",
                           f"run `podnet lab down --name {self.name}`")
        os.makedirs(self.root, exist_ok=True)
        self.state = {"name": self.name, "created": time.time(), "spec": dataclasses.asdict(spec), "netns": [],
                      "nodes": [], "pods": [], "complete": False, "datastore": datastore_url}
        self._save()
        try:
            self._build(spec, pod_names)
        except BaseException:
            self.progress("lab up failed; removing what it created")
            self.down()
            raise
        self.state["complete"] = True
        self._save()
        return self.status()

    def _build(self, spec: LabSpec, pod_names: list[str] | None) -> None:
        plugin = install_plugin(self.bin_dir)
        self.state["plugin"] = plugin
        self._save()
        self._intend_netns(self.underlay_netns)
        for s in range(spec.subnets):
            net = spec.subnet(s)
            self.progress(f"underlay: namespace {self.underlay_netns}, bridge {spec.bridge(s)} "
                          f"{spec.gateway(s)}/{net.prefixlen}" + (" (router between subnets)" if s else ""))
            topology.add_bridge(self.underlay_netns, spec.bridge(s), f"{spec.gateway(s)}/{net.prefixlen}", spec.mtu)
            if spec.ipv6:
                topology.add_address6(self.underlay_netns, spec.bridge(s),
                                      f"{spec.gateway6(s)}/{spec.subnet6(s).prefixlen}")
        if spec.subnets > 1:
            topology.set_forwarding(self.underlay_netns, True, ipv6=spec.ipv6)

        if spec.datastore == "etcd":
            self._start_etcd(spec)
        with self.datastore(create=True) as store:
            Resources(store).apply_pool(IPPool("default-ipv4-ippool", spec.pool, block_size=spec.block_size,
                                               vxlan_mode=spec.vxlan_mode, nat_outgoing=spec.nat_outgoing))
            if spec.ipv6:
                Resources(store).apply_pool(IPPool("default-ipv6-ippool", spec.pool6, vxlan_mode=spec.vxlan_mode))

        if spec.nat_outgoing:
            # Something outside the pools for masqueraded traffic to reach, so a learner can watch it.
            self.add_external_host()
        for i in range(1, spec.nodes + 1):
            self.add_node(f"node-{i}", spec.node_address(i), spec, wait=False)
        self.wait_converged()
        names = list(pod_names or [])
        for i in range(1, spec.nodes + 1):
            for k in range(1, spec.pods_per_node + 1):
                name = names.pop(0) if names else f"pod-{i}-{k}"
                self.add_pod(f"node-{i}", name)

    def _start_etcd(self, spec: LabSpec) -> None:
        base = os.path.join(etcd_data_root(), f"podnet-lab-{self.name}")
        self.etcd = EtcdCluster(base, spec.etcd_members, host=spec.gateway(0), netns=self.underlay_netns,
                                token=f"podnet-lab-{self.name}")
        self.progress(f"etcd: {spec.etcd_members} member(s) in {self.underlay_netns} at "
                      f"{', '.join(m.address for m in self.etcd.members)}")
        self.state["etcd_dir"] = base
        self._save()
        for member in self.etcd.members:
            member.start()
            self.state.setdefault("processes", []).append(member.to_state())
            self._save()
        self.etcd.wait_ready()
        self.state["datastore"] = self.etcd.url
        self._save()

    def record_etcd(self) -> None:
        """Remember restarted members' PIDs, so lab down finds them."""
        if self.etcd:
            others = [p for p in self.state.get("processes", []) if not p.get("what", "").startswith("etcd ")]
            self.state["processes"] = others + [m.to_state() for m in self.etcd.members if m.pid]
            self._save()

    def add_node(self, node: str, address: str, spec: LabSpec | None = None, wait: bool = True,
                 extra_args: list[str] | None = None) -> dict:
        spec = spec or LabSpec(**self.state.get("spec", {}))
        ns = self.node_netns(node)
        idx = max((n.get("index", 0) for n in self.state["nodes"]), default=0) + 1
        subnet = next((s for s in range(spec.subnets)
                       if ipaddress.ip_interface(address).ip in spec.subnet(s)), 0)
        self.progress(f"{node}: namespace {ns}, eth0 {address}, agent")
        self._intend_netns(ns)
        topology.add_veth_between(ns, "eth0", self.underlay_netns, f"veth-{node}"[:15], spec.mtu,
                                  master_b=spec.bridge(subnet))
        topology.configure_host(ns, "eth0", address, spec.gateway(subnet))
        if spec.ipv6:
            topology.add_address6(ns, "eth0", spec.node_address6(idx), spec.gateway6(subnet))
        entry = {"name": node, "netns": ns, "address": address, "interface": "eth0", "index": idx, "subnet": subnet}
        self.state["nodes"].append(entry)
        self._save()
        self._start_agent(entry, extra_args or [])
        if wait:
            self.wait_converged()
        return entry

    def _start_agent(self, entry: dict, extra_args: list[str]) -> None:
        node = entry["name"]
        for path in (self.status_path(node), os.path.join(self.root, f"{node}.filter.json")):
            if os.path.exists(path):
                os.unlink(path)
        # Enter only the network namespace (ip netns exec would also give the agent a mount namespace of
        # its own, hiding namespace files a runtime mounts elsewhere than /run/netns).
        cmd = [*enter_net(entry['netns']), sys.executable, "-m", "podnet", "agent",
               "--node", node, "--datastore", self.datastore_url, "--interface", entry["interface"],
               "--status-file", self.status_path(node), "--default-ipv4-pool", "",
               "--resync-interval", str(self.state.get("spec", {}).get("resync_interval", 30.0)),
               *extra_args]
        log = open(self.log_path(node), "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        entry["pid"] = proc.pid
        entry["pid_start"] = processes.start_time(proc.pid)
        entry["agent_cmd"] = cmd
        self._save()

    def stop_agent(self, node: str, kill: bool = False) -> None:
        entry = self._node(node)
        if kill:
            if processes.alive(entry["pid"], entry.get("pid_start")):
                os.kill(entry["pid"], 9)
                for _ in range(100):
                    processes._reap(entry["pid"])
                    if not processes.alive(entry["pid"], entry.get("pid_start")):
                        break
                    time.sleep(0.01)
        else:
            processes.stop(entry["pid"], entry.get("pid_start"))

    def restart_agent(self, node: str, extra_args: list[str] | None = None) -> None:
        entry = self._node(node)
        self.stop_agent(node)
        self._start_agent(entry, extra_args or [])

    def next_node(self, spec: LabSpec | None = None) -> tuple[str, str]:
        """(name, underlay address) for the next node to join: node-<n> with n past every node so far."""
        spec = spec or LabSpec(**self.state.get("spec", {}))
        taken = [int(n["name"].rsplit("-", 1)[1]) for n in self.state["nodes"]
                 if n["name"].startswith("node-") and n["name"].rsplit("-", 1)[1].isdigit()]
        n = max([self.state.get("last_node", 0), *taken]) + 1
        if n + 12 >= spec.subnet(spec.subnet_of_node(n)).num_addresses:
            raise LabError(f"the lab's underlay has no address left for node-{n}")
        return f"node-{n}", spec.node_address(n)

    def join_node(self) -> dict:
        """A new node joins: namespace, underlay link, agent; returns when every node has programmed it."""
        name, address = self.next_node()
        self.state["last_node"] = int(name.rsplit("-", 1)[1])
        entry = self.add_node(name, address)
        return entry

    def remove_node(self, node: str) -> dict:
        """The node leaves the cluster: its agent stops (which ends its liveness at once), its pods' and its
        own namespaces go (the kernel state first), then, as `podnet node delete` does, its record,
        addresses, blocks and endpoints. Returns that delete's summary."""
        entry = self._node(node)
        self.stop_agent(node)
        for pod in [p for p in self.state["pods"] if p["node"] == node]:
            topology.delete_netns(pod["netns"])
            self.state["pods"].remove(pod)
        topology.delete_netns(entry["netns"])
        self.state["nodes"].remove(entry)
        self._save()
        with self.datastore() as store:
            # A stopped agent ended its liveness record; one killed hard leaves it to expire: wait for that.
            return remove_node(Ipam(store), Resources(store), node, force=True, wait=LIVENESS_TTL_SECONDS + 5)

    def _node(self, node: str) -> dict:
        for entry in self.state["nodes"]:
            if entry["name"] == node:
                return entry
        raise LabError(f"lab {self.name} has no node {node}")

    def agent_status(self, node: str) -> dict | None:
        try:
            with open(self.status_path(node)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def wait_converged(self, timeout: float = 60.0) -> None:
        """Until every agent is ready and has programmed every other node."""
        deadline = time.monotonic() + timeout
        with self.datastore() as store:
            self._converge(store, deadline, timeout)

    def _converge(self, store, deadline: float, timeout: float) -> None:
        while time.monotonic() < deadline:
            pending = []
            members = [n for n in self.state["nodes"] if not self._left_cluster(n["name"], store)]
            names = [n["name"] for n in members]
            for entry in members:
                st = self.agent_status(entry["name"])
                others = sorted(set(names) - {entry["name"]})
                if not processes.alive(entry["pid"], entry.get("pid_start")):
                    raise LabError(f"the agent of {entry['name']} exited", self._log_tail(entry["name"]))
                if not st or not st.get("ready") or sorted(st.get("remote_nodes", [])) != others:
                    pending.append(entry["name"])
            if not pending:
                return
            time.sleep(0.05)
        raise LabError(f"agents did not converge within {timeout:.0f}s: {', '.join(pending)}",
                       self._log_tail(pending[0]))

    def _left_cluster(self, node: str, store) -> bool:
        """A node deleted by force is out of the cluster (nobody programs it, it programs nothing): its
        agent says it is fenced, or it was ready once and its record is gone (an agent that has not yet
        seen the delete, or cannot)."""
        st = self.agent_status(node) or {}
        if st.get("fenced"):
            return True
        if not st.get("ready"):
            return False  # still joining: its record may not be written yet
        return store.get(keys.node(node)) is None

    def _log_tail(self, node: str, lines: int = 15) -> str:
        try:
            with open(self.log_path(node), errors="replace") as f:
                return "agent log:\n" + "".join(f.readlines()[-lines:])
        except OSError:
            return "no agent log"

    EXTERNAL_SUBNET = "198.18.0.0/24"  # benchmarking range (RFC 2544): never a real host

    def add_external_host(self) -> dict:
        """A host outside the cluster, behind the underlay router: what natOutgoing traffic reaches."""
        ns = f"{self.prefix}external"
        net = ipaddress.ip_network(self.EXTERNAL_SUBNET)
        gw, host = f"{net.network_address + 1}/{net.prefixlen}", f"{net.network_address + 2}/{net.prefixlen}"
        self.progress(f"external host: namespace {ns}, {host}")
        self._intend_netns(ns)
        topology.add_veth_between(ns, "eth0", self.underlay_netns, "veth-external")
        topology.configure_host(ns, "eth0", host, gw.split("/")[0])
        with topology.ipr_in(self.underlay_netns) as ipr:
            idx = ipr.link_lookup(ifname="veth-external")[0]
            ipr.addr("add", index=idx, address=gw.split("/")[0], prefixlen=net.prefixlen)
        topology.set_forwarding(self.underlay_netns, True)
        entry = {"netns": ns, "ip": host.split("/")[0]}
        self.state["external"] = entry
        self._save()
        return entry

    # Pods ------------------------------------------------------------------

    def network_config(self, version: str = "1.0.0") -> dict:
        ipam = {"type": "podnet-ipam"}
        if self.state.get("spec", {}).get("ipv6"):
            ipam["assign_ipv6"] = "true"
        return {"cniVersion": version, "name": NETWORK_NAME, "type": "podnet", "ipam": ipam}

    def cni(self, node: str, command: str, container_id: str, netns: str, pod: str = "", namespace: str = "default",
            ifname: str = "eth0", config: dict | None = None, timeout: float = 60.0) -> tuple[int, dict | None, str]:
        """Run the plugin inside the node's namespace exactly as a runtime does: env + config on stdin."""
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": self.bin_dir,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}" if pod else "",
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        }
        # As a runtime runs it: in the node's network namespace, in the machine's mount namespace.
        proc = subprocess.run(
            [*enter_net(self.node_netns(node)), os.path.join(self.bin_dir, "podnet")],
            input=json.dumps(config or self.network_config()).encode(), env=env, capture_output=True, timeout=timeout,
        )
        out = proc.stdout.decode()
        try:
            parsed = json.loads(out) if out.strip() else None
        except ValueError:
            parsed = None
        if command == "ADD" and proc.returncode == 0 and isinstance(parsed, dict) and parsed.get("interfaces"):
            # As a runtime's pod would, the caller sends right away: its node's filter table passes nothing
            # for the interface until the agent has programmed it (fail closed). Wait a moment for that.
            self.wait_programmed(node, parsed["interfaces"][0].get("name", ""))
        return proc.returncode, parsed, out + proc.stderr.decode()

    def add_pod(self, node: str, pod: str, namespace: str = "default", labels: dict | None = None,
                ports: tuple = (), wait_filter: bool = False, ips: list[str] | None = None) -> dict:
        """Attach a pod by CNI ADD. With `labels` (or `ports`) the pod's v1 Pod record (and its
        Namespace's, if missing) is written first, as kube-controllers would have synced it before
        the runtime calls the plugin; `wait_filter` waits until the node's filter table has it.
        `ips`: the addresses to ask IPAM for (the CNI `ips` capability), instead of any free one."""
        if any(p["name"] == pod and p.get("namespace", "default") == namespace for p in self.state["pods"]):
            raise LabError(f"lab {self.name} already has a pod {namespace}/{pod}")
        ns = self.pod_netns(pod) if namespace == "default" else f"{self.prefix}pod-{namespace}-{pod}"
        container_id = uuid.uuid4().hex
        if labels is not None or ports:
            self.write_pod_records(namespace, pod, labels or {}, ports)
        self.progress(f"{pod}: namespace {ns} on {node}, CNI ADD")
        self._intend_netns(ns)
        with topology.ipr_in(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        entry = {"name": pod, "node": node, "netns": ns, "namespace": namespace, "container_id": container_id,
                 "ifname": "eth0", "labels": dict(labels or {}),
                 "ports": [f"{p.name}={p.port}/{p.protocol}" for p in ports]}
        self.state["pods"].append(entry)
        self._save()
        config = {**self.network_config(), "runtimeConfig": {"ips": list(ips)}} if ips else None
        code, result, raw = self.cni(node, "ADD", container_id, f"/run/netns/{ns}", pod, namespace, config=config)
        if code != 0:
            if labels is not None or ports:  # a pod added by hand: leave nothing of it behind
                self.delete_pod(pod, namespace)
            raise LabError(f"CNI ADD for {pod} on {node} failed", raw.strip())
        entry["ip"] = result["ips"][0]["address"].split("/")[0]
        entry["ips"] = [ip["address"].split("/")[0] for ip in result["ips"]]
        entry["host_interface"] = result["interfaces"][0]["name"]
        self._save()
        if wait_filter:
            self.wait_filter()
        else:
            # The node's filter table passes nothing for an interface it has not programmed yet (fail
            # closed): give its agent a moment, so what the caller sends next is not dropped for that.
            self.wait_programmed(node, entry["host_interface"])
        return entry

    def wait_programmed(self, node: str, interface: str, timeout: float = 5.0) -> bool:
        """Until the node's filter table holds the interface (True), or the time is up (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.filter_status(node)
            if st and interface in st.get("interfaces", ()):
                return True
            time.sleep(0.01)
        return False

    def write_pod_records(self, namespace: str, pod: str, labels: dict, ports: tuple = ()) -> None:
        from podnet.model.kinds import lookup
        from podnet.model.kube import Namespace, Pod

        with self.datastore() as store:
            res = Resources(store)
            if res.get(lookup("Namespace"), namespace) is None:
                res.write(lookup("Namespace"), Namespace(namespace), "apply")
            res.write(lookup("Pod"), Pod(namespace, pod, labels, tuple(ports)), "apply")

    def filter_status(self, node: str) -> dict | None:
        try:
            with open(os.path.join(self.root, f"{node}.filter.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def wait_filter(self, timeout: float = 60.0) -> None:
        """Until every node's filter table reflects the datastore as it is now (and so every change
        made before this call is enforced) and holds every pod of the node."""
        with self.datastore() as store:
            _, revision = store.list("/podnet/none/")
        deadline = time.monotonic() + timeout
        pending = []
        while time.monotonic() < deadline:
            pending = []
            for entry in self.state["nodes"]:
                st = self.filter_status(entry["name"]) or {}
                pods = {p["host_interface"] for p in self.state["pods"]
                        if p["node"] == entry["name"] and p.get("host_interface")}
                if not st.get("ok") or st.get("revision", 0) < revision or not pods <= set(st.get("interfaces", [])):
                    pending.append(entry["name"])
            if not pending:
                return
            time.sleep(0.02)
        raise LabError(f"the filter tables of {', '.join(pending)} did not catch up within {timeout:.0f}s",
                       self._log_tail(pending[0]))

    def delete_pod(self, pod: str, namespace: str | None = None) -> None:
        entry = self._pod(pod, namespace)
        self.cni(entry["node"], "DEL", entry["container_id"], f"/run/netns/{entry['netns']}", pod, entry["namespace"])
        topology.delete_netns(entry["netns"])
        self.state["pods"].remove(entry)
        self._save()
        if entry.get("labels") is not None and "labels" in entry:
            from podnet.model.kinds import lookup

            with self.datastore() as store:
                Resources(store).remove(lookup("Pod"), pod, entry["namespace"])

    def _pod(self, pod: str, namespace: str | None = None) -> dict:
        for entry in self.state["pods"]:
            if entry["name"] == pod and namespace in (None, entry.get("namespace", "default")):
                return entry
        raise LabError(f"lab {self.name} has no pod {namespace + '/' if namespace else ''}{pod}")

    def exec(self, netns: str, *cmd: str, timeout: float = 30.0, check: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run([*enter_net(netns), *cmd], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise LabError(f"`{' '.join(cmd)}` in {netns} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    # Status ----------------------------------------------------------------

    def status(self) -> dict:
        if not self.state:
            self.load()
        with self.datastore() as store:
            res, ipam = Resources(store), Ipam(store)
            records = {n.name: n for n in res.nodes()}
            blocks: dict[str, list[str]] = {}
            for b in ipam.blocks():
                if b.node:
                    blocks.setdefault(b.node, []).append(b.cidr)
        nodes = []
        for entry in self.state.get("nodes", []):
            rec = records.get(entry["name"])
            st = self.agent_status(entry["name"]) or {}
            nodes.append({
                "name": entry["name"],
                "netns": entry["netns"],
                "underlay_interface": entry["interface"],
                "underlay_ip": entry["address"].split("/")[0],
                "underlay_subnet": str(ipaddress.ip_interface(entry["address"]).network),
                "tunnel_ip": rec.tunnel_address if rec else None,
                "vtep_mac": rec.effective_vtep_mac if rec else None,
                "underlay_ip6": rec.ip6 if rec else None,
                "tunnel_ip6": rec.tunnel_address6 if rec else None,
                "vtep_mac6": rec.vtep_mac6 if rec and rec.address6 else None,
                "blocks": blocks.get(entry["name"], []),
                "agent_pid": entry.get("pid"),
                "agent_running": processes.alive(entry.get("pid", 0), entry.get("pid_start")),
                "ready": bool(st.get("ready")),
                "fenced": bool(st.get("fenced")),  # deleted from the cluster by force; its agent withdrew
            })
        pods = [{"name": p["name"], "namespace": p.get("namespace", "default"), "node": p["node"], "netns": p["netns"],
                 "ip": p.get("ip"), "ips": p.get("ips", []), "addresses": p.get("ips", []),
                 "labels": p.get("labels", {}), "ports": p.get("ports", []),
                 "interface": p.get("host_interface"), "container_id": p["container_id"]}
                for p in self.state.get("pods", [])]
        return {"name": self.name, "datastore": self.datastore_url, "underlay_netns": self.underlay_netns,
                "complete": self.state.get("complete", False), "nodes": nodes, "pods": pods,
                "external": self.state.get("external")}

    # Down ------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove every namespace, process and file of the lab. Safe after a crash, safe to repeat."""
        removed: list[str] = []
        if not self.state:
            try:
                self.load()
            except LabError:
                self.state = {"netns": [], "nodes": [], "pods": []}
        for entry in self.state.get("nodes", []):
            if entry.get("pid") and processes.stop(entry["pid"], entry.get("pid_start")):
                removed.append(f"agent {entry['name']} (pid {entry['pid']})")
        for extra in self.state.get("processes", []):
            if processes.stop(extra["pid"], extra.get("pid_start")):
                removed.append(f"{extra.get('what', 'process')} (pid {extra['pid']})")
        names = set(self.state.get("netns", [])) | {n for n in topology.list_netns() if n.startswith(self.prefix)}
        # Pods first, the underlay last: nothing is left dangling between them.
        for ns in sorted(names, key=lambda n: (n == self.underlay_netns, not n.startswith(self.prefix + "pod-"), n)):
            if topology.delete_netns(ns):
                removed.append(f"netns {ns}")
        if self.state.get("etcd_dir"):
            shutil.rmtree(self.state["etcd_dir"], ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        self.state = {}
        return removed


def all_labs() -> list[str]:
    try:
        return sorted(os.listdir(LAB_ROOT))
    except FileNotFoundError:
        return []
