"""podnet: Calico-style VXLAN pod networking on the real Linux kernel.

Layers, imports pointing one way only:
model -> datastore -> ipam -> calc (pure) -> dataplane (netlink) -> entry points
(agent, cni, cli, lab, observe).
"""

__version__ = "0.1.0"
