"""Real models whose construction needs more than ATen shows a recording: built under deferred(), materialized.

- transformers RWKV: its ``_init_weights`` builds ``time_weight``, ``decay_speed`` and ``zigzag`` with
  ``torch.tensor(..., device=p.device)`` (meta under deferred()), and ``time_first`` from ``ones_like`` of an
  expression on an empty parameter;
- timm SwinV2: its ``_init_buffers`` builds the relative-position tables with ``device=self.proj.weight.device``
  (meta) and copies them into real buffers.

Each is small and random (nothing is downloaded) and compared with eager construction (``_eager.differences``:
deterministic entries exactly, random ones by their statistics), under the global RNG, ``seed=`` and ``generator=``,
with ``strict=True`` and no warning.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import torchinit as ti
from _eager import differences, state
from _thirdparty import need
from conftest import gen

pytestmark = pytest.mark.slow  # transformers and timm models: a few seconds


def rwkv() -> nn.Module:
    tf = need("transformers")
    cfg = tf.RwkvConfig(vocab_size=96, hidden_size=32, num_hidden_layers=3, attention_hidden_size=32,
                        intermediate_size=64, context_length=64)  # fmt: skip
    return tf.RwkvForCausalLM(cfg)


def swinv2() -> nn.Module:
    return need("timm").create_model("swinv2_tiny_window8_256", pretrained=False, num_classes=10, img_size=32,
                                     embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4)  # fmt: skip


def run_rwkv(m: nn.Module) -> torch.Tensor:
    return m(torch.arange(12).reshape(2, 6) % 96).logits


def run_swinv2(m: nn.Module) -> torch.Tensor:
    return m(torch.randn(2, 3, 32, 32, generator=gen(5)))


MODELS = {"rwkv": (rwkv, run_rwkv), "swinv2": (swinv2, run_swinv2)}
HOW = {"global": {}, "seed": {"seed": 0}, "generator": "generator"}


def _materialize(model: nn.Module, how: str) -> list[str]:
    kwargs = {"generator": gen(0)} if how == "generator" else dict(HOW[how])  # type: ignore[arg-type]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ti.materialize_(model, strict=True, **kwargs)
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("how", list(HOW))
@pytest.mark.parametrize("name", list(MODELS))
def test_deferred_materializes_as_eager(name: str, how: str) -> None:
    build, run = MODELS[name]
    with ti.deferred():
        model = build()
    assert _materialize(model, how) == []
    assert differences(build, model) == []
    with torch.no_grad():
        out = run(model.eval())
    assert bool(torch.isfinite(out).all()) and float(out.std()) > 0


def test_rwkv_tables_and_time_first_equal_eager_exactly() -> None:
    torch.manual_seed(0)
    eager = state(rwkv())
    with ti.deferred():
        model = rwkv()
    ti.materialize_(model, seed=3, strict=True)
    got = state(model)
    names = [n for n in eager if ".time_" in n]
    assert any("time_decay" in n for n in names) and any("time_first" in n for n in names)
    for n in names:  # decay_speed, zigzag, time_weight powers: deterministic tables, built from torch.tensor
        assert torch.equal(got[n], eager[n]), n


def test_swinv2_buffers_equal_eager_exactly() -> None:
    eager = state(swinv2())
    with ti.deferred():
        model = swinv2()
    buffers = [n for n, _ in model.named_buffers()]
    assert any("relative_coords_table" in n for n in buffers) and any("relative_position_index" in n for n in buffers)
    ti.materialize_(model, seed=0, strict=True)
    got = state(model)
    for n in buffers:
        assert torch.equal(got[n], eager[n]), n


@pytest.mark.parametrize("how", ["device", "accelerate"])
def test_rwkv_tables_on_the_meta_paths(how: str) -> None:
    """Re-enactment records RWKV's _init_weights as deferred() records construction: its torch.tensor tables too."""
    torch.manual_seed(0)
    eager = state(rwkv())
    if how == "device":
        with torch.device("meta"):
            model = rwkv()
    else:
        with need("accelerate").init_empty_weights():
            model = rwkv()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what the meta paths warn of is tested with the other real models
        ti.materialize_(model, seed=0)
    got = state(model)
    for n in [n for n in eager if ".time_" in n]:
        assert torch.equal(got[n], eager[n]), n
