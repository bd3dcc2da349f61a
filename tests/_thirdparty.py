"""Importing the third-party model libraries the tests compare against (transformers, timm, torchvision).

The registry's torchvision wheels are CUDA builds whose compiled ops do not load beside the CPU torch;
``import torchvision`` then fails while registering fake kernels for those ops ("operator
torchvision::nms does not exist"), and timm and transformers' model modules import torchvision.
The models themselves are pure Python, so for the duration of that one import the fake-kernel
registration skips ops that were never defined. Nothing installed is modified; the detection and
transform ops of torchvision stay unusable, which no test needs.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch


def _import_torchvision_tolerantly() -> str | None:
    """Import torchvision if it is installed; None on success, else why it cannot be used."""
    try:
        importlib.util.find_spec("torchvision")
    except (ImportError, ValueError):
        return "torchvision is not installed"
    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed"
    original = getattr(torch.library, "register_fake", None)
    if original is None:  # torch < 2.4 has no register_fake to tolerate: a torchvision built for it imports plainly
        return _import_plainly()

    def register_fake(op: Any, func: Any = None, /, *args: Any, **kwargs: Any) -> Any:
        def register(fn: Any) -> Any:
            try:
                return original(op, fn, *args, **kwargs)
            except RuntimeError as err:
                if "does not exist" in str(err):
                    return fn  # an op of the CUDA build's missing library: nothing to fake
                raise

        return register if func is None else register(func)

    torch.library.register_fake = register_fake
    try:
        return _import_plainly()  # any failure: the tests that need it skip with the reason returned
    finally:
        torch.library.register_fake = original


def _import_plainly() -> str | None:
    try:
        import torchvision  # noqa: F401
    except Exception as err:
        return f"torchvision does not import beside this torch: {type(err).__name__}: {err}"
    return None


TORCHVISION_PROBLEM = _import_torchvision_tolerantly()


def need(module: str) -> Any:
    """Import ``module`` (transformers, timm, torchvision.models, ...) or skip the test with the reason."""
    top = module.split(".")[0]
    # timm works without torchvision, but not beside one that is installed and fails to import
    if top in ("timm", "torchvision") and TORCHVISION_PROBLEM is not None and (
        top == "torchvision" or "not installed" not in TORCHVISION_PROBLEM
    ):
        pytest.skip(TORCHVISION_PROBLEM)
    imported = pytest.importorskip(module)
    if top == "transformers":
        import transformers

        if not transformers.is_torch_available():  # it disables its models on a torch older than it supports
            pytest.skip(f"transformers {transformers.__version__} does not support torch {torch.__version__}")
    return imported
