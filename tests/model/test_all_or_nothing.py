"""Policy.apply_ and materialize_ are all or nothing: whatever raises, the model is left bit for bit as it was.

Each test takes a fingerprint of the model (every registration by name: the tensor object, its values, dtype,
device, ``requires_grad``, storage and Python attributes; every module's attributes), makes a call fail, and
compares. Ties are covered by identity: a tied weight is one object under two names.
"""

import functools

import pytest
import torch
from torch import nn

import torchinit as ti
from torchinit.model import materialize as materialize_module
from torchinit.model import replay as replay_module
from torchinit.model.presets import torch_default

# these tests are about all or nothing under failures and interrupts; the warnings their meta-built models (and a
# recording patched away) cause are asserted where they are the point (test_meta_path_warnings.py and others)
pytestmark = pytest.mark.filterwarnings("ignore:materialize_:UserWarning")

# ---- the fingerprint ---------------------------------------------------------------------------------------


def fingerprint(model: nn.Module) -> dict:
    tensors = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for kind, store in (("param", module._parameters), ("buffer", module._buffers)):
            for attr, t in store.items():
                name = f"{prefix}.{attr}" if prefix else attr
                if t is None:
                    tensors[name] = (kind, None)
                    continue
                value = None if t.is_meta else t.detach().clone()
                storage = None if t.is_meta else t.untyped_storage().data_ptr()
                tensors[name] = (kind, t, value, t.dtype, t.device, tuple(t.shape), t.requires_grad, storage,
                                 dict(t.__dict__))
    modules = {prefix: (module, dict(module.__dict__)) for prefix, module in model.named_modules()}
    return {"tensors": tensors, "modules": modules}


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = fingerprint(model)
    assert list(after["tensors"]) == list(before["tensors"]), "registrations changed"
    for name, was in before["tensors"].items():
        now = after["tensors"][name]
        if was[1] is None:
            assert now[1] is None, name
            continue
        _kind, t, value, dtype, device, shape, requires_grad, storage, attributes = was
        assert now[1] is t, f"{name}: another tensor object is registered"
        assert (now[3], now[4], now[5], now[6]) == (dtype, device, shape, requires_grad), name
        if value is not None:
            assert torch.equal(now[2], value), f"{name}: values changed"
            assert now[7] == storage, f"{name}: storage changed"
        assert now[8].keys() == attributes.keys() and all(now[8][k] is v for k, v in attributes.items()), name
    assert list(after["modules"]) == list(before["modules"])
    for name, (module, attributes) in before["modules"].items():
        now_module, now_attributes = after["modules"][name]
        assert now_module is module, name
        assert now_attributes.keys() == attributes.keys(), (name, now_attributes.keys() ^ attributes.keys())
        assert all(now_attributes[k] is v for k, v in attributes.items()), name


# ---- models and failing initializers -----------------------------------------------------------------------


