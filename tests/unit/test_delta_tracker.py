"""The managers' delta logic without a kernel: desired and believed state in, pending changes out."""

from __future__ import annotations

import random

from podnet.dataplane.manager import ApplyError, Dataplane, DeltaTracker, KernelEvent, Manager


def pending(t: DeltaTracker) -> tuple[dict, dict]:
    return dict(t.pending_updates()), dict(t.pending_deletes())


def test_desired_entry_not_in_kernel_is_an_update():
    t = DeltaTracker()
    t.desired_set("a", 1)
    assert pending(t) == ({"a": 1}, {})
    t.believed_set("a", 1)  # applied
    assert pending(t) == ({}, {}) and t.in_sync


def test_believed_entry_not_desired_is_a_delete_with_its_believed_value():
    t = DeltaTracker()
    t.replace_believed({"x": "old"})
    assert pending(t) == ({}, {"x": "old"})
    t.believed_delete("x")  # deleted
    assert t.in_sync


def test_different_value_under_the_same_key_is_one_update_never_a_delete():
    t = DeltaTracker()
    t.replace_believed({"k": "via A"})
    t.desired_set("k", "via B")
    assert pending(t) == ({"k": "via B"}, {})


def test_kernel_event_about_one_entry_makes_only_that_entry_pending():
    t = DeltaTracker()
    t.replace_desired({i: i for i in range(1000)})
    t.replace_believed({i: i for i in range(1000)})
    assert t.in_sync
    t.believed_delete(7)  # someone deleted it by hand
    assert pending(t) == ({7: 7}, {})
    t.believed_set(9, "changed by hand")
    assert pending(t) == ({7: 7, 9: 9}, {})


def test_desired_delete_of_applied_entry_is_pending_delete_and_undo_clears_it():
    t = DeltaTracker()
    t.desired_set("a", 1)
    t.believed_set("a", 1)
    t.desired_delete("a")
    assert pending(t) == ({}, {"a": 1})
    t.desired_set("a", 1)  # wanted again before the cycle ran: nothing to do
    assert t.in_sync


def test_replace_desired_settles_added_changed_and_removed_keys():
    t = DeltaTracker()
    t.replace_believed({"keep": 1, "change": 1, "drop": 1})
    t.replace_desired({"keep": 1, "change": 2, "new": 3})
    assert pending(t) == ({"change": 2, "new": 3}, {"drop": 1})


def test_replace_believed_after_read_back_finds_drift_and_extra_entries():
    t = DeltaTracker()
    t.replace_desired({"a": 1, "b": 2})
    t.replace_believed({"a": 1, "b": 2})
    t.replace_believed({"a": 1, "z": 9})  # b vanished, z appeared
    assert pending(t) == ({"b": 2}, {"z": 9})


def test_forget_believed_makes_matching_entries_pending_again():
    t = DeltaTracker()
    entries = {("dev1", i): i for i in range(3)} | {("dev2", 0): 0}
    t.replace_desired(entries)
    t.replace_believed(entries)
    assert t.forget_believed(lambda k, v: k[0] == "dev1") == 3
    assert set(dict(t.pending_updates())) == {("dev1", 0), ("dev1", 1), ("dev1", 2)}


class FakeManager(Manager):
    """Applies to a dict standing in for the kernel; records the calls."""

    def __init__(self, name, kernel, calls, fail_updates=0):
        self.name = name
        self.kernel = kernel
        self.calls = calls
        self.tracker = DeltaTracker()
        self.fail_updates = fail_updates

    def resync(self):
        self.calls.append((self.name, "resync"))
        self.tracker.replace_believed(self.kernel)

    def apply_updates(self):
        self.calls.append((self.name, "updates"))
        if self.fail_updates:
            self.fail_updates -= 1
            raise ApplyError(self.name, [("x", RuntimeError("refused"))])
        done = self.tracker.pending_updates()
        for k, v in done:
            self.kernel[k] = v
            self.tracker.believed_set(k, v)
        return len(done)

    def apply_deletes(self):
        self.calls.append((self.name, "deletes"))
        done = self.tracker.pending_deletes()
        for k, _ in done:
            self.kernel.pop(k, None)
            self.tracker.believed_delete(k)
        return len(done)

    def on_kernel_event(self, ev):
        if ev.table != self.name:
            return False
        if ev.new:
            self.tracker.believed_set(ev.entry["key"], ev.entry["value"])
        else:
            self.tracker.believed_delete(ev.entry["key"])
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_cycle_reads_back_only_at_start_then_applies_updates_in_order_and_deletes_in_reverse():
    calls = []
    devices = FakeManager("devices", {}, calls)
    routes = FakeManager("routes", {"stale": 1}, calls)
    clock = Clock()
    dp = Dataplane([devices, routes], resync_interval=30, clock=clock, rng=random.Random(1))
    devices.tracker.desired_set("vxlan", 1)
    routes.tracker.desired_set("r", 2)
    r = dp.apply()
    assert r.resynced == ("devices", "routes") and not r.failures
    assert calls == [("devices", "resync"), ("routes", "resync"), ("devices", "updates"), ("routes", "updates"),
                     ("routes", "deletes"), ("devices", "deletes")]
    assert routes.kernel == {"r": 2} and r.changes == 3
    calls.clear()
    r = dp.apply()  # nothing pending, nothing due: no read-back
    assert r.resynced == () and r.changes == 0


def test_event_costs_one_entry_and_no_read_back():
    calls = []
    routes = FakeManager("routes", {}, calls)
    dp = Dataplane([routes], clock=Clock())
    routes.tracker.replace_desired({i: i for i in range(100)})
    dp.apply()
    del routes.kernel[5]
    assert dp.on_kernel_events([KernelEvent("routes", False, {"key": 5}),
                                KernelEvent("other", True, {})]) == 1
    assert routes.pending == 1
    calls.clear()
    r = dp.apply()
    assert r.changes == 1 and ("routes", "resync") not in calls and routes.kernel[5] == 5


def test_failed_apply_resyncs_that_manager_only_before_its_next_apply():
    calls = []
    a = FakeManager("a", {}, calls, fail_updates=1)
    b = FakeManager("b", {}, calls)
    dp = Dataplane([a, b], clock=Clock())
    a.tracker.desired_set("x", 1)
    b.tracker.desired_set("y", 1)
    r = dp.apply()
    assert [name for name, _ in r.failures] == ["a"] and b.kernel == {"y": 1}
    calls.clear()
    r = dp.apply()
    assert calls[0] == ("a", "resync") and ("b", "resync") not in calls
    assert a.kernel == {"x": 1} and not r.failures


def test_periodic_resyncs_are_staggered_and_lost_events_resync_everything():
    calls = []
    clock = Clock()
    ms = [FakeManager(n, {}, calls) for n in ("a", "b", "c")]
    dp = Dataplane(ms, resync_interval=30, clock=clock, rng=random.Random(2))
    dp.apply()  # the start's read-back
    dues = sorted(dp._due.values())
    assert len(set(dues)) == 3  # not all at the same moment
    clock.now = dues[0] + 0.001
    calls.clear()
    assert dp.next_due() == 0
    r = dp.apply()
    assert len(r.resynced) == 1
    dp.request_resync()  # ENOBUFS
    assert set(dp.apply().resynced) == {"a", "b", "c"}
