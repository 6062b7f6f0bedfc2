"""Apply the masquerade table with nft: the whole table in one atomic transaction.

The kernel's listing of the table right after applying is remembered; a later
listing that differs means someone changed it, and the table is applied again
(NatManager, on its periodic resync).
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from podnet.dataplane.manager import DeltaTracker, Manager
from podnet.errors import PodnetError

log = logging.getLogger(__name__)


class NatError(PodnetError):
    pass


class NatTable:
    def __init__(self, table: str = "podnet", family: str = "ip"):
        self.table = table
        self.family = family
        self._applied: str | None = None  # the desired text we last applied
        self._listing: str | None = None  # what the kernel showed right after

    def _nft(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        nft = shutil.which("nft")
        if nft is None:
            raise NatError("natOutgoing needs the nft command", "apt-get install nftables")
        return subprocess.run([nft, *args], input=stdin, capture_output=True, text=True, timeout=30)

    def listing(self) -> str | None:
        """The kernel's listing of the table, None if there is none."""
        proc = self._nft("list", "table", self.family, self.table)
        return proc.stdout if proc.returncode == 0 else None

    @property
    def applied(self) -> str | None:
        return self._applied

    @property
    def applied_listing(self) -> str | None:
        return self._listing

    def replace(self, ruleset: str) -> None:
        """Make the table exactly `ruleset`, atomically."""
        # Create-then-delete makes the replace one transaction whether or not the table exists.
        text = f"table {self.family} {self.table} {{}}\ndelete table {self.family} {self.table}\n{ruleset}"
        proc = self._nft("-f", "-", stdin=text)
        if proc.returncode != 0:
            raise NatError(f"nft rejected the masquerade table: {proc.stderr.strip()}")
        self._applied = ruleset
        self._listing = self.listing()
        log.info("applied nftables table %s %s", self.family, self.table)

    def delete(self) -> None:
        """Remove the table; removing a table that is not there is success."""
        if self.listing() is not None:
            self._nft("delete", "table", self.family, self.table)
            log.info("removed nftables table %s %s", self.family, self.table)
        self._applied = self._listing = None


class NatManager(Manager):
    """The natOutgoing table as a manager: desired ruleset in, applied whole when it differs.

    The kernel sends no netlink notification podnet listens to for nftables, so drift is found
    by the periodic resync: the table's listing is compared with the one seen right after the
    last apply."""

    name = "nat"
    KEY = "table"

    def __init__(self, table: NatTable | None = None):
        self.table = table or NatTable()
        self.tracker: DeltaTracker[str, str] = DeltaTracker()

    def set_desired(self, ruleset: str | None) -> None:
        if ruleset is None:
            self.tracker.desired_delete(self.KEY)
        else:
            self.tracker.desired_set(self.KEY, ruleset)

    def resync(self) -> None:
        if shutil.which("nft") is None:
            self.tracker.replace_believed({})  # nothing can be there; apply says why if wanted
            return
        listing = self.table.listing()
        if listing is None:
            self.tracker.replace_believed({})
        elif self.table.applied is not None and listing == self.table.applied_listing:
            self.tracker.replace_believed({self.KEY: self.table.applied})
        else:
            self.tracker.replace_believed({self.KEY: ("changed outside podnet", listing)})

    def apply_updates(self) -> int:
        n = 0
        for key, ruleset in self.tracker.pending_updates():
            self.table.replace(ruleset)
            self.tracker.believed_set(key, ruleset)
            n += 1
        return n

    def apply_deletes(self) -> int:
        n = 0
        for key, _ in self.tracker.pending_deletes():
            self.table.delete()
            self.tracker.believed_delete(key)
            n += 1
        return n
