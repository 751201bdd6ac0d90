"""The kill test: a child process labelling without pause is SIGKILLed at random moments, many times.

The child applies a deterministic sequence of changes (single labels, skips, clears and bulk
changes) and prints ``k`` once change ``k`` has returned. After every kill the parent reopens the
store and requires:

* a complete, valid sidecar (it opens: format, scan hash, grid and organ list all check);
* content equal to state ``j`` of the sequence for some ``j`` (no torn or mixed state);
* ``j >= last acknowledged + 1``: every change the child saw return is on disk (at most the one in
  flight when it died may be there too, ``j <= last acknowledged + 2``).

The next child continues from state ``j``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from napari_nemesis.data import read_volume, write_phantom_dataset
from napari_nemesis.labels import LabelStore, read_sidecar

KILLS = 30
SUPERPATCH = 4  # grid 5 x 7 x 7 = 245 superpatches: a sidecar of ~60 kB, so kills land mid-write too

# The change sequence, shared verbatim by parent and child.
SEQUENCE = r'''
import random as _random
from napari_nemesis.data import ORGAN_NAMES as _ORGANS

def change(k, n):
    """Change k: {index: (organs, state)}, a pure function of k."""
    rng = _random.Random(k)
    kind = rng.random()
    def one():
        i = rng.randrange(n)
        r = rng.random()
        if r < 0.7:
            return i, (tuple(o for o in _ORGANS if rng.random() < 0.3), "labelled")
        if r < 0.85:
            return i, ((), "skipped")
        return i, ((), "unlabelled")
    if kind < 0.8:
        return dict([one()])
    return dict(one() for _ in range(rng.randrange(5, 40)))
'''

CHILD = SEQUENCE + r'''
import sys
from napari_nemesis.data import read_volume
from napari_nemesis.labels import LabelStore

scan, start, superpatch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
vol = read_volume(scan)
store = LabelStore.for_scan(scan, superpatch=superpatch, spacing_zyx=vol.spacing, volume=vol)
print("ready", flush=True)
k = start
while True:
    store.set_many(change(k, store.n))
    print(k, flush=True)
    k += 1
'''

namespace: dict = {}
exec(SEQUENCE, namespace)
change = namespace["change"]


def expected_states(n: int):
    """State 0 (empty), state 1 (after change 0), ... as {index: (state, organs)}, generated lazily."""
    state: dict[int, tuple[str, tuple[str, ...]]] = {}
    yield dict(state)
    k = 0
    while True:
        for i, (organs, st) in change(k, n).items():
            if st == "unlabelled":
                state.pop(i, None)
            else:
                state[i] = (st, tuple(organs))
        yield dict(state)
        k += 1


@pytest.mark.slow  # ~20 s: 30 child processes
def test_sigkill_at_random_moments_never_loses_or_tears_the_labels(tmp_path):
    write_phantom_dataset(tmp_path / "data", cases=1, seed=5, shape=(20, 28, 28))
    scan = next((tmp_path / "data" / "imagesTr").glob("*.nii.gz"))
    vol = read_volume(scan)

    def reopen() -> LabelStore:
        return LabelStore.for_scan(scan, superpatch=SUPERPATCH, spacing_zyx=vol.spacing, volume=vol)

    n = reopen().n
    assert n == 245
    states = []
    gen = expected_states(n)

    def state(j: int) -> dict:
        while len(states) <= j:
            states.append(next(gen))
        return states[j]

    rng = random.Random(0)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    current = 0  # the state the store is in
    mid_write, progressed, t0 = 0, 0, time.perf_counter()
    for _ in range(KILLS):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(scan), str(current), str(SUPERPATCH)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        time.sleep(rng.uniform(0.0, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait()
        acked = [int(line) for line in child.stdout.read().split()]
        child.stdout.close()
        child.stderr.close()
        last_acked = acked[-1] if acked else current - 1
        mid_write += bool(list(scan.parent.glob(f".{scan.name[:-7]}*.tmp*")))

        store = reopen()  # refuses anything but a complete sidecar of this scan, grid and organ list
        if store.path.exists():
            read_sidecar(store.path)
        got = {i: (lab.state, lab.organs) for i, lab in store.items() if lab.state != "unlabelled"}
        candidates = [j for j in range(last_acked + 1, last_acked + 3) if state(j) == got]
        assert candidates, (f"after a kill the store holds none of the states the child could have saved "
                            f"(last acknowledged change {last_acked})")
        progressed += candidates[0] - current
        current = candidates[0]
    seconds = time.perf_counter() - t0
    # every kill was checked; the children made real progress, and some kills hit a save half-way
    assert progressed >= KILLS, progressed
    print(f"\n{KILLS} SIGKILLs in {seconds:.1f} s: {progressed} changes saved and verified, "
          f"{mid_write} kills left a temporary file (killed mid-save)")
    reopen().set(0, ["liver"])  # the next writer clears what killed writers left
    assert not list(scan.parent.glob(f".{scan.name[:-7]}*.tmp*"))
