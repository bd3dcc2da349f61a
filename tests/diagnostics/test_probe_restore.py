"""probe(), jacobian_spectrum() and lsuv_() leave the model (and the caller's RNG and inputs) as they found them."""

import random
from typing import Any

import pytest
import torch
from torch import nn

from conftest import gen
from torchinit.diagnostics.lsuv import LSUV_LAYERS, lsuv_
from torchinit.diagnostics.probing import jacobian_spectrum, probe
from torchinit.rng.seeds import derive_seed
from torchinit.schemes.structured import orthogonal_

BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bits, as integers (so -0.0 != 0.0 and NaN == NaN)."""
    t = t.detach()
    return t.view(BITS[t.element_size()]).clone() if t.is_floating_point() else t.clone()


def state(model: nn.Module) -> dict:
    """Everything the tests compare: tensors by module and name (object, bits, dtype, device), plain attributes,
    training flags, container contents."""
    snap: dict[tuple[str, ...], Any] = {}
    for mname, m in model.named_modules():
        for kind in ("_parameters", "_buffers"):
            for name, t in getattr(m, kind).items():
                snap[(mname, kind, name)] = (t, None if t is None else (bits(t), t.dtype, t.device, t.shape,
                                                                        t.grad if t.is_leaf else None))
        snap[(mname, "_modules")] = dict(m._modules)
        snap[(mname, "_non_persistent_buffers_set")] = set(m._non_persistent_buffers_set)
        snap[(mname, "hooks")] = dict(m._forward_hooks)
        for key, value in vars(m).items():
            if not key.startswith("_") and not isinstance(value, torch.Tensor):
                snap[(mname, "attr", key)] = list(value) if isinstance(value, list) else value
        snap[(mname, "keys")] = sorted(vars(m))
    return snap


def assert_same_state(before: dict, after: dict, skip=()):
    assert before.keys() == after.keys()
    for key, (was, now) in ((k, (before[k], after[k])) for k in before):
        if key[1] in ("_parameters", "_buffers"):
            assert now[0] is was[0], key  # the same registered object
            if was[1] is None or id(was[0]) in skip:
                continue
            (b0, dtype0, dev0, shape0, grad0), (b1, dtype1, dev1, shape1, grad1) = was[1], now[1]
            assert (dtype1, dev1, shape1) == (dtype0, dev0, shape0), key
            assert torch.equal(b1, b0), key  # bit for bit
            assert grad1 is grad0, key
        elif key[1] in ("_modules", "hooks"):
            assert list(now.keys()) == list(was.keys()) and all(a is b for a, b in zip(now.values(), was.values())), key
        else:
            assert now == was, key


def rng_draws() -> tuple:
    return torch.rand(3), random.random()


class Stateful(nn.Module):
    """Everything a forward pass may change in place or by reassignment."""

    count: torch.Tensor
    scale: torch.Tensor

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 8, max_norm=1.0)  # renormalizes its weight in place during forward
        with torch.no_grad():
            self.emb.weight.mul_(3)  # rows of norm ~8: forward changes them
        self.lin = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 4)
        self.register_buffer("idx", torch.tensor([1, 2, 3]))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("scale", torch.ones(8))
        self.steps = 0
        self.history = []
        self.calls_before_raise = None  # raise on that call
        self.gen = torch.Generator().manual_seed(7)  # a generator the model owns

    def forward(self, x):
        self.steps += 1
        self.history.append(self.steps)
        self.count = self.count + 1  # reassigns the buffer: a new tensor object
        self.register_buffer("scale", self.scale * 2, persistent=False)  # registered again, other persistence
        self.cache = x.detach()  # a new attribute
        self.drop.train(not self.drop.training)  # flips a flag
        noise = torch.rand(8, generator=self.gen) + torch.rand(8) * 0 + random.random() * 0  # draws from three RNGs
        self.lin.weight.data = self.lin.weight.data.clone()  # .data swapped for new memory
        if self.calls_before_raise is not None and self.steps >= self.calls_before_raise:
            raise RuntimeError("forward failed")
        h = self.emb(self.idx).sum(0) + x
        h = self.drop(torch.relu(self.bn(self.lin(h))))
        return self.head(h * self.scale + noise * 0)


def run_probe(model, x):
    return probe(model, x)


def run_jacobian(model, x):
    return jacobian_spectrum(model, x[:2])  # BatchNorm in train mode needs 2 samples


def run_lsuv(model, x):
    return lsuv_(model, x, generator=gen(3), max_iter=3)


CALLERS = {"probe": run_probe, "jacobian_spectrum": run_jacobian, "lsuv_": run_lsuv}


def lsuv_weights(model):
    return {id(m.weight) for m in model.modules() if isinstance(m, LSUV_LAYERS)}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("caller", CALLERS)
def test_everything_restored_after_success(caller):
    model = Stateful().train()
    model.head.eval()
    model.lin.weight.grad = torch.full_like(model.lin.weight, 0.5)
    x = torch.randn(16, 8, generator=gen(1))
    x_bits = bits(x)
    with torch.no_grad():  # the test is meaningful: a plain forward does change the weight, stats and buffers
        probe_model = Stateful().train()
        probe_model(x)
        assert not torch.equal(probe_model.emb.weight, Stateful().emb.weight)
    calls: list[int] = []  # outside the module tree, so it keeps the count of forward passes
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    before = state(model)
    emb_weight, versions = model.emb.weight.detach().clone(), {id(p): p._version for p in model.parameters()}
    lin_storage = model.lin.weight.untyped_storage().data_ptr()
    torch.manual_seed(0)
    random.seed(0)
    CALLERS[caller](model, x)
    after_draws = rng_draws()
    torch.manual_seed(0)
    random.seed(0)
    # torch's draws in the forward passes came from a private copy; Python's random is out of torch's reach: each
    # forward pass's random.random() advanced it, as a plain forward pass would (nothing sets it back)
    for _ in calls:
        random.random()
    assert calls and all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(after_draws, rng_draws()))
    skip = lsuv_weights(model) if caller == "lsuv_" else set()
    assert_same_state(before, state(model), skip=skip)
    assert torch.equal(bits(model.emb.weight), bits(emb_weight))
    assert model.count.item() == 0 and model.steps == 0 and model.history == [] and not hasattr(model, "cache")
    assert "scale" not in model._non_persistent_buffers_set and "scale" in model.state_dict()
    assert model.training and model.drop.training and not model.head.training
    assert torch.equal(model.gen.get_state(), torch.Generator().manual_seed(7).get_state())
    assert torch.equal(bits(x), x_bits) and x.grad is None
    assert torch.equal(model.lin.weight.grad, torch.full_like(model.lin.weight, 0.5))
    assert model.lin.weight.untyped_storage().data_ptr() == lin_storage  # the original memory (lsuv_'s too)
    if caller != "lsuv_":  # untouched tensors are not even written
        assert model.head.weight._version == versions[id(model.head.weight)]


def test_lsuv_changes_only_its_weights():
    model = Stateful()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.warns(UserWarning):  # three iterations are not enough for every layer; not the point here
        lsuv_(model, torch.randn(64, 8, generator=gen(1)), generator=gen(3), max_iter=3)
    for name, p in model.named_parameters():
        changed = not torch.equal(p, weights[name])
        assert changed == (name in ("lin.weight", "head.weight")), name


def test_buffers_are_the_same_registrations():
    model = Stateful()
    before = list(model.named_buffers())
    probe(model, torch.randn(4, 8, generator=gen()))
    after = list(model.named_buffers())
    assert [(n, b.dtype, b.device) for n, b in after] == [(n, b.dtype, b.device) for n, b in before]
    assert all(b is c for (_, b), (_, c) in zip(before, after)) and model._non_persistent_buffers_set == set()


def test_embedding_max_norm_weight_bit_identical():
    torch.manual_seed(0)
    embedding = nn.Embedding(20, 6, max_norm=0.5)
    model = nn.Sequential(embedding, nn.Flatten(), nn.Linear(18, 3))
    tokens = torch.tensor([[1, 5, 7], [2, 2, 19]])
    before = bits(embedding.weight)
    model(tokens)
    assert not torch.equal(bits(embedding.weight), before)  # a forward does renormalize it
    with torch.no_grad():
        embedding.weight.copy_(before.view(torch.float32))
    report = probe(model, tokens)
    assert torch.equal(bits(embedding.weight), before) and len(report.rows) == 2


@pytest.mark.parametrize("caller", ["probe", "jacobian_spectrum"])
def test_dropout_does_not_advance_the_global_rng(caller):
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 8)).train()
    x = torch.randn(4, 8, generator=gen())
    torch.manual_seed(0)
    (probe if caller == "probe" else jacobian_spectrum)(model, x)
    after = torch.rand(5)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_restored():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)).cuda().train()
    torch.cuda.manual_seed_all(0)
    states = torch.cuda.get_rng_state_all()
    probe(model, torch.randn(4, 8, device="cuda"))
    jacobian_spectrum(model, torch.randn(1, 8, device="cuda"))
    assert all(torch.equal(a, b) for a, b in zip(states, torch.cuda.get_rng_state_all()))


def test_lsuv_global_rng_advances_only_by_its_orthogonal_draws():
    model = Stateful()
    reference = Stateful()
    data = torch.randn(64, 8, generator=gen(1))
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        lsuv_(model, data, max_iter=2)  # generator None: orthogonal_ draws from the global RNG
    after = torch.rand(5)
    torch.manual_seed(0)
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, LSUV_LAYERS):
                orthogonal_(m.weight)
    assert torch.equal(after, torch.rand(5))
    # the user's generator: one draw on success (derive_seed), as before
    g, expected = gen(3), gen(3)
    derive_seed(expected)
    with pytest.warns(UserWarning):
        lsuv_(Stateful(), data, generator=g, max_iter=2)
    assert torch.equal(g.get_state(), expected.get_state())


def batches_tracked(norm: nn.BatchNorm2d) -> int:
    assert norm.num_batches_tracked is not None
    return int(norm.num_batches_tracked)


def test_jacobian_spectrum_leaves_batchnorm_statistics_in_train_mode():
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), norm, nn.ReLU(), nn.Flatten(),
                          nn.Linear(48, 4), nn.BatchNorm1d(4, momentum=None)).train()
    x = torch.randn(2, 2, 4, 4, generator=gen())
    before = {k: bits(v) for k, v in model.state_dict().items()}
    jacobian_spectrum(model, x)
    assert all(torch.equal(bits(v), before[k]) for k, v in model.state_dict().items())
    assert batches_tracked(norm) == 0 and model.training
    model(x)
    assert batches_tracked(norm) == 1  # a plain forward does update them


@pytest.mark.parametrize("caller", CALLERS)
def test_restored_on_an_exception_mid_way(caller):
    model = Stateful().train()
    # lsuv_: its first forward pass (execution order) runs and changes things, its first measurement raises;
    # probe and jacobian_spectrum run one forward pass, which changes things, then raises
    model.calls_before_raise = 2 if caller == "lsuv_" else 1
    x = torch.randn(16, 8, generator=gen(1))
    before = state(model)
    g = gen(3)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="forward failed"):
        if caller == "lsuv_":
            lsuv_(model, x, generator=g)
        else:
            CALLERS[caller](model, x)
    after = torch.rand(5)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(5))
    assert_same_state(before, state(model))  # LSUV's weights included: all or nothing
    assert torch.equal(g.get_state(), gen(3).get_state())  # lsuv_'s generator rewound


def test_keyboard_interrupt_from_a_hook_restores_and_propagates():
    model = Stateful().train()
    fired = []

    def hook(module, inputs, output):
        module.running_mean.add_(100.0)  # changed before the interrupt
        fired.append(True)
        raise KeyboardInterrupt

    handle = model.bn.register_forward_hook(hook)
    before = state(model)
    with pytest.raises(KeyboardInterrupt):
        probe(model, torch.randn(16, 8, generator=gen()))
    assert fired
    assert_same_state(before, state(model))  # the user's hook is still there, probe's are gone
    assert list(model.bn._forward_hooks) == [handle.id]
    handle.remove()


def test_loss_raising_after_backward_restores():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    before = state(model)

    def loss(out):
        out.sum().backward()  # grads written
        raise ValueError("bad loss")

    with pytest.raises(ValueError, match="bad loss"):
        probe(model, torch.randn(8, 4, generator=gen()), loss=loss)
    assert_same_state(before, state(model))
    assert all(p.grad is None for p in model.parameters())


def test_inputs_written_in_place_by_forward_are_not_the_callers():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x, extra=None):
            if extra is not None:
                extra["t"].add_(1)  # writes into a nested input
            if not x.requires_grad:  # (autograd forbids writing into a leaf that requires grad)
                x.mul_(2)  # writes into its input
            return self.lin(x)

    x = torch.randn(32, 8, generator=gen())
    extra = {"t": torch.zeros(3)}
    x0 = x.clone()
    probe(InPlace(), (x, extra))
    assert torch.equal(x, x0) and torch.equal(extra["t"], torch.zeros(3))
    lsuv_(InPlace(), (x, extra), generator=gen())
    assert torch.equal(x, x0) and torch.equal(extra["t"], torch.zeros(3))
    wants_grad = x.clone().requires_grad_(True)
    jacobian_spectrum(InPlace(), wants_grad[:1])
    probe(InPlace(), (wants_grad, extra))
    assert wants_grad.grad is None and torch.equal(wants_grad.detach(), x0)


def test_lsuv_measurements_see_the_same_data_every_pass():
    class Doubling(nn.Module):  # writes into its input: without a copy per pass, every measurement would differ
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            return self.lin(x.mul_(2))

    data = torch.randn(256, 8, generator=gen())
    report = lsuv_(Doubling(), data, generator=gen())
    assert report.not_converged == []


@pytest.mark.parametrize("caller", CALLERS)
def test_refused_up_front(caller):
    first = nn.LazyLinear(4)
    lazy = nn.Sequential(first, nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"model .*lazy.*0\.weight"):
        CALLERS[caller](lazy, torch.randn(4, 3))
    assert nn.parameter.is_lazy(first.weight)  # nothing ran
    scripted = torch.jit.script(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(TypeError, match="model is a TorchScript module"):
        CALLERS[caller](scripted, torch.randn(4, 3))
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        CALLERS[caller](object(), torch.randn(4, 3))


def test_bad_loss_and_generator_refused():
    with pytest.raises(TypeError, match="loss must be a callable"):
        probe(nn.Linear(3, 3), torch.randn(2, 3), loss="mse")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        lsuv_(nn.Linear(3, 3), torch.randn(8, 3), generator=0)  # type: ignore[arg-type]
