"""Fuzz of every public initializer against the all-or-nothing contract (Hypothesis).

Targets: every function of ``torchinit.__all__`` whose name ends in ``_`` (except ``lsuv_`` and
``materialize_``, which take a model, not a tensor) and every initializer object
(``torchinit.Uniform``, ...), applied by ``.init(tensor, generator=...)`` and, if its instances
are callable, by calling them. Each call gets a generated target: a shape (0-D to 5-D, zero-size
included, at most MAX_NUMEL elements), a dtype (float64/32, bfloat16, float16, complex64, int64,
int8, bool) and a kind (contiguous, transposed, sliced with a step and an offset, expanded with
stride 0, meta, nn.Parameter called with and without ``no_grad``, made under ``inference_mode``,
a list, NumPy arrays: contiguous, transposed, sliced, reversed, read-only); and arguments for
the real parameters read from its signature, each typical (any accepted number type) or hostile
(extremes, NaN/inf, wrong types, junk names), with none, one, two or all of them hostile.

The contract, checked for every call by :func:`check_contract`:

1. The call returns, or raises ``ValueError`` or ``TypeError``. Any other exception is a
   failure, and so is a call running longer than ``HANG_SECONDS``. Warnings: torchinit's own
   documented ``UserWarning``s (trunc_normal_'s "nothing is truncated", kaiming's
   "zero-element tensors") are allowed; any other warning is a failure.
2. A call that raises leaves the target bit for bit unchanged: every byte of the storage
   behind it (a view's whole base), so NaN, -0.0 and NaN payloads compare exactly.
3. A call that returns
   a. writes nothing outside the target (a view's base keeps its other elements, bit for bit);
   b. leaves only finite values in a floating or complex target. **Rule for non-finite
      results: no argument legitimately asks for one.** Every numeric argument of these
      initializers is validated finite (NaN and +-inf are rejected), except trunc_normal_'s
      ``a``/``b``, whose results are clamped to the dtype's finite range. So a success that
      leaves NaN or +-inf is always a failure, also when a finite argument overflows the dtype
      (``std=1e39`` on float32, ``gain=1e308`` on float16): such a call must raise ValueError,
      as ``constant_`` does for a ``val`` outside the dtype's range. The report tags these
      "an argument exceeds the dtype's range" to tell them from the rest. Initial values
      include NaN and inf, so a success that skips an element shows here too;
   c. keeps the documented range: ``uniform_`` in ``[a, b]`` (one rounding to the dtype of
      slack: its docs promise no more), ``trunc_normal_`` exactly in ``[a, b]`` (documented
      after rounding), ``trunc_normal_std_`` in ``mean +- k std / c(k)`` (one rounding of slack),
      ``constant_`` equal to ``val`` in the dtype, ``zeros_`` 0, ``ones_`` 1 (real and
      imaginary parts alike for complex);
   d. leaves an ``nn.Parameter`` a leaf that requires grad, with no ``grad_fn``.

Violations are collected, not raised at once: each target's test runs its whole budget,
then fails with one report of every failure class (target, outcome, exception and message
pattern) with its count, the tensor kinds and dtypes it was seen with, and the simplest
reproducing snippet. ``TORCHINIT_FUZZ_REPORT=path.json`` also writes every class to a file.
Profiles (``TORCHINIT_FUZZ``): see ``fuzz_profiles.py``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import re
import signal
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from fuzz_profiles import MIN_DEFAULT_CALLS, PROFILE, TOTAL_CALLS, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torchinit
from torchinit.schemes.gains import ACTIVATIONS, TORCH_NONLINEARITIES
from torchinit.schemes.variance import DISTRIBUTIONS, MODES

pytestmark = pytest.mark.slow  # 11,025 fuzz calls: about 30 s

# ---- targets -------------------------------------------------------------------------------------------

#: Public functions ending in ``_`` that take a model and data, not a tensor: not fuzzed here.
MODEL_FUNCTIONS = {"lsuv_", "materialize_"}

FUNCTIONS = sorted(
    name for name in torchinit.__all__
    if name.endswith("_") and inspect.isfunction(getattr(torchinit, name)) and name not in MODEL_FUNCTIONS
)  # fmt: skip
OBJECTS = sorted(
    name for name in torchinit.__all__
    if isinstance(getattr(torchinit, name), type)
    and issubclass(getattr(torchinit, name), torchinit.Initializer)
    and "function" in vars(getattr(torchinit, name))
)  # fmt: skip
N_TARGETS = len(FUNCTIONS) + len(OBJECTS)

#: Seconds after which one call counts as hung.
HANG_SECONDS = 10.0
#: The largest target generated (elements), so the fuzz stays fast.
MAX_NUMEL = 4096

#: Calls made per target (for objects, constructing it and calling ``.init`` is one call).
CALLS: Counter[str] = Counter()
#: How the calls ended, per target: (target, "returned" or the exception's type name).
OUTCOMES: Counter[tuple[str, str]] = Counter()
#: Failure classes per target: key -> FailureClass.
FAILURES: dict[str, dict[tuple, FailureClass]] = {}

# ---- values of arguments ---------------------------------------------------------------------------------
#
# Every parameter has typical values (what real code passes, in every accepted number type) and hostile
# ones (extremes, NaN/inf, wrong types, junk names). Each call makes none, one, two or all of its
# parameters hostile (see `arguments_for`), so valid calls, single faults and pile-ups all occur.


@dataclass(frozen=True)
class Lit:
    """An argument that is an object without a usable repr: made fresh per call, written as ``code``."""

    make: Callable[[], Any]
    code: str

    def __repr__(self) -> str:
        return self.code


def resolve(value: Any) -> Any:
    return value.make() if isinstance(value, Lit) else value


def code_of(value: Any) -> str:
    """Python source that rebuilds ``value`` (for the reproducing snippets)."""
    if isinstance(value, Lit):
        return value.code
    if isinstance(value, float):
        if math.isnan(value):
            return "float('nan')"
        if math.isinf(value):
            return "float('inf')" if value > 0 else "-float('inf')"
        return repr(value)
    if isinstance(value, np.generic):
        return f"np.{type(value).__name__}({code_of(value.item())})"
    if isinstance(value, tuple):
        inner = ", ".join(code_of(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(code_of(v) for v in value) + "]"
    if value is ...:
        return "..."
    if isinstance(value, str) and len(value) > 40 and len(set(value)) == 1:
        return f"{value[0]!r} * {len(value)}"
    return repr(value)


def tensor_scalar(v: Any) -> Lit:
    return Lit(lambda: torch.tensor(v), f"torch.tensor({v!r})")


@dataclass(frozen=True)
class Param:
    """The values a parameter is fuzzed with."""

    typical: st.SearchStrategy
    hostile: st.SearchStrategy


NAN, INF = float("nan"), float("inf")
#: Extremes for any real parameter: huge, beyond float32, subnormal, signed zeros, NaN, inf, beyond float.
EXTREME_REALS = [1e308, -1e308, 1e39, -1e39, 1e-310, -1e-310, 0.0, -0.0, NAN, INF, -INF, 10**400, -(10**400)]
#: The extremes in other number types (NumPy scalars, one-element tensors).
EXTREME_OTHER_NUMBERS = [
    np.float32(NAN), np.float32(INF), np.float32(3e38), np.float32(1e-45), np.float64(1e308), np.float64(-1e308),
    np.float64(NAN), np.float16(65504), np.int64(2**62), np.int64(-(2**63)), np.uint64(2**64 - 1),
    tensor_scalar(NAN), tensor_scalar(1e308),
    Lit(lambda: torch.tensor(1e30, dtype=torch.float64), "torch.tensor(1e30, dtype=torch.float64)"),
]  # fmt: skip
#: Not a number at all, or not a real one, or not one value.
WRONG_TYPES: list[Any] = [
    "1.0", "", None, [1.0], (0.5,), {}, 1 + 1j, b"1", True, Lit(lambda: object, "object"),
    Lit(lambda: torch.tensor([1.0, 2.0]), "torch.tensor([1.0, 2.0])"),
    Lit(lambda: torch.tensor(True), "torch.tensor(True)"),
    Lit(lambda: torch.tensor(1 + 1j), "torch.tensor(1 + 1j)"), Lit(lambda: np.array([0.5]), "np.array([0.5])"),
]  # fmt: skip


def other_number_forms(values: tuple) -> list:
    """``values`` as NumPy scalars and one-element tensors (accepted wherever a number is)."""
    forms: list = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, int) and -(2**63) <= v < 2**63:
            forms += [np.int64(v), tensor_scalar(v)]
        elif isinstance(v, float):
            forms += [np.float32(v), np.float64(v), tensor_scalar(v)]
    return forms


def real_param(*typical: Any) -> Param:
    """A real parameter: typical values in any number type; hostile extremes and wrong types."""
    return Param(
        typical=st.one_of(
            st.sampled_from(typical), st.floats(-10.0, 10.0), st.sampled_from(other_number_forms(typical))
        ),
        hostile=st.one_of(st.sampled_from(EXTREME_REALS), st.sampled_from(EXTREME_REALS), st.floats(),
                          st.sampled_from(EXTREME_OTHER_NUMBERS), st.sampled_from(WRONG_TYPES)),
    )


def int_param(*typical: int) -> Param:
    """A positive-int parameter (groups, blocks)."""
    return Param(
        typical=st.one_of(st.sampled_from(typical), st.integers(1, 8)),
        hostile=st.sampled_from([0, -1, 10**30, -(10**30), 2**63, 2.0, 1.5, True, np.int64(2), "2", None, NAN, [2]]),
    )


def name_param(valid: tuple[str, ...], junk: list[Any]) -> Param:
    """A name parameter (mode, nonlinearity, distribution): valid and re-cased names; junk and wrong types."""
    recased = [v.upper() for v in valid] + [v.title() for v in valid]
    wrong = ["", " ", "none", "__init__", "ｒｅｌｕ", "x" * 1000, None, 0, 1.5, b"relu", [valid[0]],
             Lit(lambda: str, "str")]  # fmt: skip
    return Param(
        typical=st.one_of(st.sampled_from(valid), st.sampled_from(recased)), hostile=st.sampled_from(junk + wrong)
    )


dims_param = Param(
    typical=st.sampled_from([None, None, ..., ..., 0, 1, -1, (0,), (1,), (1, 2), [0, 1]]),
    hostile=st.sampled_from([(), [], 5, -6, 2**70, (0, 0), (0, -4), "0", 1.5, True, (0, "1"), (0, None), (0, ...),
                             np.int64(1), tensor_scalar(1), {0: 1}, range(2)]),
)
bool_param = Param(
    typical=st.sampled_from([True, False]),
    hostile=st.sampled_from([np.bool_(True), np.bool_(False), 1, 0, 1.0, "yes", "", None, tensor_scalar(True)]),
)
generator_param = Param(
    typical=st.sampled_from([None, Lit(lambda: torch.Generator().manual_seed(0), "torch.Generator().manual_seed(0)")]),
    hostile=st.sampled_from([
        1, "cpu", Lit(lambda: torch.Generator, "torch.Generator"),
        Lit(lambda: np.random.default_rng(0), "np.random.default_rng(0)"),
        Lit(lambda: torch.default_generator, "torch.default_generator"),  # a valid generator, but the global one
    ]),
)  # fmt: skip
seed_param = Param(
    typical=st.sampled_from([None, None, 0, 12345, 2**64 - 1, np.int64(7)]),
    hostile=st.sampled_from([-1, 2**64, 1.5, "0", True, tensor_scalar(1), [0]]),
)
stream_name_param = Param(
    typical=st.sampled_from(["", "", "layer.0.weight", "ü", "w#1"]),
    hostile=st.sampled_from([None, 3, b"w", ["w"]]),
)
nonlinearity_param = Param(
    typical=st.one_of(
        st.sampled_from(TORCH_NONLINEARITIES + tuple(ACTIVATIONS)),
        st.sampled_from(["RELU", "Leaky_ReLU", "GELU", "Tanh", "SiLU"]),
        st.sampled_from([Lit(nn.ReLU, "nn.ReLU()"), Lit(nn.GELU, "nn.GELU()"), Lit(lambda: torch.tanh, "torch.tanh")]),
    ),
    hostile=st.sampled_from([
        "gleu", "leaky relu", "", "relu ", None, 0, 1.5, b"relu", ["relu"],
        Lit(lambda: torch.zeros_like, "torch.zeros_like"),  # E[f(z)^2] = 0: an infinite gain
        Lit(lambda: (lambda x: x * NAN), "lambda x: x * float('nan')"),
        Lit(lambda: (lambda x: x * 1e200), "lambda x: x * 1e200"),  # E[f(z)^2] overflows
        Lit(lambda: (lambda x: "relu"), "lambda x: 'relu'"),  # a callable that does not return a tensor
        Lit(lambda: nn.Linear(3, 3), "nn.Linear(3, 3)"),  # a module that cannot take the probe's input
    ]),
)  # fmt: skip

#: Values by parameter name: the names of every fuzzed function's parameters after the target.
ARGUMENTS: dict[str, Param] = {
    "a": real_param(-2.0, -1.0, -0.1, 0.0, 0.01, 0.2, 5**0.5),  # a bound, or kaiming's negative slope
    "b": real_param(2.0, 1.0, 0.1, 0.5, -1.0),
    "mean": real_param(0.0, 1.0, -3.0, 0.5),
    "std": real_param(1.0, 0.02, 0.0, 2.0, 0.5),
    "val": real_param(0.3, 1, 0, -2, 127, 128, -129, 2**63, 1e5, True, False, np.bool_(True), 1 + 2j, 0.5 + 0j),
    "gain": real_param(1.0, 0.5, 2.0, 0.0, 2**0.5, 1e4, -1.0),
    "sparsity": real_param(0.0, 0.1, 0.5, 0.9, 0.99, 1.0),
    "k": real_param(2.0, 1.0, 3.0, 0.5, 6.0),
    "scale": real_param(1.0, 2.0, 0.1, 0.0, 1e6),
    "groups": int_param(1, 2, 3, 4),
    "blocks": int_param(1, 2, 3, 4),
    "in_dims": dims_param,
    "out_dims": dims_param,
    "batch_dims": dims_param,
    "inDim": dims_param,
    "outDim": dims_param,
    "mode": name_param(MODES, ["fan_inn", "fan-in", "avg", "fan"]),
    "nonlinearity": nonlinearity_param,
    "distribution": name_param(DISTRIBUTIONS, ["truncated-normal", "gaussian", "cauchy"]),
    "zero_mean": bool_param,
    "zeroMean": bool_param,
    "sparse": bool_param,
    "isometric": bool_param,
    "generator": generator_param,
    "seed": seed_param,
    "name": stream_name_param,
}
OMIT = object()  # the parameter is left at its default


@st.composite
def arguments_for(draw, function: Callable) -> dict[str, Any]:
    """Keyword arguments for ``function``'s parameters after the target.

    None, one, two or all of them are hostile; the others are typical or (if optional) omitted.
    """
    params = list(inspect.signature(function).parameters.values())[1:]
    for p in params:
        if p.name not in ARGUMENTS:
            raise KeyError(f"{function.__name__}: no values for parameter {p.name!r}; add them to ARGUMENTS")
    n_hostile = draw(st.sampled_from([0, 0, 0, 1, 1, 2, len(params)]))
    hostile = set(draw(st.permutations([p.name for p in params]))[:n_hostile])
    args = {}
    for p in params:
        param = ARGUMENTS[p.name]
        if p.name in hostile:
            args[p.name] = draw(param.hostile)
        elif p.default is inspect.Parameter.empty or draw(st.booleans()):
            args[p.name] = draw(param.typical)
    return args


# ---- targets (the tensors initialized) ----------------------------------------------------------------------

DTYPES = [
    torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.complex64, torch.int64, torch.int8, torch.bool,
]  # fmt: skip
TORCH_KINDS = [
    "contiguous", "transposed", "sliced", "expanded", "meta", "parameter", "parameter_no_grad",
    "inference",  # made under torch.inference_mode(), initialized outside it
    "list",  # not a tensor: the values as nested lists
]  # fmt: skip
NUMPY_KINDS = ["numpy", "numpy_transposed", "numpy_sliced", "numpy_reversed", "numpy_readonly"]


def fit(shape: list[int]) -> tuple[int, ...]:
    """Halve the largest dim until the shape has at most MAX_NUMEL elements."""
    shape = list(shape)
    while math.prod(shape) > MAX_NUMEL:
        i = shape.index(max(shape))
        shape[i] //= 2
    return tuple(shape)


shapes = st.lists(st.one_of(st.integers(1, 4), st.integers(0, 9), st.integers(1, 70)), max_size=5).map(fit)


@dataclass(frozen=True)
class TargetSpec:
    """What to initialize: a target of ``shape`` and ``dtype``, made as ``kind`` from a seeded base."""

    kind: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    seed: int
    poison: bool  # NaN, inf and -0.0 among the initial values (floating dtypes)

    def view_code(self) -> tuple[tuple[int, ...], str]:
        """The base's shape and the expression (of ``base``) that gives the target."""
        shape, nd = self.shape, len(self.shape)
        kind = self.kind.removeprefix("numpy_")
        if kind == "transposed" and nd >= 2:
            return shape[::-1], ("base.T" if self.is_numpy else f"base.permute{tuple(reversed(range(nd)))}")
        if kind == "sliced" and nd >= 1:  # a step and a storage offset
            return (*shape[:-1], 2 * shape[-1]), "base[..., 1::2]"
        if kind == "reversed" and nd >= 1:
            return shape, "base[::-1]"
        if kind == "expanded" and nd >= 1:
            i = shape.index(max(shape))
            return (*shape[:i], 1, *shape[i + 1:]), f"base.expand{shape}"
        return shape, "base"

    @property
    def is_numpy(self) -> bool:
        return self.kind.startswith("numpy")

    def code(self) -> list[str]:
        """Statements that make ``base`` (None for meta and lists) and ``t``, the target."""
        if self.kind == "meta":
            return [f"t = torch.empty({self.shape}, dtype={self.dtype}, device='meta')"]
        base_shape, view = self.view_code()
        gen = f"generator=torch.Generator().manual_seed({self.seed})"
        if self.dtype == torch.bool:
            make = f"torch.randint(0, 2, {base_shape}, {gen}).bool()"
        elif not (self.dtype.is_floating_point or self.dtype.is_complex):
            make = f"torch.randint(-100, 100, {base_shape}, {gen}).to({self.dtype})"
        else:
            wide = "complex128" if self.dtype.is_complex else "float64"
            make = f"(3 * torch.randn({base_shape}, dtype=torch.{wide}, {gen})).to({self.dtype})"
        lines = [f"base = {make}"]
        if self.poison and (self.dtype.is_floating_point or self.dtype.is_complex):
            flat = "base.view(-1)"
            lines.append(f"{flat}[::3], {flat}[1::4], {flat}[2::5] = float('nan'), float('inf'), -0.0")
        if self.kind == "inference":
            lines = ["with torch.inference_mode():"] + ["    " + line for line in lines]
        if self.kind == "list":
            return [*lines, "t = base.tolist()"]
        if self.kind.startswith("parameter"):
            grad = self.dtype.is_floating_point or self.dtype.is_complex
            lines.append(f"base = nn.Parameter(base, requires_grad={grad})")
        if self.is_numpy:
            lines.append("base = base.numpy()")
            if self.kind == "numpy_readonly":
                lines.append("base.setflags(write=False)")
        return [*lines, f"t = {view}"]


