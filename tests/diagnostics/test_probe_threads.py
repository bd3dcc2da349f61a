"""probe, jacobian_spectrum and lsuv_ never set a global random number generator back.

Setting torch's, Python's or NumPy's global generator back after a call rewinds the stream
of every thread that drew from it meanwhile: that thread then draws the same numbers
again. These tests put a second thread's draws inside the call deterministically (the
model's forward pass hands over to the thread and waits for it), then compare everything
the thread drew with what fresh generators started from the same states give: a single
rewind repeats a batch and the sequences differ. No timing is asserted.

In one thread: torch's global generators are neither advanced nor set (the forward
passes' torch draws come from a private copy, the same numbers a plain forward pass
would draw now), and draws that cannot be redirected (Python's ``random``, NumPy, an
operation on a tensor subclass) advance their stream exactly as a plain forward pass
would, and are never set back.
"""

from __future__ import annotations

import copy
import random
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_map

from conftest import gen
from torchinit.diagnostics.lsuv import LSUV_LAYERS, lsuv_
from torchinit.diagnostics.probing import jacobian_spectrum, probe
from torchinit.rng.private import private_random
from torchinit.rng.seeds import derive_seed, stream_generator
from torchinit.schemes.structured import orthogonal_

#: Numbers the drawing thread takes from each generator per batch.
BATCH = 16
#: A guard against a deadlock, never reached when the code is right (not a timing assertion).
HANDOVER_LIMIT_S = 120.0


class Drawer:
    """A thread that draws a batch from torch's, Python's and NumPy's global generators each time it is asked."""

    def __init__(self) -> None:
        self.torch: list[torch.Tensor] = []
        self.python: list[float] = []
        self.numpy: list[float] = []
        self.batches = 0
        self._asked, self._drawn, self._stop = threading.Event(), threading.Event(), False
        self._thread = threading.Thread(target=self._run, name="drawer", daemon=True)

    def __enter__(self) -> Drawer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        self._asked.set()
        self._thread.join(HANDOVER_LIMIT_S)

    def _run(self) -> None:
        while True:
            self._asked.wait()
            self._asked.clear()
            if self._stop:
                return
            for _ in range(BATCH):
                self.torch.append(torch.rand(2))
                self.python.append(random.random())
                self.numpy.append(float(np.random.random()))
            self.batches += 1
            self._drawn.set()

    def draw(self) -> None:
        """Have the thread draw one batch, and wait until it has."""
        self._drawn.clear()
        self._asked.set()
        if not self._drawn.wait(HANDOVER_LIMIT_S):
            raise RuntimeError("the drawing thread did not answer")


class HandOver(nn.Module):
    """At each forward pass, the drawing thread draws a batch while this thread waits: inside the caller's call."""

    def __init__(self, drawer: Drawer) -> None:
        super().__init__()
        self.drawer = drawer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.drawer.draw()
        return x


def global_states() -> tuple[Any, Any, Any]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def expected_draws(states: tuple[Any, Any, Any], batches: int) -> tuple[list[torch.Tensor], list[float], list[float]]:
    """What fresh generators started from ``states`` give for ``batches`` batches of the drawer's draws."""
    g = torch.Generator()
    g.set_state(states[0])
    py = random.Random()
    py.setstate(states[1])
    rs = np.random.RandomState()
    rs.set_state(states[2])
    n = batches * BATCH
    return [torch.rand(2, generator=g) for _ in range(n)], [py.random() for _ in range(n)], \
        [float(rs.random_sample()) for _ in range(n)]  # fmt: skip


def model_with(drawer: Drawer) -> nn.Module:
    torch.manual_seed(0)  # built before the states are read: construction draws from the global RNG
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), HandOver(drawer), nn.Linear(16, 4)).train()


CALLS: dict[str, Callable[[nn.Module, torch.Tensor], Any]] = {
    "probe": lambda model, x: probe(model, x),
    "jacobian_spectrum": lambda model, x: jacobian_spectrum(model, x[:1]),
    "lsuv_": lambda model, x: lsuv_(model, x, generator=gen(3), max_iter=2),
}


