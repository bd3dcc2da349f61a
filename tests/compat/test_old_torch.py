"""What torchinit does differently on an older torch, checked on this one by taking the newer feature away.

- ``torch.nextafter`` has no half-precision CPU kernel before torch 2.2: :func:`next_float` steps on the bits,
  and agrees with torch's kernel (where it exists) on every 16-bit pattern.
- ``torch.nn.init``'s random functions took no ``generator`` before torch 2.2: recorded whole under
  ``deferred()``, they are still random operations (keyed with ``seed=``, drawn from ``generator=``).
- ``torch.utils.swap_tensors`` arrived in torch 2.3: without it, ``deferred()`` makes parameters meta when they are
  created, so that ties and writes through the constructor's own references are kept.

``make compat`` runs the whole suite on the oldest supported torch, where these paths are the real ones.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import torchinit as ti
from torchinit._util.floats import next_float

HALF_DTYPES = (torch.float16, torch.bfloat16)


@pytest.mark.parametrize("dtype", (*HALF_DTYPES, torch.float32, torch.float64))
@pytest.mark.parametrize("up", [True, False])
def test_next_float_is_torch_nextafter_on_every_16_bit_pattern(dtype, up):
    if dtype in HALF_DTYPES:
        values = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    else:
        info = torch.finfo(dtype)
        values = torch.tensor([0.0, -0.0, 1.0, -1.0, info.tiny, -info.tiny, info.max, -info.max, info.smallest_normal
                               / 4, float("inf"), float("-inf"), float("nan")], dtype=dtype)  # fmt: skip
    try:
        expected = torch.nextafter(values, torch.full_like(values, float("inf") if up else float("-inf")))
    except RuntimeError as err:  # torch < 2.2: no half kernel to compare with
        pytest.skip(f"torch {torch.__version__} has no nextafter for {dtype}: {err}")
    got = next_float(values, up=up)
    nan = expected.isnan()
    assert torch.equal(got.isnan(), nan)
    width = torch.int16 if dtype in HALF_DTYPES else {torch.float32: torch.int32, torch.float64: torch.int64}[dtype]
    assert torch.equal(got[~nan].view(width), expected[~nan].view(width))  # bit for bit, signed zeros included


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_bounds_and_caps_need_no_half_nextafter(dtype, monkeypatch):
    """trunc_normal_'s inner bounds and uniform_'s cap in half precision, with torch's nextafter refusing 16-bit
    floats as torch 2.1's does: the same bits as with it."""
    def fill() -> list[torch.Tensor]:
        a, b = torch.empty(4096, dtype=dtype), torch.empty(4096, dtype=dtype)
        ti.trunc_normal_(a, std=1.0, a=-2.0, b=2.0, seed=3)
        ti.uniform_(b, -0.5, 0.5, seed=4)
        return [a, b]

    expected = fill()
    plain = torch.nextafter

    def refusing(value, other, *args, **kwargs):
        if value.element_size() == 2:
            raise RuntimeError(f'"nextafter_cpu" not implemented for {value.dtype}')
        return plain(value, other, *args, **kwargs)

    monkeypatch.setattr(torch, "nextafter", refusing)
    got = fill()
    assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))


def _generator_free_orthogonal(plain):
    """``torch.nn.init.orthogonal_`` as torch 2.1 defines it: no generator argument."""

    def orthogonal_(tensor, gain=1):
        return plain(tensor, gain)

    orthogonal_.__module__ = "torch.nn.init"
    return orthogonal_


class _Orthogonal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.empty(6, 4))
        nn.init.orthogonal_(self.w)


def test_a_recorded_init_without_generator_is_still_random(monkeypatch):
    monkeypatch.setattr(nn.init, "orthogonal_", _generator_free_orthogonal(nn.init.orthogonal_))

    def build(**kwargs) -> torch.Tensor:
        with ti.deferred() as recording:
            model = _Orthogonal()
        assert [op.random for op in recording.ops if op.name == "orthogonal_"] == [True]
        ti.materialize_(model, **kwargs)
        return model.w.detach()

    keyed = torch.empty(6, 4)
    ti.orthogonal_(keyed, seed=7, name="w")
    assert torch.equal(build(seed=7), keyed)  # the keyed twin, as with a torch whose orthogonal_ takes a generator
    assert not torch.equal(build(seed=8), keyed)
    one, two = build(generator=torch.Generator().manual_seed(1)), build(generator=torch.Generator().manual_seed(2))
    assert not torch.equal(one, two)
    assert torch.equal(one, build(generator=torch.Generator().manual_seed(1)))
    before = torch.get_rng_state()
    build(generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), before)  # a generator's replay leaves the global RNG alone


