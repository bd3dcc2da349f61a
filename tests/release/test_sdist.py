"""The source distribution carries what its tests need: built here, unpacked, and its suite collected."""

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """An sdist, and a wheel built from it (``python -m build``), in one directory."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    return out


@pytest.mark.subprocess
def test_the_sdist_tests_collect(dist, tmp_path):
    (archive,) = dist.glob("torchinit-*.tar.gz")
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


@pytest.mark.subprocess
def test_one_wheel_per_platform_with_a_plain_kernel_library(dist):
    """The kernel is a plain shared library (no Python C API), so the wheel is py3-none-<platform>, and it loads
    through ctypes without Python's headers at build time."""
    (wheel,) = dist.glob("torchinit-*.whl")
    assert "-py3-none-" in wheel.name, wheel.name
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    libraries = [n for n in names if n.startswith("torchinit/rng/_philox.")]
    assert len(libraries) == 1 and libraries[0].endswith((".so", ".dylib", ".dll")), libraries
    assert "cpython" not in libraries[0]
    assert "torchinit/py.typed" in names


def test_the_kernel_uses_no_python_symbols():
    import shutil

    from torchinit.rng import keyed

    if keyed.KERNEL is None or shutil.which("nm") is None or sys.platform != "linux":
        pytest.skip(f"needs the built kernel and nm on Linux ({keyed.KERNEL_STATUS})")
    symbols = subprocess.run(["nm", "-D", keyed.KERNEL._name], capture_output=True, text=True, check=True).stdout
    assert not [line for line in symbols.splitlines() if line.split()[-1].startswith("Py")]
