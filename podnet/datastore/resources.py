"""Typed access to the resources in a Datastore: pools, nodes, workload endpoints.

IPAM blocks and handles belong to the IPAM layer, which writes them itself; they are listed here
read-only so that `get` and `describe` treat every kind of model/kinds.py alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from podnet.datastore import keys
from podnet.datastore.api import Datastore, Delete, ModRevisionIs, Put
from podnet.errors import PodnetError
from podnet.model import Block, IPPool, Node, WorkloadEndpoint
from podnet.model.agentconfig import AgentConfiguration
from podnet.model.ipamconfig import IPAMConfiguration
from podnet.model.ipreservation import IPReservation, encode_index
from podnet.model.endpoint import endpoint_name, legacy_endpoint_name
from podnet.model.kinds import Kind
from podnet.model.errors import ValidationError
from podnet.model.ippool import check_pools_disjoint


class NotFound(PodnetError):
    pass


class AlreadyExists(PodnetError):
    pass


@dataclass(frozen=True)
class Storage:
    """Where records of one kind live and how they are read back."""

    prefixes: tuple[str, ...]  # listed in order; nested keys (endpoints under their node) included
    decode: Callable[[bytes], object]
    key: Callable[[object], str] | None = None  # the key of a resource; None: podnet writes these itself
    name: Callable[[object], str] = lambda r: r.name
    namespace: Callable[[object], str] = lambda r: ""
    # The keys a (name, namespace) may be stored under, for kinds whose key needs more than the name.
    keys_of: Callable[[str, str], list[str]] | None = None
    encode: Callable[[object], bytes] = lambda r: _dump(r.to_manifest())
    # A record derived from every resource of the kind, rewritten in the same transaction as any
    # change to one of them: (its key, how it is computed from all of them).
    index: tuple[str, Callable[[list], bytes]] | None = None


def _dump(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _decode_manifest(cls):
    return lambda value: cls.from_manifest(json.loads(value))


def _decode_manifest_lazy(module: str, name: str):
    def decode(value: bytes):
        import importlib

        return getattr(importlib.import_module(module), name).from_manifest(json.loads(value))

    return decode


def _decode_policy(value: bytes):
    from podnet.model.policy import parse_policy

    return parse_policy(json.loads(value))


def _policy_key(policy) -> str:
    from podnet.model.policy import storage_key

    return storage_key(policy)


STORAGE: dict[str, Storage] = {
    "IPPool": Storage((keys.POOLS,), _decode_manifest(IPPool), key=lambda p: keys.pool(p.name)),
    "Node": Storage((keys.NODES,), _decode_manifest(Node), key=lambda n: keys.node(n.name)),
    "AgentConfiguration": Storage((keys.AGENT_CONFIGS,), _decode_manifest(AgentConfiguration),
                                  key=lambda c: keys.AGENT_CONFIGS + c.name),
    "WorkloadEndpoint": Storage((keys.ENDPOINTS,), _decode_manifest(WorkloadEndpoint),
                                name=lambda e: e.key_name, namespace=lambda e: e.pod_namespace),
    "IPAMConfiguration": Storage((keys.IPAM_CONFIG,), IPAMConfiguration.from_json, key=lambda c: keys.IPAM_CONFIG,
                                 encode=IPAMConfiguration.to_json),
    "IPReservation": Storage((keys.IP_RESERVATIONS,), _decode_manifest(IPReservation),
                             key=lambda r: keys.IP_RESERVATIONS + r.name, index=(keys.RESERVED, encode_index)),
    "IPAMBlock": Storage((keys.blocks(4), keys.blocks(6)), Block.from_json, name=lambda b: b.cidr),
    "NetworkPolicy": Storage((keys.NETWORK_POLICIES, keys.K8S_NETWORK_POLICIES), _decode_policy, key=_policy_key,
                             namespace=lambda p: p.namespace, keys_of=lambda name, ns: [
                                 f"{keys.NETWORK_POLICIES}{ns}/{name}",
                                 f"{keys.K8S_NETWORK_POLICIES}{ns}/{name.removeprefix('knp.default.')}"]),
    "GlobalNetworkPolicy": Storage((keys.GLOBAL_NETWORK_POLICIES,), _decode_policy, key=_policy_key,
                                   keys_of=lambda name, ns: [keys.GLOBAL_NETWORK_POLICIES + name]),
    "Namespace": Storage((keys.NAMESPACES,), _decode_manifest_lazy("podnet.model.kube", "Namespace"),
                         key=lambda n: keys.NAMESPACES + n.name),
    "Pod": Storage((keys.PODS,), _decode_manifest_lazy("podnet.model.kube", "Pod"),
                   key=lambda p: f"{keys.PODS}{p.namespace}/{p.name}", namespace=lambda p: p.namespace,
                   keys_of=lambda name, ns: [f"{keys.PODS}{ns}/{name}"]),
}


class Resources:
    def __init__(self, store: Datastore):
        self.store = store
        self._pool_cache: dict[str, tuple[int, IPPool]] = {}  # key -> (mod_revision, parsed pool)

    # Any kind (model/kinds.py) -------------------------------------------

    def list(self, kind: Kind, namespace: str | None = None) -> list:
        """Every resource of a kind (of one namespace when given), in key order."""
        storage = STORAGE[kind.name]
        out = []
        for prefix in storage.prefixes:
            kvs, _ = self.store.list(prefix)
            out += [storage.decode(kv.value) for kv in kvs]
        if namespace is not None:
            out = [r for r in out if storage.namespace(r) == namespace]
        return out

    def get(self, kind: Kind, name: str, namespace: str | None = None):
        """One resource by name, or None."""
        storage = STORAGE[kind.name]
        if kind.namespaced and namespace is None and "/" in name:
            namespace, name = name.split("/", 1)  # NAMESPACE/NAME, as `podnet label pod` takes it
        if storage.key is not None and not kind.namespaced:
            kv = self.store.get(storage.key(_Named(name)))
            return storage.decode(kv.value) if kv else None
        return next((r for r in self.list(kind, namespace) if storage.name(r) == name), None)

    def write(self, kind: Kind, resource, mode: str = "apply") -> str:
        """Store a resource: mode `create` (must not exist), `replace` (must exist) or `apply` (either).
        Returns 'created', 'updated' or 'unchanged'. Kind-specific rules (pools may not overlap,
        a pool's cidr is immutable) hold in every mode."""
        if kind.name == "IPPool":
            return self.apply_pool(resource, mode)
        storage = STORAGE[kind.name]
        key = storage.key(resource)
        if storage.index is not None:
            return self._change_indexed(kind, storage, key, resource, mode)
        for _ in range(20):
            old = self.store.get(key)
            _check_mode(kind, storage.name(resource), old is not None, mode)
            if old is not None and storage.decode(old.value) == resource:
                return "unchanged"
            revision = old.mod_revision if old is not None else 0
            if self.store.txn([ModRevisionIs(key, revision)], [Put(key, storage.encode(resource))]).succeeded:
                return "updated" if old is not None else "created"
        raise PodnetError(f"could not write {kind.name} {storage.name(resource)}: too much concurrent change, "
                          "try again")

    def remove(self, kind: Kind, name: str, namespace: str | None = None) -> bool:
        """Delete a resource by name; False when there was none."""
        storage = STORAGE[kind.name]
        if storage.keys_of is not None:
            if namespace is None and "/" in name:
                namespace, name = name.split("/", 1)
            return any(self.store.delete(key) for key in storage.keys_of(name, namespace or "default"))
        if storage.index is not None:
            return self._change_indexed(kind, storage, storage.key(_Named(name)), None, "delete") == "deleted"
        return self.store.delete(storage.key(_Named(name)))

    def _change_indexed(self, kind: Kind, storage: Storage, key: str, resource, mode: str) -> str:
        """Write (resource) or delete (None) one record of a kind with an index, and the index, in one
        transaction that compares every record the new index was computed from."""
        index_key, compute = storage.index
        for _ in range(20):
            kvs, _ = self.store.list(storage.prefixes[0])
            current = {kv.key: kv for kv in kvs}
            old = current.get(key)
            if resource is None and old is None:
                return "absent"
            if resource is not None:
                _check_mode(kind, storage.name(resource), old is not None, mode)
                if old is not None and storage.decode(old.value) == resource:
                    return "unchanged"
            others = [storage.decode(kv.value) for k, kv in current.items() if k != key]
            kept = others + ([resource] if resource is not None else [])
            index_kv = self.store.get(index_key)
            compares = [ModRevisionIs(k, kv.mod_revision) for k, kv in current.items()]
            compares += [ModRevisionIs(key, 0)] if old is None else []
            compares.append(ModRevisionIs(index_key, index_kv.mod_revision if index_kv else 0))
            change = Delete(key) if resource is None else Put(key, storage.encode(resource))
            if self.store.txn(compares, [change, Put(index_key, compute(kept))]).succeeded:
                return "deleted" if resource is None else ("updated" if old is not None else "created")
        raise PodnetError(f"could not change {kind.name} records: too much concurrent change, try again")

    # Pools -------------------------------------------------------------

    def pools(self) -> list[IPPool]:
        """Every pool; a record unchanged since the last call is not parsed and validated again
        (IPAM asks on every allocation)."""
        kvs, _ = self.store.list(keys.POOLS)
        return self.decode_pools(kvs)

    def decode_pools(self, kvs) -> list[IPPool]:
        """The pools of records listed under keys.POOLS, parsing only those changed since last seen."""
        out = []
        for kv in kvs:
            cached = self._pool_cache.get(kv.key)
            if cached is None or cached[0] != kv.mod_revision:
                cached = self._pool_cache[kv.key] = (kv.mod_revision, IPPool.from_manifest(json.loads(kv.value)))
            out.append(cached[1])
        return out

    def pool(self, name: str) -> IPPool:
        kv = self.store.get(keys.pool(name))
        if kv is None:
            raise NotFound(f"IPPool {name} does not exist")
        return IPPool.from_manifest(json.loads(kv.value))

    def apply_pool(self, pool: IPPool, mode: str = "apply") -> str:
        """Create or update a pool; returns 'created', 'updated' or 'unchanged'."""
        for _ in range(20):
            kvs, _ = self.store.list(keys.POOLS)
            current = {IPPool.from_manifest(json.loads(kv.value)).name: kv for kv in kvs}
            others = [IPPool.from_manifest(json.loads(kv.value)) for n, kv in current.items() if n != pool.name]
            check_pools_disjoint(others + [pool])
            old_kv = current.get(pool.name)
            _check_mode(KIND_IPPOOL, pool.name, old_kv is not None, mode)
            if old_kv is not None:
                old = IPPool.from_manifest(json.loads(old_kv.value))
                if old.cidr != pool.cidr:
                    raise ValidationError("spec.cidr", f"cannot change from {old.cidr}: a pool's cidr is immutable")
                if old.block_size != pool.block_size:
                    raise ValidationError(
                        "spec.blockSize", f"cannot change from {old.block_size}: a pool's blockSize is immutable"
                    )
                if old == pool:
                    return "unchanged"
            # Compare every pool we checked against, so a concurrent apply of an
            # overlapping pool cannot slip in between check and write.
            compares = [ModRevisionIs(kv.key, kv.mod_revision) for kv in kvs]
            if old_kv is None:
                compares.append(ModRevisionIs(keys.pool(pool.name), 0))
            if self.store.txn(compares, [Put(keys.pool(pool.name), _dump(pool.to_manifest()))]).succeeded:
                return "created" if old_kv is None else "updated"
        raise PodnetError(f"could not apply IPPool {pool.name}: too much concurrent change, try again")

    def delete_pool(self, name: str) -> bool:
        return self.store.delete(keys.pool(name))

    # Agent configuration -----------------------------------------------

    def agent_configs(self) -> list[AgentConfiguration]:
        kvs, _ = self.store.list(keys.AGENT_CONFIGS)
        return [AgentConfiguration.from_manifest(json.loads(kv.value)) for kv in kvs]

    def apply_agent_config(self, config: AgentConfiguration) -> str:
        key = keys.AGENT_CONFIGS + config.name
        old = self.store.get(key)
        if old is not None and AgentConfiguration.from_manifest(json.loads(old.value)) == config:
            return "unchanged"
        self.store.put(key, _dump(config.to_manifest()))
        return "updated" if old else "created"

    def delete_agent_config(self, name: str) -> bool:
        return self.store.delete(keys.AGENT_CONFIGS + name)

    # Nodes -------------------------------------------------------------

    def nodes(self) -> list[Node]:
        kvs, _ = self.store.list(keys.NODES)
        return [Node.from_manifest(json.loads(kv.value)) for kv in kvs]

    def node(self, name: str) -> Node | None:
        kv = self.store.get(keys.node(name))
        return Node.from_manifest(json.loads(kv.value)) if kv else None

    def put_node(self, node: Node) -> None:
        self.store.put(keys.node(node.name), _dump(node.to_manifest()))

    def delete_node(self, name: str) -> bool:
        self.store.delete(keys.node_status(name))
        return self.store.delete(keys.node(name))

    def node_status(self, name: str) -> dict | None:
        """What the node's agent last reported about it (e.g. its offload decisions), None if nothing."""
        kv = self.store.get(keys.node_status(name))
        return json.loads(kv.value) if kv else None

    def node_statuses(self) -> dict[str, dict]:
        kvs, _ = self.store.list(keys.NODE_STATUS)
        return {kv.key[len(keys.NODE_STATUS):]: json.loads(kv.value) for kv in kvs}

    def put_node_status(self, name: str, status: dict) -> None:
        self.store.put(keys.node_status(name), _dump(status))

    # Workload endpoints ------------------------------------------------

    def endpoints(self, node: str | None = None) -> list[WorkloadEndpoint]:
        prefix = keys.endpoints_of(node) if node else keys.ENDPOINTS
        kvs, _ = self.store.list(prefix)
        return [_endpoint(kv) for kv in kvs]

    def endpoint(self, node: str, key_name: str) -> WorkloadEndpoint | None:
        kv = self.store.get(keys.endpoint(node, key_name))
        return _endpoint(kv) if kv else None

    def endpoint_of(self, node: str, container_id: str, interface: str) -> WorkloadEndpoint | None:
        """The endpoint of one attachment, also when a podnet before endpoint_name() recorded it under
        its legacy name (then only if the record itself names this container and interface). One read."""
        names = [endpoint_name(container_id, interface), legacy_endpoint_name(container_id, interface)]
        for kv in self.store.get_many([keys.endpoint(node, n) for n in names]):
            if kv is not None:
                ep = _endpoint(kv)
                if (ep.container_id, ep.interface) == (container_id, interface):
                    return ep
        return None

    def put_endpoint(self, ep: WorkloadEndpoint) -> None:
        self.store.put(keys.endpoint(ep.node, ep.key_name), _dump(ep.to_manifest()))

    def create_endpoint(self, ep: WorkloadEndpoint) -> int:
        """Record ep only if nothing is recorded under its name: its revision, or 0 when one exists."""
        result = self.store.txn((ModRevisionIs(keys.endpoint(ep.node, ep.key_name), 0),),
                                (Put(keys.endpoint(ep.node, ep.key_name), _dump(ep.to_manifest())),))
        return result.revision if result.succeeded else 0

    def replace_endpoint(self, ep: WorkloadEndpoint, revision: int) -> int:
        """Overwrite the record only if it is still at `revision`: the new revision, or 0."""
        key = keys.endpoint(ep.node, ep.key_name)
        result = self.store.txn((ModRevisionIs(key, revision),), (Put(key, _dump(ep.to_manifest())),))
        return result.revision if result.succeeded else 0

    def delete_endpoint(self, node: str, key_name: str, revision: int = 0) -> bool:
        """Delete the record; with a revision, only if it is still the record of that revision."""
        if revision:
            return self.store.compare_and_delete(keys.endpoint(node, key_name), revision)
        return self.store.delete(keys.endpoint(node, key_name))


def _endpoint(kv) -> WorkloadEndpoint:
    return WorkloadEndpoint.from_manifest(json.loads(kv.value), revision=kv.mod_revision,
                                          stored_name=kv.key.rsplit("/", 1)[-1])


def decode_node(value: bytes) -> Node:
    return Node.from_manifest(json.loads(value))


def decode_pool(value: bytes) -> IPPool:
    return IPPool.from_manifest(json.loads(value))


def decode_agent_config(value: bytes) -> AgentConfiguration:
    return AgentConfiguration.from_manifest(json.loads(value))


@dataclass(frozen=True)
class _Named:
    """Stands in for a resource when only its name is known (to derive its key)."""

    name: str


def _check_mode(kind: Kind, name: str, exists: bool, mode: str) -> None:
    if mode == "create" and exists:
        raise AlreadyExists(f"{kind.name} {name} already exists", "use `podnet apply` or `podnet replace`")
    if mode == "replace" and not exists:
        raise NotFound(f"{kind.name} {name} does not exist", "use `podnet create` or `podnet apply`")
    if mode not in ("create", "replace", "apply"):
        raise ValueError(mode)


def _kind(name: str) -> Kind:
    from podnet.model.kinds import lookup

    return lookup(name)


KIND_IPPOOL = _kind("IPPool")
