"""The contract of an in-place scheme, declared once: ``@scheme(...)`` over each public function.

Every public in-place initializer of :mod:`torchinit.schemes` (``uniform_``, ``kaiming_normal_``,
``orthogonal_``, ``glass_``, ...) is written as a plain function of its tensor and settings, and
:func:`scheme` gives it the rest of the contract, always the same way:

* :func:`~torchinit.rng.sampling.shardable` (innermost): DTensor targets, each rank keeping its
  shard (``local`` says when the values are element-wise, so ``seed=`` computes only the shard);
* :func:`~torchinit.recording.log.recorded_call` (outermost): inside ``deferred()``, a call on a
  recorded meta tensor is validated and recorded whole;
* shared docstring paragraphs (:data:`FAN_KEYWORDS`), written once here and inserted before the
  function's ``Example:`` section, so ``help()`` shows them in every function that takes them;
* an entry in :data:`SCHEMES`, the registry of schemes by public name.

The two wrappers are the same objects in the same order as the decorators they replace, so
``__wrapped__`` leads from the public function to the ``shardable`` wrapper and from there to the
plain function, and ``functools.wraps`` keeps the name, docstring and signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from torchinit._util.tensors import keeps_thread_modes
from torchinit.recording.log import recorded_call
from torchinit.rng.sampling import shardable

__all__ = ["SCHEMES", "FAN_KEYWORDS", "scheme", "with_paragraph"]

#: Every public in-place scheme by its public name (``"kaiming_normal_"`` -> ``torchinit.kaiming_normal_``):
#: the decorated function, as ``torchinit`` exports it. Filled as the scheme modules (basic, variance,
#: truncnorm, structured, glass) are imported; ``import torchinit`` imports them all. Other layers look a
#: scheme up here by the name a recording or a config holds.
SCHEMES: dict[str, Callable[..., Any]] = {}

#: The keyword-only arguments of the fan-based family (:mod:`torchinit.schemes.variance`).
FAN_KEYWORDS = """\
Keyword-only: ``in_dims``/``out_dims`` name the weight's input and output dims
(see :func:`~torchinit.schemes.layout.fans`); ``batch_dims`` (default None) names dims of
stacked independent weights (JAX's ``batch_axis``), excluded from both fans, so an
``(experts, out, in)`` tensor with ``batch_dims=0`` gets each expert's fans;
``blocks`` (default 1) splits dim 0 into equal chunks, each scaled by its own fans;
``seed`` (with ``name``) draws from the keyed stream of ``(seed, name)`` instead of
``generator`` (:mod:`torchinit.rng.sampling`)."""

_EXAMPLE_HEADING = "Example:"


def scheme(
    local: Callable[[Tensor], bool] | None = None,
    *,
    dtensor_wrapper: bool = True,
    keywords: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare ``func`` a public in-place scheme: ``recorded_call(shardable(local)(func))``, in :data:`SCHEMES`.

    ``local``: :func:`~torchinit.rng.sampling.shardable`'s test of element-wise values (None: computed
    whole). ``dtensor_wrapper=False`` leaves ``shardable`` out, for fills that torch's DTensor ops
    already write shard by shard (constants). ``keywords``: a paragraph (such as :data:`FAN_KEYWORDS`)
    inserted into the docstring before its ``Example:`` section, indented as that section is.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if keywords:
            func.__doc__ = with_paragraph(func.__doc__ or "", keywords)
        inner = shardable(local=local)(func) if dtensor_wrapper else func
        public = keeps_thread_modes(recorded_call(inner))
        _check_unique(func)
        SCHEMES[func.__name__] = public
        return public

    return decorate


def _check_unique(func: Callable[..., Any]) -> None:
    """Public names are unique; the same function registered again (its module reloaded) replaces itself."""
    known = SCHEMES.get(func.__name__)
    if known is not None and (known.__module__, known.__qualname__) != (func.__module__, func.__qualname__):
        raise ValueError(f"a scheme named {func.__name__!r} is already registered, by {known.__module__}")


def with_paragraph(doc: str, paragraph: str) -> str:
    """``doc`` with ``paragraph`` (unindented) before its ``Example:`` section, or at the end without one.

    Example:
        >>> print(with_paragraph("Summary.\\n\\n    Example:\\n        1 + 1\\n", "Shared."))
        Summary.
        <BLANKLINE>
            Shared.
        <BLANKLINE>
            Example:
                1 + 1
        <BLANKLINE>
    """
    lines = doc.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.strip() == _EXAMPLE_HEADING:
            indent = line[: len(line) - len(line.lstrip())]
            block = "".join(f"{indent}{text}\n" if text else "\n" for text in paragraph.splitlines())
            return "".join(lines[:index]) + block + "\n" + "".join(lines[index:])
    return f"{doc.rstrip()}\n\n{paragraph}\n"
