"""Dataplane managers: one per kernel concern, each applying only what changed.

The agent's kernel state is split by concern (the VXLAN devices; routes; neighbour and FDB
entries; the NAT table; the filter table), and each concern has a manager. A manager keeps,
per table it owns, a DeltaTracker: the entries wanted (set from the datastore), the entries
the kernel is believed to hold (learned from what the manager applied, from kernel events and
from read-backs), and so the pending changes between the two. An apply cycle sends only the
pending changes, batched; nothing is read back on the way.

How to write a manager
----------------------
Subclass Manager, give it a `name`, keep one DeltaTracker per table (`self.tracker` for one),
and implement:

  resync()         Read back everything the manager owns from the kernel and replace the
                   belief with it (`tracker.replace_believed`). The driver calls it at start,
                   after lost notifications, after a failed apply of this manager, and on the
                   manager's own (staggered) periodic resync. Only what the manager owns: e.g.
                   routes with podnet's protocol, a table by its name.
  apply_updates()  Program every pending add or replace (`tracker.pending_updates()`), in as
                   few kernel requests as possible, replacing in place (never delete, then
                   add: traffic must not see a gap). Record each success in the belief
                   (`tracker.believed_set`). Return the number of entries changed; raise (a
                   PodnetError, e.g. ApplyError) if anything failed: the driver then resyncs
                   this manager before its next apply.
  apply_deletes()  The same for pending deletes (`tracker.pending_deletes()`); deleting what
                   is already gone is success (the kernel layer makes deletes idempotent).
  on_kernel_event(event)   Optional. A kernel notification about one entry (a KernelEvent):
                   update the belief of that entry only (`believed_set` or `believed_delete`)
                   and return True if it concerned this manager. Never read the kernel here:
                   the cost of an event must be that of its entry, not of the table.

The desired state comes from the agent: `tracker.desired_set`, `desired_delete`, or
`replace_desired` for a whole table. A manager that needs another's result (the routes need
the devices' ifindexes) is given the other manager and asks it at apply time.

How the agent drives them
-------------------------
`Dataplane(managers)` runs apply cycles. In one cycle every manager due for a resync (asked
for one, or its periodic time came) reads back first; then `apply_updates` runs in the
managers' order (devices before the entries on them; neighbours and FDB before the routes that
lead to them) and `apply_deletes` in the reverse order (routes leave before the neighbours
they need). The agent runs a cycle when the datastore or the kernel changed something, and
when `next_due()` says a periodic resync is due; between cycles it waits. ENOBUFS on the
notification socket (lost events) means `request_resync()` of every manager.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, Iterable, Mapping, TypeVar

from podnet.errors import PodnetError

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_ABSENT = object()


class DeltaTracker(Generic[K, V]):
    """Desired entries, the entries the kernel is believed to hold, and the difference.

    Every change of either side settles only the key it touched, so the pending sets are
    always current and reading them costs their size, not the table's. Values compare
    whole: a key whose believed value differs from the desired one is a pending update
    (applied as a replace in place); a believed key that is not desired, a pending delete.
    """

    def __init__(self):
        self._desired: dict[K, V] = {}
        self._believed: dict[K, V] = {}
        self._updates: set[K] = set()
        self._deletes: set[K] = set()

    def _settle(self, key: K) -> None:
        want = self._desired.get(key, _ABSENT)
        have = self._believed.get(key, _ABSENT)
        if want is not _ABSENT and want != have:
            self._updates.add(key)
        else:
            self._updates.discard(key)
        if want is _ABSENT and have is not _ABSENT:
            self._deletes.add(key)
        else:
            self._deletes.discard(key)

    # The desired side (from the datastore).

    def desired_set(self, key: K, value: V) -> None:
        self._desired[key] = value
        self._settle(key)

    def desired_update(self, entries: Iterable[tuple[K, V]]) -> None:
        """desired_set of many entries (thousands at start): the same result, settled inline."""
        desired, believed, updates, deletes = self._desired, self._believed, self._updates, self._deletes
        for key, value in entries:
            desired[key] = value
            have = believed.get(key, _ABSENT)
            if have is value or value == have:
                updates.discard(key)
            else:
                updates.add(key)
            deletes.discard(key)

    def desired_delete(self, key: K) -> None:
        if self._desired.pop(key, _ABSENT) is not _ABSENT:
            self._settle(key)

    def replace_desired(self, entries: Mapping[K, V]) -> None:
        """The whole desired table at once (at start, or after a change that touches it all)."""
        old = self._desired
        self._desired = dict(entries)
        for key in old.keys() | self._desired.keys():
            if old.get(key, _ABSENT) != self._desired.get(key, _ABSENT) or key in self._believed:
                self._settle(key)

    def desired_get(self, key: K, default=None):
        return self._desired.get(key, default)

    @property
    def desired(self) -> Mapping[K, V]:
        return self._desired

    # The kernel side (what was applied, what events and read-backs showed).

    def believed_set(self, key: K, value: V) -> None:
        want = self._desired.get(key, _ABSENT)
        # The kernel holds what is wanted: keep one object for both sides (10,000 nodes' worth of
        # entries would otherwise live twice).
        self._believed[key] = want if want is not _ABSENT and want == value else value
        self._settle(key)

    def believed_update(self, entries: Iterable[tuple[K, V]]) -> None:
        """believed_set of many entries (what an apply cycle programmed), settled inline."""
        desired, believed = self._desired, self._believed
        for key, value in entries:
            want = desired.get(key, _ABSENT)
            if want is value or (want is not _ABSENT and want == value):
                believed[key] = want
                self._updates.discard(key)
                self._deletes.discard(key)
            else:
                believed[key] = value
                self._settle(key)

    def believed_delete(self, key: K) -> None:
        if self._believed.pop(key, _ABSENT) is not _ABSENT:
            self._settle(key)

    def replace_believed(self, entries: Mapping[K, V]) -> None:
        """What a full read-back of the kernel found."""
        old, desired = self._believed, self._desired
        self._believed = {}
        for key, value in entries.items():
            want = desired.get(key, _ABSENT)
            self._believed[key] = want if want is not _ABSENT and want == value else value
        # The pending sets are current for every key whose belief is unchanged: settle only the
        # others (a start from empty tables, or a resync that finds the kernel as believed,
        # costs the read-back, not a second pass over the desired table).
        new = self._believed
        for key in old.keys() | new.keys():
            if old.get(key, _ABSENT) != new.get(key, _ABSENT):
                self._settle(key)

    def forget_believed(self, match: Callable[[K, V], bool]) -> int:
        """Drop the belief of every entry matching (e.g. all entries of a device that was made
        again: the kernel dropped them with the old one); they become pending again."""
        gone = [k for k, v in self._believed.items() if match(k, v)]
        for key in gone:
            self.believed_delete(key)
        return len(gone)

    def believed_get(self, key: K, default=None):
        return self._believed.get(key, default)

    @property
    def believed(self) -> Mapping[K, V]:
        return self._believed

    # The difference.

    def pending_updates(self) -> list[tuple[K, V]]:
        """(key, desired value) of every entry to add or replace."""
        return [(k, self._desired[k]) for k in self._updates]

    def pending_deletes(self) -> list[tuple[K, V]]:
        """(key, believed value) of every entry to remove."""
        return [(k, self._believed[k]) for k in self._deletes]

    @property
    def pending(self) -> int:
        return len(self._updates) + len(self._deletes)

    @property
    def in_sync(self) -> bool:
        return not self._updates and not self._deletes


@dataclass(frozen=True)
class KernelEvent:
    """One kernel notification, decoded: `table` is "route", "neigh", "fdb", "link" or "addr";
    `new` False for a removal; `entry` the decoded message (rtnl.parse_route and friends)."""

    table: str
    new: bool
    entry: dict


class ApplyError(PodnetError):
    """Some entries could not be applied; `failures` holds (what, error) of each."""

    def __init__(self, manager: str, failures: list[tuple[str, Exception]]):
        first = f"{failures[0][0]}: {failures[0][1]}" if failures else "?"
        more = f" and {len(failures) - 1} more" if len(failures) > 1 else ""
        super().__init__(f"{manager}: could not apply {first}{more}")
        self.failures = failures


class Manager:
    """One kernel concern. See the module's docstring for how to write one."""

    name = "manager"

    def resync(self) -> None:
        raise NotImplementedError

    def apply_updates(self) -> int:
        raise NotImplementedError

    def apply_deletes(self) -> int:
        return 0

    def on_kernel_event(self, event: KernelEvent) -> bool:
        return False

    @property
    def pending(self) -> int:
        """How many changes are waiting to be applied (0: in sync, as far as it knows)."""
        tracker = getattr(self, "tracker", None)
        return tracker.pending if tracker is not None else 0


