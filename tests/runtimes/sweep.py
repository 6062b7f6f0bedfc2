"""Remove what runtime tests left when their process was killed before teardown could run.

    python3 -m tests.runtimes.sweep        (scripts/clean-runtimes.sh runs this)

Looks only at the runtime dirs these tests create (podnet-containerd-*, podnet-podman-* in /dev/shm or
the temp dir) whose owner process (owner.json: PID and start time) is gone, and removes everything each
one made: processes by PID, runc containers, network namespaces, mounts, the cgroup parent, the dir.
Dirs of a live test run are left alone. Labs are removed by `podnet lab down --all` (make clean-lab).
"""

from __future__ import annotations

import os
import shutil
import sys

from tests.runtimes.runtime_util import owner_alive, read_owner, runtime_dirs


def sweep_orphans(say=print) -> list[str]:
    from tests.runtimes.containerd import Containerd
    from tests.runtimes.podman import Podman

    removed = []
    for directory in runtime_dirs():
        if owner_alive(directory):
            continue
        kind = Containerd if os.path.basename(directory).startswith("podnet-containerd-") else Podman
        if read_owner(directory) is None:
            say(f"{directory}: no owner record; removing the directory only")
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
            continue
        runtime = kind.orphan(directory)
        forced = runtime.stop() if kind is Containerd else runtime.teardown()
        say(f"{directory}: removed" + (f" ({', '.join(forced)})" if forced else ""))
        removed.append(directory)
    return removed


def main() -> int:
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    removed = sweep_orphans()
    if not removed:
        print("nothing left behind by runtime tests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
