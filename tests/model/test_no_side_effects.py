"""No process-wide side effects: the matplotlib backend, the warning filters, the registry, torch's patches."""

import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from torch import nn

import torchinit as ti
from torchinit.model import deferral as deferred_module
from torchinit.recording.inits import PATCHED_ATTRIBUTES
from torchinit.schemes.initializers import Initializer


@pytest.mark.subprocess
def test_plots_keep_the_users_matplotlib_backend(tmp_path):
    """A probe plot and a training plot render to files without switching the backend or opening pyplot figures."""
    pytest.importorskip("matplotlib")
    code = f"""
import matplotlib, matplotlib.pyplot as plt, torch
from torch import nn
import torchinit as ti
from torchinit.diagnostics.trainability import plot_training
before = matplotlib.get_backend()
report = ti.probe(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(8, 4))
report.plot({str(tmp_path / "probe.png")!r})
result = {{"model": "mlp", "depth": 2, "data": "digits", "seeds": 1, "steps": 2,
          "schemes": {{"default": {{"loss_curve": [[1.0, 0.5]], "test_acc": [0.5]}}}}}}
plot_training(result, {str(tmp_path / "train.png")!r})
print(before, matplotlib.get_backend(), plt.get_fignums())
"""
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["svg", "svg", "[]"]
    assert (tmp_path / "probe.png").read_bytes()[:4] == b"\x89PNG" == (tmp_path / "train.png").read_bytes()[:4]


