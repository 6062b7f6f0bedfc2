"""Put the plugin where a runtime finds it, as a DaemonSet's init container would (deploy/podnet.yaml).

Two plugin executables speak the same protocol to the agent (wire.py). The static one, built by `make` from
cni-plugin/podnet-cni.c with musl into podnet/cni/podnet-cni, needs nothing on the host (Flatcar, Talos,
Bottlerocket and COS have no Python); it is installed whenever it is built. Otherwise, or with
kind="python" ($PODNET_CNI_PLUGIN=python, or an interpreter named), the plugin is shim.py behind a `#!<python3> -IS` line, with the shim's bytecode embedded: compiling the
source on every call would cost ~2 ms of each ADD. The bytecode is compiled by the plugin's own interpreter;
should that interpreter later change minor version (a distribution upgrade), or not be runnable where
install-cni runs (an init container), the plugin compiles the embedded source instead, ~2 ms slower but correct. The runtime runs the plugin on the host, so the interpreter must exist on
the host: from an init container set PODNET_CNI_INTERPRETER (e.g. /usr/bin/python3) rather than letting the
container's own interpreter be picked.

Every plugin the conflist chains after podnet (portmap) must be where the runtime looks, or the runtime fails
every sandbox and, worse, stops its DEL at the missing plugin, so podnet's DEL never runs. install-cni finds
each one in the bin directory, or copies it there from a directory that has it (PLUGIN_SOURCES, the
reference plugins' usual homes); one found nowhere is left out of the conflist, with a warning saying why.

The conflist is cniVersion 1.0.0 by default, not 1.1.0: containerd 1.6/1.7's libcni and the reference
plugins of Debian 12 (1.1.1) stop at 1.0.0 and refuse a list they cannot speak. podnet answers 0.1.0-1.1.0.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

from podnet.errors import PodnetError

log = logging.getLogger(__name__)

PLUGIN_NAME = "podnet"


def fastest_interpreter() -> str:
    """The shim needs nothing but the standard library, so any Python 3.8+ runs it;
    the distribution's own build starts fastest (optimised, no version shims)."""
    for candidate in ("/usr/bin/python3", sys.executable):
        if candidate and os.access(candidate, os.X_OK):
            try:
                ok = subprocess.run([candidate, "-IS", "-c", "import sys; assert sys.version_info >= (3, 8)"],
                                    capture_output=True, timeout=10).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                return candidate
    return sys.executable


INTERPRETER_ENV = "PODNET_CNI_INTERPRETER"
KIND_ENV = "PODNET_CNI_PLUGIN"
KINDS = ("static", "python")
STATIC_PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "podnet-cni")  # `make` builds it


def plugin_kind(kind: str | None = None, interpreter: str | None = None) -> str:
    """Which executable to install: the argument, else $PODNET_CNI_PLUGIN; else the Python shim when an
    interpreter is named (argument or $PODNET_CNI_INTERPRETER); else the static one if it is built."""
    kind = kind or os.environ.get(KIND_ENV) or None
    if kind is None:
        if interpreter or os.environ.get(INTERPRETER_ENV):
            return "python"
        return "static" if os.path.isfile(STATIC_PLUGIN) else "python"
    if kind not in KINDS:
        raise PodnetError(f"unknown CNI plugin kind {kind!r}", "static (the C executable) or python (the shim)")
    if kind == "static" and not os.path.isfile(STATIC_PLUGIN):
        raise PodnetError(f"the static CNI plugin is not built ({STATIC_PLUGIN} is missing)",
                          "run `make` in podnet's source tree (it needs musl-tools), or install the python one")
    return kind