@st.composite
def targets(draw) -> TargetSpec:
    dtype = draw(st.one_of(st.sampled_from(DTYPES), st.sampled_from(DTYPES[:4])))  # floating ones twice as often
    kinds = TORCH_KINDS + (NUMPY_KINDS if dtype != torch.bfloat16 else [])
    kind, shape = draw(st.sampled_from(kinds)), draw(shapes)
    return TargetSpec(kind, shape, dtype, seed=draw(st.integers(0, 2**16)), poison=draw(st.booleans()))


@dataclass
class Built:
    """A made target: ``t`` to pass, ``base`` behind it (None: nothing to compare), a copy of ``base``."""

    spec: TargetSpec
    t: Any
    base: Any
    before: Any

    @classmethod
    def make(cls, spec: TargetSpec) -> Built:
        scope: dict[str, Any] = {"torch": torch, "np": np, "nn": nn}
        exec("\n".join(spec.code()), scope)  # the very statements the report prints
        base = scope.get("base")
        if spec.kind == "list":
            base = None
        before = None if base is None else (base.copy() if spec.is_numpy else base.detach().clone())
        return cls(spec, scope["t"], base, before)

    def changed(self) -> bool:
        """Whether any byte of the base differs from the copy taken before the call."""
        if self.base is None:
            return False
        if self.spec.is_numpy:
            return self.base.tobytes() != self.before.tobytes()
        return not torch.equal(_bytes(self.base), _bytes(self.before))

    def changed_outside(self) -> bool:
        """Whether any element of the base outside the target changed (bit for bit)."""
        if self.base is None:
            return False
        base_shape, view = self.spec.view_code()
        numel = math.prod(base_shape)
        if numel == 0:
            return False
        if self.spec.is_numpy:
            covered = np.zeros(numel, dtype=bool)
            covered[eval(view, {"base": np.arange(numel).reshape(base_shape)}).reshape(-1)] = True
            now, before = (np.frombuffer(a.tobytes(), np.uint8).reshape(numel, -1) for a in (self.base, self.before))
            return not np.array_equal(now[~covered], before[~covered])
        covered_t = torch.zeros(numel, dtype=torch.bool)
        covered_t[eval(view, {"base": torch.arange(numel).reshape(base_shape)}).reshape(-1)] = True
        now_t, before_t = (_bytes(a).reshape(numel, -1) for a in (self.base, self.before))
        return not torch.equal(now_t[~covered_t], before_t[~covered_t])

    def values(self) -> torch.Tensor | None:
        """The target's values after a successful call, as a tensor (None: meta or a list)."""
        if self.base is None or self.spec.kind == "meta":
            return None
        if self.spec.is_numpy:
            return torch.from_numpy(np.ascontiguousarray(self.t))
        return self.t.detach()


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


