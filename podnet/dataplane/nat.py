"""Apply the masquerade table with nft: the whole table in one atomic transaction.

The kernel's listing of the table right after applying is remembered; a later
listing that differs means someone changed it, and the table is applied again.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

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

    def _list(self) -> str | None:
        proc = self._nft("list", "table", self.family, self.table)
        return proc.stdout if proc.returncode == 0 else None

    def ensure(self, ruleset: str | None, verify: bool = False) -> bool:
        """Make the table exactly `ruleset` (None: no table). True if anything changed.
        Unless `verify`, a ruleset already applied is trusted without listing the kernel's."""
        if ruleset is None:
            if self._applied is None and (not verify or shutil.which("nft") is None):
                return False
            if self._list() is None:
                self._applied = self._listing = None
                return False
            self._nft("delete", "table", self.family, self.table)
            self._applied = self._listing = None
            log.info("removed nftables table %s %s", self.family, self.table)
            return True
        if ruleset == self._applied and (not verify or self._list() == self._listing):
            return False
        # Create-then-delete makes the replace one transaction whether or not the table exists.
        text = f"table {self.family} {self.table} {{}}\ndelete table {self.family} {self.table}\n{ruleset}"
        proc = self._nft("-f", "-", stdin=text)
        if proc.returncode != 0:
            raise NatError(f"nft rejected the masquerade table: {proc.stderr.strip()}")
        self._applied = ruleset
        self._listing = self._list()
        log.info("applied nftables table %s %s", self.family, self.table)
        return True
