"""The agent's heap housekeeping: one trim after a run of work has gone quiet."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import podnet
from podnet.heap import QuietTrim

ROOT = os.path.dirname(os.path.dirname(podnet.__file__))


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



ARENAS_OF_THREADS = """
import ctypes, os, sys, threading
from podnet import heap
if sys.argv[1] == "single":
    assert heap.single_arena()
held, ready, done = [], threading.Barrier(5), threading.Event()
def work():
    held.append([bytes(4096) for _ in range(64)])  # past pymalloc: from the thread's malloc arena
    ready.wait()
    done.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
ready.wait()
libc = ctypes.CDLL("libc.so.6")
libc.open_memstream.restype = ctypes.c_void_p
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
print(buf.value.decode().count("<heap nr="))
done.set()
"""


def test_single_arena_puts_every_threads_allocations_in_one_heap():
    def heaps(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", ARENAS_OF_THREADS, mode], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": ROOT}, check=True)
        return int(out.stdout)

    assert heaps("default") > 1  # glibc's own choice: arenas of their own for the threads
    assert heaps("single") == 1
