"""Whole-model initialization benchmark (``make bench``): deferred + materialize_ against eager and accelerate.

Two transformers models with random configs (no download), fp32 on the CPU:

* ``llama-1b``: ``LlamaForCausalLM(LlamaConfig(hidden 2048, 16 layers, MLP 5632, vocabulary 32000,
  32 heads, untied head))``, 0.95B parameters, 3.55 GiB;
* ``gpt2-124m``: ``GPT2LMHeadModel(GPT2Config())``, 124M parameters (tied head), 475 MiB.

Each is built and initialized in these ways, each run in a fresh process, ``RUNS`` times
(round-robin over the ways), median shown:

* (a) eager: ``Model(config)`` (every Linear runs ``kaiming_uniform_``, then ``post_init``
  overwrites it with ``normal_(0.02)``);
* (b) accelerate: ``with init_empty_weights(): Model(config)``, ``model.to_empty(device="cpu")``,
  the ``_is_hf_initialized`` marks that ``post_init`` left under ``init_empty_weights`` deleted
  from every module, parameter and buffer (else ``init_weights`` does nothing), then
  ``model.init_weights()`` (which also recomputes the RoPE ``inv_freq`` buffers that
  ``to_empty`` turned into garbage);
* (c) deferred: ``with torchinit.deferred(): Model(config)``, then ``torchinit.materialize_(model)``,
  as the source stands (materialize_ passes ``torchinit.rng.fastfill.replay_fill`` as replay's ``fill``
  hook: large random fills run on all cores);
* (c) with the fill hook off: the same with ``Recording.replay``'s ``fill`` hook dropped by a
  monkeypatch in this process (``fill_hook_off``): torch's serial fills, what (c) was before the hook;
* memset floor: ``torch.empty(n).zero_()`` for every parameter's size: the least any way
  that writes every parameter byte once can cost (allocation, first-touch page faults, memset).

With ``--thp``, llama-1b also gets (c) and the floor with ``THP_MEM_ALLOC_ENABLE=1`` in the environment
(torch's CPU allocator then asks for transparent huge pages), to show what page faults cost.

In each process: imports, one warm-up build of a 2-layer model of the same class the same
way (one-time costs out), then the measured build + init. Time: ``time.perf_counter`` around
it. Peak memory: the process's peak resident set during it above its resident set just
before (``/proc/self/clear_refs`` "5" resets ``VmHWM``; peak = ``VmHWM`` after − ``VmRSS``
before), as a multiple of the parameter bytes. Every row checks the same job: the std of one
attention input weight (0.02 expected) and whether all buffers equal eager construction's.

Then ``--profile`` runs for llama-1b, each part in a fresh process: where (c)'s time goes, and
``--fill`` times ``fastfill.fill_`` against torch's ``normal_``/``uniform_``. The issue-5
benchmark (a 135M transformer-shaped model with a GPT-style Policy) follows at the end, as
before. Results go to ``benchmarks/results/model_init.md``.

    python benchmarks/model_init.py                # the benchmark (~7.5 min on 2 cores)
    python benchmarks/model_init.py --quick        # smaller (llama with 4 layers, 1 run each, no profile): prints only
    python benchmarks/model_init.py --thp          # also the THP_MEM_ALLOC_ENABLE=1 rows (~1 min more)
    python benchmarks/model_init.py --run MODEL WAY    # internal: one measured run, prints one JSON line
    python benchmarks/model_init.py --profile MODEL PART   # internal: a part of the breakdown of (c), one JSON line
    python benchmarks/model_init.py --fill             # internal: the fill microbenchmark, prints one JSON line
"""

from __future__ import annotations

import cProfile
import datetime
import gc
import hashlib
import json
import os
import platform
import pstats
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.init as tinit
from torch import nn

import torchinit as ti

RESULTS = Path(__file__).resolve().parent / "results" / "model_init.md"
RUNS = 3
GOAL_TIME, GOAL_PEAK = 0.6, 1.05  # deferred + materialize_: <= 0.6x accelerate's time, peak <= 1.05x parameter bytes
QUICK = "--quick" in sys.argv
WITH_THP = "--thp" in sys.argv


