"""Address allocation with per-node block affinity.

A node takes addresses from blocks affine to it; when they are full it claims
the next unclaimed block of a usable pool. Every write is a transaction that
compares the mod_revision of each record it was computed from, so two
allocators (threads, processes, machines) that race never hand out one address
twice: the loser's transaction fails and returns those records as they are now
(etcd's txn failure branch can read), and it tries again from them. An
allocator starts from the records it last read or wrote (see _Hints), so a
warm allocation or release is one transaction. A block and the handle that indexes its
allocations are written in the same transaction, so a crash never leaves an
address that no handle can release.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from dataclasses import dataclass

from podnet.datastore import keys
from podnet.datastore.api import Datastore, Delete, Get, KeyValue, ModRevisionIs, Put, TxnResult
from podnet.datastore.resources import Resources, decode_node
from podnet.errors import PodnetError
from podnet.model.ipamconfig import DEFAULT_MAX_BLOCKS_PER_HOST
from podnet.model.ipreservation import decode_index
from podnet.model.ipamconfig import IPAMConfiguration as IpamConfig  # cluster-wide settings (calicoctl ipam configure)
from podnet.model import Block, IPPool

MAX_CAS_RETRIES = 100
_UNREAD = object()  # "the caller has not read this record"
_READS_PER_TXN = 100  # etcd takes at most 128 operations per transaction by default
_HINTS_MAX = 4096  # remembered records per allocator (a few KB each at most)


class IpamError(PodnetError):
    pass


class NoUsablePool(IpamError):
    """No enabled pool of the family (and of the requested names) exists."""


class PoolExhausted(IpamError):
    """Every usable pool is full for this node."""


class NodeNotRegistered(IpamError):
    """The node has no Node record (never registered, or deleted from the cluster): IPAM assigns
    nothing for it, so a deleted node can never be handed addresses, its own tunnel address included."""

    def __init__(self, node: str):
        super().__init__(f"node {node} has no Node record: it was deleted from the cluster or never registered",
                         "start (or restart) the node's podnet agent, which registers it; "
                         "`podnet get nodes` lists the registered nodes")
        self.node = node


class IpamConflict(IpamError):
    """Too many concurrent writers; nothing was allocated. Try again."""


class AddressUnavailable(IpamError):
    """A requested address is outside every usable pool, or already in use."""


@dataclass(frozen=True)
class BlockRecord:
    block: Block
    kv: KeyValue


class _Hints:
    """Blocks and handles as this allocator last read or wrote them: where a compare-and-swap
    starts from, to save a read. Never a source of truth: a write computed from a stale record
    fails its compare (which reads the record back), and no decision that writes nothing is taken
    from here. Plain dict operations, so threads may share it."""

    def __init__(self, limit: int = _HINTS_MAX):
        self._records: dict[str, KeyValue] = {}
        self._limit = limit

    def get(self, key: str) -> KeyValue | None:
        return self._records.get(key)

    def put(self, key: str, kv: KeyValue | None) -> None:
        if kv is None:
            self._records.pop(key, None)
            return
        if len(self._records) >= self._limit:
            self._records.clear()  # crude but bounded; a miss costs one read
        self._records[key] = kv


class _DecodedBlocks:
    """Blocks as decoded (or written) at a revision, never changed once here: callers take copies.
    A revision pins the content, so an entry cannot go stale, only unused."""

    def __init__(self, limit: int = 256):
        self._blocks: dict[str, tuple[int, Block]] = {}
        self._limit = limit

    def get(self, key: str, revision: int) -> Block | None:
        found = self._blocks.get(key)
        return found[1] if found is not None and found[0] == revision else None

    def put(self, key: str, revision: int, block: Block) -> None:
        if len(self._blocks) >= self._limit and key not in self._blocks:
            self._blocks.clear()  # bounded; a miss costs one decode
        self._blocks[key] = (revision, block)


class Ipam:
    def __init__(self, store: Datastore, max_blocks_per_host: int | None = None):
        """`max_blocks_per_host`: overrides the stored IPAM config (tests, benchmarks)."""
        self.store = store
        self.resources = Resources(store)
        self._max_blocks_override = max_blocks_per_host
        # Remembered records, see _Hints; each is compared before anything is written from it.
        self._affine_cache: dict[tuple[str, int], list[str]] = {}
        self._pool_kvs: tuple[KeyValue, ...] | None = None  # every record under keys.POOLS
        self._node_kvs: dict[str, KeyValue | None] = {}  # node records (their labels pick pools)
        self._hints = _Hints()
        self._blocks = _DecodedBlocks()
        self._claims: dict[tuple[str, int], KeyValue | None] = {}  # the node's claims record, see _claim
        self._reserved_kv: KeyValue | None = None  # keys.RESERVED as last read: what IPReservations keep
        self._reserved_parsed: tuple = (None, ())  # (its revision, its networks)

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
        kvs, _ = self.store.list(keys.POOLS)
        node_record = (lambda: self.store.get(keys.node(node))) if node is not None else None
        return self._select_pools(kvs, version, names, use, node, labels, node_record)[0]

    def _select_pools(self, pool_kvs, version, names, use, node, labels,
                      node_record) -> tuple[list[IPPool], list[ModRevisionIs]]:
        """usable_pools over given pool records; also the compares that keep the choice valid: the
        chosen pools' records unchanged (not deleted, disabled or narrowed) and, when the node's
        labels came from its record, that record unchanged. `node_record()` reads it when needed."""
        by_key = dict(zip((kv.key for kv in pool_kvs), self.resources.decode_pools(pool_kvs)))
        revs = {kv.key: kv.mod_revision for kv in pool_kvs}
        pools = [(k, p) for k, p in by_key.items() if p.version == version]
        if names:
            by_name = {p.name: (k, p) for k, p in pools}
            by_cidr = {p.cidr: (k, p) for k, p in pools}
            chosen = []
            for n in names:
                kp = by_name.get(n) or by_cidr.get(str(_network_or_none(n)))
                if kp is None:
                    raise NoUsablePool(f"IPv{version} pool {n!r} does not exist")
                chosen.append(kp)
            pools = chosen
        usable = [(k, p) for k, p in pools if not p.disabled and use in p.allowed_uses]
        deps = []
        if node is not None and any(p.node_selector.strip() != "all()" for _, p in usable):
            if labels is None:
                record = node_record()
                deps.append(ModRevisionIs(keys.node(node), record.mod_revision if record else 0))
                labels = decode_node(record.value).labels if record else {}
            usable = [(k, p) for k, p in usable if p.selects(labels)]
        if not usable:
            what = (f"named {', '.join(names)}" if names else "") + (f" for node {node}" if node else "")
            what = what.strip() or "at all"
            raise NoUsablePool(
                f"no enabled IPv{version} pool {what}",
                "create one with `podnet apply -f pool.yaml` or enable an existing pool",
            )
        deps += [ModRevisionIs(k, revs[k]) for k, _ in usable]
        return [p for _, p in usable], deps

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
        `labels`: the node's labels when its record is not written yet (else read from it).

        The common case is one transaction: from what this allocator last read or wrote (the pools,
        the node's block, the handle) it assigns an address and writes block and handle comparing
        every record it decided from. A compare that fails returns those records as they are now,
        and the next attempt starts from them. Decisions that write nothing (errors, claiming a
        new block) are only taken on records just read."""
        attrs = dict(attrs or {}, node=node)  # who uses the address, also when it is borrowed
        hkey = keys.handle(handle)
        config = None  # read only when the node's own blocks are full
        fresh = False  # whether the records below were just read from the store (not remembered)
        for _ in range(MAX_CAS_RETRIES):
            if fresh or self._pool_kvs is None or (node, version) not in self._affine_cache:
                self._read_view(node, version, hkey)
            record = self._node_kvs.get(node)
            if record is None:  # no Node record, no addresses (Calico's IPAM refuses a host without one)
                if fresh:
                    raise NodeNotRegistered(node)
                fresh = True  # maybe a remembered absence: look again before failing
                continue
            try:
                candidates, deps = self._select_pools(self._pool_kvs, version, pools, use, node, labels,
                                                      lambda: record)
            except NoUsablePool:
                if fresh:
                    raise
                fresh = True  # maybe from remembered pools: look again before failing
                continue
            node_dep = ModRevisionIs(keys.node(node), record.mod_revision)
            if node_dep not in deps:  # the write holds only while the node's record does
                deps = [*deps, node_dep]
            # ... and while the reservations are as read: one made meanwhile makes this retry.
            deps = [*deps, ModRevisionIs(keys.RESERVED, self._reserved_kv.mod_revision if self._reserved_kv else 0)]
            networks = [p.network for p in candidates]
            affine = [c for c in self._affine_cache[(node, version)] if _within(c, networks)]
            outcome = self._assign_from(affine, node, handle, attrs, deps, fresh)
            if isinstance(outcome, str):
                return outcome
            if outcome is _CONFLICT:
                continue
            if not fresh:  # full by possibly stale records: look again before claiming
                fresh = True
                continue
            # Every affine block is full: claim another, unless the node may hold no more.
            config = config or self.config()
            limit = config.max_blocks_per_host
            at_limit = limit and len(self._affine_cache[(node, version)]) >= limit
            cidr = None if at_limit else self._free_block(candidates)
            if cidr is not None:
                self._claim(node, version, cidr, node_dep)  # a lost race simply means another loop
                continue  # `fresh` stays True: the next pass re-reads the node's blocks
            # No block to claim: borrow a free address from another node's block.
            if not config.strict_affinity:
                outcome = self._borrow(candidates, deps, node, handle, attrs)
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

    def assign_ip(self, ip: str, node: str, handle: str, attrs: dict | None = None, use: str = "Workload") -> str:
        """Take one given address for `handle` (Calico's AssignIP: a pod that asks for a fixed address).

        It must lie in an enabled pool of its family for this use. Its block is claimed for `node` when
        nobody holds it yet, and used as it is (borrowed) when another node does. Returns the address."""
        addr = ipaddress.ip_address(ip)
        attrs = dict(attrs or {}, node=node)
        for _ in range(MAX_CAS_RETRIES):
            record = self.store.get(keys.node(node))
            if record is None:  # as auto_assign: no Node record, no address
                raise NodeNotRegistered(node)
            pools = [p for p in self.resources.pools() if p.version == addr.version and not p.disabled
                     and use in p.allowed_uses and addr in p.network]
            if not pools:
                raise AddressUnavailable(f"{ip} is in no enabled IPv{addr.version} pool",
                                         "ask for an address inside a pool (podnet get ippools)")
            cidr = str(ipaddress.ip_network(f"{ip}/{pools[0].block_size}", strict=False))
            rec = self.block(cidr)
            if rec is None:
                self._read_view(node, addr.version, keys.handle(handle))
                if self._node_kvs.get(node) is None:  # as auto_assign: no Node record, no block for it
                    raise NodeNotRegistered(node)
                self._claim(node, addr.version, cidr)  # a lost race: someone else's block, used next pass
                continue
            block = rec.block
            if not block.assign_ip(str(addr), handle, attrs):
                owner = block.allocations[block.ordinal(str(addr))].handle
                raise AddressUnavailable(f"{ip} is already in use ({owner})",
                                         "ask for a free address, or let podnet choose one")
            if self._cas(rec.kv, block, handle, deps=[ModRevisionIs(keys.node(node), record.mod_revision)],
                         node=node).succeeded:
                return str(addr)
        raise IpamConflict(f"gave up assigning {ip} to {handle} after {MAX_CAS_RETRIES} conflicting writes",
                           "try again later")

    def _read_view(self, node: str, version: int, hkey: str) -> None:
        """Read at one revision, in one round trip, what an allocation decides from: the pools, the
        node's record (labels) and block affinities, and the handle."""
        res = self.store.txn((), [Get(keys.POOLS, prefix=True), Get(keys.node(node)),
                                  Get(keys.affinities(node, version), prefix=True), Get(hkey),
                                  Get(keys.block_claims(node, version)), Get(keys.RESERVED)])
        self._claims[(node, version)] = res.read(4)
        self._reserved_kv = res.read(5)
        self._pool_kvs = res.reads[0]
        self._node_kvs[node] = res.read(1)
        cidrs = [keys.cidr_from_part(kv.key.rsplit("/", 1)[1]) for kv in res.reads[2]]
        self._affine_cache[(node, version)] = sorted(cidrs, key=lambda c: ipaddress.ip_network(c))
        self._hints.put(hkey, res.read(3))

    def _assign_from(self, cidrs: list[str], node: str, handle: str, attrs: dict, deps, fresh: bool):
        """Assign from the first of `cidrs` with room, by the remembered records unless `fresh`
        (those not remembered are read, all in one round trip)."""
        bkeys = [keys.block(c) for c in cidrs]
        records = {} if fresh else {k: self._hints.get(k) for k in bkeys}
        missing = [k for k in bkeys if records.get(k) is None]
        for k, kv in zip(missing, self._read_keys(missing)):
            records[k] = kv
        for bkey in bkeys:
            bkv = records[bkey]
            if bkv is None:
                continue
            block = self._decoded(bkv)
            if block.node != node or block.free == 0:
                continue
            ips = block.assign(handle, attrs, reserved=self._reserved())
            if not ips:
                continue  # its free addresses are all reserved
            ip = ips[0]
            hkv = self._hints.get(keys.handle(handle))  # absent unless seen: a wrong guess fails the compare
            if self._cas(bkv, block, handle, hkv, deps, node).succeeded:
                return ip
            return _CONFLICT
        return _FULL

    def _reserved(self) -> tuple:
        """The networks IPReservations keep from automatic assignment, as last read."""
        kv = self._reserved_kv
        if kv is None:
            return ()
        if self._reserved_parsed[0] != kv.mod_revision:
            self._reserved_parsed = (kv.mod_revision, decode_index(kv.value))
        return self._reserved_parsed[1]

    def _decoded(self, kv: KeyValue) -> Block:
        """The block of a record, to change at will: decoding a full block's JSON costs ~0.1 ms, so the
        block this allocator last wrote or decoded at that revision is copied instead."""
        block = self._blocks.get(kv.key, kv.mod_revision)
        if block is None:
            block = Block.from_json(kv.value)
            self._blocks.put(kv.key, kv.mod_revision, block)
        return block.copy()

    def _read_keys(self, keys_: list[str]) -> list[KeyValue | None]:
        """Several keys at one revision, also remembered as hints."""
        out: list[KeyValue | None] = []
        for i in range(0, len(keys_), _READS_PER_TXN):
            chunk = keys_[i:i + _READS_PER_TXN]
            res = self.store.txn((), [Get(k) for k in chunk])
            for j, k in enumerate(chunk):
                kv = res.read(j)
                self._hints.put(k, kv)
                out.append(kv)
        return out

    def _borrow(self, pools: list[IPPool], deps, node: str, handle: str, attrs: dict):
        networks = [p.network for p in pools]
        for block in self.blocks(pools[0].version):
            if block.free and block.node != node and _within(block.cidr, networks):
                rec = self.block(block.cidr)
                if rec is None or rec.block.free == 0:
                    continue
                ips = rec.block.assign(handle, attrs, reserved=self._reserved())
                if not ips:
                    continue
                ip = ips[0]
                if self._cas(rec.kv, rec.block, handle, _UNREAD, deps, node).succeeded:
                    return ip
                return _CONFLICT
        return _FULL

    def _cas(self, bkv: KeyValue, block: Block, handle: str, hkv=_UNREAD, deps=(), node: str | None = None
             ) -> TxnResult:
        """Write the changed block, and the handle's count of addresses in it, atomically.
        Compare-and-swap on both (and on `deps`: the pools, node record and reservations the choice
        of block came from), so a stale record only costs a retry: a failed compare reads back block
        and handle (reads 0 and 1) and, with deps, the pools, `node`'s record and the reservations,
        and all of them are remembered for the next attempt. `hkv`: the handle record as it is believed to be (None:
        absent); read here if _UNREAD."""
        hkey, bkey = keys.handle(handle), keys.block(block.cidr)
        if hkv is _UNREAD:
            hkv = self.store.get(hkey)
        doc = json.loads(hkv.value) if hkv else {"handle": handle, "blocks": {}}
        count = len(block.ips_of(handle))
        if count > 0:
            doc["blocks"][block.cidr] = count
        else:
            doc["blocks"].pop(block.cidr, None)
        bvalue = block.to_json()
        hvalue = json.dumps(doc).encode() if doc["blocks"] else None
        ops = [Put(bkey, bvalue), Put(hkey, hvalue) if hvalue else Delete(hkey)]
        compares = [*deps, ModRevisionIs(bkey, bkv.mod_revision), ModRevisionIs(hkey, hkv.mod_revision if hkv else 0)]
        failure = [Get(bkey), Get(hkey)]
        if deps:
            failure += [Get(keys.POOLS, prefix=True), Get(keys.node(node)), Get(keys.RESERVED)]
        res = self.store.txn(compares, ops, failure)
        if res.succeeded:
            rev = res.revision
            self._hints.put(bkey, KeyValue(bkey, bvalue, bkv.create_revision, rev, bkv.version + 1))
            self._blocks.put(bkey, rev, block)
            self._hints.put(hkey, KeyValue(hkey, hvalue, hkv.create_revision if hkv else rev, rev,
                                           hkv.version + 1 if hkv else 1) if hvalue else None)
        else:
            self._hints.put(bkey, res.read(0))
            self._hints.put(hkey, res.read(1))
            if deps:
                self._pool_kvs = res.reads[2]
                self._node_kvs[node] = res.read(3)
                self._reserved_kv = res.read(4)
        return res

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

    def _claim(self, node: str, version: int, cidr: str, node_dep: ModRevisionIs | None = None) -> bool:
        """Claim a block for node: the block and its affinity appear together or not at all. The
        claim also compares and bumps the node's claims record as read with its block list
        (_read_view), so of two allocators that both saw room for one more block only one claims; and
        the node's record (`node_dep`), so no block is claimed for a node being deleted."""
        bkey, akey, ckey = keys.block(cidr), keys.affinity(node, cidr), keys.block_claims(node, version)
        seen = self._claims.get((node, version))
        claims = (json.loads(seen.value).get("claims", 0) if seen else 0) + 1
        return self.store.txn(
            [ModRevisionIs(bkey, 0), ModRevisionIs(akey, 0), ModRevisionIs(ckey, seen.mod_revision if seen else 0),
             *([node_dep] if node_dep else [])],
            [Put(bkey, Block.new(cidr, node).to_json()), Put(akey, b'{"state":"confirmed"}'),
             Put(ckey, json.dumps({"claims": claims}).encode())],
        ).succeeded

    # Release -----------------------------------------------------------

    def release_handle(self, handle: str) -> list[str]:
        """Release every address of handle; returns them. Releasing nothing is fine.

        Starts from the handle and block as this allocator last wrote or read them (after an
        allocation here: one transaction). Only a read from the store, never a remembered record,
        can conclude that the handle is gone."""
        released: list[str] = []
        hkey = keys.handle(handle)
        hkv = self._hints.get(hkey)
        read = {}  # key -> record as just read from the store (None: absent), this call only
        for _ in range(MAX_CAS_RETRIES):
            if hkv is None:
                if hkey in read:
                    return released
                hkv = read[hkey] = self._read_keys([hkey])[0]
                continue
            cidrs = list(json.loads(hkv.value)["blocks"])
            if not cidrs:
                res = self.store.txn([ModRevisionIs(hkey, hkv.mod_revision)], [Delete(hkey)], [Get(hkey)])
                hkv = read[hkey] = None if res.succeeded else res.read(0)
                self._hints.put(hkey, hkv)
                continue
            bkey = keys.block(cidrs[0])
            bkv = read[bkey] if bkey in read else self._hints.get(bkey)
            if bkv is None and bkey not in read:
                bkv, hkv = self._read_keys([bkey, hkey])
                read[bkey], read[hkey] = bkv, hkv
                continue
            if bkv is None:
                # The block vanished (e.g. deleted by hand): drop it from the handle.
                doc = json.loads(hkv.value)
                doc["blocks"].pop(cidrs[0])
                value = json.dumps(doc).encode()
                res = self.store.txn([ModRevisionIs(hkey, hkv.mod_revision)], [Put(hkey, value)], [Get(hkey)])
                if res.succeeded:
                    hkv = KeyValue(hkey, value, hkv.create_revision, res.revision, hkv.version + 1)
                else:
                    hkv = res.read(0)
                read[hkey] = hkv
                self._hints.put(hkey, hkv)
                continue
            block = self._decoded(bkv)
            ips = block.release_handle(handle)
            res = self._cas(bkv, block, handle, hkv)
            if res.succeeded:
                released += ips
                if len(cidrs) == 1:  # that was its last block: the handle record is gone too
                    return released
                hkv = self._hints.get(hkey)
            else:
                read[bkey], hkv = res.read(0), res.read(1)
                read[hkey] = hkv
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
            if self._cas(rec.kv, rec.block, alloc.handle).succeeded:
                return alloc.handle
        raise IpamConflict(f"gave up releasing {ip} after {MAX_CAS_RETRIES} conflicting writes", "try again later")

    def release_block(self, cidr: str, node: str | None = None) -> bool:
        """Give an empty block back to its pool (block and affinity go together). False if not empty,
        or, with `node`, if the block is no longer that node's (given back and claimed again meanwhile)."""
        rec = self.block(cidr)
        if rec is None:
            return True
        if not rec.block.empty or (node is not None and rec.block.node != node):
            return False
        ops = [Delete(keys.block(cidr))]
        if rec.block.node:
            ops.append(Delete(keys.affinity(rec.block.node, cidr)))
        ok = self.store.txn([ModRevisionIs(rec.kv.key, rec.kv.mod_revision)], ops).succeeded
        if ok:
            self._hints.put(rec.kv.key, None)
        return ok

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
        self._hints.put(keys.block(cidr), kv)
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


@functools.lru_cache(maxsize=4096)
def _network(cidr: str):
    return ipaddress.ip_network(cidr)  # parsed once: every allocation tests its blocks against the pools


def _within(cidr: str, networks) -> bool:
    net = _network(cidr)
    return any(net.version == n.version and net.subnet_of(n) for n in networks)
