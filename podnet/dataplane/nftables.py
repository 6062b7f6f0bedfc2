"""The one way the agent runs nftables: libnftables in-process; the `nft` binary when it cannot load,
and for a transaction of megabytes (BINARY_ABOVE).

A libnftables context parses and commits a whole buffer as one transaction, exactly what `nft -f`
does, without starting a process (about 10-20 ms on a loaded node). A context opens its netlink
socket in the network namespace that is current when it is created and stays bound to it, and a
context is not safe to share between threads; so each thread keeps one context, for the namespace it
is in, and replaces it when the thread has moved to another namespace (the agent's threads never
move: they are born in the node's namespace). Callers that visit many namespaces (doctor) ask for a
transient context, freed after the call, so no socket keeps a deleted namespace alive.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import threading

from podnet import heap
from podnet.errors import PodnetError

log = logging.getLogger(__name__)

SONAME = "libnftables.so.1"  # Debian: libnftables1
# A transaction this large leaves tens of MiB of freed parser and netlink memory in the heap (a
# 1000-policy table: about 100 MiB, which `nft` used to take away with its process); above it the
# heap is trimmed, a few ms against a transaction that took a second.
TRIM_ABOVE = 256 * 1024
# A transaction larger still (a whole table of a thousand policies: megabytes) is handed to `nft -f`:
# the same library in a fresh process. In the agent's heap, full of its own long-lived objects, the
# parser's hundreds of thousands of small allocations made it 15-40% slower than `nft -f` of the same
# text (a 35,000-rule table: 0.44 s against 0.32 s), and a process takes its peak memory with it. A
# fork and exec cost a few ms; below this size the library in-process wins.
BINARY_ABOVE = 1 << 20
# Output flags of nft_ctx_output_set_flags (nftables/libnftables.h), by the nft option that sets them.
_FLAGS = {"-a": 1 << 3, "--handle": 1 << 3, "-j": 1 << 4, "--json": 1 << 4, "-e": 1 << 5, "--echo": 1 << 5,
          "-s": 1 << 2, "--stateless": 1 << 2, "-t": 1 << 11, "--terse": 1 << 11}


class NftError(PodnetError):
    """nft refused a command or transaction; `detail` is nft's own error text. A refused transaction
    changed nothing."""

    def __init__(self, message: str, detail: str = "", hint: str | None = None):
        super().__init__(message, hint)
        self.detail = detail


class NftUnavailable(NftError):
    """Neither libnftables nor the nft binary is installed."""


_lib = None
_lib_state = "untried"  # "loaded" | "missing"
_lib_lock = threading.Lock()


def _load():
    global _lib, _lib_state
    with _lib_lock:
        if _lib_state != "untried":
            return _lib
        try:
            lib = ctypes.CDLL(SONAME)
        except OSError as e:
            _lib_state = "missing"
            log.warning("libnftables (%s) cannot be loaded (%s): running the nft binary per transaction "
                        "instead (apt-get install libnftables1)", SONAME, e)
            return None
        vp, cp = ctypes.c_void_p, ctypes.c_char_p
        for name, restype, argtypes in (
                ("nft_ctx_new", vp, [ctypes.c_uint32]),
                ("nft_ctx_free", None, [vp]),
                ("nft_ctx_buffer_output", ctypes.c_int, [vp]),
                ("nft_ctx_buffer_error", ctypes.c_int, [vp]),
                ("nft_ctx_get_output_buffer", cp, [vp]),
                ("nft_ctx_get_error_buffer", cp, [vp]),
                ("nft_ctx_output_set_flags", None, [vp, ctypes.c_uint]),
                ("nft_run_cmd_from_buffer", ctypes.c_int, [vp, cp]),
                ("nft_run_cmd_from_filename", ctypes.c_int, [vp, cp])):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        _lib, _lib_state = lib, "loaded"
        return lib


def available() -> bool:
    """Whether nftables can be run at all (the library, or failing that the binary)."""
    return _load() is not None or shutil.which("nft") is not None


def using_library() -> bool:
    return _load() is not None


def _netns_id() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


class NftContext:
    """One libnftables context, bound to the network namespace current when it was made."""

    def __init__(self):
        lib = _load()
        if lib is None:
            raise NftUnavailable("libnftables cannot be loaded", hint="apt-get install libnftables1")
        self._lib = lib
        self.netns = _netns_id()
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise NftError("nft_ctx_new failed (out of memory?)")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)

    def run(self, command: str, flags: int = 0, *, as_file: bool = False) -> str:
        """Run `command`: its output, or NftError with nft's words. `as_file`: read it as `nft -f` reads a
        file (many lines, one transaction, errors located by line), which a buffer does not do right."""
        if not self._ctx:
            raise NftError("the nftables context is closed")
        lib = self._lib
        lib.nft_ctx_output_set_flags(self._ctx, flags)
        if as_file:
            fd = os.memfd_create("podnet-nft", os.MFD_CLOEXEC)
            try:
                os.write(fd, command.encode())
                source = f"/proc/self/fd/{fd}"
                rc = lib.nft_run_cmd_from_filename(self._ctx, source.encode())
            finally:
                os.close(fd)
        else:
            source = None
            rc = lib.nft_run_cmd_from_buffer(self._ctx, command.encode())
        out = (lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace").strip()
        if len(command) > TRIM_ABOVE:
            heap.trim()
        if rc != 0:
            if source:
                err = err.replace(source + ":", "line ")  # "line 3:81-81: Error: ..."
            what = "transaction" if as_file else command
            raise NftError(f"nft {what} failed: {err[:2000] or 'no reason given'}", err)
        return out

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_local = threading.local()


def _thread_context() -> NftContext:
    """This thread's context for the namespace it is in now (made anew if the thread moved)."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None or ctx.netns != _netns_id():
        if ctx is not None:
            ctx.close()
        ctx = _local.ctx = NftContext()
    return ctx


