"""Workload endpoint: one pod interface as podnet attached it.

An attachment is identified by (container ID, interface name), as the CNI spec
identifies it. Everything podnet derives from that pair is decided here, once:
the endpoint's name in the datastore, its IPAM handle, the host veth's name and
the ownership mark written on that veth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

HOST_VETH_PREFIX = "cali"
PRIMARY_INTERFACE = "eth0"  # kubelet's interface name: the one that keeps Calico's names and handle
HOST_VETH_TRIES = 8  # name candidates tried before an ADD gives up (each further one is a fresh hash)
_IFALIAS_MAX = 255  # IFALIASZ - 1: the kernel's limit on an interface alias


def endpoint_name(container_id: str, interface: str) -> str:
    """The endpoint's name (and the last part of its key): `<container>:<interface>`, each part
    percent-encoded, so ':' never occurs inside a part and no two pairs share a name
    (`k1-eth0` + `x` and `k1` + `eth0-x` are `k1-eth0:x` and `k1:eth0-x`)."""
    return f"{quote(container_id, safe='')}:{quote(interface, safe='')}"


def legacy_endpoint_name(container_id: str, interface: str) -> str:
    """The ambiguous `<container>-<interface>` of records written before endpoint_name(): read only,
    and only trusted after checking the record's own container and interface."""
    return f"{container_id}-{interface}"


def ipam_handle(container_id: str, interface: str = PRIMARY_INTERFACE) -> str:
    """The IPAM handle of one attachment's addresses: Calico's `k8s-pod-network.<container>` for the
    primary interface, `k8s-pod-network.<endpoint name>` for any other, so a DEL of eth1 can never
    release eth0's address."""
    suffix = container_id if interface == PRIMARY_INTERFACE else endpoint_name(container_id, interface)
    return f"k8s-pod-network.{suffix}"


POD_HANDLE_PREFIX = ipam_handle("")


def _veth(seed: str) -> str:
    return HOST_VETH_PREFIX + hashlib.sha1(seed.encode()).hexdigest()[:11]  # 15 bytes: the kernel's limit


def host_veth_names(pod_namespace: str | None, pod_name: str | None, container_id: str,
                    interface: str = PRIMARY_INTERFACE) -> Iterator[str]:
    """The host veth names an attachment may take, best first. The one place that decides them.

    First Calico's own name, `cali` + 11 hex chars of SHA-1("<namespace>.<pod>") (by container id
    outside Kubernetes), with the interface hashed in for any interface but eth0. A name held by a
    live interface (the pair of an older sandbox of the same pod, whose DEL has not come yet, or
    anything podnet did not create) is never taken over: ADD moves on to the next name, derived from
    the container id as well, so two sandboxes or two interfaces never share a veth. CHECK and DEL
    read the name from the endpoint record; nothing recomputes it."""
    seed = f"{pod_namespace}.{pod_name}" if pod_namespace and pod_name else container_id
    if interface != PRIMARY_INTERFACE:
        seed += "/" + interface  # '/' is in neither a pod name nor an interface name
    yield _veth(seed)
    for n in range(1, HOST_VETH_TRIES):
        yield _veth(f"{seed}/{container_id}/{n}")


def host_veth_name(pod_namespace: str | None, pod_name: str | None, container_id: str,
                   interface: str = PRIMARY_INTERFACE) -> str:
    """The first of host_veth_names(): Calico's name for a pod's eth0."""
    return next(host_veth_names(pod_namespace, pod_name, container_id, interface))


def owner_mark(container_id: str, interface: str) -> str:
    """What ADD writes as the host veth's alias (`ip link` shows it) and DEL, CHECK and GC require
    before they touch the veth: a name alone proves nothing about who created an interface."""
    mark = f"podnet {endpoint_name(container_id, interface)}"
    if len(mark.encode()) > _IFALIAS_MAX:
        mark = "podnet sha1:" + hashlib.sha1(endpoint_name(container_id, interface).encode()).hexdigest()
    return mark


@dataclass(frozen=True)
class WorkloadEndpoint:
    node: str
    container_id: str
    interface: str  # inside the pod, e.g. eth0
    host_interface: str  # cali...
    ips: tuple[str, ...]  # CIDRs as given to the pod, e.g. 10.244.0.5/32
    mac: str  # the pod-side MAC
    netns: str = ""
    pod_namespace: str = ""
    pod_name: str = ""
    network: str = ""  # the CNI network name
    attrs: dict = field(default_factory=dict, hash=False)
    # The name it is stored under (a record read back may carry a legacy name) and the datastore's
    # mod revision of that record when it was read (0: not read from the store).
    stored_name: str = field(default="", compare=False)
    revision: int = field(default=0, compare=False)

    @property
    def key_name(self) -> str:
        return self.stored_name or endpoint_name(self.container_id, self.interface)

    @property
    def handle(self) -> str:
        return ipam_handle(self.container_id, self.interface)

    @property
    def owner_mark(self) -> str:
        return owner_mark(self.container_id, self.interface)

    @property
    def legacy(self) -> bool:
        """Recorded by a podnet before endpoint_name(): under `<container>-<interface>`, with its
        addresses under the container's handle whatever the interface, and no owner mark on its veth."""
        return bool(self.stored_name) and self.stored_name != endpoint_name(self.container_id, self.interface)

    def to_manifest(self) -> dict:
        return {
            "apiVersion": "projectcalico.org/v3",
            "kind": "WorkloadEndpoint",
            "metadata": {"name": self.key_name, "namespace": self.pod_namespace},
            "spec": {
                "node": self.node,
                "containerID": self.container_id,
                "pod": self.pod_name,
                "interfaceName": self.host_interface,
                "endpoint": self.interface,
                "ipNetworks": list(self.ips),
                "mac": self.mac,
                "netns": self.netns,
                "network": self.network,
            },
        }

    @classmethod
    def from_manifest(cls, doc: dict, revision: int = 0, stored_name: str | None = None) -> WorkloadEndpoint:
        """stored_name: the last part of the key it was read from (default: the manifest's name)."""
        meta, spec = doc["metadata"], doc["spec"]
        return cls(
            node=spec["node"],
            container_id=spec["containerID"],
            interface=spec["endpoint"],
            host_interface=spec["interfaceName"],
            ips=tuple(spec.get("ipNetworks", ())),
            mac=spec.get("mac", ""),
            netns=spec.get("netns", ""),
            pod_namespace=meta.get("namespace", ""),
            pod_name=spec.get("pod", ""),
            network=spec.get("network", ""),
            stored_name=meta.get("name", "") if stored_name is None else stored_name,
            revision=revision,
        )


def explained_handles(endpoints) -> set[str]:
    """The pod IPAM handles that these endpoints account for: an address under any other pod handle
    has no endpoint (a leak, or an ADD that died halfway)."""
    handles = {ep.handle for ep in endpoints}
    return handles | {ipam_handle(ep.container_id) for ep in endpoints if ep.legacy}


def tunnel_handle(node: str) -> str:
    """The IPAM handle of a node's VXLAN tunnel address."""
    return f"vxlan-tunnel-addr-{node}"


def tunnel_handle6(node: str) -> str:
    """The IPAM handle of a node's IPv6 VXLAN tunnel address."""
    return f"vxlan-v6-tunnel-addr-{node}"