# ---------------------------------------------------------------- transformers without a working torchvision


def _import_torchvision_tolerantly() -> None:
    """tests/_thirdparty.py's tolerant import: the registry's torchvision wheels are CUDA builds whose ops do not
    load beside the CPU torch, and transformers' model modules import torchvision (one helper serves both)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import _thirdparty  # noqa: F401  (importing it does the tolerant import once)


# ---------------------------------------------------------------- models and ways


def llama(layers: int, hidden: int = 2048, ff: int = 5632, vocab: int = 32000, heads: int = 32) -> Callable[[], Any]:
    def make() -> tuple[Any, Any]:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=ff, vocab_size=vocab,
                             num_attention_heads=heads, num_key_value_heads=heads,
                             tie_word_embeddings=False)  # fmt: skip
        return LlamaForCausalLM, config

    return make


def gpt2(layers: int = 12, width: int = 768, heads: int = 12) -> Callable[[], Any]:
    def make() -> tuple[Any, Any]:
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel, GPT2Config(n_layer=layers, n_embd=width, n_head=heads)

    return make


# name -> (full-size factory, warm-up factory, the weight whose std is checked, description)
MODELS: dict[str, tuple[Callable[[], Any], Callable[[], Any], str, str]] = {
    "llama-1b": (llama(4 if QUICK else 16), llama(2, 64, 128, 256, 4), "model.layers.0.self_attn.q_proj.weight",
                 "`LlamaForCausalLM`, hidden 2048, {layers} layers, MLP 5632, vocabulary 32000, 32 heads (MHA), "
                 "untied head"),
    "gpt2-124m": (gpt2(), gpt2(2, 64, 4), "transformer.h.0.attn.c_attn.weight",
                  "`GPT2LMHeadModel(GPT2Config())`: 12 layers, width 768, vocabulary 50257, tied head"),
}  # fmt: skip

THP = {"THP_MEM_ALLOC_ENABLE": "1"}
WAYS: list[tuple[str, str, dict[str, str]]] = [  # (label, way, extra environment)
    ("(a) eager", "eager", {}),
    ("(b) accelerate", "accelerate", {}),
    ("(c) deferred + materialize_", "deferred", {}),
    ("(c) with the fill hook off (patched)", "deferred-nofill", {}),
    ("memset floor", "floor", {}),
]
THP_WAYS = [("(c) with THP_MEM_ALLOC_ENABLE=1", "deferred", THP), ("memset floor with THP_MEM_ALLOC_ENABLE=1",
                                                                       "floor", THP)]  # fmt: skip


def clear_hf_marks(model: nn.Module) -> None:
    """Delete transformers' ``_is_hf_initialized`` marks from every module, parameter and buffer."""
    for obj in [*model.modules(), *model.parameters(), *model.buffers()]:
        obj.__dict__.pop("_is_hf_initialized", None)


def fill_hook_off() -> None:
    """Make Recording.replay ignore its ``fill`` hook (this process only; the source is unchanged)."""
    from torchinit.recording.log import Recording

    original = Recording.replay

    def replay(self: Recording, wanted: Any, device: Any, *, generator_for: Any = None, fill: Any = None,
               **kwargs: Any) -> Any:  # fmt: skip
        return original(self, wanted, device, generator_for=generator_for, **kwargs)

    Recording.replay = replay  # type: ignore[method-assign]


def fill_hook_wired() -> bool:
    """Whether materialize_ in this tree passes a ``fill`` hook to Recording.replay."""
    import inspect

    from torchinit.model import replay

    return "fill=" in inspect.getsource(replay.replay_recording)


