"""The input contract every initializer keeps, and the decorator that gives it to each scheme."""

import contextlib
import inspect
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import torchinit as ti
from conftest import gen
from torchinit._util.tensors import keeps_thread_modes
from torchinit.recording.log import recorded_call
from torchinit.rng.sampling import shardable
from torchinit.schemes.contract import FAN_KEYWORDS, SCHEMES, scheme, with_paragraph

RANDOM_INITS = [
    lambda t, **k: ti.uniform_(t, **k),
    lambda t, **k: ti.normal_(t, **k),
    lambda t, **k: ti.trunc_normal_(t, **k),
    lambda t, **k: ti.trunc_normal_std_(t, **k),
    lambda t, **k: ti.xavier_uniform_(t, **k),
    lambda t, **k: ti.xavier_normal_(t, **k),
    lambda t, **k: ti.kaiming_uniform_(t, **k),
    lambda t, **k: ti.kaiming_normal_(t, **k),
    lambda t, **k: ti.lecun_uniform_(t, **k),
    lambda t, **k: ti.lecun_normal_(t, **k),
    lambda t, **k: ti.variance_scaling_(t, **k),
    lambda t, **k: ti.variance_scaling_(t, distribution="uniform", **k),
    lambda t, **k: ti.orthogonal_(t, **k),
    lambda t, **k: ti.sparse_(t, 0.5, **k),
]
IDS = ["uniform", "normal", "trunc", "trunc_std", "xu", "xn", "ku", "kn", "lu", "ln", "vs", "vsu", "orth", "sparse"]

BAD_CALLS = [  # (call, exception, words the message must contain)
    (lambda t: ti.kaiming_normal_(t, mode="fan_inn"), ValueError, ["mode", "'fan_in'", "'fan_out'", "'fan_avg'"]),
    (lambda t: ti.kaiming_uniform_(t, nonlinearity="gleu"), ValueError, ["nonlinearity", "'relu'", "'gelu'"]),
    (lambda t: ti.variance_scaling_(t, distribution="cauchy"), ValueError,
     ["distribution", "'truncated_normal'", "'uniform'"]),
    (lambda t: ti.variance_scaling_(t, mode="avg"), ValueError, ["mode", "'fan_geo_avg'"]),
    (lambda t: ti.variance_scaling_(t, scale=-1.0), ValueError, ["scale", ">= 0"]),
    (lambda t: ti.kaiming_normal_(t[0]), ValueError, ["at least 2 dims", "in_dims"]),
    (lambda t: ti.xavier_uniform_(t[0]), ValueError, ["at least 2 dims"]),
    (lambda t: ti.normal_(t, std=-1.0), ValueError, ["std", ">= 0"]),
    (lambda t: ti.trunc_normal_(t, std=-0.1), ValueError, ["std"]),
    (lambda t: ti.trunc_normal_(t, a=1.0, b=1.0), ValueError, ["a must be less than b"]),
    (lambda t: ti.trunc_normal_(t, a=2.0, b=-2.0), ValueError, ["a must be less than b"]),
    (lambda t: ti.uniform_(t, 1.0, 0.0), ValueError, ["a must be less than b"]),
    (lambda t: ti.sparse_(t, 1.0), ValueError, ["sparsity", "[0, 1)"]),
    (lambda t: ti.sparse_(t, -0.1), ValueError, ["sparsity", "[0, 1)"]),
    (lambda t: ti.sparse_(t, 0.1, std=-1.0), ValueError, ["std"]),
    (lambda t: ti.normal_(t, mean=float("nan")), ValueError, ["mean", "NaN"]),
    (lambda t: ti.orthogonal_(t[0]), ValueError, ["at least 2 dims"]),
    (lambda t: ti.eye_(t[None]), ValueError, ["2 dims"]),
    (lambda t: ti.dirac_(t), ValueError, ["3, 4 or 5 dims"]),
    (lambda t: ti.normal_(t, std="1"), TypeError, ["std", "real number"]),
    (lambda t: ti.kaiming_normal_(t, in_dims=5, out_dims=0), ValueError, ["in_dims", "out of range"]),
]


@pytest.mark.parametrize("call,exc,words", BAD_CALLS)
def test_clear_errors_leave_tensor_unchanged(call, exc, words):
    t = torch.randn(6, 8, generator=gen())
    before = t.clone()
    with pytest.raises(exc) as info:
        call(t)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert torch.equal(t, before)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("init", RANDOM_INITS, ids=IDS)
def test_integer_and_bool_tensors_rejected(init, dtype):
    t = torch.ones(6, 8, dtype=dtype)
    with pytest.raises(TypeError, match=r"tensor must have a .*floating-point.* dtype; got torch\."):
        init(t)
    assert bool((t == 1).all())


def test_integer_numpy_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        ti.normal_(np.zeros((3, 3), dtype=np.int64))


@pytest.mark.parametrize("init", RANDOM_INITS, ids=IDS)
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 3, 3, 3)])
def test_zero_element_is_noop(init, shape):
    t = torch.empty(shape)
    # the kaiming functions say so, as torch.nn.init's do; the others are silent
    expected = pytest.warns(UserWarning, match="zero-element") if RANDOM_INITS.index(init) in (6, 7) else silent()
    with expected:
        assert init(t) is t


