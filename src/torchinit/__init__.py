"""torchinit: weight initialization for PyTorch, a drop-in for ``torch.nn.init`` and more.

Change one import::

    import torchinit as init      # instead of: from torch.nn import init
    init.kaiming_normal_(w, nonlinearity="gelu")
    init.trunc_normal_std_(w, std=0.02)          # cut at +-2 sigma, std exactly 0.02
    init.variance_scaling_(w, 1.0, "fan_avg", "uniform", in_dims=0, out_dims=1)
"""

from torchinit._util.version import __version__
from torchinit.diagnostics.lsuv import lsuv_
from torchinit.diagnostics.probing import SignalReport, jacobian_spectrum, probe
from torchinit.model.digest import fingerprint
from torchinit.model.materialize import deferred, materialize_
from torchinit.model.policy import InitReport, Policy
from torchinit.schemes.basic import constant_, dirac_, eye_, identity_, normal_, ones_, uniform_, zeros_
from torchinit.schemes.gains import calculate_gain, variance_gain
from torchinit.schemes.glass import glass_, glass_layout, glassInit, glassInit_
from torchinit.schemes.initializers import (
    Constant,
    DeltaOrthogonal,
    Dirac,
    Eye,
    Glass,
    Hadamard,
    Identity,
    Initializer,
    KaimingNormal,
    KaimingUniform,
    LecunNormal,
    LecunUniform,
    Normal,
    Ones,
    Orthogonal,
    Sparse,
    TruncNormal,
    TruncNormalStd,
    Uniform,
    VarianceScaling,
    XavierNormal,
    XavierUniform,
    Zeros,
)
from torchinit.schemes.layout import Fans, fans
from torchinit.schemes.structured import delta_orthogonal_, hadamard_, orthogonal_, sparse_
from torchinit.schemes.truncnorm import trunc_normal_, trunc_normal_std_, truncated_std_factor
from torchinit.schemes.variance import (
    kaiming_normal_,
    kaiming_uniform_,
    lecun_normal_,
    lecun_uniform_,
    variance_scaling_,
    xavier_normal_,
    xavier_uniform_,
)

#: The functions of torch.nn.init 2.13, same names, parameters and defaults.
TORCH_NN_INIT = (
    "calculate_gain", "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)  # fmt: skip

__all__ = [
    *TORCH_NN_INIT,
    "Fans",
    "fans",
    "variance_gain",
    "trunc_normal_std_",
    "truncated_std_factor",
    "variance_scaling_",
    "lecun_uniform_",
    "lecun_normal_",
    "identity_",
    "delta_orthogonal_",
    "hadamard_",
    "glass_",
    "glass_layout",
    "glassInit_",
    "glassInit",
    "Initializer", "Uniform", "Normal", "TruncNormal", "TruncNormalStd", "Constant", "Zeros", "Ones", "Eye", "Dirac",
    "Identity", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal", "LecunUniform", "LecunNormal",
    "VarianceScaling", "Orthogonal", "DeltaOrthogonal", "Sparse", "Hadamard", "Glass",
    "Policy", "InitReport", "deferred", "materialize_", "presets", "fingerprint",
    "probe", "SignalReport", "jacobian_spectrum", "lsuv_",
]  # fmt: skip

from torchinit import mup, presets  # noqa: E402  (they build on everything above)
from torchinit._legacy import register as _register_old_paths  # noqa: E402
from torchinit.schemes.deprecated import ALIASES as _ALIASES  # noqa: E402

globals().update(_ALIASES)  # uniform, normal, ..., sparse: torch.nn.init's deprecated names (not in __all__)
_register_old_paths()  # torchinit 0.1's module paths (torchinit.initializers, ...): old pickles load
