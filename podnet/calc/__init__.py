"""Calculation of the kernel state a node should have. Pure: no I/O, no clock.

Inputs are datastore facts (nodes, block affinities) and a few facts the
dataplane reads (the underlay MTU); outputs are plain value objects that the
dataplane layer turns into netlink requests.
"""

from podnet.calc.state import DesiredState, FdbEntry, Neighbour, Route, VxlanDevice
from podnet.calc.config import VxlanConfig
from podnet.calc.desired import compute_desired

__all__ = [
    "DesiredState",
    "FdbEntry",
    "Neighbour",
    "Route",
    "VxlanDevice",
    "VxlanConfig",
    "compute_desired",
]
