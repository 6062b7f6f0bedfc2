"""IPAM block: a /26 (or other blockSize) of a pool, affine to one node.

Pure bookkeeping of which addresses are taken and by whom. Released ordinals
go to the back of the free list so an address is not handed out again at once
(stale ARP and conntrack entries of the previous owner have time to age out).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field


@dataclass
class Allocation:
    handle: str
    attrs: dict = field(default_factory=dict)


@dataclass
class Block:
    cidr: str
    affinity: str | None = None  # "host:<node>"
    allocations: dict[int, Allocation] = field(default_factory=dict)
    unallocated: list[int] = field(default_factory=list)
    sequence: int = 0  # bumped on every change; lets readers spot stale copies

    @classmethod
    def new(cls, cidr: str, node: str | None) -> Block:
        net = ipaddress.ip_network(cidr)
        return cls(
            cidr=str(net),
            affinity=f"host:{node}" if node else None,
            unallocated=list(range(net.num_addresses)),
        )

    @property
    def network(self):
        return ipaddress.ip_network(self.cidr)

    @property
    def node(self) -> str | None:
        if self.affinity and self.affinity.startswith("host:"):
            return self.affinity[5:]
        return None

    @property
    def size(self) -> int:
        return self.network.num_addresses

    @property
    def free(self) -> int:
        return len(self.unallocated)

    @property
    def empty(self) -> bool:
        return not self.allocations

    def address(self, ordinal: int) -> str:
        return str(self.network.network_address + ordinal)

    def ordinal(self, ip: str) -> int:
        addr = ipaddress.ip_address(ip)
        if addr not in self.network:
            raise ValueError(f"{ip} is not in block {self.cidr}")
        return int(addr) - int(self.network.network_address)

    def assign(self, handle: str, attrs: dict | None = None, count: int = 1, reserved=()) -> list[str]:
        """Take up to `count` free addresses for `handle`; fewer if the block is fuller. Addresses in
        the `reserved` networks (IPReservation) are passed over and stay free."""
        if reserved:
            reserved = [n for n in reserved if n.version == self.network.version and n.overlaps(self.network)]
        if reserved:
            first = self.network.network_address
            taken = [o for o in self.unallocated if not any(first + o in n for n in reserved)][:count]
            chosen = set(taken)
            self.unallocated = [o for o in self.unallocated if o not in chosen]
        else:
            taken = self.unallocated[:count]
            del self.unallocated[: len(taken)]
        for o in taken:
            self.allocations[o] = Allocation(handle, dict(attrs or {}))
        if taken:
            self.sequence += 1
        return [self.address(o) for o in taken]

    def assign_ip(self, ip: str, handle: str, attrs: dict | None = None) -> bool:
        """Take one given address; False if it is in use."""
        o = self.ordinal(ip)
        if o in self.allocations:
            return False
        self.unallocated.remove(o)
        self.allocations[o] = Allocation(handle, dict(attrs or {}))
        self.sequence += 1
        return True

    def release_handle(self, handle: str) -> list[str]:
        gone = sorted(o for o, a in self.allocations.items() if a.handle == handle)
        return self._release(gone)

    def release_ip(self, ip: str) -> list[str]:
        o = self.ordinal(ip)
        return self._release([o] if o in self.allocations else [])

    def _release(self, ordinals: list[int]) -> list[str]:
        for o in ordinals:
            del self.allocations[o]
            self.unallocated.append(o)
        if ordinals:
            self.sequence += 1
        return [self.address(o) for o in ordinals]

    def ips_of(self, handle: str) -> list[str]:
        return [self.address(o) for o in sorted(self.allocations) if self.allocations[o].handle == handle]

    def in_use(self) -> dict[str, Allocation]:
        return {self.address(o): a for o, a in sorted(self.allocations.items())}

    def user_of(self, alloc: Allocation) -> str | None:
        """The node an allocation of this block serves: the node it names, else the block's own node
        (tunnel addresses, and allocations recorded before a node was, name none). The one answer to
        "whose address is this" for GC, leak reports, node removal, describe and the syncer."""
        return alloc.attrs.get("node") or self.node

    def borrowed(self) -> dict[str, str]:
        """ip -> the node using it, for addresses of this block that another node than its own uses."""
        return {ip: user for ip, a in self.in_use().items() if (user := self.user_of(a)) and user != self.node}

    def copy(self) -> Block:
        """A copy whose allocations can change without touching this one's (allocations themselves
        are replaced, never changed, so they are shared)."""
        return Block(self.cidr, self.affinity, dict(self.allocations), list(self.unallocated), self.sequence)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "cidr": self.cidr,
                "affinity": self.affinity,
                "allocations": {str(o): {"handle": a.handle, "attrs": a.attrs} for o, a in self.allocations.items()},
                "unallocated": self.unallocated,
                "sequence": self.sequence,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Block:
        d = json.loads(raw)
        return cls(
            cidr=d["cidr"],
            affinity=d.get("affinity"),
            allocations={int(o): Allocation(a["handle"], a.get("attrs", {})) for o, a in d["allocations"].items()},
            unallocated=list(d["unallocated"]),
            sequence=d.get("sequence", 0),
        )