def install_plugin(bin_dir: str, interpreter: str | None = None, name: str = PLUGIN_NAME,
                   kind: str | None = None) -> str:
    """Write the plugin executable atomically; returns its path. Which one: plugin_kind().

    The shim's interpreter: the argument, else $PODNET_CNI_INTERPRETER, else the fastest one found here."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, name)
    if plugin_kind(kind, interpreter) == "static":
        tmp = path + ".tmp"
        shutil.copyfile(STATIC_PLUGIN, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        return path
    interpreter = interpreter or os.environ.get(INTERPRETER_ENV) or fastest_interpreter()
    with open(os.path.join(os.path.dirname(__file__), "shim.py")) as f:
        source = f.read()
    try:
        version, bytecode = compile_with(interpreter, source, path)
    except (OSError, subprocess.TimeoutExpired) as e:
        # The host's interpreter need not exist where install-cni runs (a DaemonSet's init container):
        # the plugin then compiles its source on each call, ~2 ms slower but the same plugin.
        log.warning("cannot run %s here (%s): the plugin will compile its source on every call; run "
                    "`podnet install-cni` where that interpreter exists to embed its bytecode", interpreter, e)
        version, bytecode = 0, b""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(render_plugin(interpreter, source, version, bytecode))
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def compile_with(interpreter: str, source: str, filename: str) -> tuple[int, bytes]:
    """(major.minor as sys.hexversion >> 16, marshalled code) of source compiled by that interpreter."""
    proc = subprocess.run(
        [interpreter, "-IS", "-c", _COMPILE, filename], input=source.encode(), capture_output=True, timeout=60
    )
    if proc.returncode != 0:
        raise PodnetError(f"{interpreter} could not compile the CNI plugin",
                          proc.stderr.decode(errors="replace").strip()[-400:])
    head, _, code = proc.stdout.partition(b"\n")
    return int(head), code


# Run by the plugin's interpreter: optimize=2 drops docstrings and asserts (a smaller literal to parse).
_COMPILE = (
    "import marshal, sys; out = sys.stdout.buffer; out.write(b'%d\\n' % (sys.hexversion >> 16)); "
    "out.write(marshal.dumps(compile(sys.stdin.read(), sys.argv[1], 'exec', optimize=2)))"
)


def render_plugin(interpreter: str, source: str, version: int, bytecode: bytes) -> str:
    """The plugin file: the bytecode when the interpreter's major.minor is still `version`, else the source."""
    # One combined flag on the #! line: the kernel passes everything after the path as a single argument.
    return (
        f"#!{interpreter} -IS\n"
        "# podnet CNI plugin, written by `podnet install-cni` from podnet/cni/shim.py; do not edit.\n"
        "import sys\n"
        f"if sys.hexversion >> 16 == {version:#x}:\n"
        "    from marshal import loads\n"
        f"    exec(loads({bytecode!r}))\n"
        "else:\n"
        f"    exec(compile({source!r}, __file__, 'exec'))\n"
    )


def default_conflist(name: str = "k8s-pod-network", cni_version: str = "1.0.0", chain_portmap: bool = True,
                     extra: dict | None = None, chain: list[dict] | None = None) -> dict:
    """podnet first (it creates the interface), then portmap for hostPort, as Calico's stock manifest does.

    `chain`: further plugin entries appended after those (e.g. bandwidth, tuning)."""
    plugin = {"type": PLUGIN_NAME, "ipam": {"type": "podnet-ipam"}}
    plugin.update(extra or {})
    plugins = [plugin]
    if chain_portmap:
        plugins.append({"type": "portmap", "snat": True, "capabilities": {"portMappings": True}})
    plugins += list(chain or [])
    return {"cniVersion": cni_version, "name": name, "plugins": plugins}


TEMPLATE_ENV = "CNI_NETWORK_CONFIG"  # the conflist template's text, as Calico's install-cni takes it
# Placeholders a template may hold, each replaced by the environment variable named (or its default).
# A placeholder stands for a JSON value's text: write "__LOG_LEVEL__" inside quotes, __CNI_MTU__ bare.
TEMPLATE_VALUES = {
    "__KUBERNETES_NODE_NAME__": ("KUBERNETES_NODE_NAME", None),  # else NODE_NAME, else this host's name
    "__CNI_MTU__": ("CNI_MTU", "0"),  # 0: the agent's own (underlay MTU - 50), as Calico's "auto"
    "__LOG_LEVEL__": ("LOG_LEVEL", "info"),
    "__ETCD_ENDPOINTS__": ("ETCD_ENDPOINTS", ""),
}