class Tied(nn.Module):
    """An embedding whose weight the output head shares: 5 distinct parameters, 3 random fills."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def small() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3))


def real(build):
    torch.manual_seed(0)
    model = build()
    model.get_submodule("0" if isinstance(model, nn.Sequential) else "norm").weight.requires_grad_(False)
    return model


class FailOnCall(ti.Normal):
    """N(0, 1), but the k-th call on a real tensor raises ``fault``: the meta dry run passes."""

    def __init__(self, k: int, fault: type[BaseException]) -> None:
        super().__init__(std=1.0)
        self.k, self.fault, self.calls = k, fault, 0

    def init(self, tensor, *, generator=None):
        if not tensor.is_meta:
            self.calls += 1
            if self.calls == self.k:
                raise self.fault(f"call {self.k}")
        return super().init(tensor, generator=generator)


def _rescale_(tensor: torch.Tensor, std: float = 1.0) -> torch.Tensor:
    """Scale ``tensor`` to standard deviation ``std``; a constant one has none: a ValueError only real values show."""
    if tensor.is_meta:
        return tensor
    current = float(tensor.std())
    if current == 0:
        raise ValueError("rescale: the tensor is constant")
    return tensor.mul_(std / current)


class RescaleForTest(ti.Initializer):
    function = staticmethod(_rescale_)


# ---- Policy.apply_ -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 4, 6])
@pytest.mark.parametrize("fault", [ValueError, RuntimeError])
def test_apply_an_initializer_failing_on_the_kth_parameter_changes_nothing(k, fault):
    model = real(small)
    before = fingerprint(model)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with pytest.raises(fault, match=f"call {k}"):
        ti.Policy([("*", FailOnCall(k, fault))]).apply_(model, generator=g)
    assert_unchanged(model, before)
    assert torch.equal(g.get_state(), state)  # the call's draw is given back too


@pytest.mark.parametrize("k", [1, 3, 6], ids=["first", "middle", "last"])
def test_apply_a_keyboard_interrupt_inside_an_initializer_changes_nothing(k):
    model = real(small)
    before = fingerprint(model)
    with pytest.raises(KeyboardInterrupt):
        ti.Policy([("*", FailOnCall(k, KeyboardInterrupt))]).apply_(model)
    assert_unchanged(model, before)


@pytest.mark.parametrize("k", [1, 2, 3], ids=["first", "middle", "last"])
def test_apply_a_keyboard_interrupt_in_a_module_level_rule_changes_nothing(k, monkeypatch):
    """torch_default resets whole modules: parameters, BatchNorm's running statistics, weight_norm's originals
    (whose storage its right_inverse replaces with set_)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)), nn.BatchNorm1d(4),
                          nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
        model[1].num_batches_tracked.fill_(7)
    before = fingerprint(model)
    calls = []
    reset = nn.Linear.reset_parameters

    @functools.wraps(reset)
    def interrupted(self):
        calls.append(self)
        if len(calls) == k:
            raise KeyboardInterrupt
        return reset(self)

    monkeypatch.setattr(nn.Linear, "reset_parameters", interrupted)
    with pytest.raises(KeyboardInterrupt):
        torch_default().apply_(model, generator=torch.Generator().manual_seed(0))
    assert_unchanged(model, before)


def test_apply_a_value_error_found_only_after_the_dry_run_changes_nothing():
    torch.manual_seed(0)
    model = small()
    with torch.no_grad():
        model[2].weight.fill_(0.5)  # constant: rescaling it fails, but only the real values say so
    before = fingerprint(model)
    policy = ti.Policy([(nn.Linear, {"weight": ti.Normal(std=0.1), "bias": ti.Zeros()}),
                        ("2.weight", RescaleForTest(std=2.0))])  # after 0.weight and 0.bias are written
    with pytest.raises(ValueError, match="constant"):
        policy.apply_(model)
    assert_unchanged(model, before)
    with torch.no_grad():
        model[2].weight.normal_()
    policy.apply_(model)  # and a good call then works
    assert float(model[2].weight.detach().std()) == pytest.approx(2.0)


@pytest.mark.parametrize("k", [1, 3, 5], ids=["first", "middle", "last"])
def test_apply_on_a_tied_model_changes_nothing_and_keeps_the_tie(k):
    model = real(Tied)
    before = fingerprint(model)
    with pytest.raises(KeyboardInterrupt):  # 5 distinct parameters: embed.weight (= head.weight) first
        ti.Policy([("*", FailOnCall(k, KeyboardInterrupt))]).apply_(model)
    assert_unchanged(model, before)
    assert model.head.weight is model.embed.weight


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"strict": 1}, TypeError, "strict must be a bool"),
        ({"generator": 0}, TypeError, "generator must be a torch.Generator"),
        ({"strict": True}, ValueError, "strict: no rule covers"),
    ],
)
def test_apply_bad_arguments_raise_before_anything_changes(kwargs, error, match):
    model = real(small)
    before = fingerprint(model)
    with pytest.raises(error, match=match):
        ti.Policy([("0.weight", ti.Zeros())]).apply_(model, **kwargs)
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "rules, error, match",
    [
        ([("*", ti.Dirac())], ValueError, r"0.weight .*Dirac"),  # a 2-d weight: Dirac wants 3 to 5 dims
        ([("*", ti.Zeros()), ("*.nothing", ti.Ones())], ValueError, "matches no parameter"),
        ([("*", ti.Zeros()), (nn.Linear, {"weight": ti.Zeros(), "wieght": ti.Ones()})], ValueError, "wieght"),
    ],
)
def test_apply_bad_policies_raise_before_anything_changes(rules, error, match):
    model = real(small)
    before = fingerprint(model)
    with pytest.raises(error, match=match):
        ti.Policy(rules).apply_(model, strict=True)
    assert_unchanged(model, before)


