"""What an agent says about its node: that it is alive, and what its kernel holds.

`AgentLiveness` is the value of the node's liveness record (a lease on etcd, a
heartbeat with an expiry on SQLite): while it lives, the node's agent runs and
holds the node's addresses, so nothing may hand them to anyone else.

`KernelReport` is what the agent last saw in its own kernel: every address it
answers for (tunnel addresses on the VXLAN devices, pod addresses by their host
routes) and the endpoints whose sandbox is gone. `podnet ipam check` compares
the reports of all nodes with IPAM: it cannot look into another machine's
kernel itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

# Timings (docs/multi-node.md): an agent renews its liveness every RENEW seconds; the record expires
# LIVENESS_TTL seconds after the last renewal, i.e. after three missed renewals.
LIVENESS_RENEW_SECONDS = 5.0
LIVENESS_TTL_SECONDS = 15.0
KERNEL_REPORT_EVERY = 3  # renewals between two looks at the kernel (15 s); written only when changed


@dataclass(frozen=True)
class AgentLiveness:
    node: str
    host: str  # the machine's hostname
    pid: int
    started: float  # unix time the agent started
    ttl: float
    renew: float
    version: str = ""  # the agent's podnet version (`podnet version` lists them)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AgentLiveness:
        d = json.loads(raw)
        return cls(str(d.get("node", "")), str(d.get("host", "")), int(d.get("pid", 0)),
                   float(d.get("started", 0)), float(d.get("ttl", 0)), float(d.get("renew", 0)),
                   str(d.get("version", "")))


@dataclass(frozen=True)
class GoneEndpoint:
    endpoint: str  # the endpoint's key name
    netns: str
    host_interface: str
    ips: tuple[str, ...]


@dataclass(frozen=True)
class KernelReport:
    node: str
    time: float  # when the agent looked
    addresses: dict = field(default_factory=dict)  # ip -> "tunnel <device>" | "pod <host veth>"
    netns_gone: tuple[GoneEndpoint, ...] = ()
    request: int = 0  # the revision of the last report request (`ipam check`) this report answers

    def same_content(self, other: KernelReport | None) -> bool:
        return other is not None and (self.node, self.addresses, self.netns_gone, self.request) == (
            other.node, other.addresses, other.netns_gone, other.request)

    def to_json(self) -> bytes:
        return json.dumps({"node": self.node, "time": self.time, "addresses": self.addresses,
                           "netnsGone": [asdict(g) for g in self.netns_gone], "request": self.request},
                          sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> KernelReport:
        d = json.loads(raw)
        gone = tuple(GoneEndpoint(g["endpoint"], g.get("netns", ""), g.get("host_interface", ""),
                                  tuple(g.get("ips", ()))) for g in d.get("netnsGone", ()))
        return cls(str(d["node"]), float(d.get("time", 0)), dict(d.get("addresses", {})), gone,
                   int(d.get("request", 0)))