class _Tied(nn.Module):
    """A constructor that assigns one Parameter to two submodules."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.Parameter(torch.empty(3, 3))
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        self.a.weight = shared
        self.b.weight = shared
        nn.init.normal_(shared)  # through the constructor's own reference


class _WritesThroughItsReference(nn.Module):
    """A constructor that writes a Parameter through its own reference after registering it."""

    def __init__(self) -> None:
        super().__init__()
        p = nn.Parameter(torch.empty(4))
        self.p = p
        with torch.no_grad():
            p.fill_(3.0)
        q = nn.Parameter(torch.empty(2, 2))
        self.q = q
        nn.init.eye_(q)


@pytest.fixture(params=["swap_tensors", "no swap_tensors"])
def swapping(request, monkeypatch):
    if request.param == "no swap_tensors":
        if hasattr(torch.utils, "swap_tensors"):
            monkeypatch.delattr(torch.utils, "swap_tensors")
    elif not hasattr(torch.utils, "swap_tensors"):
        pytest.skip(f"torch {torch.__version__} has no torch.utils.swap_tensors")
    return request.param


def test_deferred_keeps_a_tie_made_by_the_constructor(swapping):
    original_new = nn.Parameter.__new__
    with ti.deferred():
        model = _Tied()
    assert nn.Parameter.__new__ is original_new  # the patch of an old torch is gone with the block
    assert model.a.weight is model.b.weight and model.a.weight.is_meta
    ti.materialize_(model, seed=0, strict=True)
    assert model.a.weight is model.b.weight and not model.a.weight.is_meta
    assert 0.5 < float(model.a.weight.detach().std()) < 2


def test_deferred_keeps_writes_through_the_constructors_reference(swapping):
    with ti.deferred():
        model = _WritesThroughItsReference()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left uninitialized
        ti.materialize_(model, strict=True)
    assert torch.equal(model.p, torch.full((4,), 3.0))
    assert torch.equal(model.q, torch.eye(2))


def test_parameters_made_outside_deferred_stay_real(swapping):
    with ti.deferred():
        pass
    assert not nn.Parameter(torch.ones(2)).is_meta


def test_a_dtensor_of_a_torch_before_2_5_is_refused_not_filled_as_a_plain_tensor(monkeypatch):
    """Before torch 2.5 DTensor lived in ``torch.distributed._tensor``; torchinit's sharded init uses the public
    ``torch.distributed.tensor``, so such a DTensor is refused by name, and left as it was."""
    import sys
    import types

    class PrivateDTensor(torch.Tensor):
        pass

    private = types.ModuleType("torch.distributed._tensor")
    private.DTensor = PrivateDTensor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.distributed.tensor", types.ModuleType("torch.distributed.tensor"))
    monkeypatch.setitem(sys.modules, "torch.distributed._tensor", private)
    t = torch.zeros(8).as_subclass(PrivateDTensor)
    with pytest.raises(TypeError, match=r"DTensor needs torch >= 2\.5"):
        ti.normal_(t, seed=0)
    assert torch.equal(t.as_subclass(torch.Tensor), torch.zeros(8))


LIKE_FACTORIES = [("randn_like", "default", ()), ("rand_like", "default", ()), ("randint_like", "default", (7,)),
                  ("randint_like", "low_dtype", (-3, 9))]  # fmt: skip


@pytest.mark.parametrize(("name", "overload", "bounds"), LIKE_FACTORIES)
def test_like_factories_without_a_generator_overload_draw_privately(name, overload, bounds, monkeypatch):
    """torch 2.2's ``randn_like`` and kin have no generator overload: ``private_random`` draws them as the fill
    ATen defines them by, from its private generator: the numbers the global RNG would give, which it leaves alone."""
    from torchinit.rng import private

    monkeypatch.setattr(private, "_generator_overload", lambda func: None)  # as on torch 2.2
    func = getattr(getattr(torch.ops.aten, name), overload)
    x = torch.empty(6, 5, dtype=torch.float64)
    torch.manual_seed(11)
    expected = func(x, *bounds, dtype=torch.float32)
    torch.manual_seed(11)
    before = torch.get_rng_state()
    with private.private_random() as mode:
        got = func(x, *bounds, dtype=torch.float32)
    assert torch.equal(got, expected) and got.dtype == torch.float32
    assert torch.equal(torch.get_rng_state(), before) and not mode.global_draws


def _drawing_sparse(plain):
    """``torch.nn.init.sparse_`` as torch 2.2 runs it on a meta tensor: it draws its permutations from the global
    CPU generator even there."""

    def sparse_(tensor, sparsity, std=0.01):
        torch.randperm(tensor.shape[0])
        return plain(tensor, sparsity, std=std)

    sparse_.__module__ = "torch.nn.init"
    return sparse_


def test_validating_a_recorded_init_draws_nothing_from_the_global_rng(monkeypatch):
    monkeypatch.setattr(nn.init, "sparse_", _drawing_sparse(nn.init.sparse_))

    class Sparse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.empty(8, 4))
            nn.init.sparse_(self.w, 0.5)

    torch.manual_seed(0)
    before = torch.get_rng_state()
    with ti.deferred():
        model = Sparse()
    assert torch.equal(torch.get_rng_state(), before)  # the validation drew from a private copy
    ti.materialize_(model, seed=1)
    assert int((model.w == 0).sum()) == 4 * 4  # half of each column, as sparse_ writes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("dim", [0, 1])
def test_weight_norm_on_meta_makes_the_kernels_outputs(dtype, dim):
    """torch 2.1 has no meta kernel for the weight norm and 2.2's refuses dim=0: the recording makes the outputs
    itself, with the shapes and dtypes of the CPU kernel's."""
    from torchinit.recording.mode import _weight_norm_on_meta

    v = torch.randn(4, 3, dtype=dtype)
    g = torch.randn(4, 1, dtype=dtype) if dim == 0 else torch.randn(1, 3, dtype=dtype)
    try:
        real = torch._weight_norm_interface(v, g, dim)
    except RuntimeError as err:  # torch 2.1 has no half-precision CPU kernel either
        pytest.skip(str(err))
    meta = _weight_norm_on_meta(v.to("meta"), g.to("meta"), dim)
    assert [(t.shape, t.dtype) for t in meta] == [(t.shape, t.dtype) for t in real]
    assert all(t.is_meta for t in meta)