@pytest.mark.filterwarnings("ignore:lsuv_")  # two iterations may not be enough; not the point here
@pytest.mark.parametrize("call", CALLS)
def test_a_thread_drawing_meanwhile_is_never_rewound(call):
    with Drawer() as drawer:
        model = model_with(drawer)
        x = torch.randn(32, 8, generator=gen(1))
        states = global_states()
        drawer.draw()  # before the call
        CALLS[call](model, x)  # the thread draws inside, at every forward pass
        drawer.draw()  # after: a rewind by the call would make this batch repeat the one drawn inside
    assert drawer.batches >= 3
    torch_draws, python_draws, numpy_draws = expected_draws(states, drawer.batches)
    assert all(torch.equal(a, b) for a, b in zip(drawer.torch, torch_draws, strict=True))
    assert drawer.python == python_draws
    assert drawer.numpy == numpy_draws


class Noisy(nn.Module):
    """A forward pass that draws from torch's global RNG in many ways (all redirectable), in train mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(x) + torch.rand(x.shape[-1]) + torch.randn(1)
        perm = torch.randperm(x.shape[-1])
        picks = torch.multinomial(torch.ones(x.shape[-1]), 2).float().sum()
        mask = torch.native_dropout(torch.ones_like(x), 0.25, True)[0]  # CUDA's dropout kernel, here on CPU
        h = self.drop(torch.relu(self.lin(x + 0.1 * noise)))[:, perm] * mask
        return h + 0.01 * picks + 0.1 * torch.empty_like(h).normal_() + torch.bernoulli(torch.full_like(h, 0.5))


@pytest.mark.parametrize("call", ["probe", "jacobian_spectrum"])
def test_torch_global_rng_neither_set_nor_advanced_and_the_numbers_of_a_plain_forward(call):
    torch.manual_seed(0)
    model = Noisy().train()
    x = torch.randn(4, 8, generator=gen(1))
    before = torch.get_rng_state()
    reference = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # the numbers a plain forward pass draws now (this thread only)
        expected = reference(x.clone())
    if call == "probe":
        report = probe(model, x)
        assert report.output_std == float(expected.detach().float().std())
    else:
        with torch.random.fork_rng(devices=[]):
            plain = torch.autograd.functional.jacobian(lambda inp: copy.deepcopy(model)(inp).reshape(-1), x[:1])
        sv = jacobian_spectrum(model, x[:1])
        assert torch.equal(sv, torch.linalg.svdvals(plain.reshape(plain.shape[0], -1).double()))
    assert torch.equal(torch.get_rng_state(), before)


def test_native_dropout_draws_its_mask_from_the_private_copy():
    x = torch.randn(64, generator=gen(2))
    before = torch.get_rng_state()
    with private_random() as rng:
        out, mask = torch.native_dropout(x, 0.25, True)
        same, kept = torch.native_dropout(x, 0.25, False)
    g = torch.Generator()
    g.set_state(before)
    expected = torch.empty_like(x).bernoulli_(0.75, generator=g)
    assert torch.equal(mask, expected.bool()) and torch.equal(out, x * expected * (1 / 0.75))
    assert torch.equal(same, x) and bool(kept.all()) and not rng.global_draws
    assert torch.equal(torch.get_rng_state(), before)


class PythonAndNumpy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * (1 + 0 * random.random() + 0 * float(np.random.random()))


@pytest.mark.parametrize("call", ["probe", "jacobian_spectrum"])
def test_python_and_numpy_draws_of_the_forward_stand(call):
    model, x = PythonAndNumpy(), torch.randn(3, 4, generator=gen(1))
    py, rs = random.Random(), np.random.RandomState()
    py.setstate(random.getstate())
    rs.set_state(np.random.get_state())
    (probe if call == "probe" else jacobian_spectrum)(model, x if call == "probe" else x[:1])
    py.random(), rs.random_sample()  # one forward pass: one draw from each, which stands (nothing sets them back)
    assert random.getstate() == py.getstate()
    now, expected = np.random.get_state(), rs.get_state()
    assert np.array_equal(now[1], expected[1]) and now[2] == expected[2]


class Wrapped(torch.Tensor):
    """A tensor subclass: its random operations keep their own stream (here: the global RNG), as DTensor's do."""

    elem: torch.Tensor
    # a wrapper subclass converts nothing at the Python level (torch 2.2 would rewrap a result already bound)
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> Wrapped:
        wrapped = torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype, device=elem.device)
        wrapped.elem = elem
        return wrapped

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        def unwrap(t: Any) -> Any:
            return t.elem if isinstance(t, Wrapped) else t

        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))


