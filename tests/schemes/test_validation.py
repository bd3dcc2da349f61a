"""Validation before any write: shared-memory views, generators, overflow, out-of-domain values.

Every case asserts the error type, that the message names the argument, and that the tensor
(and, for views, its base) is bit-for-bit unchanged.
"""

import math

import pytest
import torch

import torchinit as ti
from torchinit._util.checks import overlapping

WRITERS = {
    "uniform_": ti.uniform_, "normal_": ti.normal_, "trunc_normal_": ti.trunc_normal_,
    "trunc_normal_std_": ti.trunc_normal_std_, "constant_": lambda t: ti.constant_(t, 0.5), "ones_": ti.ones_,
    "zeros_": ti.zeros_, "eye_": ti.eye_, "identity_": ti.identity_, "xavier_uniform_": ti.xavier_uniform_,
    "kaiming_normal_": ti.kaiming_normal_, "lecun_uniform_": ti.lecun_uniform_,
    "variance_scaling_": ti.variance_scaling_, "orthogonal_": ti.orthogonal_, "hadamard_": ti.hadamard_,
    "sparse_": lambda t: ti.sparse_(t, 0.5), "glass_": ti.glass_, "delta_orthogonal_": ti.delta_orthogonal_,
    "dirac_": ti.dirac_,
}  # fmt: skip
CONV = {"delta_orthogonal_", "dirac_"}


def expanded(name):
    base = torch.arange(4.0).reshape(4, 1, 1, 1) if name in CONV else torch.arange(4.0).reshape(4, 1)
    view = base.expand(4, 6, 3, 3) if name in CONV else base.expand(4, 6)
    return base, view


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_stride_zero_views_are_refused_and_the_base_is_unchanged(name):
    base, view = expanded(name)
    before = base.clone()
    with pytest.raises(ValueError, match="share memory"):
        WRITERS[name](view)
    assert torch.equal(base, before)


def test_overlapping_as_strided_views_are_refused():
    base = torch.zeros(10)
    for view in (base.as_strided((3, 3), (1, 1)), base.as_strided((2, 3), (3, 2)), base.as_strided((4,), (0,))):
        assert overlapping(view)
        with pytest.raises(ValueError, match="tensor"):
            ti.normal_(view)
    assert bool((base == 0).all())
    for fine in (base.view(2, 5), base.view(2, 5).t(), base[::2], base.as_strided((2, 2), (1, 2)), base[:1].expand(1)):
        assert not overlapping(fine)


def test_reading_fans_of_an_expanded_view_is_fine():
    assert tuple(ti.fans(torch.zeros(3, 1).expand(3, 5))) == (5, 3)


