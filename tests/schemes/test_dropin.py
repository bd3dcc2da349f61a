"""torchinit as a drop-in for torch.nn.init: torch's behaviours, checked against torch itself or restated.

The first part compares with ``torch.nn.init`` directly: the deprecated aliases, the zero-element
warning, case-insensitive names, NumPy scalars, and the values ``constant_`` accepts for each dtype.
The second restates the checks of torch 2.13's own ``test/nn/test_init.py`` (not shipped in the
wheel), one per behaviour, with ``import torchinit as init``: argument errors and their exception
types, the distributions (Kolmogorov-Smirnov against the exact CDF, fixed seeds, critical values from
the sample size), fans, gains, the exact values of ``eye_``/``dirac_``, orthogonality and ``sparse_``'s
zeros per column. The one documented difference: ``sparse_`` accepts tensors of more than 2 dims
(viewed as ``(size(0), numel / size(0))``, see docs/dropin.md), where torch raises ValueError.
"""

import math
import random
import string
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn.init as torch_init

import torchinit as init
from conftest import gen, ks_critical, torch_nn_init
from torchinit.schemes.deprecated import ALIASES

# ---- compared with torch.nn.init --------------------------------------------------------------

TORCH_ALIASES = sorted(
    name for name in dir(torch_init)
    if name + "_" in dir(torch_init) and callable(getattr(torch_init, name)) and not name.startswith("_")
)  # fmt: skip


def test_the_deprecated_aliases_are_torchs_list():
    assert sorted(ALIASES) == TORCH_ALIASES and len(ALIASES) == 11


@pytest.mark.parametrize("name", TORCH_ALIASES)
def test_deprecated_aliases_warn_and_call_the_function(name):
    args = {"constant": (0.5,), "sparse": (0.5,)}.get(name, ())
    shape = (3, 4, 3) if name == "dirac" else (4, 4)
    ours, theirs = torch.empty(shape), torch.empty(shape)
    torch.manual_seed(0)
    with pytest.warns(FutureWarning, match=f"{name}_") as record:
        getattr(init, name)(ours, *args)
    assert "deprecated" in str(record[0].message)
    torch.manual_seed(0)
    getattr(init, name + "_")(theirs, *args)  # the alias calls the function
    assert torch.equal(ours, theirs)
    assert name not in init.__all__  # deprecated names are not exported by `import *`


@pytest.mark.parametrize("fn", ["kaiming_uniform_", "kaiming_normal_"])
def test_zero_element_tensors_warn_as_torchs(fn):
    with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op"):
        getattr(torch_init, fn)(torch.empty(0, 1))
    with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op") as ours:
        out = getattr(init, fn)(torch.empty(0, 1))
    assert out.shape == (0, 1)
    assert ours[0].filename == __file__  # points at the caller (torch's own does from torch 2.3; 2.2's at init.py)


def test_other_functions_do_not_warn_on_zero_elements():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        init.xavier_uniform_(torch.empty(0, 3))
        init.normal_(torch.empty(0))


@pytest.mark.parametrize("mode", ["FAN_IN", "Fan_Out", "fan_in"])
def test_mode_is_case_insensitive_as_in_torch(mode):
    assert torch.equal(init.kaiming_normal_(torch.empty(8, 5), mode=mode, generator=gen(0)),
                       torch_nn_init("kaiming_normal_", torch.empty(8, 5), gen(0), mode=mode))  # fmt: skip


@pytest.mark.parametrize("name", ["ReLU", "TANH", "Leaky_ReLU", "GELU", "SiLU"])
def test_nonlinearity_names_are_case_insensitive(name):
    assert init.calculate_gain(name) == init.calculate_gain(name.lower())


@pytest.mark.parametrize("value", [np.float32(0.25), np.float64(0.25), np.int64(2), np.int32(-1)])
def test_numpy_scalars_are_numbers(value):
    std = value if value > 0 else 1.0
    assert torch.equal(init.normal_(torch.empty(10), value, std, generator=gen(1)),
                       torch.empty(10).normal_(float(value), float(std), generator=gen(1)))  # fmt: skip
    assert bool((init.constant_(torch.empty(3), value) == float(value)).all())
    assert init.calculate_gain("leaky_relu", value) == torch_init.calculate_gain("leaky_relu", float(value))


