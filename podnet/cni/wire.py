"""The wire protocol between the plugin executable and the agent (the only contract they share).

Any plugin speaking it works with the agent: the Python shim (shim.py) and a static one in C.

Transport
    A unix stream socket; the default address is the abstract `@podnet/cni` (an abstract socket
    belongs to a network namespace, so the plugin, which the runtime runs in the node's namespace,
    reaches that node's agent without configuration). `PODNET_AGENT_SOCKET` in the plugin's
    environment, else `agent_socket` in the network configuration, names another (`@name` for an
    abstract one). The agent serves only peers with uid 0 (SO_PEERCRED); others are closed on.
    One connection carries one request and its response.

Request (plugin -> agent)
    header  b"PODNET/2 <env_len> <stdin_len> <netns>\\n"  (ASCII, at most 128 bytes with the newline)
    env     env_len bytes: the plugin's CNI_* environment variables as KEY=VALUE, UTF-8, joined by NUL
    stdin   stdin_len bytes: the network configuration exactly as read from the plugin's stdin
    env_len and stdin_len are decimal byte counts.

    <netns> says how the plugin resolved CNI_NETNS itself, in its own mount namespace (the runtime's),
    because only there does the path mean what the runtime meant (the agent may live in another mount
    namespace: `ip netns exec`, a container). The plugin must never open() CNI_NETNS in a way that can
    block or act on a device:
      1. CNI_NETNS empty or unset            -> "unset"
      2. not starting with "/"               -> "relative" (the spec wants a path; no name lookup)
      3. open(path, O_PATH|O_CLOEXEC); fails -> "errno:<n>" (n = errno; 2 = it does not exist)
      4. fstat() of that descriptor: not a regular file, or st_dev differs from the st_dev of
         stat("/proc/self/ns/net") (i.e. not on nsfs)
                                             -> "notnsfs:<kind>", kind one of regular, directory,
                                                fifo, char, block, socket, other
      5. otherwise reopen "/proc/self/fd/<O_PATH fd>" with O_RDONLY|O_CLOEXEC (nsfs: cannot block);
         failure -> "errno:<n>"; success    -> "fd", and that descriptor is sent with the header
    With "fd" the plugin sends the header with sendmsg() carrying exactly one descriptor in an
    SCM_RIGHTS control message (so the descriptor arrives with the first byte of the request), then
    closes its copy. Every other token sends no descriptor. The agent checks what the plugin cannot
    cheaply: that the namespace is a *network* namespace (ioctl NS_GET_NSTYPE) and that it is not
    the node's own (see handler.resolve_netns), and it never opens CNI_NETNS by path.

Response (agent -> plugin)
    b"<exit code>\\n" + the bytes the plugin must print on stdout; then the agent closes. The plugin
    exits with that code. A plugin whose send fails (the agent refused an oversized request and
    closed) still reads the response: the agent answers before it closes.

Limits the agent enforces (each answered with a spec error, never a silent close)
    env_len over MAX_ENV: code 4; stdin_len over MAX_CONFIG: code 7 (a configuration that size can
    never succeed, so not 11); a header that is not this protocol: code 4; the whole request not
    received READ_DEADLINE seconds after the connection was accepted: code 11; a request still waiting
    for others (the node's one address allocator) REQUEST_DEADLINE seconds after it was accepted gives
    up with code 11, so the plugin (which waits 120 s) always gets an answer. PODNET/1 (the
    previous protocol, no descriptor) is answered with code 4 asking for `podnet install-cni`.
"""

DEFAULT_ADDRESS = "@podnet/cni"
MAGIC = b"PODNET/2"
OLD_MAGIC = b"PODNET/1"
MAX_HEADER = 128
MAX_ENV = 4 << 20  # Linux caps one environment string at 128 KiB and all of them at ~2 MiB
MAX_CONFIG = 16 << 20
READ_DEADLINE = 10.0  # seconds from accept() to the last byte of the request
REQUEST_DEADLINE = 60.0  # seconds from accept() by which waits for other requests end (the plugins wait 120)

# The <netns> tokens.
NETNS_FD = "fd"
NETNS_UNSET = "unset"
NETNS_RELATIVE = "relative"
NETNS_ERRNO = "errno:"
NETNS_NOT_NSFS = "notnsfs:"


def sockaddr(address: str) -> str:
    return "\0" + address[1:] if address.startswith("@") else address


def header(env_len: int, stdin_len: int, netns: str) -> bytes:
    return b"%s %d %d %s\n" % (MAGIC, env_len, stdin_len, netns.encode())