@pytest.mark.parametrize("call", [
    lambda t, g: ti.uniform_(t, generator=g), lambda t, g: ti.normal_(t, generator=g),
    lambda t, g: ti.trunc_normal_(t, generator=g), lambda t, g: ti.trunc_normal_std_(t, generator=g),
    lambda t, g: ti.kaiming_uniform_(t, generator=g), lambda t, g: ti.xavier_normal_(t, generator=g),
    lambda t, g: ti.variance_scaling_(t, generator=g), lambda t, g: ti.orthogonal_(t, generator=g),
    lambda t, g: ti.sparse_(t, 0.5, generator=g), lambda t, g: ti.glass_(t, generator=g),
])  # fmt: skip
@pytest.mark.parametrize("generator", [0, "seed", torch.default_generator.get_state()])
def test_a_generator_of_the_wrong_type_is_a_type_error(call, generator):
    t = torch.zeros(6, 4)
    with pytest.raises(TypeError, match="generator"):
        call(t, generator)
    assert bool((t == 0).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA generator")
def test_a_generator_on_another_device_is_a_value_error():  # pragma: no cover - no GPU here
    t = torch.zeros(6, 4)
    with pytest.raises(ValueError, match="generator"):
        ti.normal_(t, generator=torch.Generator(device="cuda"))


F32_MAX = torch.finfo(torch.float32).max
OVERFLOWS = [
    ("identity_ gain", lambda t: ti.identity_(t, gain=1e39), "gain"),
    ("hadamard_ gain", lambda t: ti.hadamard_(t, gain=1e39), "gain"),
    ("orthogonal_ gain", lambda t: ti.orthogonal_(t, gain=1e39), "gain"),
    ("glass_ gain", lambda t: ti.glass_(t, gain=1e39), "gain"),
    ("uniform_ span", lambda t: ti.uniform_(t, -0.9 * F32_MAX, 0.9 * F32_MAX), "a, b"),
    ("uniform_ bound", lambda t: ti.uniform_(t, 0.0, 1e39), "a, b"),
    ("normal_ std", lambda t: ti.normal_(t, 0.0, 1e38), "std"),
    ("normal_ mean", lambda t: ti.normal_(t, 3.3e38, 1e37), "mean"),
    ("trunc_normal_std_ std", lambda t: ti.trunc_normal_std_(t, std=1e150), "std"),
    ("trunc_normal_ unbounded", lambda t: ti.trunc_normal_(t, std=1e38, a=-math.inf, b=math.inf), "std"),
    ("variance_scaling_ scale", lambda t: ti.variance_scaling_(t, scale=1e300), "scale"),
    ("xavier_uniform_ gain", lambda t: ti.xavier_uniform_(t, gain=1e39), "gain"),
    ("sparse_ std", lambda t: ti.sparse_(t, 0.5, std=1e38), "std"),
]  # fmt: skip


@pytest.mark.parametrize("label,call,name", OVERFLOWS, ids=[o[0] for o in OVERFLOWS])
def test_arguments_that_would_overflow_the_dtype_are_refused_before_writing(label, call, name):
    t = torch.zeros(8, 8)
    with pytest.raises(ValueError, match=name):
        call(t)
    assert bool((t == 0).all())


def test_the_same_arguments_are_fine_in_a_wider_dtype():
    assert bool(torch.isfinite(ti.identity_(torch.zeros(4, 4, dtype=torch.float64), gain=1e39)).all())
    assert bool(torch.isfinite(ti.normal_(torch.zeros(64, dtype=torch.float64), 0.0, 1e38)).all())
    with pytest.raises(ValueError, match="gain"):
        ti.orthogonal_(torch.zeros(4, 4, dtype=torch.float16), gain=1e5)  # fp16's largest finite is 65504


@pytest.mark.parametrize("k", [1e-300, 1e-12, 1e-6, 1e-3, 0.3])
def test_truncated_std_factor_for_tiny_k(k):
    # the truncated normal tends to the uniform on [-k, k] (std k/sqrt(3)) with relative error ~k^2/10
    assert ti.truncated_std_factor(k) == pytest.approx(k / math.sqrt(3), rel=max(k * k / 5, 1e-14))
    w = ti.trunc_normal_std_(torch.empty(200_000, dtype=torch.float64), std=0.02, k=k,
                             generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(w).all())
    assert float(w.std()) == pytest.approx(0.02, rel=0.01)


def test_zero_std_fills_the_mean_rounded_into_the_bounds():
    # bf16 near 1 steps by 2**-7: the mean rounds to 1.0, outside [1.002, 1.008], whose only bf16 value is 1.0078125
    t = ti.trunc_normal_(torch.empty(5, dtype=torch.bfloat16), mean=1.0035, std=0.0, a=1.002, b=1.008)
    assert t.tolist() == [1.0078125] * 5


# ---- the failure classes the fuzz found (tests/schemes/test_fuzz.py), one regression each -------------------------


def test_an_inference_tensor_outside_inference_mode_is_refused_before_writing():
    with torch.inference_mode():
        t = torch.zeros(3, 3)
    for call in (ti.ones_, ti.normal_, ti.trunc_normal_, ti.orthogonal_, lambda x: ti.constant_(x, 2.0)):
        with pytest.raises(ValueError, match="inference_mode"):
            call(t)
    assert bool((t == 0).all())


def test_a_nonlinearity_that_is_not_elementwise_is_a_type_error():
    with pytest.raises(TypeError, match="nonlinearity"):
        ti.kaiming_uniform_(torch.zeros(3, 3), nonlinearity=torch.nn.Linear(3, 3))


@pytest.mark.parametrize("a", [1e308, -1e308, 10**400])
def test_a_huge_leaky_relu_slope(a):
    t = torch.zeros(3, 3)
    try:
        ti.kaiming_uniform_(t, a=a)  # gain sqrt(2 / (1 + a^2)) -> 0: zeros, finite
    except ValueError as err:
        assert "a" in str(err)
    assert bool(torch.isfinite(t).all())


def test_numpy_k_is_converted_before_use():
    np = pytest.importorskip("numpy")
    w = ti.trunc_normal_std_(torch.empty(10_000, dtype=torch.float64), std=0.5, k=np.float32(1.5),
                             generator=torch.Generator().manual_seed(0))
    bound = 1.5 * 0.5 / ti.truncated_std_factor(1.5)
    assert float(w.abs().max()) <= bound


def test_identity_gain_must_fit_an_integer_dtype():
    t = torch.ones(3, 3, dtype=torch.int8)
    for gain in (1e4, 0.5):
        with pytest.raises(ValueError, match="gain"):
            ti.identity_(t, gain=gain)
        assert bool((t == 1).all())
    assert ti.identity_(t, gain=3).tolist() == [[3, 0, 0], [0, 3, 0], [0, 0, 3]]


def test_numpy_extreme_integers_in_constant():
    np = pytest.importorskip("numpy")
    t = torch.zeros(3, dtype=torch.float16)
    with pytest.raises(ValueError, match="val"):
        ti.constant_(t, np.int64(-2**63))
    assert bool((t == 0).all())
    assert ti.constant_(torch.zeros(2, dtype=torch.int64), np.int64(-2**63)).tolist() == [-2**63] * 2


@pytest.mark.parametrize("k", [1e-200, 1e-162, 1e-8])
def test_complex_truncated_factor_for_tiny_k(k):
    assert ti.truncated_std_factor(k) > 0
    from torchinit.schemes.truncnorm import complex_truncated_std_factor

    assert complex_truncated_std_factor(k) == pytest.approx(k / math.sqrt(2), rel=1e-12)
    z = ti.trunc_normal_std_(torch.zeros(1000, dtype=torch.complex64), std=0.5, k=k)
    assert bool(torch.isfinite(torch.view_as_real(z)).all())


def test_complex_truncated_normal_with_a_huge_k_stays_finite():
    z = ti.trunc_normal_std_(torch.zeros(1000, dtype=torch.complex64), std=1e30, k=1e16)
    assert bool(torch.isfinite(torch.view_as_real(z)).all())


def test_a_uniform_span_beyond_the_largest_double_is_refused():
    t = torch.zeros(2, 4, dtype=torch.float64)  # bound sqrt(3) * 1e308 / ... : the span overflows a double
    with pytest.raises(ValueError, match="gain"):
        ti.xavier_uniform_(t, gain=1e308)
    with pytest.raises(ValueError, match="gain"):
        ti.XavierUniform(gain=1e308, out_dims=())(torch.zeros(1, 1, 1, dtype=torch.float64))
    assert bool((t == 0).all())
