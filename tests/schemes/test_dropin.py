"""Drop-in behaviours of torch.nn.init that torchinit keeps (issue 12, item 4), each checked against torch itself."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.init as tinit

import torchinit as ti
from torchinit.schemes.deprecated import ALIASES

from conftest import gen

TORCH_ALIASES = sorted(name for name in dir(tinit) if name + "_" in dir(tinit) and callable(getattr(tinit, name))
                       and not name.startswith("_"))  # fmt: skip


def test_the_deprecated_aliases_are_torchs_list():
    assert TORCH_ALIASES == sorted(ALIASES) and len(ALIASES) == 11


@pytest.mark.parametrize("name", TORCH_ALIASES)
def test_deprecated_aliases_warn_and_call_the_function(name):
    args = {"constant": (0.5,), "sparse": (0.5,)}.get(name, ())
    shape = (3, 4, 3) if name == "dirac" else (4, 4)
    ours, theirs = torch.empty(shape), torch.empty(shape)
    torch.manual_seed(0)
    with pytest.warns(FutureWarning, match=f"{name}_"):
        getattr(ti, name)(ours, *args)
    torch.manual_seed(0)
    getattr(ti, name + "_")(theirs, *args)  # the alias calls the function
    assert torch.equal(ours, theirs)
    assert name not in ti.__all__  # deprecated names are not exported by `import *`


@pytest.mark.parametrize("fn", ["kaiming_uniform_", "kaiming_normal_"])
def test_zero_element_tensors_warn_as_torchs(fn):
    with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op") as record:
        getattr(tinit, fn)(torch.empty(0, 1))
    with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op") as ours:
        getattr(ti, fn)(torch.empty(0, 1))
    assert ours[0].filename == __file__ and record[0].filename == __file__  # points at the caller


def test_other_functions_do_not_warn_on_zero_elements():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ti.xavier_uniform_(torch.empty(0, 3))
        ti.normal_(torch.empty(0))


@pytest.mark.parametrize("mode", ["FAN_IN", "Fan_Out", "fan_in"])
def test_mode_is_case_insensitive_as_in_torch(mode):
    assert torch.equal(ti.kaiming_normal_(torch.empty(8, 5), mode=mode, generator=gen(0)),
                       tinit.kaiming_normal_(torch.empty(8, 5), mode=mode, generator=gen(0)))  # fmt: skip


@pytest.mark.parametrize("name", ["ReLU", "TANH", "Leaky_ReLU", "GELU", "SiLU"])
def test_nonlinearity_names_are_case_insensitive(name):
    assert ti.calculate_gain(name) == ti.calculate_gain(name.lower())


@pytest.mark.parametrize("value", [np.float32(0.25), np.float64(0.25), np.int64(2), np.int32(-1)])
def test_numpy_scalars_are_numbers(value):
    assert torch.equal(ti.normal_(torch.empty(10), value, value if value > 0 else 1.0, generator=gen(1)),
                       torch.empty(10).normal_(float(value), float(value) if value > 0 else 1.0, generator=gen(1)))  # fmt: skip
    assert bool((ti.constant_(torch.empty(3), value) == float(value)).all())
    assert ti.calculate_gain("leaky_relu", value) == tinit.calculate_gain("leaky_relu", float(value))


def test_constant_on_bool_and_integer_tensors():
    assert bool(ti.constant_(torch.zeros(3, dtype=torch.bool), True).all())
    assert bool(ti.constant_(torch.zeros(3, dtype=torch.bool), np.bool_(True)).all())
    assert ti.constant_(torch.zeros(3, dtype=torch.int8), 5).tolist() == [5, 5, 5]
    assert bool((ti.constant_(torch.zeros(2, dtype=torch.complex64), 1 + 2j) == 1 + 2j).all())


@pytest.mark.parametrize("dtype,val,error", [
    (torch.int8, 300, ValueError), (torch.int8, 2.5, ValueError), (torch.float16, 1e6, ValueError),
    (torch.float32, float("nan"), ValueError), (torch.float32, float("inf"), ValueError),
    (torch.float32, 10**400, ValueError), (torch.bool, 2, ValueError), (torch.float32, True, TypeError),
    (torch.float32, "1", TypeError), (torch.float32, 1j, TypeError),
])
def test_constant_rejects_what_the_dtype_cannot_hold_and_changes_nothing(dtype, val, error):
    t = torch.zeros(4, dtype=dtype)
    with pytest.raises(error, match="val"):
        ti.constant_(t, val)
    assert bool((t == 0).all())


def test_numpy_integers_where_ints_are_expected():
    w = ti.dirac_(torch.empty(8, 4, 3), groups=np.int64(2))
    assert torch.equal(w, ti.dirac_(torch.empty(8, 4, 3), groups=2))
    assert tuple(ti.fans(torch.empty(6, 4), in_dims=np.int64(0), out_dims=np.int32(1))) == (6, 4)
    assert torch.equal(ti.xavier_uniform_(torch.empty(8, 6), blocks=np.int64(2), generator=gen(0)),
                       ti.xavier_uniform_(torch.empty(8, 6), blocks=2, generator=gen(0)))  # fmt: skip