def test_zero_element_fills_and_one_dim():
    for f in (ti.zeros_, ti.ones_, ti.eye_, lambda t: ti.constant_(t, 2.0)):
        t = torch.empty(0, 4)
        assert f(t) is t
    with pytest.warns(UserWarning, match="zero-element"):
        t = torch.empty(0, 4)
        assert ti.kaiming_normal_(t) is t
    with pytest.warns(UserWarning, match="zero-element"):
        assert ti.kaiming_normal_(torch.empty(0)).numel() == 0


@contextlib.contextmanager
def silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("init", [*RANDOM_INITS, ti.zeros_, ti.eye_], ids=[*IDS, "zeros", "eye"])
def test_meta_tensors_returned_unchanged(init):
    t = torch.empty(6, 8, device="meta")
    out = init(t)
    assert out is t and t.is_meta


@pytest.mark.parametrize("init", RANDOM_INITS, ids=IDS)
def test_parameters_get_no_autograd_history(init):
    p = nn.Parameter(torch.zeros(6, 8))
    out = init(p)
    assert out is p and p.requires_grad and p.grad_fn is None
    assert bool((p != 0).any())
    p.sum().backward()  # still a leaf
    assert p.grad is not None


@pytest.mark.parametrize("init", RANDOM_INITS, ids=IDS)
def test_noncontiguous_views_write_through(init):
    base = torch.zeros(8, 12)
    view = base[:, ::2].t()  # (6, 8), non-contiguous
    assert not view.is_contiguous()
    init(view, generator=gen())
    assert bool((base[:, 1::2] == 0).all())
    assert bool((base[:, ::2] != 0).any())
    assert torch.equal(base[:, ::2].t(), view)


@pytest.mark.parametrize("init", RANDOM_INITS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_in_place_zero_copy(init, dtype):
    arr = np.zeros((6, 8), dtype=dtype)
    out = init(arr, generator=gen())
    assert out is arr
    assert np.any(arr != 0)


def test_numpy_matches_torch_values():
    arr = np.zeros((6, 8), dtype=np.float32)
    ti.kaiming_uniform_(arr, generator=gen(3))
    t = ti.kaiming_uniform_(torch.zeros(6, 8), generator=gen(3))
    assert np.array_equal(arr, t.numpy())
    assert ti.fans(arr) == (8, 6)


def test_non_tensor_rejected():
    with pytest.raises(TypeError, match=r"tensor must be a torch.Tensor or a NumPy array"):
        ti.normal_([1.0, 2.0])
    with pytest.raises(ValueError, match="read-only"):
        arr = np.zeros(3)
        arr.flags.writeable = False
        ti.normal_(arr)


# -- the scheme decorator (torchinit.schemes.contract) ---------------------------------------------------------

PUBLIC_SCHEMES = [
    "uniform_", "normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "identity_",
    "variance_scaling_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
    "lecun_uniform_", "lecun_normal_", "trunc_normal_", "trunc_normal_std_",
    "orthogonal_", "delta_orthogonal_", "hadamard_", "sparse_", "glass_",
]  # fmt: skip
CONSTANT_FILLS = ("constant_", "ones_", "zeros_")  # DTensors take torch's fill_ shard by shard: no shardable


def test_every_in_place_scheme_is_registered_by_its_public_name():
    assert sorted(SCHEMES) == sorted(PUBLIC_SCHEMES)
    for name, function in SCHEMES.items():
        assert function is getattr(ti, name) and function.__name__ == name


@pytest.mark.parametrize("name", PUBLIC_SCHEMES)
def test_scheme_wraps_recorded_call_over_shardable(name):
    """keeps_thread_modes outermost, then recorded_call, then shardable (except for constant fills), then the plain
    function; wraps keeps the name, docstring and signature at every level."""
    public = SCHEMES[name]
    layers = [public]
    while hasattr(layers[-1], "__wrapped__"):
        layers.append(layers[-1].__wrapped__)
    assert len(layers) == (3 if name in CONSTANT_FILLS else 4)
    plain = layers[-1]
    assert layers[0].__code__ is keeps_thread_modes(plain).__code__
    assert layers[1].__code__ is recorded_call(plain).__code__
    if name not in CONSTANT_FILLS:
        assert layers[2].__code__ is shardable()(plain).__code__
    assert plain.__name__ == name and plain.__doc__ == public.__doc__
    assert inspect.signature(public) == inspect.signature(plain)


def test_fan_keywords_paragraph_stands_before_the_example_once():
    for name in ("variance_scaling_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
                 "lecun_uniform_", "lecun_normal_"):
        doc = inspect.getdoc(SCHEMES[name]) or ""
        assert doc.count(inspect.cleandoc(FAN_KEYWORDS)) == 1, name
        assert doc.index("Keyword-only: ``in_dims``") < doc.index("Example:"), name


def test_with_paragraph_without_an_example_appends():
    assert with_paragraph("Summary.\n", "Shared.") == "Summary.\n\nShared.\n"


def test_a_second_scheme_of_the_same_name_is_refused():
    def uniform_(tensor):
        return tensor

    with pytest.raises(ValueError, match="already registered"):
        scheme()(uniform_)
    assert SCHEMES["uniform_"] is ti.uniform_
