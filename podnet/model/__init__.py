"""Resource model: what podnet stores and reasons about. Pure data and validation."""

from podnet.model.errors import ValidationError
from podnet.model.ippool import IPPool, parse_resource
from podnet.model.node import Node, vtep_mac
from podnet.model.block import Block
from podnet.model.endpoint import WorkloadEndpoint, host_veth_name

__all__ = [
    "ValidationError",
    "IPPool",
    "parse_resource",
    "Node",
    "vtep_mac",
    "Block",
    "WorkloadEndpoint",
    "host_veth_name",
]
