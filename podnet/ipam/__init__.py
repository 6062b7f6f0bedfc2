"""IPAM: per-node block affinity and address allocation on top of the datastore."""

from podnet.ipam.allocator import (
    Ipam,
    IpamError,
    IpamConflict,
    NoUsablePool,
    PoolExhausted,
)

__all__ = ["Ipam", "IpamError", "IpamConflict", "NoUsablePool", "PoolExhausted"]