def test_constant_on_bool_and_integer_tensors():
    assert bool(init.constant_(torch.zeros(3, dtype=torch.bool), True).all())
    assert bool(init.constant_(torch.zeros(3, dtype=torch.bool), np.bool_(True)).all())
    assert init.constant_(torch.zeros(3, dtype=torch.int8), 5).tolist() == [5, 5, 5]
    assert bool((init.constant_(torch.zeros(2, dtype=torch.complex64), 1 + 2j) == 1 + 2j).all())


@pytest.mark.parametrize("dtype,val,error", [
    (torch.int8, 300, ValueError), (torch.int8, 2.5, ValueError), (torch.float16, 1e6, ValueError),
    (torch.float32, float("nan"), ValueError), (torch.float32, float("inf"), ValueError),
    (torch.float32, 10**400, ValueError), (torch.bool, 2, ValueError), (torch.float32, True, TypeError),
    (torch.float32, "1", TypeError), (torch.float32, 1j, TypeError),
])
def test_constant_rejects_what_the_dtype_cannot_hold_and_changes_nothing(dtype, val, error):
    t = torch.zeros(4, dtype=dtype)
    with pytest.raises(error, match="val"):
        init.constant_(t, val)
    assert bool((t == 0).all())


def test_numpy_integers_where_ints_are_expected():
    w = init.dirac_(torch.empty(8, 4, 3), groups=np.int64(2))
    assert torch.equal(w, init.dirac_(torch.empty(8, 4, 3), groups=2))
    assert tuple(init.fans(torch.empty(6, 4), in_dims=np.int64(0), out_dims=np.int32(1))) == (6, 4)
    assert torch.equal(init.xavier_uniform_(torch.empty(8, 6), blocks=np.int64(2), generator=gen(0)),
                       init.xavier_uniform_(torch.empty(8, 6), blocks=2, generator=gen(0)))  # fmt: skip


# ---- helpers: exact CDFs and the KS statistic (no scipy needed) ---------------------------------


