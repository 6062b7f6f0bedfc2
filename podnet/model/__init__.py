"""Resource model: what podnet stores and reasons about. Pure data and validation.

The names below are loaded on first use (PEP 562), so a command that needs one kind of
resource does not pay for parsing code of all of them.
"""

import importlib

_EXPORTS = {
    "ValidationError": "podnet.model.errors",
    "IPPool": "podnet.model.ippool",
    "parse_resource": "podnet.model.kinds",
    "Node": "podnet.model.node",
    "vtep_mac": "podnet.model.node",
    "Block": "podnet.model.block",
    "WorkloadEndpoint": "podnet.model.endpoint",
    "host_veth_name": "podnet.model.endpoint",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'podnet.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
