"""Workload endpoint: one pod interface as podnet attached it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

HOST_VETH_PREFIX = "cali"


def host_veth_name(pod_namespace: str | None, pod_name: str | None, container_id: str) -> str:
    """`cali` + 11 hex chars of SHA-1("<namespace>.<pod>"), as Calico names it.

    Kubernetes pods are named by namespace and pod so the name survives a
    sandbox restart; anything else (podman, bare CNI) by its container id.
    """
    seed = f"{pod_namespace}.{pod_name}" if pod_namespace and pod_name else container_id
    return HOST_VETH_PREFIX + hashlib.sha1(seed.encode()).hexdigest()[:11]


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

    @property
    def key_name(self) -> str:
        return f"{self.container_id}-{self.interface}"

    @property
    def handle(self) -> str:
        return ipam_handle(self.container_id)

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
    def from_manifest(cls, doc: dict) -> WorkloadEndpoint:
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
        )


def ipam_handle(container_id: str) -> str:
    """The IPAM handle of a pod's addresses, as Calico names it."""
    return f"k8s-pod-network.{container_id}"


def tunnel_handle(node: str) -> str:
    """The IPAM handle of a node's VXLAN tunnel address."""
    return f"vxlan-tunnel-addr-{node}"


def tunnel_handle6(node: str) -> str:
    """The IPAM handle of a node's IPv6 VXLAN tunnel address."""
    return f"vxlan-v6-tunnel-addr-{node}"