# ---- calls -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One generated call: ``target`` (a function or initializer class name) applied to ``spec``.

    ``how``: "function" (``f(t, **args)``), "init" (``Cls(**args).init(t, generator=...)``) or
    "call" (``Cls(**args)(t, generator=...)``); ``generator`` is OMIT when not passed.
    """

    target: str
    how: str
    spec: TargetSpec
    args: dict[str, Any]
    generator: Any = OMIT

    def function(self) -> Callable:
        obj = getattr(torchinit, self.target)
        return obj if self.how == "function" else obj.function

    def effective_args(self) -> dict[str, Any] | None:
        """Every parameter of the underlying function with its value for this call (None if they do not bind)."""
        try:
            bound = inspect.signature(self.function()).bind(None, **{k: resolve(v) for k, v in self.args.items()})
        except TypeError:
            return None
        bound.apply_defaults()
        return dict(bound.arguments)

    def call_code(self) -> str:
        args = ", ".join(f"{k}={code_of(v)}" for k, v in self.args.items())
        if self.how == "function":
            return f"torchinit.{self.target}(t{', ' + args if args else ''})"
        gen = "" if self.generator is OMIT else f"generator={code_of(self.generator)}"
        method = ".init" if self.how == "init" else ""
        return f"torchinit.{self.target}({args}){method}(t{', ' + gen if gen else ''})"

    def snippet(self) -> str:
        call = self.call_code()
        if self.spec.kind == "parameter_no_grad":
            call = "with torch.no_grad():\n    " + call
        return "\n".join([*self.spec.code(), call])

    def invoke(self, t: Any) -> Any:
        """Make the call (constructing the initializer object first, for objects)."""
        args = {k: resolve(v) for k, v in self.args.items()}
        if self.how == "function":
            return getattr(torchinit, self.target)(t, **args)
        obj = getattr(torchinit, self.target)(**args)
        extra = {} if self.generator is OMIT else {"generator": resolve(self.generator)}
        return obj.init(t, **extra) if self.how == "init" else obj(t, **extra)


class Hang(BaseException):
    """Raised in a call that outlives HANG_SECONDS (a BaseException, so no ``except Exception`` hides it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


#: Warnings the library documents (category, words in the message).
DOCUMENTED_WARNINGS = [(UserWarning, "nothing is truncated"), (UserWarning, "zero-element tensors is a no-op")]


# ---- the contract ------------------------------------------------------------------------------------------


def check_contract(case: Case) -> None:
    """Make ``case``'s call and record every way it breaks the contract (see the module docstring)."""
    built = Built.make(case.spec)
    grad_mode = torch.no_grad() if case.spec.kind == "parameter_no_grad" else contextlib.nullcontext()
    CALLS[case.target] += 1
    raised: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught, torch.random.fork_rng(devices=[]):
        warnings.simplefilter("always")
        torch.manual_seed(case.spec.seed)  # calls without a generator draw the same on every run
        try:
            with grad_mode, time_limit(HANG_SECONDS):
                case.invoke(built.t)
        except (ValueError, TypeError, Hang, Exception) as err:
            raised = err
    OUTCOMES[case.target, "returned" if raised is None else type(raised).__name__] += 1

    for w in caught:
        if not any(issubclass(w.category, cat) and words in str(w.message) for cat, words in DOCUMENTED_WARNINGS):
            record(case, built, "undocumented warning", w.category.__name__, str(w.message))

    if raised is not None:
        changed = built.changed()
        expected = isinstance(raised, (ValueError, TypeError))
        if expected and not changed:
            return  # a clean refusal
        what = ("raised " if expected else "unexpected ") + type(raised).__name__
        if changed:
            what += ", tensor changed"
        record(case, built, what, type(raised).__name__, str(raised))
        return

    # success
    if built.changed_outside():
        record(case, built, "success wrote outside the target", "", "")
    if case.spec.kind.startswith("parameter"):
        p = built.t
        wants_grad = case.spec.dtype.is_floating_point or case.spec.dtype.is_complex
        if p.grad_fn is not None or not p.is_leaf or p.requires_grad != wants_grad:
            state = f"grad_fn={p.grad_fn}, requires_grad={p.requires_grad}"
            record(case, built, "success left autograd history", "", state)
    values = built.values()
    if values is None:
        return
    if (values.is_floating_point() or values.is_complex()) and not bool(torch.isfinite(values).all()):
        beyond = _argument_beyond_dtype(case, values.dtype)
        hint = "an argument exceeds the dtype's range" if beyond else "arguments within the dtype's range"
        record(case, built, "success left non-finite values", "", hint)
    problem = check_range(case, values)
    if problem:
        record(case, built, "success outside the documented range", "", problem)


def _argument_beyond_dtype(case: Case, dtype: torch.dtype) -> bool:
    limit = torch.finfo(dtype).max
    for value in (case.effective_args() or {}).values():
        number = _as_float(value)
        if number is not None and abs(number) > limit:
            return True
    return False


def _as_float(value: Any) -> float | None:
    """``value`` as a float if it is a real number (Python, NumPy or a 0-d tensor), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, (int, float, np.integer, np.floating)):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    return None


def check_range(case: Case, values: torch.Tensor) -> str | None:
    """The documented range of the result, where it is easy to state: a message if it is broken."""
    name = case.function().__name__
    args = case.effective_args()
    if args is None or name not in RANGES:
        return None
    return RANGES[name](values, args)


def _real_parts(values: torch.Tensor) -> torch.Tensor:
    return (torch.view_as_real(values) if values.is_complex() else values).to(torch.float64)


def _within(values: torch.Tensor, lo: float, hi: float, slack: bool) -> str | None:
    v = _real_parts(values)
    if slack:  # one rounding to the dtype
        finfo = torch.finfo(values.real.dtype if values.is_complex() else values.dtype)
        eps = finfo.eps * max(abs(lo), abs(hi)) + finfo.smallest_normal
        lo, hi = lo - eps, hi + eps
    bad = v[(v < lo) | (v > hi)]
    if bad.numel():
        return f"{bad.numel()} value(s) outside [{lo!r}, {hi!r}], e.g. {bad[0].item()!r}"
    return None


def _uniform_range(values: torch.Tensor, args: dict) -> str | None:
    a, b = _as_float(args["a"]), _as_float(args["b"])
    return None if a is None or b is None else _within(values, a, b, slack=True)


def _trunc_range(values: torch.Tensor, args: dict) -> str | None:
    a, b = _as_float(args["a"]), _as_float(args["b"])
    return None if a is None or b is None else _within(values, a, b, slack=False)


def _trunc_std_range(values: torch.Tensor, args: dict) -> str | None:
    # Real tensors: mean +- k std / c(k). Complex ones truncate the modulus at k std / c_C(k), with
    # c_C(k) > c(k): checking each part against the real bound is looser, never wrong.
    std, k, mean = (_as_float(args[n]) for n in ("std", "k", "mean"))
    if std is None or k is None or mean is None:
        return None
    half = k * std / torchinit.truncated_std_factor(k)
    return _within(values, mean - half, mean + half, slack=True)


def _constant_range(values: torch.Tensor, args: dict) -> str | None:
    return _equal_to(values, args["val"])


def _equal_to(values: torch.Tensor, val: Any) -> str | None:
    number = val.item() if isinstance(val, (torch.Tensor, np.generic)) else val
    try:
        expected = torch.full((), number, dtype=values.dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        return None  # not a value of this dtype: nothing to compare
    if not bool((values == expected).all()):
        return f"values other than {expected.item()!r}, e.g. {values[values != expected][0].item()!r}"
    return None


RANGES: dict[str, Callable[[torch.Tensor, dict], str | None]] = {
    "uniform_": _uniform_range,
    "trunc_normal_": _trunc_range,
    "trunc_normal_std_": _trunc_std_range,
    "constant_": _constant_range,
    "zeros_": lambda values, args: _equal_to(values, 0),
    "ones_": lambda values, args: _equal_to(values, 1),
}

# ---- failure classes ----------------------------------------------------------------------------------------


@dataclass
class FailureClass:
    target: str
    outcome: str
    exception: str
    pattern: str
    count: int = 0
    kinds: set[str] = field(default_factory=set)
    dtypes: set[str] = field(default_factory=set)
    example: str = ""
    message: str = ""
    _size: tuple = (math.inf,)

    def report(self) -> str:
        lines = [f"[{self.count}x] {self.target}: {self.outcome}" + (f": {self.pattern}" if self.pattern else ""),
                 f"    kinds: {', '.join(sorted(self.kinds))}; dtypes: {', '.join(sorted(self.dtypes))}"]  # fmt: skip
        if self.message:
            lines.append(f"    message: {self.message[:300]}")
        lines.append("    reproduce (import numpy as np, torch, torchinit; from torch import nn):")
        lines += ["        " + line for line in self.example.splitlines()]
        return "\n".join(lines)


def pattern_of(message: str) -> str:
    """A message with its particulars (quoted values, numbers, shapes) blanked, to group failures."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", first)
    first = re.sub(r"\([^()]*\)", "(…)", first)
    first = re.sub(r"-?\b\d+(\.\d+)?(e[-+]?\d+)?\b|\bnan\b|\binf\b", "#", first)
    first = re.sub(r"torch\.\w+", "torch.<dtype>", first)
    return first[:160]