def test_apply_a_meta_parameter_with_a_generator_raises_before_anything_changes():
    model = real(small)
    model[2].to("meta")
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"generator: .*2.weight"):
        ti.Policy([("*", ti.Normal(std=0.1))]).apply_(model, generator=torch.Generator().manual_seed(0))
    assert_unchanged(model, before)


def test_apply_that_succeeds_after_a_failure_gives_what_a_first_call_gives():
    a, b = real(small), real(small)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError):
        ti.Policy([("*", FailOnCall(4, ValueError))]).apply_(a, generator=g)
    ti.Policy([("*", ti.Normal(std=1.0))]).apply_(a, generator=g)
    ti.Policy([("*", ti.Normal(std=1.0))]).apply_(b, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---- materialize_ ------------------------------------------------------------------------------------------


def deferred(build):
    with ti.deferred():
        return build()


def meta_device(build):
    with torch.device("meta"):
        return build()


def to_meta(build):
    torch.manual_seed(0)
    return build().to("meta")


BUILDS = {"deferred": deferred, "device_meta": meta_device, "to_meta": to_meta}


def meta_model(how: str, build=small) -> nn.Module:
    model = BUILDS[how](build)
    next(model.parameters()).requires_grad_(False)
    return model


@pytest.mark.parametrize("how", list(BUILDS))
@pytest.mark.parametrize("k", [1, 3, 6], ids=["first", "middle", "last"])
@pytest.mark.parametrize("fault", [ValueError, KeyboardInterrupt])
def test_materialize_a_rule_failing_on_the_kth_parameter_changes_nothing(how, k, fault):
    model = meta_model(how)
    before = fingerprint(model)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with pytest.raises(fault):
        ti.materialize_(model, ti.Policy([("*", FailOnCall(k, fault))]), generator=g)
    assert_unchanged(model, before)
    assert torch.equal(g.get_state(), state)
    ti.materialize_(model)  # and it can still be materialized
    assert not any(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("how", list(BUILDS))
@pytest.mark.parametrize("k", [1, 3, 5], ids=["first", "middle", "last"])
def test_materialize_a_rule_failing_on_a_tied_model_changes_nothing(how, k):
    model = meta_model(how, Tied)
    tied = model.head.weight is model.embed.weight  # .to("meta") unties (torch's _apply makes new parameters)
    before = fingerprint(model)
    with pytest.raises(KeyboardInterrupt):
        ti.materialize_(model, ti.Policy([("*", FailOnCall(k, KeyboardInterrupt))]))
    assert_unchanged(model, before)
    ti.materialize_(model)
    assert (model.head.weight is model.embed.weight) == tied and not model.head.weight.is_meta


@pytest.mark.parametrize("how", list(BUILDS))
@pytest.mark.parametrize("k", [1, 2, 3], ids=["first", "middle", "last"])
def test_materialize_a_keyboard_interrupt_during_replay_changes_nothing(how, k, monkeypatch):
    model = meta_model(how, Tied)
    before = fingerprint(model)
    calls = []
    fill = replay_module.replay_fill

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == k:
            raise KeyboardInterrupt
        return fill(*args, **kwargs)

    monkeypatch.setattr(replay_module, "replay_fill", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ti.materialize_(model)
    assert len(calls) == k
    assert_unchanged(model, before)


@pytest.mark.parametrize("how", ["device_meta", "to_meta"])
def test_materialize_a_keyboard_interrupt_during_re_enactment_changes_nothing(how, monkeypatch):
    model = meta_model(how)
    model[1]._is_hf_initialized = True  # a transformers mark: cleared while re-enacting, then put back
    before = fingerprint(model)
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(nn.LayerNorm, "reset_parameters", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ti.materialize_(model)
    assert_unchanged(model, before)


def test_re_enactment_leaves_no_marks_of_its_own():
    """A model init that marks modules (as transformers' does) marks stand-ins' owners only for the duration."""

    class Marking(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def init_weights(self) -> None:
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)
                m._is_hf_initialized = True

    with torch.device("meta"):
        model = Marking()
    ti.materialize_(model)
    assert not [n for n, m in model.named_modules() if "_is_hf_initialized" in m.__dict__]
    assert torch.equal(model.a.bias, torch.zeros(4))


@pytest.mark.parametrize("how", list(BUILDS))
def test_materialize_a_keyboard_interrupt_after_the_registrations_changed_puts_them_back(how, monkeypatch):
    """The last step of a call (re-tying a transformers model) runs after the commit: a Ctrl-C there undoes it."""
    model = meta_model(how, Tied)
    tied = model.head.weight is model.embed.weight
    before = fingerprint(model)

    def interrupted(model):
        assert not model.embed.weight.is_meta  # the commit has happened
        raise KeyboardInterrupt

    monkeypatch.setattr(materialize_module, "retie", interrupted)
    monkeypatch.setattr(materialize_module, "recording_of", lambda t: None)  # every build re-enacts (and re-ties)
    with pytest.raises(KeyboardInterrupt):
        ti.materialize_(model)
    assert_unchanged(model, before)
    assert (model.head.weight is model.embed.weight) == tied


@pytest.mark.parametrize(
    "device, error, match",
    [
        ("nonsense", ValueError, "device"),
        ("meta", ValueError, "real device"),
        ("cuda:99", ValueError, "device 'cuda:99'"),  # no such GPU (or no CUDA at all)
        ("xla", ValueError, "device 'xla'"),  # no backend
        (-1, ValueError, "device"),
        (3.5, TypeError, "device must be"),
        (True, TypeError, "device must be"),
        (("cpu",), TypeError, "device must be"),
    ],
)
@pytest.mark.parametrize("with_generator", [False, True])
def test_materialize_bad_devices_raise_before_anything_changes(device, error, match, with_generator):
    model = deferred(Tied)
    model.norm.to_empty(device="cpu")  # a real part too, which a good device would move
    with torch.no_grad():
        model.norm.weight.fill_(2.0)  # not the garbage of to_empty: a NaN would not equal itself
        model.norm.bias.fill_(0.5)
    before = fingerprint(model)
    generator = torch.Generator().manual_seed(0) if with_generator else None
    with pytest.raises(error, match=match):
        ti.materialize_(model, device=device, generator=generator)
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"policy": "torch_default"}, TypeError, "policy must be a torchinit.Policy"),
        ({"policy": ti.Policy([("*.nothing", ti.Zeros())]), "strict": True}, ValueError, "matches no parameter"),
        ({"policy": ti.Policy([("0.weight", ti.Dirac())])}, ValueError, r"0.weight .*Dirac"),
        ({"strict": 1}, TypeError, "strict must be a bool"),
        ({"generator": 0}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_materialize_bad_arguments_raise_before_anything_changes(kwargs, error, match):
    model = meta_model("deferred")
    before = fingerprint(model)
    with pytest.raises(error, match=match):
        ti.materialize_(model, **kwargs)
    assert_unchanged(model, before)


def test_materialize_unknown_values_with_strict_change_nothing():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.register_buffer("table", torch.arange(4.0))  # lost on meta: unknown

    with torch.device("meta"):
        model = Odd()
    before = fingerprint(model)
    with pytest.raises(ValueError, match="table"):
        ti.materialize_(model, strict=True)
    assert_unchanged(model, before)