@dataclass
class CycleResult:
    changes: int = 0
    resynced: tuple[str, ...] = ()  # managers that read the kernel back this cycle
    failures: list[tuple[str, Exception]] = field(default_factory=list)  # (manager, error)
    seconds: float = 0.0


class Dataplane:
    """Runs the managers' apply cycles and decides when each one reads the kernel back."""

    def __init__(self, managers: Iterable[Manager], resync_interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.managers = list(managers)
        self.resync_interval = resync_interval
        self._clock = clock
        self._rng = rng or random.Random()
        self._resync: set[str] = {m.name for m in self.managers}  # everything reads back at start
        self._due: dict[str, float] = {}
        now = clock()
        for m in self.managers:
            self._schedule(m, now)

    def _schedule(self, m: Manager, now: float) -> None:
        """The next periodic resync, jittered so the managers do not all read back at once."""
        self._due[m.name] = now + self.resync_interval * self._rng.uniform(0.8, 1.2)

    def manager(self, name: str) -> Manager:
        return next(m for m in self.managers if m.name == name)

    def resync_soon(self, name: str, delay: float) -> None:
        """Have a manager read the kernel back within `delay` seconds (sooner if already due)."""
        self._due[name] = min(self._due.get(name, float("inf")), self._clock() + delay)

    def request_resync(self, name: str | None = None) -> None:
        """Have a manager (None: every one) read the kernel back in the next cycle."""
        self._resync |= {m.name for m in self.managers} if name is None else {name}

    def on_kernel_events(self, events: Iterable[KernelEvent]) -> int:
        """Give each event to the managers; return how many concerned one of them."""
        n = 0
        for ev in events:
            for m in self.managers:
                if m.on_kernel_event(ev):
                    n += 1
                    break
        return n

    def next_due(self) -> float:
        """Seconds until the next periodic resync of some manager (0: one is due now)."""
        if not self._due:
            return self.resync_interval
        return max(0.0, min(self._due.values()) - self._clock())

    @property
    def pending(self) -> int:
        return sum(m.pending for m in self.managers) + len(self._resync)

    def apply(self) -> CycleResult:
        """One apply cycle: due read-backs, then updates in order, then deletes in reverse order.
        A manager that fails is resynced before the next cycle; the others go on."""
        start = time.perf_counter()
        now = self._clock()
        due = {m.name for m in self.managers if self._due.get(m.name, 0) <= now}
        result = CycleResult()
        failed: set[str] = set()
        resynced = []
        for m in self.managers:
            if m.name in self._resync or m.name in due:
                try:
                    m.resync()
                    resynced.append(m.name)
                    self._resync.discard(m.name)
                    self._schedule(m, now)
                except Exception as e:  # noqa: BLE001 - one manager's trouble must not stop the others
                    log.error("%s: read-back failed: %s", m.name, e)
                    result.failures.append((m.name, e))
                    failed.add(m.name)
                    self._resync.add(m.name)  # tried again next cycle (the agent backs off)
                    self._schedule(m, now)
        for m in self.managers:
            if m.name in failed:
                continue
            try:
                result.changes += m.apply_updates()
            except Exception as e:  # noqa: BLE001
                self._failed(m, e, result, failed)
        for m in reversed(self.managers):
            if m.name in failed:
                continue
            try:
                result.changes += m.apply_deletes()
            except Exception as e:  # noqa: BLE001
                self._failed(m, e, result, failed)
        result.resynced = tuple(resynced)
        result.seconds = time.perf_counter() - start
        return result

    def _failed(self, m: Manager, e: Exception, result: CycleResult, failed: set[str]) -> None:
        if not isinstance(e, PodnetError):
            log.exception("%s: apply failed", m.name)
        else:
            log.error("%s", e)
        result.failures.append((m.name, e))
        failed.add(m.name)
        self._resync.add(m.name)
