"""The source distribution carries what its tests need: built here, unpacked, and its suite collected."""

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.subprocess
def test_the_sdist_tests_collect(tmp_path):
    pytest.importorskip("build")
    built = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path),
                            str(ROOT)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (archive,) = tmp_path.glob("torchinit-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    unpacked = next(p for p in tmp_path.iterdir() if p.is_dir())
    for needed in ("LICENSE", "tests/conftest.py", "tests/_thirdparty.py", "tests/golden/digests.json",
                   "docs/mup_results.json", "src/torchinit/py.typed", "src/torchinit/rng/_philox.c"):
        assert (unpacked / needed).is_file(), needed
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                               cwd=unpacked, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-2000:]
    assert "error" not in collected.stdout.lower()
