"""Where each resource lives in the key space (Calico's layout, under /podnet)."""

from __future__ import annotations

import functools
import ipaddress

ROOT = "/podnet/"
POOLS = ROOT + "resources/v3/ippools/"
NODES = ROOT + "resources/v3/nodes/"
ENDPOINTS = ROOT + "resources/v3/workloadendpoints/"
AGENT_CONFIGS = ROOT + "resources/v3/agentconfigurations/"
IP_RESERVATIONS = ROOT + "resources/v3/ipreservations/"
CONFIG = ROOT + "config/"
IPAM = ROOT + "ipam/v2/"
HANDLES = IPAM + "handle/"
IPAM_CONFIG = IPAM + "config"
# Every reserved network of every IPReservation in one record, written with them: IPAM reads it in
# the same round trip as the pools and compares its revision, so a reservation made during an
# allocation makes that allocation retry rather than hand out a newly reserved address.
RESERVED = IPAM + "reserved"
AFFINITY = IPAM + "host/"
PODS = ROOT + "resources/v3/pods/"  # v1 Pods' labels and named ports, as kube-controllers would sync them
NAMESPACES = ROOT + "resources/v3/namespaces/"
NETWORK_POLICIES = ROOT + "resources/v3/networkpolicies/"  # projectcalico.org/v3, <namespace>/<name>
K8S_NETWORK_POLICIES = ROOT + "resources/v3/k8snetworkpolicies/"  # networking.k8s.io/v1, <namespace>/<name>
GLOBAL_NETWORK_POLICIES = ROOT + "resources/v3/globalnetworkpolicies/"
LIVENESS = ROOT + "liveness/nodes/"  # one liveness record per running agent (a lease on etcd)
KERNEL_REPORTS = ROOT + "status/kernel/"  # what each node's kernel holds, as its agent last saw it
KERNEL_REPORT_REQUEST = ROOT + "status/kernel-request"  # written by `ipam check`: agents report afresh
NODE_STATUS = ROOT + "status/v1/nodes/"  # what each agent reports about its node (no agent follows it)


def pool(name: str) -> str:
    return POOLS + name


def node(name: str) -> str:
    return NODES + name


def node_status(name: str) -> str:
    return NODE_STATUS + name


def liveness(node_name: str) -> str:
    return LIVENESS + node_name


def kernel_report(node_name: str) -> str:
    return KERNEL_REPORTS + node_name


def endpoints_of(node_name: str) -> str:
    return f"{ENDPOINTS}{node_name}/"


def endpoint(node_name: str, key_name: str) -> str:
    """key_name: model.endpoint.endpoint_name(container, interface), `<container>:<interface>` (older
    records: `<container>-<interface>`, read by Resources.endpoint_of only)."""
    return f"{ENDPOINTS}{node_name}/{key_name}"


def _cidr_part(cidr: str) -> str:
    return cidr.replace("/", "-")


def cidr_from_part(part: str) -> str:
    addr, _, plen = part.rpartition("-")
    return f"{addr}/{plen}"


def blocks(version: int) -> str:
    return f"{IPAM}assignment/ipv{version}/block/"


@functools.lru_cache(maxsize=4096)
def _version(cidr: str) -> int:
    # Parsing a network costs ~15 us; IPAM derives a few keys from the same block per allocation.
    return ipaddress.ip_network(cidr).version


def block(cidr: str) -> str:
    return blocks(_version(cidr)) + _cidr_part(cidr)


def affinities(node_name: str, version: int) -> str:
    return f"{AFFINITY}{node_name}/ipv{version}/block/"


def block_claims(node_name: str, version: int) -> str:
    """Bumped by every block claim of the node: claims compare it, so two allocators of one node
    that race to claim cannot both pass the node's block limit. Outside the affinity prefix."""
    return f"{AFFINITY}{node_name}/ipv{version}/claims"


def affinity(node_name: str, cidr: str) -> str:
    return affinities(node_name, _version(cidr)) + _cidr_part(cidr)


def parse_affinity(key: str) -> tuple[str, str] | None:
    """(node, block cidr) of an affinity key, None for anything else."""
    if not key.startswith(AFFINITY):
        return None
    parts = key[len(AFFINITY):].split("/")
    if len(parts) != 4 or parts[2] != "block":
        return None
    return parts[0], cidr_from_part(parts[3])


def handle(handle_id: str) -> str:
    return HANDLES + handle_id
