"""The fill pool under faults: a task whose thread never started cannot write later, and fills still work when the
pool takes no work (interpreter shutdown, no thread can be started): the caller does every chunk itself."""

import subprocess
import sys
import textwrap

import pytest
import torch

import torchinit as ti
from torchinit.rng import keyed

N = keyed.PARALLEL_THRESHOLD * 4


class _NoThreads:
    """Helper threads that cannot start, as under a thread or memory limit ("can't start new thread"): the tasks
    offered stay queued, for a helper that a later, unrelated fill starts."""

    def __init__(self, monkeypatch) -> None:
        self.queued: list = []
        monkeypatch.setattr(keyed, "_TASKS", self)
        monkeypatch.setattr(keyed, "_helper_count", 0)
        monkeypatch.setattr(keyed, "_start_helper", self.start)

    def put(self, task) -> None:
        self.queued.append(task)

    def start(self) -> None:
        raise RuntimeError("can't start new thread")


def test_a_task_whose_thread_never_started_never_writes_later(monkeypatch):
    pool = _NoThreads(monkeypatch)
    t = ti.normal_(torch.empty(N), std=0.02, seed=0)
    assert pool.queued, "the fill should have tried to use a helper"
    monkeypatch.undo()
    assert torch.equal(t, ti.normal_(torch.empty(N), std=0.02, seed=0, name=""))  # complete: the caller did it all
    before = t.clone()
    for task in pool.queued:  # a later fill's helper picks the stale task up
        task()
    assert torch.equal(t, before)


def test_the_same_values_whatever_the_pool_does(monkeypatch):
    want = ti.trunc_normal_(torch.empty(N), std=0.02, a=-0.04, b=0.04, generator=torch.Generator().manual_seed(3))
    _NoThreads(monkeypatch)
    got = ti.trunc_normal_(torch.empty(N), std=0.02, a=-0.04, b=0.04, generator=torch.Generator().manual_seed(3))
    assert torch.equal(want, got)


def test_a_helper_error_reaches_the_caller_and_stops_the_chunks():
    done = []

    def work(k: int) -> None:
        if k == 3:
            raise ValueError("chunk 3")
        done.append(k)

    with pytest.raises(ValueError, match="chunk 3"):
        keyed.run_chunks(64, work, workers=2)
    assert len(done) < 63


CHILD = textwrap.dedent("""
    import atexit, hashlib, threading, time, torch, torchinit as ti
    N = 1 << 22

    def fill():
        a = ti.normal_(torch.empty(N), std=0.02, seed=1)
        b = ti.trunc_normal_(torch.empty(N), std=1.0, a=-2.0, b=2.0, generator=torch.Generator().manual_seed(1))
        return hashlib.sha256(a.numpy().tobytes() + b.numpy().tobytes()).hexdigest()

    want = fill()
    results = []
    atexit.register(lambda: print("atexit", fill() == want, flush=True))

    def late():
        time.sleep(0.5)  # the main thread has returned: the interpreter is shutting down its pools
        results.append(fill() == want)
        print("thread", results[0], flush=True)

    threading.Thread(target=late).start()
""")


@pytest.mark.subprocess
def test_fills_work_after_the_main_thread_ends_and_in_atexit():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["thread", "True", "atexit", "True"], out.stdout + out.stderr
