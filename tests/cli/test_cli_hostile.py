"""The ``torchinit`` command line under hostile input: every failure is one line on stderr and exit status 2
(the user's error), 1 (our bug) or 130 (interrupted), with the traceback only under ``--debug``."""

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import torchinit
import torchinit.cli.commands as cli
from torchinit.cli.commands import estimate_bytes, load_model, main

FAST = ["--batch", "8", "--init", "default"]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err: str, *culprits: str) -> None:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    for culprit in culprits:
        assert culprit in err, (culprit, err)


@pytest.fixture
def no_run(monkeypatch):
    """The run (compare) must not start: a failure found before the work."""

    def fail(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(cli, "compare", fail)


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A current directory for user model files; the modules imported from it are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def write(directory: Path, name: str, source: str) -> None:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))


# -- 1. argparse: one line, exit 2; --help and --version still exit 0 ---------------------------------------------

@pytest.mark.parametrize("argv,culprit", [
    ([], "a command is required: compare, probe, train or coordcheck"),
    (["frobnicate"], "'frobnicate'"),
    (["compare", "--bogus"], "--bogus"),
    (["compare", "--batch"], "--batch"),
    (["compare", "--batch", "0"], "--batch"),
    (["compare", "--seed", "-1"], "--seed"),
    (["compare", "--format", "xml"], "--format"),
    (["compare", "--init", "kaiming,he"], "'kaiming', 'he'"),
    (["probe", "--init", "glassy"], "glassy"),
    (["compare", "--max-memory", "lots"], "--max-memory"),
    (["compare", "--max-memory", "0"], "--max-memory"),
])  # fmt: skip
def test_usage_errors_are_one_line(capsys, argv, culprit):
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    assert_one_line(err, culprit)
    assert err.startswith("torchinit: error: ") and "--help" in err


def test_help_and_version_exit_0(capsys):
    for argv in (["--help"], ["compare", "--help"], ["probe", "-h"]):
        code, out, err = run_main(capsys, *argv)
        assert code == 0 and out.startswith("usage: torchinit") and err == ""
    code, out, _ = run_main(capsys, "compare", "--help")
    assert "--debug" in out and "--max-memory" in out and "--shape" in out
    code, out, err = run_main(capsys, "--version")
    assert code == 0 and err == ""
    assert out.startswith(f"torchinit {torchinit.__version__} (torch {torch.__version__}; keyed kernel: ")