def parameter_shapes(cls: Any, config: Any) -> list[tuple[int, ...]]:
    """The distinct parameters' shapes, from a build on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = cls(config)
    return [tuple(p.shape) for p in model.parameters()]


def build(way: str, cls: Any, config: Any) -> tuple[nn.Module | list[torch.Tensor], float]:
    """Build and initialize one way; returns the result and the seconds its construction statement took."""
    start = time.perf_counter()
    if way == "eager":
        model = cls(config)
        return model, time.perf_counter() - start
    if way == "accelerate":
        from accelerate import init_empty_weights

        with init_empty_weights():
            model = cls(config)
        constructed = time.perf_counter() - start
        model.to_empty(device="cpu")
        clear_hf_marks(model)
        model.init_weights()
        return model, constructed
    if way.startswith("deferred"):
        with ti.deferred():
            model = cls(config)
        constructed = time.perf_counter() - start
        ti.materialize_(model)
        return model, constructed
    raise ValueError(way)


def status_kib(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))  # type: ignore


def reset_peak() -> str:
    """Reset VmHWM to the current RSS; returns how the peak is measured."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM"
    except OSError:  # not Linux, or not permitted: ru_maxrss, which may hide a peak below an earlier one
        return "ru_maxrss"


def peak_kib(how: str) -> int:
    if how == "VmHWM":
        return status_kib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)