def normal_cdf(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return 0.5 * torch.erfc(-(x - mean) / (std * math.sqrt(2.0)))


def uniform_cdf(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    return ((x - a) / (b - a)).clamp(0.0, 1.0)


def trunc_normal_cdf(x: torch.Tensor, mean: float, std: float, a: float, b: float) -> torch.Tensor:
    lo = 0.5 * math.erfc(-(a - mean) / (std * math.sqrt(2.0)))
    hi = 0.5 * math.erfc(-(b - mean) / (std * math.sqrt(2.0)))
    return ((normal_cdf(x, mean, std) - lo) / (hi - lo)).clamp(0.0, 1.0)


def ks_statistic(samples: torch.Tensor, cdf) -> float:
    """sup |F_n - F| of the samples (any float dtype) against ``cdf``, computed in float64."""
    x = samples.detach().reshape(-1).double().sort().values
    n = x.numel()
    f = cdf(x)
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - f
    below = f - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(above, below).max())


def assert_distributed(samples: torch.Tensor, cdf) -> None:
    d, crit = ks_statistic(samples, cdf), ks_critical(samples.numel())
    assert d < crit, f"KS statistic {d:.4g} >= critical value {crit:.4g} for {samples.numel()} samples"


def torch_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """torch's convention, restated: dim 1 inputs, dim 0 outputs, the rest receptive field."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


# ---- calculate_gain ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"]
)
def test_linear_and_conv_gains_are_one(name):
    assert init.calculate_gain(name) == 1


@pytest.mark.parametrize(
    "name, value",
    [
        ("sigmoid", 1.0),
        ("tanh", 5.0 / 3),
        ("relu", math.sqrt(2.0)),
        ("leaky_relu", math.sqrt(2.0 / (1 + 0.01**2))),
        ("selu", 0.75),
    ],
)
def test_nonlinear_gains_are_torchs_exact_values(name, value):
    assert init.calculate_gain(name) == value


@pytest.mark.parametrize(
    "slope, value",
    [(None, 1.4141428569978354), (0, 1.4142135623730951), (0.01, 1.4141428569978354), (10, 0.14071950894605836)],
)
def test_leaky_relu_gain_follows_its_slope(slope, value):
    assert init.calculate_gain("leaky_relu", slope) == value


@pytest.mark.parametrize("slope", [True, [1], {"a": "b"}])
def test_leaky_relu_slope_must_be_a_number(slope):
    with pytest.raises(ValueError):
        init.calculate_gain("leaky_relu", slope)


def test_unknown_nonlinearity_names_raise_value_error():
    rng = random.Random(2024)
    known = {"linear", "sigmoid", "tanh", "relu", "selu", "gelu", "silu", "swish", "mish", "elu", "celu", "sin"}
    for length in (2, 5, 25):
        name = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
        assert name not in known
        with pytest.raises(ValueError):
            init.calculate_gain(name)


# ---- uniform_, normal_, constant_, ones_, zeros_ ---------------------------------------------


SHAPES = [(41,), (33, 47), (7, 5, 6, 9)]


@pytest.mark.parametrize("shape", SHAPES)
def test_uniform_is_uniform_on_a_b(shape):
    a, b = -1.3, 2.9
    w = init.uniform_(torch.zeros(shape), a=a, b=b, generator=gen(1))
    assert a <= w.min() and w.max() <= b
    assert_distributed(w, lambda x: uniform_cdf(x, a, b))


@pytest.mark.parametrize("shape", SHAPES)
def test_normal_is_normal_with_mean_and_std(shape):
    mean, std = 1.7, 3.2
    w = init.normal_(torch.zeros(shape), mean=mean, std=std, generator=gen(2))
    assert_distributed(w, lambda x: normal_cdf(x, mean, std))


@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 3, 4, 5)])
def test_constant_fills_every_element(shape):
    w = init.constant_(torch.randn(shape), 6.25)
    assert torch.equal(w, torch.full(shape, 6.25))


@pytest.mark.parametrize("fn, value", [(init.ones_, 1.0), (init.zeros_, 0.0)])
@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 3, 4, 5)])
def test_ones_and_zeros_fill_every_element(fn, value, shape):
    assert torch.equal(fn(torch.randn(shape)), torch.full(shape, value))


# ---- trunc_normal_ ----------------------------------------------------------------------------


def test_trunc_normal_generator_draws_what_the_global_seed_draws():
    ours = init.trunc_normal_(torch.empty(5), generator=gen(42))
    torch.manual_seed(42)
    reference = init.trunc_normal_(torch.empty(5))
    assert torch.equal(ours, reference)
    assert bool(((ours >= -2) & (ours <= 2)).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape, mean, std, a, b",
    [
        ((43,), 0.4, 0.7, -0.5, 1.1),
        ((31, 37), -2.1, 0.05, -2.17, -2.0),
        ((5, 6, 7, 8), 2.6, 0.9, 1.0, 2.9),
    ],
)
def test_trunc_normal_within_bounds_and_distributed(dtype, shape, mean, std, a, b):
    w = init.trunc_normal_(torch.zeros(shape, dtype=dtype), mean=mean, std=std, a=a, b=b, generator=gen(3))
    lo, hi = torch.tensor(a, dtype=dtype).item(), torch.tensor(b, dtype=dtype).item()
    assert w.min().item() >= lo and w.max().item() <= hi
    assert_distributed(w, lambda x: trunc_normal_cdf(x, mean, std, a, b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_trunc_normal_low_precision_within_bounds_and_distributed(dtype):
    w = init.trunc_normal_(torch.empty(10_000, dtype=dtype), mean=0.0, std=1.0, a=-2.0, b=2.0, generator=gen(4))
    assert w.min().item() >= -2.0 and w.max().item() <= 2.0
    assert_distributed(w, lambda x: trunc_normal_cdf(x, 0.0, 1.0, -2.0, 2.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_trunc_normal_narrow_interval_far_from_the_mean(dtype):
    w = init.trunc_normal_(torch.empty(10_000, dtype=dtype), mean=0.0, std=1.0, a=2.0, b=3.0, generator=gen(5))
    assert w.min().item() >= 2.0 and w.max().item() <= 3.0
    assert_distributed(w, lambda x: trunc_normal_cdf(x, 0.0, 1.0, 2.0, 3.0))


@pytest.mark.parametrize(
    "dtype, min_unique", [(torch.float32, 5000), (torch.float64, 5000), (torch.float16, 3000), (torch.bfloat16, 1000)]
)
def test_trunc_normal_covers_the_value_space(dtype, min_unique):
    w = init.trunc_normal_(torch.empty(10_000, dtype=dtype), mean=0.0, std=1.0, a=-2.0, b=2.0, generator=gen(6))
    assert w.min().item() >= -2.0 and w.max().item() <= 2.0
    assert w.unique().numel() > min_unique
    assert not w.isinf().any() and not w.isnan().any()


@pytest.mark.filterwarnings("ignore:trunc_normal_")  # torchinit says that bounds 20 std away truncate nothing
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_trunc_normal_small_std_puts_nothing_on_the_bounds(dtype):
    w = init.trunc_normal_(torch.empty(10_000, dtype=dtype), mean=0.0, std=0.1, a=-2.0, b=2.0, generator=gen(7))
    assert int((w == -2.0).sum()) == 0 and int((w == 2.0).sum()) == 0


# ---- eye_ and dirac_ --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (2, 5), (5, 2)])
def test_eye_is_one_on_the_diagonal_and_zero_elsewhere(shape):
    w = init.eye_(torch.randn(shape))
    for i in range(shape[0]):
        for j in range(shape[1]):
            assert w[i, j].item() == (1.0 if i == j else 0.0), (i, j)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 2)])
def test_eye_rejects_tensors_that_are_not_2d(shape):
    with pytest.raises(ValueError):
        init.eye_(torch.zeros(shape))


@pytest.mark.parametrize("dims", [3, 4, 5])
@pytest.mark.parametrize("groups", [1, 2, 3])
def test_dirac_has_one_nonzero_per_kept_channel(dims, groups):
    rng = random.Random(dims * 10 + groups)
    out_per_group, k1, k2, k3 = (rng.randint(1, 5) for _ in range(4))
    inp = rng.randint(1, 5 * groups)
    shape = (out_per_group * groups, inp, k1, k2, k3)[:dims]
    w = init.dirac_(torch.randn(shape), groups)
    kept = min(out_per_group, inp) * groups
    assert torch.count_nonzero(w).item() == kept
    assert w.sum().item() == kept


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("conv, spatial", [(F.conv1d, 1), (F.conv2d, 2), (F.conv3d, 3)])
def test_dirac_conv_passes_the_input_channels_through(groups, conv, spatial):
    batch, in_c, out_c, size, k = 8, 3, 9, 5, 3
    per_group = out_c // groups
    x = torch.randn(batch, in_c, *([size] * spatial), generator=gen(8))
    w = torch.cat([torch.zeros(per_group, in_c, *([k] * spatial))] * groups)
    init.dirac_(w, groups)
    y = conv(x, w)
    inner = (slice(None), slice(None)) + (slice(1, -1),) * spatial
    for g in range(groups):
        start = per_group * g
        assert torch.equal(y[:, start : start + in_c], x[inner])  # exactly: one product by 1, the rest by 0
        assert torch.count_nonzero(y[:, start + in_c : per_group * (g + 1)]).item() == 0


@pytest.mark.parametrize("shape", [(3,), (2, 3), (1, 2, 1, 3, 2, 1)])
def test_dirac_rejects_tensors_that_are_not_3_4_or_5d(shape):
    with pytest.raises(ValueError):
        init.dirac_(torch.zeros(shape))


# ---- xavier and kaiming -----------------------------------------------------------------------

VARIANCE_FUNCTIONS = [init.xavier_uniform_, init.xavier_normal_, init.kaiming_uniform_, init.kaiming_normal_]


@pytest.mark.parametrize("fn", VARIANCE_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(), (1,), (7,)])
def test_variance_functions_reject_tensors_below_2d_with_value_error(fn, shape):
    with pytest.raises(ValueError):
        fn(torch.zeros(shape))


FAN_SHAPES = [(23, 21), (21, 24, 3, 5)]


@pytest.mark.parametrize("shape", FAN_SHAPES)
@pytest.mark.parametrize("gain", [None, 0.37, 1.8])
def test_xavier_uniform_bound_is_gain_sqrt_6_over_fan_sum(shape, gain):
    kwargs = {} if gain is None else {"gain": gain}
    w = init.xavier_uniform_(torch.zeros(shape), generator=gen(9), **kwargs)
    fan_in, fan_out = torch_fans(shape)
    bound = (gain or 1.0) * math.sqrt(3.0) * math.sqrt(2.0 / (fan_in + fan_out))
    assert w.abs().max().item() <= bound
    assert_distributed(w, lambda x: uniform_cdf(x, -bound, bound))


@pytest.mark.parametrize("shape", FAN_SHAPES)
@pytest.mark.parametrize("gain", [None, 0.37, 1.8])
def test_xavier_normal_std_is_gain_sqrt_2_over_fan_sum(shape, gain):
    kwargs = {} if gain is None else {"gain": gain}
    w = init.xavier_normal_(torch.zeros(shape), generator=gen(10), **kwargs)
    fan_in, fan_out = torch_fans(shape)
    std = (gain or 1.0) * math.sqrt(2.0 / (fan_in + fan_out))
    assert_distributed(w, lambda x: normal_cdf(x, 0.0, std))


@pytest.mark.parametrize("shape", FAN_SHAPES)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("a", [None, 0.23, 1.9])
def test_kaiming_uniform_bound_follows_slope_and_mode(shape, mode, a):
    kwargs = {"mode": mode} if a is None else {"a": a, "mode": mode}
    w = init.kaiming_uniform_(torch.zeros(shape), generator=gen(11), **kwargs)
    fan_in, fan_out = torch_fans(shape)
    n = fan_in if mode == "fan_in" else fan_out
    bound = math.sqrt(3.0) * math.sqrt(2.0 / ((1 + (a or 0) ** 2) * n))
    assert w.abs().max().item() <= bound
    assert_distributed(w, lambda x: uniform_cdf(x, -bound, bound))


@pytest.mark.parametrize("shape", FAN_SHAPES)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("a", [None, 0.23, 1.9])
def test_kaiming_normal_std_follows_slope_and_mode(shape, mode, a):
    kwargs = {"mode": mode} if a is None else {"a": a, "mode": mode}
    w = init.kaiming_normal_(torch.zeros(shape), generator=gen(12), **kwargs)
    fan_in, fan_out = torch_fans(shape)
    n = fan_in if mode == "fan_in" else fan_out
    std = math.sqrt(2.0 / ((1 + (a or 0) ** 2) * n))
    assert_distributed(w, lambda x: normal_cdf(x, 0.0, std))


# ---- sparse_ ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), (1,)])
def test_sparse_rejects_1d_tensors_with_value_error(shape):
    with pytest.raises(ValueError):
        init.sparse_(torch.zeros(shape), 0.4)


def test_sparse_accepts_more_than_2_dims_the_documented_difference():
    """torch raises ValueError for a 3-D tensor; torchinit views it as (size(0), numel / size(0))."""
    w = init.sparse_(torch.zeros(6, 2, 3), 0.5, generator=gen(13))
    columns = w.reshape(6, -1)
    assert ((columns == 0).sum(0) >= 3).all()


@pytest.mark.parametrize("std", [None, 0.013, 0.17])
@pytest.mark.parametrize("sparsity", [0.1, 0.17])
def test_sparse_zeros_per_column_and_normal_nonzeros(std, sparsity):
    rows, cols = 33, 35
    kwargs = {} if std is None else {"std": std}
    w = init.sparse_(torch.zeros(rows, cols), sparsity=sparsity, generator=gen(14), **kwargs)
    assert ((w == 0).sum(0) >= math.ceil(sparsity * rows)).all()
    assert_distributed(w[w != 0], lambda x: normal_cdf(x, 0.0, 0.01 if std is None else std))


# ---- orthogonal_ ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 4), (4, 3), (20, 2, 3, 4), (2, 3, 4, 5)])
@pytest.mark.parametrize("gain", [None, 0.31, 1.7])
def test_orthogonal_rows_or_columns_are_orthonormal_times_gain(shape, gain):
    t = torch.zeros(shape)
    w = init.orthogonal_(t, generator=gen(15)) if gain is None else init.orthogonal_(t, gain=gain, generator=gen(15))
    rows, cols = shape[0], math.prod(shape[1:])
    m = w.reshape(rows, cols)
    gram = m.T @ m if rows > cols else m @ m.T
    expected = torch.eye(min(rows, cols)) * (1.0 if gain is None else gain) ** 2
    scale = max(1.0, (1.0 if gain is None else gain) ** 2)  # float32 rounding grows with the entries
    torch.testing.assert_close(gram, expected, atol=1e-6 * scale, rtol=0)


# ---- the suffixed names -----------------------------------------------------------------------


def test_suffixed_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        init.normal_(torch.randn(3, 3))