def render_template(text: str, env=None) -> dict:
    """The conflist a template describes: placeholders replaced from `env`, then checked to be a conflist
    whose first plugin is podnet (it creates the interface; the others chain after it)."""
    env = os.environ if env is None else env
    for placeholder, (var, default) in TEMPLATE_VALUES.items():
        if placeholder not in text:
            continue
        value = env.get(var) or default
        if placeholder == "__KUBERNETES_NODE_NAME__":
            value = value or env.get("NODE_NAME") or os.uname().nodename
        text = text.replace(placeholder, value)
    try:
        conflist = json.loads(text)
    except ValueError as e:
        raise PodnetError(f"the conflist template is not JSON once rendered: {e}",
                          "placeholders stand for JSON text: quote string ones, e.g. \"__LOG_LEVEL__\"") from None
    plugins = conflist.get("plugins") if isinstance(conflist, dict) else None
    if not isinstance(plugins, list) or not plugins or not all(isinstance(x, dict) for x in plugins):
        raise PodnetError("the conflist template has no `plugins` list", "see deploy/podnet.yaml for one")
    if plugins[0].get("type") != PLUGIN_NAME:
        raise PodnetError(f"the conflist template's first plugin is {plugins[0].get('type')!r}, not {PLUGIN_NAME!r}",
                          "podnet creates the pod's interface, so it comes first; chained plugins follow")
    if not conflist.get("name") or not conflist.get("cniVersion"):
        raise PodnetError("the conflist template needs `name` and `cniVersion`")
    return conflist


def install_conflist(conf_dir: str, conflist: dict, filename: str = "10-podnet.conflist") -> str:
    os.makedirs(conf_dir, exist_ok=True)
    path = os.path.join(conf_dir, filename)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(conflist, f, indent=2)
    os.replace(tmp, path)
    return path


# Where the CNI reference plugins usually live: Debian's containernetworking-plugins, the upstream tarball's
# default, Fedora's; install-cni copies a chained plugin from the first that has it.
PLUGIN_SOURCES = ("/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni")


def provide_plugin(name: str, bin_dir: str, sources=PLUGIN_SOURCES) -> str | None:
    """Make plugin `name` runnable from bin_dir: there already, or copied from the first source that has it.
    Returns how it was provided ("present", "copied from DIR"), None when no source has it."""
    target = os.path.join(bin_dir, name)
    if _runnable(target):
        return "present"
    for source in sources:
        path = os.path.join(source, name)
        if os.path.abspath(source) != os.path.abspath(bin_dir) and _runnable(path):
            tmp = target + ".tmp"
            shutil.copy2(path, tmp)
            os.replace(tmp, target)
            return f"copied from {source}"
    return None


def _runnable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def provide_chain(conflist: dict, bin_dir: str, sources=PLUGIN_SOURCES) -> tuple[dict, list[str], list[str]]:
    """The conflist with only the chained plugins that are (now) in bin_dir; what was done; what was left out
    and why. podnet itself is installed by install_plugin."""
    kept, done, warnings = [], [], []
    for plugin in conflist["plugins"]:
        name = plugin.get("type")
        if name == PLUGIN_NAME:
            kept.append(plugin)
            continue
        how = provide_plugin(name, bin_dir, sources)
        if how is None:
            warnings.append(f"the {name} plugin is neither in {bin_dir} nor in {', '.join(sources)}: the conflist "
                            f"does not chain it (a runtime would fail every sandbox, and stop every DEL, at a "
                            f"missing plugin){' so hostPort mappings do not work' if name == 'portmap' else ''}; "
                            f"install the CNI reference plugins (Debian: apt-get install containernetworking-plugins)"
                            f" and run install-cni again, or give their directory with --plugin-dir")
            continue
        kept.append(plugin)
        done.append(f"{name}: {how}")
    return dict(conflist, plugins=kept), done, warnings


def copy_reference_plugins(bin_dir: str, names=("loopback", "portmap", "bandwidth", "tuning"),
                           source_dir: str = "/usr/lib/cni") -> list[str]:
    copied = []
    for n in names:
        src = os.path.join(source_dir, n)
        if os.path.exists(src):
            shutil.copy2(src, os.path.join(bin_dir, n))
            copied.append(n)
    return copied
