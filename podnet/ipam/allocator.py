"""Address allocation with per-node block affinity.

A node takes addresses from blocks affine to it; when they are full it claims
the next unclaimed block of a usable pool. Every write is a transaction that
compares the mod_revision of each record it read, so two allocators (threads,
processes, machines) that race never hand out one address twice: the loser
re-reads and tries again. A block and the handle that indexes its
allocations are written in the same transaction, so a crash never leaves an
address that no handle can release.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from podnet.datastore import keys
from podnet.datastore.api import Datastore, Delete, KeyValue, ModRevisionIs, Put
from podnet.datastore.resources import Resources
from podnet.errors import PodnetError
from podnet.model import Block, IPPool

MAX_CAS_RETRIES = 100
_UNREAD = object()  # "the caller has not read this record"
DEFAULT_MAX_BLOCKS_PER_HOST = 20


class IpamError(PodnetError):
    pass


class NoUsablePool(IpamError):
    """No enabled pool of the family (and of the requested names) exists."""


class PoolExhausted(IpamError):
    """Every usable pool is full for this node."""


class IpamConflict(IpamError):
    """Too many concurrent writers; nothing was allocated. Try again."""


@dataclass(frozen=True)
class IpamConfig:
    """Cluster-wide IPAM settings (calicoctl ipam configure)."""

    strict_affinity: bool = False  # never borrow from another node's block
    max_blocks_per_host: int = DEFAULT_MAX_BLOCKS_PER_HOST  # 0: no limit

    def to_json(self) -> bytes:
        return json.dumps({"strictAffinity": self.strict_affinity, "maxBlocksPerHost": self.max_blocks_per_host}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> IpamConfig:
        d = json.loads(raw)
        return cls(bool(d.get("strictAffinity", False)), int(d.get("maxBlocksPerHost", DEFAULT_MAX_BLOCKS_PER_HOST)))


@dataclass(frozen=True)
class BlockRecord:
    block: Block
    kv: KeyValue


class Ipam:
    def __init__(self, store: Datastore, max_blocks_per_host: int | None = None):
        """`max_blocks_per_host`: overrides the stored IPAM config (tests, benchmarks)."""
        self.store = store
        self.resources = Resources(store)
        self._max_blocks_override = max_blocks_per_host
        self._affine_cache: dict[tuple[str, int], list[str]] = {}

    def config(self) -> IpamConfig:
        kv = self.store.get(keys.IPAM_CONFIG)
        config = IpamConfig.from_json(kv.value) if kv else IpamConfig()
        if self._max_blocks_override is not None:
            config = IpamConfig(config.strict_affinity, self._max_blocks_override)
        return config

    def set_config(self, config: IpamConfig) -> None:
        self.store.put(keys.IPAM_CONFIG, config.to_json())

    @property
    def max_blocks_per_host(self) -> int:
        return self.config().max_blocks_per_host

    # Allocation --------------------------------------------------------

    def usable_pools(self, version: int, names: list[str] | None = None, use: str = "Workload",
                     node: str | None = None, labels: dict | None = None) -> list[IPPool]:
        """Enabled pools of the family for this use whose nodeSelector matches the node's labels;
        with `names`, only those pools (a pod may narrow the choice, never widen it past a selector)."""
        pools = [p for p in self.resources.pools() if p.version == version]
        if names:
            by_name = {p.name: p for p in pools}
            by_cidr = {p.cidr: p for p in pools}
            chosen = []
            for n in names:
                p = by_name.get(n) or by_cidr.get(str(_network_or_none(n)))
                if p is None:
                    raise NoUsablePool(f"IPv{version} pool {n!r} does not exist")
                chosen.append(p)
            pools = chosen
        usable = [p for p in pools if not p.disabled and use in p.allowed_uses]
        if node is not None and any(p.node_selector.strip() != "all()" for p in usable):
            if labels is None:
                record = self.resources.node(node)
                labels = record.labels if record else {}
            usable = [p for p in usable if p.selects(labels)]
        if not usable:
            what = (f"named {', '.join(names)}" if names else "") + (f" for node {node}" if node else "")
            what = what.strip() or "at all"
            raise NoUsablePool(
                f"no enabled IPv{version} pool {what}",
                "create one with `podnet apply -f pool.yaml` or enable an existing pool",
            )
        return usable

    def auto_assign(
        self,
        node: str,
        handle: str,
        attrs: dict | None = None,
        version: int = 4,
        pools: list[str] | None = None,
        use: str = "Workload",
        labels: dict | None = None,
    ) -> str:
        """Allocate one address for `handle` on `node`; returns it without prefix.
        `labels`: the node's labels when its record is not written yet (else read from it)."""
        candidates = self.usable_pools(version, pools, use, node, labels)
        networks = [p.network for p in candidates]
        config = None  # read only when the node's own blocks are full
        attrs = dict(attrs or {}, node=node)  # who uses the address, also when it is borrowed
        fresh = False  # whether the node's block list was just read from the store
        for _ in range(MAX_CAS_RETRIES):
            affine = [c for c in self._affine(node, version, refresh=fresh) if _within(c, networks)]
            outcome = self._assign_from(affine, node, handle, attrs)
            if isinstance(outcome, str):
                return outcome
            if outcome is _CONFLICT:
                continue
            if not fresh:  # full by a possibly stale list: look again before claiming
                fresh = True
                continue
            # Every affine block is full: claim another, unless the node may hold no more.
            config = config or self.config()
            limit = config.max_blocks_per_host
            at_limit = limit and len(self.node_block_cidrs(node, version)) >= limit
            cidr = None if at_limit else self._free_block(candidates)
            if cidr is not None:
                self._claim(node, cidr)  # a lost race simply means another loop
                continue  # `fresh` stays True: the next pass re-reads the node's blocks
            # No block to claim: borrow a free address from another node's block.
            if not config.strict_affinity:
                outcome = self._borrow(candidates, node, handle, attrs)
                if isinstance(outcome, str):
                    return outcome
                if outcome is _CONFLICT:
                    continue
            if at_limit:
                raise PoolExhausted(
                    f"node {node} already holds {limit} blocks and they are full",
                    "raise max blocks per host (podnet ipam configure) or add a pool",
                )
            raise PoolExhausted(
                f"no free address left in IPv{version} pools {', '.join(p.name for p in candidates)}"
                + (" (strict affinity: no borrowing)" if config.strict_affinity else ""),
                "add a pool or release unused addresses (podnet ipam check)",
            )
        raise IpamConflict(
            f"gave up allocating for {handle} after {MAX_CAS_RETRIES} conflicting writes", "try again later"
        )

    def _affine(self, node: str, version: int, refresh: bool) -> list[str]:
        """The node's block CIDRs, from a per-instance cache unless `refresh`. A stale list is safe:
        every block is read before use and must still be affine to the node."""
        key = (node, version)
        if refresh or key not in self._affine_cache:
            self._affine_cache[key] = self.node_block_cidrs(node, version)
        return self._affine_cache[key]

    def _assign_from(self, cidrs: list[str], node: str, handle: str, attrs: dict):
        for cidr in cidrs:
            bkv, hkv = self.store.get_many([keys.block(cidr), keys.handle(handle)])  # one round trip
            if bkv is None:
                continue
            rec = BlockRecord(Block.from_json(bkv.value), bkv)
            if rec.block.node != node or rec.block.free == 0:
                continue
            ips = rec.block.assign(handle, attrs)
            if self._write_block_and_handle(rec, handle, hkv):
                return ips[0]
            return _CONFLICT
        return _FULL

    def _borrow(self, pools: list[IPPool], node: str, handle: str, attrs: dict):
        networks = [p.network for p in pools]
        for block in self.blocks(pools[0].version):
            if block.free and block.node != node and _within(block.cidr, networks):
                rec = self.block(block.cidr)
                if rec is None or rec.block.free == 0:
                    continue
                ip = rec.block.assign(handle, attrs)[0]
                if self._write_block_and_handle(rec, handle):
                    return ip
                return _CONFLICT
        return _FULL

    def _write_block_and_handle(self, rec: BlockRecord, handle: str, hkv=_UNREAD) -> bool:
        """Write the changed block, and the handle's count of addresses in it, atomically.
        `hkv`: the handle record as already read (None: absent); read here when not given.
        Compare-and-swap on both, so a stale read only costs a retry."""
        hkey = keys.handle(handle)
        if hkv is _UNREAD:
            hkv = self.store.get(hkey)
        doc = json.loads(hkv.value) if hkv else {"handle": handle, "blocks": {}}
        count = len(rec.block.ips_of(handle))
        if count > 0:
            doc["blocks"][rec.block.cidr] = count
        else:
            doc["blocks"].pop(rec.block.cidr, None)
        ops = [Put(keys.block(rec.block.cidr), rec.block.to_json())]
        ops.append(Put(hkey, json.dumps(doc).encode()) if doc["blocks"] else Delete(hkey))
        compares = [
            ModRevisionIs(keys.block(rec.block.cidr), rec.kv.mod_revision),
            ModRevisionIs(hkey, hkv.mod_revision if hkv else 0),
        ]
        return self.store.txn(compares, ops).succeeded

    def _free_block(self, pools: list[IPPool]) -> str | None:
        taken = set()
        for version in {p.version for p in pools}:
            kvs, _ = self.store.list(keys.blocks(version), keys_only=True)
            taken.update(keys.cidr_from_part(kv.key.rsplit("/", 1)[1]) for kv in kvs)
        for pool in pools:
            for net in pool.blocks():
                if str(net) not in taken:
                    return str(net)
        return None

    def _claim(self, node: str, cidr: str) -> bool:
        """Claim a block for node: the block and its affinity appear together or not at all."""
        bkey, akey = keys.block(cidr), keys.affinity(node, cidr)
        return self.store.txn(
            [ModRevisionIs(bkey, 0), ModRevisionIs(akey, 0)],
            [Put(bkey, Block.new(cidr, node).to_json()), Put(akey, b'{"state":"confirmed"}')],
        ).succeeded

    # Release -----------------------------------------------------------

    def release_handle(self, handle: str) -> list[str]:
        """Release every address of handle; returns them. Releasing nothing is fine."""
        released: list[str] = []
        for _ in range(MAX_CAS_RETRIES):
            hkv = self.store.get(keys.handle(handle))
            if hkv is None:
                return released
            cidrs = list(json.loads(hkv.value)["blocks"])
            if not cidrs:
                self.store.compare_and_delete(hkv.key, hkv.mod_revision)
                continue
            rec = self.block(cidrs[0])
            if rec is None:
                # The block vanished (e.g. deleted by hand): drop it from the handle.
                doc = json.loads(hkv.value)
                doc["blocks"].pop(cidrs[0])
                self.store.compare_and_swap(hkv.key, json.dumps(doc).encode(), hkv.mod_revision)
                continue
            ips = rec.block.release_handle(handle)
            if self._write_block_and_handle(rec, handle, hkv):
                released += ips
                if len(cidrs) == 1:  # that was its last block: the handle record is gone too
                    return released
        raise IpamConflict(f"gave up releasing {handle} after {MAX_CAS_RETRIES} conflicting writes", "try again later")

    def release_ip(self, ip: str) -> str | None:
        """Release one address, whoever holds it; returns its handle (None if it was free)."""
        for _ in range(MAX_CAS_RETRIES):
            rec = self.block_of(ip)
            if rec is None:
                return None
            alloc = rec.block.allocations.get(rec.block.ordinal(ip))
            if alloc is None:
                return None
            rec.block.release_ip(ip)
            if self._write_block_and_handle(rec, alloc.handle):
                return alloc.handle
        raise IpamConflict(f"gave up releasing {ip} after {MAX_CAS_RETRIES} conflicting writes", "try again later")

    def release_block(self, cidr: str) -> bool:
        """Give an empty block back to its pool (block and affinity go together). False if not empty."""
        rec = self.block(cidr)
        if rec is None:
            return True
        if not rec.block.empty:
            return False
        ops = [Delete(keys.block(cidr))]
        if rec.block.node:
            ops.append(Delete(keys.affinity(rec.block.node, cidr)))
        return self.store.txn([ModRevisionIs(rec.kv.key, rec.kv.mod_revision)], ops).succeeded

    # Queries -----------------------------------------------------------

    def block_of(self, ip: str) -> BlockRecord | None:
        """The block holding ip, if any block was claimed around it."""
        addr = ipaddress.ip_address(ip)
        kvs, _ = self.store.list(keys.blocks(addr.version), keys_only=True)
        for kv in kvs:
            cidr = keys.cidr_from_part(kv.key.rsplit("/", 1)[1])
            if addr in ipaddress.ip_network(cidr):
                return self.block(cidr)
        return None

    def ips_by_handle(self, handle: str) -> list[str]:
        hkv = self.store.get(keys.handle(handle))
        if hkv is None:
            return []
        ips = []
        for cidr in json.loads(hkv.value)["blocks"]:
            rec = self.block(cidr)
            if rec:
                ips += rec.block.ips_of(handle)
        return ips

    def block(self, cidr: str) -> BlockRecord | None:
        kv = self.store.get(keys.block(cidr))
        return BlockRecord(Block.from_json(kv.value), kv) if kv else None

    def blocks(self, version: int | None = None) -> list[Block]:
        out = []
        for v in (4, 6) if version is None else (version,):
            kvs, _ = self.store.list(keys.blocks(v))
            out += [Block.from_json(kv.value) for kv in kvs]
        return sorted(out, key=lambda b: (b.network.version, b.network))

    def node_block_cidrs(self, node: str, version: int) -> list[str]:
        kvs, _ = self.store.list(keys.affinities(node, version), keys_only=True)
        cidrs = [keys.cidr_from_part(kv.key.rsplit("/", 1)[1]) for kv in kvs]
        return sorted(cidrs, key=lambda c: ipaddress.ip_network(c))

    def handles(self) -> dict[str, dict]:
        kvs, _ = self.store.list(keys.HANDLES)
        return {kv.key[len(keys.HANDLES):]: json.loads(kv.value) for kv in kvs}


_CONFLICT = object()
_FULL = object()


def _network_or_none(text: str):
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        return None


def _within(cidr: str, networks) -> bool:
    net = ipaddress.ip_network(cidr)
    return any(net.version == n.version and net.subnet_of(n) for n in networks)
