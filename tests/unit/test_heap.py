"""The agent's heap housekeeping: one trim after a run of work has gone quiet."""

from __future__ import annotations

import pytest

from podnet.heap import QuietTrim


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_trim_after_the_last_change_of_a_run_and_none_while_idle():
    clock, trims = Clock(), []
    keeper = QuietTrim(2.0, clock, lambda: trims.append(clock.now))
    assert keeper.seconds_left() is None and not keeper.maybe()  # nothing happened: nothing to give back
    keeper.worked()
    clock.now += 1.5
    keeper.worked()  # a run of changes: the trim waits for its end
    clock.now += 1.9
    assert not keeper.maybe() and keeper.seconds_left() == pytest.approx(0.1)
    clock.now += 0.1
    assert keeper.maybe() and trims == [103.5]
    clock.now += 60
    assert not keeper.maybe() and keeper.seconds_left() is None and trims == [103.5]  # idle: no more trims