@pytest.mark.filterwarnings("ignore:trunc_normal_. the bounds")  # the worker's rule truncates nothing, and says so
def test_warning_filters_added_by_another_thread_are_never_lost():
    """Building initializers and applying a policy (both validate on meta tensors, silently) while another thread
    adds warning filters: every filter is kept (warnings.catch_warnings would swap the list under it)."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    policy = ti.Policy([(nn.Linear, {"weight": ti.TruncNormal(std=0.02), "bias": ti.Zeros()})])
    done = threading.Event()

    def busy() -> None:
        while not done.is_set():
            ti.TruncNormal(std=0.02)
            ti.KaimingNormal(mode="fan_out")
            policy.apply_(model, seed=0)

    with warnings.catch_warnings():  # this test's own filters go when it ends
        worker = threading.Thread(target=busy)
        worker.start()
        try:
            for i in range(300):
                warnings.filterwarnings("ignore", message=f"torchinit-test-filter-{i}")
        finally:
            done.set()
            worker.join()
        kept = {f[1].pattern for f in warnings.filters
                if f[1] is not None and f[1].pattern.startswith("torchinit-test")}
    assert len(kept) == 300


def test_validation_on_meta_gives_no_warning_but_the_real_call_does():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        init = ti.TruncNormal(std=0.02)  # a=-2, b=2 truncate nothing at std 0.02: the real call warns, once
        assert not caught
        init(torch.empty(4, 4))
    assert len(caught) == 1 and "nothing is truncated" in str(caught[0].message)


def test_a_users_class_never_takes_over_a_builtin_name():
    class Normal(Initializer):  # same short name as torchinit's Normal
        function = staticmethod(ti.zeros_)

    config = Normal().to_config()
    assert config["class"] == f"{__name__}.test_a_users_class_never_takes_over_a_builtin_name.<locals>.Normal"
    assert type(Initializer.from_config(config)) is Normal
    builtin = ti.Normal(std=0.5).to_config()
    assert builtin == {"class": "Normal", "config": {"mean": 0.0, "std": 0.5}}
    assert type(Initializer.from_config(builtin)) is ti.Normal
    with pytest.raises(ValueError, match="unknown initializer class"):
        Initializer.from_config({"class": ["Normal"], "config": {}})


def _build() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))


@pytest.mark.parametrize("order", ["deferred-outer", "accelerate-outer", "deferred-closes-first",
                                   "accelerate-closes-first"])  # fmt: skip
def test_deferred_nests_with_accelerate_in_either_order(order):
    """deferred() and accelerate's init_empty_weights() open and close in any order: the model is what eager
    construction gives, and afterwards torch is exactly as before (method, init functions, global hooks: the
    first deferred() installs one inert hook for good)."""
    accelerate = pytest.importorskip("accelerate")
    register, orthogonal = nn.Module.register_parameter, nn.init.orthogonal_
    with ti.deferred():
        pass  # the registration hook is installed once, by the first context, and stays
    hooks = dict(torch.nn.modules.module._global_parameter_registration_hooks)
    torch.manual_seed(0)
    eager = _build()
    a, d = accelerate.init_empty_weights(), ti.deferred()
    first, second = (d, a) if order in ("deferred-outer", "deferred-closes-first") else (a, d)
    first.__enter__()
    second.__enter__()
    model = _build()
    closing = (first, second) if order.endswith("closes-first") else (second, first)
    for ctx in closing:
        ctx.__exit__(None, None, None)
    assert nn.Module.register_parameter is register and nn.init.orthogonal_ is orthogonal
    assert dict(torch.nn.modules.module._global_parameter_registration_hooks) == hooks
    torch.manual_seed(0)
    ti.materialize_(model)
    for (name, want), got in zip(eager.state_dict().items(), model.state_dict().values()):
        assert torch.equal(want, got), name


def test_a_failure_while_installing_deferreds_patches_restores_everything(monkeypatch):
    register, inits = nn.Module.register_parameter, {n: getattr(nn.init, n) for n in PATCHED_ATTRIBUTES}
    with ti.deferred():
        pass  # the registration hook is installed once, by the first context, and stays
    hooks = dict(torch.nn.modules.module._global_parameter_registration_hooks)
    calls = []

    def failing(function):
        calls.append(function)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(function)

    original = deferred_module.recorded_call
    monkeypatch.setattr(deferred_module, "recorded_call", failing)
    with pytest.raises(KeyboardInterrupt), ti.deferred():
        pass
    assert len(calls) == 3
    assert nn.Module.register_parameter is register
    assert {n: getattr(nn.init, n) for n in PATCHED_ATTRIBUTES} == inits
    assert dict(torch.nn.modules.module._global_parameter_registration_hooks) == hooks
    monkeypatch.undo()
    with ti.deferred():  # and the next context works
        layer = nn.Linear(2, 2)
    assert layer.weight.is_meta


def test_opening_deferred_never_disturbs_threads_that_build_modules():
    """torch iterates its global registration hooks without a lock: deferred() must not add or remove one while
    another thread registers parameters (it installs its hook once and leaves it, inert outside a context)."""
    import sys
    import time

    from torch.nn.modules.module import register_module_parameter_registration_hook

    def other_librarys_hook(module: nn.Module, name: str, param: nn.Parameter) -> None:
        sum(range(200))  # a hook that takes a moment: torch is iterating the hooks meanwhile

    handle = register_module_parameter_registration_hook(other_librarys_hook)
    errors: list[BaseException] = []
    stop = time.monotonic() + 2.0
    switch = sys.getswitchinterval()

    def build() -> None:
        try:
            while time.monotonic() < stop:
                nn.Linear(2, 2)
        except BaseException as err:
            errors.append(err)

    sys.setswitchinterval(1e-5)  # many thread switches: the interleaving that failed is likely, not rare
    try:
        builder = threading.Thread(target=build)
        builder.start()
        while time.monotonic() < stop:
            with ti.deferred():
                pass
        builder.join()
    finally:
        sys.setswitchinterval(switch)
        handle.remove()
    assert not errors, errors[0]


def test_configs_of_users_classes_load_by_their_bare_name_when_it_is_unambiguous():
    """torchinit 0.1 wrote a user's class by its bare name; a script run as __main__ writes '__main__.Name'."""

    class Halves(Initializer):
        function = staticmethod(ti.zeros_)

    config = Halves().to_config()
    for name in ("Halves", "__main__.Halves", config["class"]):
        assert type(Initializer.from_config({"class": name, "config": {}})) is Halves
    assert type(Initializer.from_config({"class": "Zeros", "config": {}})) is ti.Zeros  # a built-in stays itself

    class Other(Initializer):
        function = staticmethod(ti.ones_)

    Other.__name__ = "Halves"  # a second user class of the same name: the bare name no longer says which
    Initializer._registry[f"{__name__}.elsewhere.Halves"] = Other
    try:
        with pytest.raises(ValueError, match="ambiguous"):
            Initializer.from_config({"class": "Halves", "config": {}})
    finally:
        del Initializer._registry[f"{__name__}.elsewhere.Halves"]