def buffers_digest(model: nn.Module) -> str:
    h = hashlib.sha1()
    for name, b in sorted(model.named_buffers(), key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(bytes(b.detach().contiguous().view(-1).view(torch.uint8).tolist()))
    return h.hexdigest()[:12]


def one_run(model_name: str, way: str) -> None:
    """Subprocess side: warm up, build + init once, print a JSON line."""
    _import_torchvision_tolerantly()
    make, warm_make, check, _ = MODELS[model_name]
    cls, config = make()
    wcls, wconfig = warm_make()
    if way == "deferred-nofill":
        fill_hook_off()
    torch.manual_seed(0)
    start = time.perf_counter()
    if way == "floor":
        shapes = parameter_shapes(cls, config)
        [torch.empty(s).zero_() for s in parameter_shapes(wcls, wconfig)]  # warm-up
    else:
        build(way, wcls, wconfig)  # warm-up: one-time costs (lazy imports, first dispatch) out of the timing
    warmup = time.perf_counter() - start
    gc.collect()
    how = reset_peak()
    before = status_kib("VmRSS")
    start = time.perf_counter()
    if way == "floor":
        result, constructed = [torch.empty(s).zero_() for s in shapes], 0.0
    else:
        result, constructed = build(way, cls, config)
    seconds = time.perf_counter() - start
    peak = peak_kib(how) - before
    out: dict[str, Any] = {"seconds": seconds, "construct": constructed, "peak_kib": peak, "peak_how": how,
                           "warmup": warmup}
    if isinstance(result, nn.Module):
        params = list(result.parameters())
        assert not any(p.is_meta for p in params), "meta parameters left"
        out["std"] = float(result.get_parameter(check).detach().std())
        out["buffers"] = buffers_digest(result)
        out["param_bytes"] = sum(p.numel() * p.element_size() for p in params)
    else:
        out["param_bytes"] = sum(t.numel() * t.element_size() for t in result)
    print(json.dumps(out))


# ---------------------------------------------------------------- the breakdown of (c)


PROFILE_PARTS = ["materialize", "normal_", "fill_", "zero_"]


def profile(model_name: str, part: str) -> None:
    """Subprocess side: one part of the breakdown of deferred + materialize_ on ``model_name``; prints a JSON line.

    ``materialize``: the constructions (init_empty_weights against deferred, best of 3) and one
    ``materialize_`` under cProfile. ``normal_`` / ``fill_`` / ``zero_``: the same fills without
    torchinit (every 2-D weight, ``normal_(0, 0.02)``; ``zero_`` every parameter): on fresh
    ``torch.empty`` tensors allocated first and filled one after the other as replay does, then on
    the same tensors again (memory faulted in). Each part runs in its own fresh process, so every
    fresh fill meets memory as a benchmark run does.
    """
    _import_torchvision_tolerantly()
    from accelerate import init_empty_weights

    from torchinit.rng import fastfill

    make, warm_make, _, _ = MODELS[model_name]
    cls, config = make()
    out: dict[str, Any] = {}
    if part != "materialize":
        shapes = parameter_shapes(cls, config)
        if part != "zero_":
            shapes = [s for s in shapes if len(s) == 2]  # what materialize_ fills with normal_ (the norms: fill_)
        fills = {
            "normal_": lambda t: t.normal_(0.0, 0.02),
            "fill_": lambda t: fastfill.fill_(t, "normal_", 0.0, 0.02) or t.normal_(0.0, 0.02),
            "zero_": lambda t: t.zero_(),
        }
        fill = fills[part]
        for s in parameter_shapes(*warm_make()):  # warm-up: the pool's threads, lazy code
            fill(torch.empty(s))
        start = time.perf_counter()
        tensors = [torch.empty(s) for s in shapes]
        out["alloc"] = time.perf_counter() - start
        for t in tensors:
            fill(t)
        out["fresh"] = time.perf_counter() - start
        start = time.perf_counter()
        for t in tensors:
            fill(t)
        out["touched"] = time.perf_counter() - start
        print(json.dumps(out))
        return

    build("deferred", *warm_make())

    def construct(ctx: Any) -> float:
        start = time.perf_counter()
        with ctx():
            m = cls(config)
        seconds = time.perf_counter() - start
        del m
        return seconds

    out["construct_empty"] = min(construct(init_empty_weights) for _ in range(3))
    out["construct_deferred"] = min(construct(ti.deferred) for _ in range(3))
    with ti.deferred() as rec:
        model = cls(config)
    out["recorded_ops"] = len(rec.ops)
    live, _ = rec.live_ops(set(rec.produced))
    counts: dict[str, int] = {}
    for i in live:
        counts[rec.ops[i].name] = counts.get(rec.ops[i].name, 0) + 1
    out["live_ops"] = counts
    gc.collect()
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    ti.materialize_(model)
    prof.disable()
    out["materialize"] = time.perf_counter() - start
    out["fill_hook"] = fill_hook_wired()
    stats = pstats.Stats(prof)  # the calling thread only: fill_'s helper threads show as the caller's waits
    torch_ops = waits = python = 0.0
    for (file, _, func), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        # _kernel_fill: the keyed C kernel, called through ctypes, is profiled as this function
        if (file == "~" and ("torch._ops" in func or "torch._C" in func)) or func == "_kernel_fill":
            torch_ops += tottime
        elif file == "~" and "_thread.lock" in func:
            waits += tottime
        else:
            python += tottime
    out["profile_torch_ops"], out["profile_waits"], out["profile_python"] = torch_ops, waits, python
    out["profile_top"] = [
        f"{tt:.3f} s {n} calls {func if file == '~' else Path(file).name + ':' + str(line) + ' ' + func}"
        for (file, line, func), (_, n, tt, _, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:6]  # type: ignore
    ]
    print(json.dumps(out))


# ---------------------------------------------------------------- the fill microbenchmark


FILL_CASES = [((4096, 4096), torch.float32), ((1024, 1024), torch.float32), ((4096, 4096), torch.bfloat16)]
FILL_REPEATS = 11


def fill_bench() -> None:
    """Subprocess side: torch's normal_/uniform_ against fastfill.fill_ on preallocated, touched tensors."""
    from torchinit.rng import fastfill

    rows = []
    gen = torch.Generator()
    for shape, dtype in FILL_CASES:
        t = torch.empty(shape, dtype=dtype).zero_()
        for kind, params in (("normal_", (0.0, 0.02)), ("uniform_", (-0.1, 0.1))):
            calls = {
                # called within this iteration only: the defaults just bind this iteration's t, kind, params
                "torch": lambda t=t, kind=kind, params=params: getattr(t, kind)(*params, generator=gen),
                "fill_": lambda t=t, kind=kind, params=params: fastfill.fill_(t, kind, *params, generator=gen),
            }
            samples: dict[str, list[float]] = {k: [] for k in calls}
            for i in range(-1, FILL_REPEATS):  # -1: warm-up
                for k, call in calls.items():
                    gen.manual_seed(0)
                    start = time.perf_counter()
                    call()
                    if i >= 0:
                        samples[k].append((time.perf_counter() - start) * 1e3)
            rows.append({"shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "kind": kind,
                         **{k: statistics.median(v) for k, v in samples.items()}})  # fmt: skip
    from torchinit.rng import keyed

    print(json.dumps({"rows": rows, "threads": keyed.threads(), "chunk": keyed.CHUNK,
                      "threshold": fastfill.THRESHOLD, "kernel": keyed.KERNEL is not None}))  # fmt: skip


# ---------------------------------------------------------------- the 135M transformer-shaped model

VOCAB, WIDTH, LAYERS, FF = 32000, 1024, 8, 4096
STD = 0.02
SIGMA_U = STD / ti.truncated_std_factor(2.0)  # the untruncated std whose +-2 sigma truncation has std 0.02
SPEEDUP_TARGET, MEMORY_TARGET = 2.5, 1.3  # the goal: >= 2.5x faster than eager + apply, peak <= 1.3x the parameters


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.fc1, self.fc2 = nn.Linear(WIDTH, FF), nn.Linear(FF, WIDTH)


class TransformerLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.wte.weight


POLICY = ti.Policy([
    (nn.Linear, {"weight": ti.TruncNormalStd(std=STD), "bias": ti.Zeros()}),
    (nn.Embedding, {"weight": ti.Normal(std=STD)}),
    (nn.LayerNorm, {"weight": ti.Ones(), "bias": ti.Zeros()}),
])  # fmt: skip


def gpt_style(lib: Any, trunc_normal: Callable[[torch.Tensor], Any]) -> Callable[[nn.Module], None]:
    """The ``model.apply`` function of the eager ways, with ``lib``'s functions (torch.nn.init or torchinit)."""

    def init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal(m.weight)
            if m.bias is not None:
                lib.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            lib.normal_(m.weight, std=STD)
        elif isinstance(m, nn.LayerNorm):
            lib.ones_(m.weight)
            lib.zeros_(m.bias)

    return init


torch_apply = gpt_style(tinit, lambda w: tinit.trunc_normal_(w, std=SIGMA_U, a=-2 * SIGMA_U, b=2 * SIGMA_U))
torchinit_apply = gpt_style(ti, lambda w: ti.trunc_normal_std_(w, std=STD))
ISSUE5_WAYS = ["eager + torch.nn.init apply", "eager + torchinit apply", "deferred + materialize_"]


def issue5_build(way: str) -> nn.Module:
    if way == "eager + torch.nn.init apply":
        model = TransformerLM()
        model.apply(torch_apply)
    elif way == "eager + torchinit apply":
        model = TransformerLM()
        model.apply(torchinit_apply)
    else:
        with ti.deferred():
            model = TransformerLM()
        ti.materialize_(model, POLICY, strict=True)
    return model


def issue5_run(way: str) -> None:
    torch.manual_seed(0)
    how = reset_peak()
    before = status_kib("VmRSS")
    start = time.perf_counter()
    model = issue5_build(way)
    seconds = time.perf_counter() - start
    assert not any(p.is_meta for p in model.parameters())
    print(json.dumps({"seconds": seconds, "peak_kib": peak_kib(how) - before}))


# ---------------------------------------------------------------- the parent


def child(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, **(env or {})}).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def source_state() -> str:
    """The commit, whether src/ has uncommitted changes, and whether materialize_ passes the fill hook."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
        where = f"commit {head}" + (" with uncommitted changes in src/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        where = "not a git checkout"
    return f"{where}; materialize_ passes the fill hook: {'yes' if fill_hook_wired() else 'no'}"


def load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def fmt_s(runs: list[float]) -> tuple[str, str]:
    return f"{statistics.median(runs):.2f}", f"{min(runs):.2f}–{max(runs):.2f}"


def model_section(name: str, results: dict[str, list[dict[str, Any]]], ways: list[tuple[str, str, dict]]) -> list[str]:
    runs = RUNS if not QUICK else 1
    param_bytes = results[ways[0][0]][0]["param_bytes"]
    eager_buffers = results["(a) eager"][0].get("buffers")
    acc = statistics.median(r["seconds"] for r in results["(b) accelerate"])
    rows = []
    for label, way, _ in ways:
        rs = results[label]
        med, spread = fmt_s([r["seconds"] for r in rs])
        constructed = statistics.median(r["construct"] for r in rs)
        peak = statistics.median(r["peak_kib"] for r in rs) * 1024
        std = "—" if way == "floor" else f"{statistics.median(r['std'] for r in rs):.4f}"
        buffers = "—" if way == "floor" else ("yes" if all(r["buffers"] == eager_buffers for r in rs) else "**NO**")
        warmup = "—" if way == "floor" else f"{statistics.median(r['warmup'] for r in rs):.2f}"
        rows.append(f"| {label} | {med} | {spread} | {'—' if way == 'floor' else f'{constructed:.2f}'} | "
                    f"{statistics.median(r['seconds'] for r in rs) / acc:.2f}× | {peak / 2**20:.0f} | "
                    f"{peak / param_bytes:.2f}× | {std} | {buffers} | {warmup} |")  # fmt: skip
    ratio = lambda label: statistics.median(r["seconds"] for r in results[label]) / acc  # noqa: E731
    peak_of = lambda label: statistics.median(r["peak_kib"] for r in results[label]) * 1024 / param_bytes  # noqa: E731
    goal = []
    for label in ("(c) deferred + materialize_", "(c) with the fill hook off (patched)"):
        ok = ratio(label) <= GOAL_TIME and peak_of(label) <= GOAL_PEAK
        verdict = ("**met**" if ok else "**not met**") if label.endswith("materialize_") else "(for reference)"
        goal.append(f"{label}: {ratio(label):.2f}× accelerate's time at {peak_of(label):.2f}× the parameter bytes: "
                    f"{verdict}")  # fmt: skip
    numel = param_bytes // 4
    desc = MODELS[name][3].format(layers=4 if QUICK else 16)
    return [
        f"## {name}: {numel / 1e6:,.1f}M parameters, {param_bytes / 2**20:,.0f} MiB in fp32",
        "",
        f"{desc}. {runs} run(s) per way, each in a fresh process; checked weight: `{MODELS[name][2]}`.",
        "",
        "| way | time (s), median | min–max (s) | of which construction (s) | time / accelerate | peak (MiB) | "
        "peak / parameter bytes | weight std | buffers = eager | warm-up build (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Goal (deferred + materialize_ ≤ {GOAL_TIME}× accelerate's time, peak ≤ {GOAL_PEAK}× the parameter "
        "bytes):",
        "",
        *[f"* {g}" for g in goal],
        "",
    ]


def profile_section(p: dict[str, Any]) -> list[str]:
    live = ", ".join(f"{n} {k}" for k, n in p["live_ops"].items())
    hook = "with" if p["fill_hook"] else "**without**"
    n, f, z = p["normal_"], p["fill_"], p["zero_"]
    same = f["fresh"] if p["fill_hook"] else n["fresh"]
    return [
        "## Where (c)'s time goes (llama-1b)",
        "",
        f"`model_init.py --profile llama-1b PART`, each part in its own fresh process; materialize_ as the source "
        f"stands ({hook} the fill hook). **materialize**: the constructions best of 3, then one `materialize_` "
        "under cProfile (which sees the calling thread only: the fill_ threads' work shows as its waits). "
        "**normal_ / fill_ / zero_**: the same fills without torchinit (every 2-D weight `normal_(0, 0.02)`, "
        "i.e. the live normal_ ops; zero_ on every parameter), on fresh `torch.empty` tensors allocated first and "
        "filled one after the other as replay does, then on the same tensors again (memory faulted in).",
        "",
        "| part | seconds | how measured |",
        "|---|---|---|",
        f"| construction under `init_empty_weights()` (no recording) | {p['construct_empty']:.3f} | best of 3 |",
        f"| construction under `deferred()` ({p['recorded_ops']} ops recorded) | {p['construct_deferred']:.3f} | "
        f"best of 3: recording overhead {p['construct_deferred'] - p['construct_empty']:+.3f} s |",
        f"| **`materialize_`** | **{p['materialize']:.2f}** | one call under cProfile; live ops: {live} |",
        f"| … torch operations and the keyed kernel in the calling thread | {p['profile_torch_ops']:.2f} | cProfile "
        "tottime of torch builtins and of `keyed._kernel_fill` (the ctypes call) |",
        f"| … waiting for fill_'s other threads | {p['profile_waits']:.2f} | cProfile tottime of lock waits |",
        f"| … Python (analysis, replay loop, fill_'s chunk dispatch, commit, report) | {p['profile_python']:.3f} | "
        "cProfile tottime of everything else |",
        f"| the same fills without torchinit | {same:.2f} | materialize_ − this = {p['materialize'] - same:+.2f} s "
        "(noise included) |",
        f"| **torch `normal_`, fresh tensors** (serial) | **{n['fresh']:.2f}** | what the weights cost without "
        "fill_ (accelerate and (c) with the hook off pay it; eager twice, uniform_ then normal_) |",
        f"| … RNG: `normal_` on memory faulted in | {n['touched']:.2f} | one core: torch's CPU `normal_` is "
        "serial |",
        f"| … first-touch page faults, serial | {n['fresh'] - n['touched']:.2f} | fresh − faulted in |",
        f"| **`fastfill.fill_`, fresh tensors** | **{f['fresh']:.2f}** | {n['fresh'] / f['fresh']:.2f}× faster "
        "than `normal_` fresh |",
        f"| … `fill_` on memory faulted in | {f['touched']:.2f} | {n['touched'] / f['touched']:.2f}× faster than "
        "`normal_` |",
        f"| … first-touch page faults under `fill_` | {f['fresh'] - f['touched']:.2f} | fresh − faulted in: "
        "split over the threads too |",
        f"| `zero_`, fresh tensors | {z['fresh']:.2f} | page faults + memset (2 threads); memset alone (faulted "
        f"in) {z['touched']:.2f} s; allocation alone {z['alloc']:.3f} s |",
        "",
        "cProfile's top entries (tottime): " + "; ".join(f"`{t}`" for t in p["profile_top"]) + ".",
        "",
    ]


def fill_section(f: dict[str, Any]) -> list[str]:
    rows = []
    for r in f["rows"]:
        shape = "×".join(map(str, r["shape"]))
        rows.append(f"| `{r['kind']}` | {shape} {r['dtype']} | {r['torch']:.1f} | {r['fill_']:.1f} | "
                    f"{r['torch'] / r['fill_']:.2f}× |")  # fmt: skip
    return [
        "## fastfill.fill_ against torch's fill",
        "",
        f"`python benchmarks/model_init.py --fill`, one fresh process: preallocated tensors touched first, median of "
        f"{FILL_REPEATS} after a warm-up, interleaved, generator reseeded before every call. fill_ uses "
        f"{f['threads']} threads here (the caller's included), chunks of {f['chunk']:,} elements, threshold "
        f"{f['threshold']:,} elements; values from the keyed Philox stream's C kernel (built: {f['kernel']}).",
        "",
        "| call | tensor | torch (ms) | fill_ (ms) | speedup |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def issue5_section(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    with ti.deferred():
        probe_model = TransformerLM()
    numel = sum(p.numel() for p in probe_model.parameters())
    param_mib = numel * 4 / 2**20
    med = {w: (statistics.median(r["seconds"] for r in rs), statistics.median(r["peak_kib"] for r in rs) / 1024)
           for w, rs in results.items()}  # fmt: skip
    ours_s, ours_mib = med["deferred + materialize_"]
    rows = [
        f"| {w} | {s:.2f} | {s / ours_s:.2f}× | {mib:.0f} | {mib / param_mib:.2f}× |" for w, (s, mib) in med.items()
    ]
    speedup = med["eager + torch.nn.init apply"][0] / ours_s
    return [
        "## A transformer-shaped model with a GPT-style Policy",
        "",
        f"Vocabulary {VOCAB}, width {WIDTH}, {LAYERS} layers, MLP {FF}, tied head: {numel / 1e6:.1f}M parameters, "
        f"{param_mib:.0f} MiB in fp32. Init: Linear weights truncated normal std {STD} at ±2σ, biases 0, "
        f"embedding N(0, {STD}), LayerNorm 1/0 (a `model.apply` for the eager ways, a Policy for materialize_). "
        "Same measurement as above, no warm-up.",
        "",
        "| way | time (s) | time / materialize_ | peak (MiB) | peak / parameter bytes |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Targets: deferred + materialize_ at least {SPEEDUP_TARGET}× faster than eager construction with "
        f"a `model.apply` re-init ({speedup:.2f}×: {'met' if speedup >= SPEEDUP_TARGET else '**not met**'}), and "
        f"peak memory at most {MEMORY_TARGET}× the parameter bytes ({ours_mib / param_mib:.2f}×: "
        f"{'met' if ours_mib <= MEMORY_TARGET * param_mib else '**not met**'}).",
        "",
    ]


def main() -> None:
    if sys.argv[1:2] == ["--run"]:
        one_run(sys.argv[2], sys.argv[3])
        return
    if sys.argv[1:2] == ["--issue5"]:
        issue5_run(sys.argv[2])
        return
    if sys.argv[1:2] == ["--profile"]:
        profile(sys.argv[2], sys.argv[3])
        return
    if sys.argv[1:2] == ["--fill"]:
        fill_bench()
        return
    runs = 1 if QUICK else RUNS
    quick = ["--quick"] if QUICK else []
    start, load_start, source_start = time.perf_counter(), load(), source_state()
    if os.getloadavg()[0] > 0.5:
        print(f"warning: load average {load_start} before the benchmark: other processes will skew it", file=sys.stderr)
    sections: list[str] = []
    for name in MODELS:
        ways = WAYS + (THP_WAYS if name == "llama-1b" and WITH_THP else [])
        results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in ways}
        for i in range(runs):
            for label, way, env in ways:
                r = child("--run", name, way, *quick, env=env)
                results[label].append(r)
                print(f"{name} {label} run {i + 1}: {r['seconds']:.2f} s, peak +{r['peak_kib'] / 1024:.0f} MiB, "
                      f"std {r.get('std', float('nan')):.4f}", file=sys.stderr)  # fmt: skip
        sections += model_section(name, results, ways)
    if not QUICK:
        p = child("--profile", "llama-1b", "materialize")
        for part in PROFILE_PARTS[1:]:
            p[part] = child("--profile", "llama-1b", part)
        print(f"profile: {json.dumps(p)}", file=sys.stderr)
        sections += profile_section(p)
    f = child("--fill")
    sections += fill_section(f)
    issue5: dict[str, list[dict[str, Any]]] = {w: [] for w in ISSUE5_WAYS}
    for _ in range(runs):
        for w in ISSUE5_WAYS:
            issue5[w].append(child("--issue5", w))
    sections += issue5_section(issue5)
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            names = [ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    import transformers

    lines = [
        "# Whole-model initialization: deferred + materialize_ against eager and accelerate",
        "",
        "Written by `make bench` (`benchmarks/model_init.py`; notes in `benchmarks/NOTES_model_init.md`).",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPUs, {platform.platform()}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Load average (1/5/15 min) at the start "
        f"{load_start}, at the end {load()}. Source: {source_start}"
        + ("." if source_state() == source_start else f"; **at the end: {source_state()}** (changed during the run)."),
        "",
        "Each way runs in a fresh process: imports, a warm-up build of a 2-layer model of the same class the same "
        "way, then the measured build + init (wall time, `time.perf_counter`). **of which construction**: the "
        "`Model(config)` statement alone (for (c) the recording). **time / accelerate**: ratio of medians "
        "within this run. **peak**: the peak resident set during build + init above the resident set just before "
        "(VmHWM reset through `/proc/self/clear_refs`, then VmHWM − VmRSS). **weight std**: of the checked weight "
        "(0.02 expected). **buffers = eager**: every buffer (the RoPE `inv_freq`) equals eager construction's. "
        "**(c) with the fill hook off**: `Recording.replay`'s `fill` argument dropped by a monkeypatch in that "
        "process, so every fill is torch's serial one. **memset floor**: `torch.empty(n).zero_()` for every "
        "parameter's size. **warm-up build**: the untimed first build of the process (a 2-layer model of the "
        "same class, the same way): mostly one-time costs a one-shot script pays on top of the timed column.",
        "",
        *sections,
        f"Total benchmark time: {(time.perf_counter() - start) / 60:.1f} min.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not QUICK:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