class _SubclassedByMakeSubclass(nn.Parameter):
    """A Parameter subclass made with ``_make_subclass`` (as bitsandbytes' are): it never passes through
    ``nn.Parameter.__new__``."""

    def __new__(cls, data, requires_grad=True):
        return torch.Tensor._make_subclass(cls, data, requires_grad)


class _TiedSubclass(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        w = _SubclassedByMakeSubclass(torch.randn(4, 4))
        self.enc, self.dec = nn.Linear(4, 4), nn.Linear(4, 4)
        self.enc.weight = w
        self.dec.weight = w


def test_a_tie_of_a_parameter_made_without_parameter_new_is_kept(swapping):
    with ti.deferred():
        model = _TiedSubclass()
    assert model.enc.weight is model.dec.weight and len(list(model.parameters())) == 3
    ti.materialize_(model, seed=0, strict=True)
    assert model.enc.weight is model.dec.weight


def test_copies_and_torchinits_own_parameters_are_not_made_meta(swapping):
    """Inside deferred(): a deep copy or an unpickled copy of a real module, a module's conversion, and what
    materialize_ itself makes stay real, as on a torch with swap_tensors."""
    import copy
    import io
    import pickle

    pretrained = nn.Linear(3, 3)
    saved = pickle.dumps(pretrained)
    original_new = vars(nn.Parameter)["__new__"]
    with ti.deferred():
        assert vars(nn.Parameter)["__new__"] is original_new or swapping == "no swap_tensors"
        twin, loaded = copy.deepcopy(pretrained), pickle.loads(saved)
        converted = nn.Linear(3, 3).to(torch.float64)  # built here: meta, converted on meta
        real_converted = copy.deepcopy(pretrained).double()
        inner = nn.Linear(3, 3)
        ti.materialize_(inner, seed=0)  # inside the open block
        stored = torch.load(io.BytesIO(_saved_with_torch(pretrained)), weights_only=False)
    assert not any(p.is_meta for m in (twin, loaded, real_converted, inner, stored) for p in m.parameters())
    assert converted.weight.is_meta
    assert torch.equal(twin.weight, pretrained.weight) and torch.equal(loaded.weight, pretrained.weight)
    assert vars(nn.Parameter)["__new__"] is original_new  # the staticmethod itself is back


def _saved_with_torch(module: nn.Module) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(module, buffer)
    return buffer.getvalue()


def test_is_bool_with_numpy_hidden_or_absent(monkeypatch):
    """``is_bool`` looks NumPy up in ``sys.modules`` (traceable by torch 2.1's Dynamo): hidden (None) or absent,
    a NumPy bool cannot exist and nothing fails."""
    import sys

    from torchinit._util.checks import is_bool

    monkeypatch.setitem(sys.modules, "numpy", None)
    assert is_bool(True) and not is_bool(1.0) and not is_bool(0)
    monkeypatch.delitem(sys.modules, "numpy")
    assert is_bool(False) and not is_bool(2)


def test_the_torch_operations_stream_runs_under_a_dispatch_mode():
    """The keyed stream's torch-operations path (no compiled kernel) under a dispatch mode, as materialize_ inside
    an open deferred() runs it: torch 2.1 refuses ``tensor ^ int`` there, so the keys are 0-dim tensors."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from torchinit.rng import keyed

    class Passing(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    stream = keyed.Stream.of(0, "weight")
    plain = keyed.reference_words(stream, 3, 50)
    with Passing():
        assert torch.equal(keyed.reference_words(stream, 3, 50), plain)
    assert [int(w) for w in keyed.reference_words(keyed.Stream(0, 0), 0, 4)] == list(keyed.philox4x32_10((0, 0, 0, 0),
                                                                                                        (0, 0)))
