"""The framing between the plugin executable and the agent (kept tiny for the shim).

Request:  b"PODNET/1 <env bytes> <stdin bytes>\\n" + env + stdin, where env is
          NUL-separated KEY=VALUE pairs of the plugin's CNI_* variables.
Response: b"<exit code>\\n" + what the plugin prints on stdout.

The default address is an abstract unix socket. Abstract sockets belong to a
network namespace, so every node of a lab (and every host) has its own agent
at the same name, and the plugin, which the runtime runs in the node's
namespace, reaches the right one without configuration.
"""

DEFAULT_ADDRESS = "@podnet/cni"
MAGIC = b"PODNET/1"


def sockaddr(address: str) -> str:
    return "\0" + address[1:] if address.startswith("@") else address