def release() -> None:
    """Free this thread's context (its netlink socket) now rather than when the thread ends."""
    ctx = getattr(_local, "ctx", None)
    if ctx is not None:
        ctx.close()
        _local.ctx = None


def _split(args: tuple[str, ...]) -> tuple[int, list[str]]:
    flags, words = 0, []
    for a in args:
        if a.startswith("-"):
            if a not in _FLAGS:
                raise ValueError(f"nftables.run: unsupported nft option {a}")
            flags |= _FLAGS[a]
        else:
            words.append(a)
    return flags, words


def run(text: str | None, *args: str, transient: bool = False, timeout: float = 60.0) -> str:
    """What `nft [options] -f -` with `text` on stdin (text given) or `nft [options] WORDS...` (text None)
    prints, in the calling thread's network namespace; NftError with nft's own words on failure.
    `transient`: a context just for this call (for callers that visit many namespaces). `timeout`
    bounds only the binary fallback."""
    flags, words = _split(args)
    if text is not None and words:
        raise ValueError("nftables.run: give commands either as text or as words, not both")
    command = text if text is not None else " ".join(words)
    if text is not None and len(text) > BINARY_ABOVE and shutil.which("nft"):
        return run_binary(text, *args, timeout=timeout)
    if _load() is not None:
        if transient:
            ctx = NftContext()
            try:
                return ctx.run(command, flags, as_file=text is not None)
            finally:
                ctx.close()
        return _thread_context().run(command, flags, as_file=text is not None)
    return run_binary(text, *args, timeout=timeout)


def run_binary(text: str | None, *args: str, timeout: float = 60.0) -> str:
    """The same through a `nft` process (the fallback, and a benchmark's peer)."""
    nft = shutil.which("nft")
    if nft is None:
        raise NftUnavailable("nftables is not installed (neither libnftables nor the nft command)",
                             hint="apt-get install libnftables1 nftables")
    argv = [nft, *args] if text is None else [nft, *args, "-f", "-"]
    proc = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if text is not None:  # worded as the library's: "line 3:81-81: Error: ..."
            err = err.replace("/dev/stdin:", "line ")
            raise NftError(f"nft transaction failed: {err[:2000] or 'no reason given'}", err)
        raise NftError(f"nft {' '.join(args)} failed: {err[:2000]}", err)
    return proc.stdout
