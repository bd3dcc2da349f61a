"""Questions about a module's tensors that torch's type stubs cannot express. Imports nothing from torchinit.

- :func:`is_uninitialized`: a lazy module's parameter or buffer (``nn.LazyLinear`` before its first forward),
  which has no shape and no values yet;
- :func:`tensor_stores`: a module's parameter and buffer registrations as dicts of tensors.
"""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

__all__ = ["is_uninitialized", "tensor_stores"]


def is_uninitialized(t: Any) -> bool:
    """Whether ``t`` is a lazy module's parameter or buffer, which has no shape or values until its first forward.

    Example:
        >>> is_uninitialized(nn.LazyLinear(3).weight), is_uninitialized(nn.Linear(2, 3).weight)
        (True, False)
    """
    return isinstance(t, nn.parameter.UninitializedTensorMixin)  # type: ignore[attr-defined]


def tensor_stores(module: nn.Module) -> tuple[dict[str, Tensor | None], dict[str, Tensor | None]]:
    """``module``'s own ``_parameters`` and ``_buffers`` (the dicts themselves), typed as holding tensors.

    torch annotates ``_parameters`` as holding Parameters; the code that registers stand-ins and staged
    tensors in either dict (a parameter's stand-in is a parameter too) writes them through this one view.
    """
    return cast("dict[str, Tensor | None]", module._parameters), module._buffers