class SubclassNoise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + 0 * torch.rand_like(Wrapped(x.detach()))


def test_a_draw_without_a_private_generator_advances_the_global_rng_and_is_named():
    model, x = SubclassNoise(), torch.randn(3, 4, generator=gen(1))
    g = torch.Generator()
    g.set_state(torch.get_rng_state())
    torch.rand(3, 4, generator=g)  # what the forward pass's one draw on the subclass takes from the global RNG
    with pytest.warns(UserWarning, match=r"probe: aten\.rand_like\.default on a tensor subclass took no private"):
        probe(model, x)
    assert torch.equal(torch.get_rng_state(), g.get_state())  # advanced by that draw, not set back


@pytest.mark.filterwarnings("ignore:lsuv_")  # the noise may keep a layer off the target; not the point here
def test_lsuv_forward_draws_leave_the_global_rng_alone():
    torch.manual_seed(0)
    model = nn.Sequential(Noisy(), nn.Linear(8, 8))
    data = torch.randn(64, 8, generator=gen(1))
    before = torch.get_rng_state()
    lsuv_(model, data, seed=5, max_iter=2)  # forward passes in eval mode; Noisy draws even there
    assert torch.equal(torch.get_rng_state(), before)


class FailsOnMeasurement(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin, self.head = nn.Linear(8, 8), nn.Linear(8, 2)
        self.passes = [0]  # a list's contents come back, its items' state does not: counts across the restore

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes[0] += 1
        if self.passes[0] > 1:  # the execution-order pass runs; the first measurement fails
            raise RuntimeError("measurement failed")
        return self.head(torch.relu(self.lin(x + torch.randn_like(x))))


@pytest.mark.parametrize("source", ["generator", "global"])
def test_lsuv_failure_restores_the_model_and_generator_but_never_sets_the_global_rng(source):
    torch.manual_seed(0)
    model = FailsOnMeasurement()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = torch.randn(16, 8, generator=gen(1))
    g = gen(3) if source == "generator" else None
    generator_state = g.get_state() if g is not None else None
    before = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="measurement failed"):
        lsuv_(model, data, generator=g)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())  # all or nothing
    if g is not None:
        assert torch.equal(g.get_state(), generator_state)  # the caller's generator is rewound
        assert torch.equal(torch.get_rng_state(), before)  # the global one was never touched
    else:
        expected = torch.Generator()
        expected.set_state(before)
        replay = copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.set_rng_state(before)  # this test's own thread: the orthogonal start's global draws, replayed
            for m in replay.modules():
                if isinstance(m, LSUV_LAYERS):
                    orthogonal_(m.weight)
            after_start = torch.get_rng_state()
        assert torch.equal(torch.get_rng_state(), after_start)  # they stand: a global generator is never set
        assert not torch.equal(after_start, before)


def test_lsuv_results_unchanged_with_a_generator():
    """The orthogonal start draws one number from the generator, then one stream per weight, as before."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    reference = copy.deepcopy(model)
    data = torch.randn(128, 8, generator=gen(1))
    lsuv_(model, data, generator=gen(3))
    base = derive_seed(gen(3))
    with torch.no_grad():
        for name, m in reference.named_modules():
            if isinstance(m, LSUV_LAYERS):
                orthogonal_(m.weight, generator=stream_generator(base, f"{name}.weight", m.weight.device))
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if name.endswith("bias"):
            assert torch.equal(p, q)
        else:  # the same orthogonal direction, rescaled
            assert torch.allclose(p / p.norm(), q / q.norm(), atol=1e-6)
