"""podnet CNI plugin executable.

The container runtime runs this once per pod operation, so it must start and
answer fast: it imports almost nothing (no site packages, no json unless an
error must be written) and hands the request to the podnet agent on this
node, which keeps warm netlink sockets and datastore connections. VERSION is
answered here, without the agent.

This file is self-contained on purpose: `podnet install-cni` copies it into
the runtime's CNI bin directory with a shebang to the system interpreter,
run with -I -S (isolated, no site), with its bytecode embedded (install.py), and it
leaves through posix._exit: together these make it start and finish in ~7-9 ms.

The plugin opens CNI_NETNS itself, here in the runtime's mount namespace, without
ever blocking (never a plain open() of a FIFO or device), and hands the agent the
descriptor over the socket (wire.py has the protocol, step by step); the agent
never opens the path.

The only error codes decided here (the rest live in podnet/cni/protocol.py):
11 (try again later) when the agent cannot be reached, and for STATUS 50
(plugin not available), as the spec asks of a plugin whose daemon is away.
"""

import posix  # built in and already loaded: os would cost ~1.5 ms of module imports
import sys

SUPPORTED = '["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]'
LATEST = "1.1.0"
DEFAULT_ADDRESS = "@podnet/cni"
TIMEOUT = 120.0
INVALID_ENVIRONMENT = 4  # = protocol.INVALID_ENVIRONMENT
TRY_AGAIN_LATER = 11  # = protocol.TRY_AGAIN_LATER
STATUS_NOT_READY = 50  # = protocol.STATUS_NOT_READY
MAGIC = b"PODNET/2"  # = wire.MAGIC
FILE_KINDS = {0o100000: b"regular", 0o040000: b"directory", 0o010000: b"fifo", 0o020000: b"char",
              0o060000: b"block", 0o140000: b"socket"}


def _version_of(data):
    # Cheap scan for "cniVersion": "x.y.z" without importing json.
    i = data.find(b'"cniVersion"')
    if i >= 0:
        j = data.find(b'"', data.find(b":", i) + 1)
        k = data.find(b'"', j + 1)
        if 0 <= j < k and k - j < 12:
            v = data[j + 1:k].decode("ascii", "replace")
            if '"%s"' % v in SUPPORTED:
                return v
    return LATEST


def _fail(data, code, msg, details):
    import json

    sys.stdout.write(json.dumps({"cniVersion": _version_of(data), "code": code, "msg": msg, "details": details}))
    sys.stdout.flush()
    return 1


def _getenv(name):
    return posix.environ.get(name.encode(), b"").decode("utf-8", "replace")


def _utf8(raw):
    try:
        raw.decode()
        return True
    except UnicodeDecodeError:
        return False


def _string_field(data, name):
    """The string value of "name" in the config, scanned for (json would cost ~10 ms of imports);
    None when absent or not a plain string (the agent reports a wrong type properly)."""
    i = data.find(b'"' + name + b'"')
    if i < 0:
        return None
    j = i + len(name) + 2
    while data[j:j + 1] in (b" ", b"\t", b"\n", b"\r", b":"):
        j += 1
    if data[j:j + 1] != b'"':
        return None
    k = data.find(b'"', j + 1)
    value = data[j + 1:k] if k > j else b""
    if b"\\" in value:  # escapes: let json decode it
        import json

        try:
            value = json.loads(data).get(name.decode())
        except Exception:
            return None
        return value if isinstance(value, str) else None
    return value.decode("utf-8", "replace")


def _address(data):
    address = _getenv("PODNET_AGENT_SOCKET") or _string_field(data, b"agent_socket") or DEFAULT_ADDRESS
    return "\0" + address[1:] if address.startswith("@") else address


def _connect(s, address):
    # A unix socket whose listen queue is full refuses at once with EAGAIN rather than
    # waiting; the agent is busy, not gone, so wait a little and knock again.
    for attempt in range(200):
        try:
            return s.connect(address)
        except BlockingIOError:
            import time

            time.sleep(0.005 * min(attempt + 1, 20))
    s.connect(address)


def _open_netns(path):
    """(token, descriptor or -1): CNI_NETNS resolved as wire.py's steps 1-5 say."""
    if not path:
        return b"unset", -1
    if path[0] != "/":
        return b"relative", -1
    try:
        handle = posix.open(path, posix.O_PATH | posix.O_CLOEXEC)  # opens nothing: cannot block
    except OSError as e:
        return b"errno:%d" % e.errno, -1
    try:
        st = posix.fstat(handle)
        kind = st.st_mode & 0o170000
        if kind != 0o100000 or st.st_dev != posix.stat("/proc/self/ns/net").st_dev:
            return b"notnsfs:" + FILE_KINDS.get(kind, b"other"), -1
        return b"fd", posix.open("/proc/self/fd/%d" % handle, posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError as e:
        return b"errno:%d" % e.errno, -1
    finally:
        posix.close(handle)


def main():
    command = _getenv("CNI_COMMAND")
    data = sys.stdin.buffer.read() if command != "VERSION" or not sys.stdin.isatty() else b""
    if command == "VERSION":
        sys.stdout.write('{"cniVersion": "%s", "supportedVersions": %s}' % (_version_of(data), SUPPORTED))
        return 0
    import _socket

    unavailable = STATUS_NOT_READY if command == "STATUS" else TRY_AGAIN_LATER

    cni_vars = [k + b"=" + v for k, v in posix.environ.items() if k.startswith(b"CNI_")]
    bad = [item.split(b"=", 1)[0].decode("utf-8", "replace") for item in cni_vars if not _utf8(item)]
    if bad:
        return _fail(data, INVALID_ENVIRONMENT, "a CNI_* environment variable is not valid UTF-8", " ".join(bad))
    env = b"\0".join(cni_vars)
    address = _address(data)
    token, netns = _open_netns(_getenv("CNI_NETNS")) if command in ("ADD", "DEL", "CHECK") else (b"unset", -1)
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    chunks = []
    try:
        _connect(s, address)
        head = b"%s %d %d %s\n" % (MAGIC, len(env), len(data), token)
        try:
            if netns >= 0:
                rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, netns.to_bytes(4, sys.byteorder))]
                sent = s.sendmsg([head], rights)
                posix.close(netns)
                netns = -1
                s.sendall(head[sent:] + env + data)
            else:
                s.sendall(head + env + data)
        except OSError:
            pass  # the agent refused the request (too large?) and answered before closing: read on
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except (OSError, ValueError) as e:  # ValueError: an address that cannot be encoded
        if not chunks:
            why = getattr(e, "strerror", None) or e
            return _fail(data, unavailable, "the podnet agent on this node is not reachable",
                         "%s at %s; is `podnet agent` running on this node?" % (why, address.replace("\0", "@")))
    finally:
        s.close()
    reply = b"".join(chunks)
    head, _, out = reply.partition(b"\n")
    if not head.isdigit():
        return _fail(data, unavailable, "the podnet agent closed the connection without an answer",
                     "it may be restarting; see its log")
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return int(head)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Skip the interpreter's shutdown (module teardown, a final garbage collection): ~1.5 ms of every call.
    posix._exit(code)
