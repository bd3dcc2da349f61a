"""The module paths of torchinit 0.1's flat layout, kept importable.

Objects pickled by that version (an ``Initializer`` in a checkpoint's hyper-parameters, a ``Policy``)
name their classes by those paths (``torchinit.initializers.KaimingNormal``), and scripts may import
from them. Each old path is registered in ``sys.modules`` as the module that now holds its contents.
Not kept: ``torchinit.fans``, ``torchinit.probe`` and ``torchinit.fingerprint``, whose names are public
functions (``import torchinit.probe`` handing back a function was the reason for the move).
"""

from __future__ import annotations

import importlib
import sys

#: old module -> the module that holds its contents now
MOVED = {
    "_checks": "_util.checks", "_text": "_util.text", "_deprecated": "schemes.deprecated",
    "keyed": "rng.keyed", "sampling": "rng.sampling", "fastfill": "rng.fastfill",
    "gain": "schemes.gains", "basic": "schemes.basic", "variance": "schemes.variance",
    "truncnorm": "schemes.truncnorm", "structured": "schemes.structured", "glass": "schemes.glass",
    "initializers": "schemes.initializers", "construction": "model.construction", "policy": "model.policy",
    "materialize": "model.materialize", "lsuv": "diagnostics.lsuv", "compare": "diagnostics.compare",
    "_demo_model": "diagnostics.models",
}  # fmt: skip


def register() -> None:
    """Make every old path in :data:`MOVED` import as its new module (already imported ones are left alone)."""
    package = sys.modules["torchinit"]
    for old, new in MOVED.items():
        module = sys.modules.setdefault(f"torchinit.{old}", importlib.import_module(f"torchinit.{new}"))
        setattr(package, old, module)  # as an imported submodule is: ``import torchinit.keyed; torchinit.keyed.KERNEL``
