"""A Ctrl-C at any moment of the ``torchinit`` command, during ``import torch`` included: one line, status 130.

The command is started as its entry point starts it (``_torchinit_cli:main``), and SIGINT is sent at several
delays after torch's libraries are mapped into the process (read from ``/proc/<pid>/maps``), which happens only
once the entry point runs: before that, Python itself is starting and no program can catch anything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

LINUX = Path("/proc/self/maps").exists()
pytestmark = [pytest.mark.subprocess, pytest.mark.slow, pytest.mark.skipif(not LINUX, reason="reads /proc/<pid>/maps")]

#: Seconds after torch's libraries are mapped: the import of torch and torchinit takes a second or two after that,
#: then the run (compare on the embedded MLP) a few more; the first delays fall in the import.
DELAYS = (0.0, 0.4, 0.9, 1.5)
SRC = Path(__file__).resolve().parents[2] / "src"


def _start(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "_torchinit_cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def _torch_mapped(proc: subprocess.Popen) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:  # it has ended
        return False


def test_ctrl_c_at_any_moment_is_one_line_and_130():
    # every child at once: they overlap, so the whole test takes about one run (each is interrupted early)
    children = [_start("compare", "--model", "mlp", "--format", "json") for _ in DELAYS]
    control = _start("--version")  # not interrupted: the entry point runs the command (so the 130s mean something)
    try:
        due: list[float | None] = [None] * len(children)
        sent = [False] * len(children)
        deadline = time.monotonic() + 120
        while not all(sent) and time.monotonic() < deadline:
            now = time.monotonic()
            for i, (child, delay) in enumerate(zip(children, DELAYS)):
                if due[i] is None and _torch_mapped(child):
                    due[i] = now + delay
                start = due[i]
                if not sent[i] and start is not None and start <= now:
                    child.send_signal(signal.SIGINT)
                    sent[i] = True
            time.sleep(0.002)
        results = [(*child.communicate(timeout=120), child.returncode) for child in children]
        out, err = control.communicate(timeout=120)
    finally:
        for child in (*children, control):
            if child.poll() is None:
                child.kill()
    assert control.returncode == 0 and out.strip().startswith("torchinit ") and err == ""
    assert all(sent), f"torch was never seen loading: {due}"
    for delay, (out, err, status) in zip(DELAYS, results):
        assert status == 130, (delay, status, err)
        assert "Traceback" not in err and out == "", (delay, err)
        lines = err.splitlines()
        assert lines in (["torchinit: interrupted"], ["torchinit compare: interrupted"]), (delay, err)