def record(case: Case, built: Built, outcome: str, exception: str, message: str) -> None:
    pattern = message if outcome.startswith("success") else pattern_of(message)
    key: tuple[str, ...]
    if outcome == "success left non-finite values":
        key = (case.target, outcome, message)
    elif outcome.startswith("success"):
        key = (case.target, outcome)
        pattern = ""
    else:
        key = (case.target, outcome, exception, pattern)
    group = FAILURES.setdefault(case.target, {}).setdefault(key, FailureClass(case.target, outcome, exception, pattern))
    group.count += 1
    group.kinds.add(case.spec.kind)
    group.dtypes.add(str(case.spec.dtype).removeprefix("torch."))
    snippet = case.snippet()
    size = (len(case.args) + (case.generator is not OMIT), math.prod(case.spec.shape), len(snippet))  # simplest
    if size < group._size:
        group._size, group.example, group.message = size, snippet, message


def assert_no_failures(target: str) -> None:
    groups = sorted(FAILURES.get(target, {}).values(), key=lambda g: -g.count)
    if groups:
        total = sum(g.count for g in groups)
        header = f"{target}: {total} of {CALLS[target]} calls broke the contract, in {len(groups)} class(es)"
        pytest.fail("\n\n".join([header] + [g.report() for g in groups]), pytrace=False)