@pytest.mark.subprocess
def test_usage_errors_in_a_real_process(tmp_path):
    """Through ``python -m torchinit``: status and stderr as the shell sees them."""
    proc = subprocess.run([sys.executable, "-m", "torchinit", "compare", "--batch", "x"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line(proc.stderr, "--batch", "'x'")


# -- 1. --debug, our own bugs, interrupts, a closed stdout ---------------------------------------------------------

def test_debug_prints_the_traceback_above_the_line(capsys):
    for argv in (["compare", "--debug"], ["--debug", "compare"]):
        code, out, err = run_main(capsys, *argv, *FAST, "--input-shape", "5")
        assert code == 2 and out == ""
        assert err.startswith("Traceback") and "mat1 and mat2" in err
        assert err.splitlines()[-1].startswith("torchinit compare: error: running --model 'mlp' on input (8, 5) failed")
    code, _, err = run_main(capsys, "compare", *FAST, "--input-shape", "5")
    assert code == 2
    assert_one_line(err, "mat1 and mat2")


def test_our_bug_is_exit_1(capsys, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(cli, "compare", bug)
    code, out, err = run_main(capsys, "compare", *FAST)
    assert code == 1 and out == ""
    assert_one_line(err, "torchinit compare: internal error (KeyError: 'oops')", "bug in torchinit", "--debug")
    code, _, err = run_main(capsys, "compare", "--debug", *FAST)
    assert code == 1 and "Traceback" in err and "KeyError: 'oops'" in err


def test_keyboard_interrupt_is_130(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "compare", interrupted)
    code, out, err = run_main(capsys, "compare", *FAST)
    assert code == 130 and out == ""
    assert_one_line(err, "torchinit compare: interrupted")


def test_closed_stdout_is_one_line(capsys, monkeypatch):
    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = main(["compare", *FAST])
    monkeypatch.undo()
    _, err = capsys.readouterr()
    assert code == 1
    assert_one_line(err, "stdout was closed")


# -- 2. --out is checked before the work; a directory gets <command>.png -------------------------------------------

@pytest.mark.parametrize("out,culprit", [
    ("missing/plot.png", "not writable (No such file or directory)"),
    ("file.txt/plot.png", "not writable (Not a directory)"),
    ("plot", "name a .png, .pdf, .svg file or an existing directory"),
    ("plot.v2", "name a .png"),
    ("fifo.png", "exists and is not a regular file"),  # opening it to check would block
])  # fmt: skip
def test_unwritable_out_fails_before_the_run(capsys, tmp_path, no_run, out, culprit):
    (tmp_path / "file.txt").write_text("")
    os.mkfifo(tmp_path / "fifo.png")
    code, stdout, err = run_main(capsys, "compare", *FAST, "--out", str(tmp_path / out))
    assert code == 2 and stdout == ""
    assert_one_line(err, "--out", culprit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.png", "file.txt"]  # nothing written


def test_out_checked_before_the_user_module_is_imported(capsys, user_dir):
    write(user_dir, "noisy.py", "open('imported', 'w').close()\ndef make(): ...\n")
    code, _, err = run_main(capsys, "compare", "--model", "noisy:make", "--input-shape", "8", "--out", "no/x.png")
    assert code == 2 and "--out" in err and not (user_dir / "imported").exists()


def test_out_checks_leave_no_file_when_the_run_fails(capsys, tmp_path):
    code, _, _ = run_main(capsys, "compare", *FAST, "--input-shape", "5", "--out", str(tmp_path / "x.png"))
    assert code == 2 and not (tmp_path / "x.png").exists()


def test_out_directory_gets_command_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, _, err = run_main(capsys, "probe", *FAST, "--out", str(tmp_path))
    assert code == 0, err
    assert (tmp_path / "probe.png").read_bytes()[:4] == b"\x89PNG" and f"wrote {tmp_path / 'probe.png'}" in err
    assert not Path(f"{tmp_path}.png").exists()


def test_out_failing_at_the_end_is_one_line(capsys, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "plot_reports", full)
    code, out, err = run_main(capsys, "compare", *FAST, "--out", str(tmp_path / "x.png"))
    assert code == 2 and "== default" in out  # the table came first
    assert_one_line(err, "--out", "No space left on device")


# -- 3. the size guard ---------------------------------------------------------------------------------------------

def test_huge_shape_fails_fast_with_a_batch_hint(capsys, no_run):
    code, out, err = run_main(capsys, "compare", "--shape", "100000,100000")
    assert code == 2 and out == ""
    assert_one_line(err, "--batch", "--max-memory", "(100000, 100000)")


def test_max_memory_overrides_the_limit(capsys, monkeypatch):
    code, _, err = run_main(capsys, "compare", *FAST, "--max-memory", "1K")
    assert code == 2
    assert_one_line(err, "over the --max-memory limit of 1 KiB", "--batch")
    code, _, err = run_main(capsys, "compare", *FAST, "--max-memory", "1G")
    assert code == 0, err
    monkeypatch.setattr(cli, "_default_memory_limit", lambda: 1024)  # the default limit is used
    code, _, err = run_main(capsys, "compare", *FAST)
    assert code == 2 and "over the --max-memory limit of 1 KiB" in err


def test_huge_user_model_is_refused_without_building_it(capsys, user_dir, no_run):
    # 40 GB of weights: counted on the meta device, never allocated
    write(user_dir, "huge.py", """
        from torch import nn
        def make():
            return nn.Linear(100_000, 100_000)
    """)
    code, _, err = run_main(capsys, "compare", "--model", "huge:make", "--input-shape", "100000", "--batch", "1",
                            "--max-memory", "8G")
    assert code == 2
    assert_one_line(err, "the run would need about 112 GiB", "--batch")


def test_estimate_formula():
    # 3 * (P + B*I + S): P = (64*10 + 10) * 4 bytes, B*I = 256*64*4, S = 256*10*4 (the one leaf's output)
    assert estimate_bytes(lambda: nn.Linear(64, 10), 256, (64,)) == 3 * (650 * 4 + 256 * 64 * 4 + 256 * 10 * 4)
    seq = lambda: nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))  # noqa: E731
    params = (64 * 32 + 32 + 32 * 10 + 10) * 4
    assert estimate_bytes(seq, 4, (64,)) == 3 * (params + 4 * 64 * 4 + 4 * (32 + 32 + 10) * 4)
    # the Jacobian at one sample: 10 x 64 float32
    assert estimate_bytes(seq, 4, (64,), spectrum=True) == estimate_bytes(seq, 4, (64,)) + 3 * 10 * 64 * 4


def test_estimate_falls_back_when_the_model_is_not_meta_friendly():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.b(self.a(x)) * x.abs().max().item()  # .item() needs data

    params = 2 * (64 + 8) * 4
    inputs = 16 * 8 * 4
    assert estimate_bytes(DataDependent, 16, (8,)) == 3 * (params + inputs + 2 * inputs)  # S = B*I * leaves

    def unbuildable():
        raise RuntimeError("no")

    assert estimate_bytes(unbuildable, 16, (8,)) == 3 * (inputs + inputs)  # P = 0, one leaf


# -- 4. the user's module: imported without changing sys.path, without running shadowing files --------------------

def test_import_restores_sys_path_and_imports_siblings(user_dir):
    write(user_dir, "helpers_side.py", "WIDTH = 8\n")
    write(user_dir, "sidemodel.py", """
        import sys
        from torch import nn
        import helpers_side
        sys.path.insert(0, "/nowhere")  # undone too
        def make():
            return nn.Linear(helpers_side.WIDTH, 2)
    """)
    before = list(sys.path)
    build = load_model("sidemodel:make")
    assert sys.path == before
    assert isinstance(build(), nn.Linear)


def test_import_of_a_package_module(user_dir):
    write(user_dir, "mypkg_hostile/__init__.py", "")
    write(user_dir, "mypkg_hostile/models.py", "from torch import nn\ndef make():\n    return nn.Linear(8, 2)\n")
    before = list(sys.path)
    assert isinstance(load_model("mypkg_hostile.models:make")(), nn.Linear)
    assert sys.path == before


@pytest.mark.parametrize("spec,culprit", [
    ("not-a-module:make", "is not a module name"),
    (":make", "is not a module name"),
    ("nosuch_hostile_module:make", "No module named 'nosuch_hostile_module'"),
])  # fmt: skip
def test_bad_module_names(capsys, user_dir, spec, culprit):
    before = list(sys.path)
    code, _, err = run_main(capsys, "compare", "--model", spec, "--input-shape", "8")
    assert code == 2 and sys.path == before
    assert_one_line(err, culprit, repr(spec))


@pytest.mark.subprocess
def test_a_local_matplotlib_never_shadows_the_installed_one(tmp_path):
    """A ``matplotlib.py`` next to the user's model runs neither when the model imports matplotlib nor when
    the plot is drawn (a real process, without the cwd on sys.path: as the installed ``torchinit`` runs)."""
    pytest.importorskip("matplotlib")
    write(tmp_path, "matplotlib.py", "open('fake-ran', 'w').close()\nraise ImportError('the fake matplotlib')\n")
    write(tmp_path, "plotmodel.py", """
        import matplotlib  # a side effect of the import: must be the installed one
        from torch import nn
        def make():
            return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    """)
    proc = subprocess.run([sys.executable, "-I", "-m", "torchinit", "compare", "--model", "plotmodel:make",
                           "--input-shape", "8", *FAST, "--out", "plot.png"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "fake-ran").exists()


# -- 5. and 6. sys.exit and errors in the user's code --------------------------------------------------------------

EXITING = """
    import sys
    import torch
    from torch import nn

    if {at_import}:
        sys.exit(3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            if {in_forward} == "exit":
                sys.exit("bye")
            if {in_forward} == "raise":
                raise LookupError("no such thing")
            if {in_forward} == "interrupt":
                raise KeyboardInterrupt
            return self.fc(x)

    def make():
        if {at_build}:
            sys.exit(0)
        return Net()
"""


@pytest.mark.parametrize("name,case,status,culprits", [
    ("exit_at_import", dict(at_import=True), 2, ["importing 'exit_at_import'", "called sys.exit(3)"]),
    ("exit_at_build", dict(at_build=True), 2, ["building the model called sys.exit(0)"]),
    ("exit_in_forward", dict(in_forward="'exit'"), 2, ["on input (8, 8) called sys.exit('bye')"]),
    ("raise_in_forward", dict(in_forward="'raise'"), 2, ["on input (8, 8) failed (LookupError: no such thing)"]),
    ("interrupt_in_forward", dict(in_forward="'interrupt'"), 130, ["torchinit compare: interrupted"]),
])  # fmt: skip
def test_exit_and_errors_in_user_code(capsys, user_dir, name, case, status, culprits):
    values = {"at_import": False, "at_build": False, "in_forward": "None", **case}
    write(user_dir, f"{name}.py", EXITING.format(**values))
    code, out, err = run_main(capsys, "compare", "--model", f"{name}:make", "--input-shape", "8", *FAST)
    assert code == status and out == ""
    assert_one_line(err, *culprits)
    if status == 2:
        running = "running " if "forward" in name else ""
        assert err.startswith(f"torchinit compare: error: {running}--model '{name}:make'")


def test_user_model_that_is_fine_runs(capsys, user_dir):
    write(user_dir, "fine_hostile.py", EXITING.format(at_import=False, at_build=False, in_forward=None))
    code, out, err = run_main(capsys, "compare", "--model", "fine_hostile:make", "--input-shape", "8", *FAST)
    assert code == 0, err
    assert "== default" in out and err == ""
