"""Writers under an address-space limit (``RLIMIT_AS``), in a child process: every call either completes or raises
and leaves its tensor unchanged, and nothing writes later.

The limit is set a little above what the child uses once its tensors exist, so that a writer that needs a
temporary of the tensor's size (a staged result, a QR, the sparse pattern's keys) runs out of memory, and so
does a helper thread's stack: the fills then run in the caller. The values a complete call must give are
computed before the limit is set.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import hashlib, json, resource, threading, time, torch, torchinit as ti

    N = 1 << 22
    WRITERS = {
        "normal_ seed": lambda t: ti.normal_(t, std=0.02, seed=0),
        "uniform_ generator": lambda t: ti.uniform_(t, -1, 1, generator=torch.Generator().manual_seed(0)),
        "kaiming_normal_ seed": lambda t: ti.kaiming_normal_(t, seed=1),
        "trunc_normal_ seed": lambda t: ti.trunc_normal_(t, std=0.02, a=-0.04, b=0.04, seed=2),
        "orthogonal_ seed": lambda t: ti.orthogonal_(t, seed=3),
        "sparse_ seed": lambda t: ti.sparse_(t, 0.5, seed=4),
        "hadamard_": lambda t: ti.hadamard_(t),
        "identity_": lambda t: ti.identity_(t),
        "glass_ seed": lambda t: ti.glass_(t, seed=5),
    }

    def digest(t):
        return hashlib.sha256(memoryview(t.numpy()).cast("B")).hexdigest()

    def target():
        return torch.full((N // 1024, 1024), 7.0)

    complete = {name: digest(write(target())) for name, write in WRITERS.items()}
    untouched = digest(target())
    targets = {name: target() for name in WRITERS}

    def used():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))

    resource.setrlimit(resource.RLIMIT_AS, (used() + (N * 4) // 2, resource.RLIM_INFINITY))
    results = {}
    for name, write in WRITERS.items():
        t = targets[name]
        try:
            write(t)
            outcome = "returned"
        except (MemoryError, RuntimeError) as err:
            outcome = "raised " + type(err).__name__
        now = digest(t)
        time.sleep(0.01)
        later = digest(t)
        results[name] = [outcome, now == untouched, now == complete[name], later == now]
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print(json.dumps(results))
""")


@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status: Linux")
def test_writers_under_a_memory_limit_complete_or_leave_the_tensor_unchanged():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for name, (outcome, untouched, complete, settled) in results.items():
        assert settled, f"{name}: written after the call ended"
        if outcome == "returned":
            assert complete, f"{name}: returned without its values"
        else:
            assert untouched, f"{name}: {outcome} after writing"
    raised = [name for name, (outcome, *_) in results.items() if outcome != "returned"]
    assert raised, "the limit should stop at least one writer that needs a tensor-sized temporary"