# ---- the tests -------------------------------------------------------------------------------------------------

FUZZ = fuzz_settings(N_TARGETS)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_fuzz_function(name):
    function = getattr(torchinit, name)

    def fuzz(spec, args):
        check_contract(Case(name, "function", spec, args))

    fuzz.__name__ = f"fuzz_{name}"  # derandomized examples are seeded by the test's name: one stream per target
    FUZZ(given(spec=targets(), args=arguments_for(function))(fuzz))()
    assert_no_failures(name)


@pytest.mark.parametrize("name", OBJECTS)
def test_fuzz_object(name):
    cls = getattr(torchinit, name)
    ways = ["init"] + (["call"] if any("__call__" in vars(k) for k in cls.__mro__) else [])  # callable instances

    def fuzz(spec, args, how):
        generator = args.pop("generator", OMIT)  # an argument of .init, not a setting
        check_contract(Case(name, how, spec, args, generator))

    fuzz.__name__ = f"fuzz_{name}"
    FUZZ(given(spec=targets(), args=arguments_for(cls.function), how=st.sampled_from(ways))(fuzz))()
    assert_no_failures(name)


def test_fuzz_covers_every_initializer():
    expected = {
        "uniform_", "normal_", "trunc_normal_", "trunc_normal_std_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
        "identity_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "lecun_uniform_",
        "lecun_normal_", "variance_scaling_", "orthogonal_", "delta_orthogonal_", "hadamard_", "sparse_", "glass_",
        "glassInit_",
    }  # fmt: skip
    assert set(FUNCTIONS) == expected
    assert {getattr(torchinit, n).function.__name__ for n in OBJECTS} <= expected
    assert len(OBJECTS) == 22


