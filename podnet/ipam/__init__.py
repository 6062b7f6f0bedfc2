"""IPAM: per-node block affinity and address allocation on top of the datastore."""

from podnet.ipam.allocator import (
    AddressUnavailable,
    Ipam,
    IpamConfig,
    IpamError,
    IpamConflict,
    NoUsablePool,
    NodeNotRegistered,
    PoolExhausted,
)

__all__ = ["AddressUnavailable", "Ipam", "IpamConfig", "IpamError", "IpamConflict", "NoUsablePool", "NodeNotRegistered",
           "PoolExhausted"]