def test_fuzz_call_count(capsys):
    """Last: the calls made by the tests above (all targets must have run), printed and asserted."""
    ran = [t for t in FUNCTIONS + OBJECTS if CALLS[t]]
    if len(ran) < N_TARGETS:
        pytest.skip(f"only {len(ran)} of {N_TARGETS} fuzz targets ran in this session")
    total = sum(CALLS.values())
    ends: Counter[str] = Counter()
    for (_, how), n in OUTCOMES.items():
        ends[how] += n
    ended = ", ".join(f"{n} {how}" for how, n in ends.most_common())
    with capsys.disabled():
        print(f"\nfuzz ({PROFILE} profile): {total} calls over {N_TARGETS} targets: {ended}")
    path = os.environ.get("TORCHINIT_FUZZ_REPORT")
    if path:
        classes = [vars(g) | {"kinds": sorted(g.kinds), "dtypes": sorted(g.dtypes), "_size": None}
                   for groups in FAILURES.values() for g in groups.values()]  # fmt: skip
        with open(path, "w") as f:
            outcomes = {f"{t} {how}": n for (t, how), n in OUTCOMES.items()}
            json.dump(
                {"profile": PROFILE, "total": total, "calls": dict(CALLS), "outcomes": outcomes, "failures": classes},
                f, indent=1,
            )  # fmt: skip
    assert total >= (MIN_DEFAULT_CALLS if PROFILE == "default" else TOTAL_CALLS[PROFILE] // 2), total
