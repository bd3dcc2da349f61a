"""One rank of the multi-process sharding tests (tests/model/test_sharded*.py): ``python _sharded_worker.py OUT
[SCENARIO,...]``.

Reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the environment (as torchrun sets
them), joins a gloo process group, runs the scenarios (default :data:`SCENARIOS`), and on
rank 0 saves the full value of every tensor it initialized to ``OUT`` (``torch.save`` of
{scenario: {name: value}}). The model builders and the expected single-process values live
here too, so the test and the ranks share one definition. Once the results are written the
process leaves with ``os._exit`` (see :func:`main`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

import torchinit as ti

SEED = 1234


def _distributed_problem() -> str | None:
    """Why the ranks cannot run here (None when they can): gloo, DTensor and FSDP2 (public from torch 2.6)."""
    import torch.distributed as dist

    if not dist.is_available():
        return "torch.distributed is not available in this torch build"
    if not dist.is_gloo_available():
        return "torch.distributed has no gloo backend in this torch build"
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
        from torch.distributed.tensor import distribute_tensor  # noqa: F401
    except ImportError as err:
        return f"DTensor/FSDP2 are not available in torch {torch.__version__}: {err}"
    return None


#: why the sharding tests skip, or None
PROBLEM = _distributed_problem()


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs"))
from sharded_example import Model  # noqa: E402  (the documented example's model: one definition)


def TinyLM() -> nn.Module:  # named like the class it stands for
    """The example's model with uneven sizes on purpose: 13 and 7 do not split evenly over 2 or 4 ranks."""
    return Model(vocab=13, width=10, hidden=7, depth=2)


#: The rules (a preset-like policy): every random value comes from a rule or from the model's own init.
def policy() -> ti.Policy:
    return ti.Policy([
        (nn.Linear, {"weight": ti.TruncNormalStd(std=0.02), "bias": ti.Zeros()}),
        ("*.down.weight", ti.Orthogonal(gain=0.5)),  # a whole-matrix scheme: computed whole, sliced
        (nn.Embedding, {"weight": ti.Normal(std=1.0)}),
    ])  # fmt: skip


#: (shape, initializer name, call) for the placement scenario; each call takes (tensor, seed=, name=).
def calls() -> list[tuple[tuple[int, ...], str, object]]:
    return [
        ((7, 5), "normal_", lambda t, **k: ti.normal_(t, 0.5, 2.0, **k)),
        ((7, 5), "uniform_", lambda t, **k: ti.uniform_(t, -1.0, 1.0, **k)),
        ((7, 5), "normal_c64", lambda t, **k: ti.normal_(t.to(torch.complex64), 0.0, 1.0, **k)),
        ((9, 6), "trunc_normal_", lambda t, **k: ti.trunc_normal_(t, 0.0, 1.0, -1.5, 2.0, **k)),
        ((9, 6), "trunc_normal_std_", lambda t, **k: ti.trunc_normal_std_(t, 0.02, **k)),
        ((6, 9), "trunc_normal_std_f64", lambda t, **k: ti.trunc_normal_std_(t.double(), 0.02, **k)),
        ((6, 9), "kaiming_normal_", lambda t, **k: ti.kaiming_normal_(t, **k)),
        ((5, 11), "xavier_uniform_", lambda t, **k: ti.xavier_uniform_(t, **k)),
        ((10, 6), "variance_scaling_", lambda t, **k: ti.variance_scaling_(t, 2.0, "fan_avg", **k)),
        ((6, 10), "orthogonal_", lambda t, **k: ti.orthogonal_(t, **k)),
        ((10, 6), "sparse_", lambda t, **k: ti.sparse_(t, 0.3, **k)),
        ((5, 8), "glass_", lambda t, **k: ti.glass_(t, **k)),
        ((6, 6), "eye_", lambda t, **k: ti.eye_(t)),
        ((8, 4), "hadamard_", lambda t, **k: ti.hadamard_(t)),
        ((6, 4, 3, 3), "delta_orthogonal_", lambda t, **k: ti.delta_orthogonal_(t, **k)),
        ((6, 4, 3, 3), "kaiming_uniform_4d", lambda t, **k: ti.kaiming_uniform_(t, **k)),
    ]


def placements_for(ndim_mesh: int) -> list[tuple]:
    from torch.distributed.tensor import Replicate, Shard

    if ndim_mesh == 1:
        return [(Shard(0),), (Shard(1),), (Replicate(),)]
    return [(Shard(0), Shard(1)), (Shard(0), Replicate()), (Replicate(), Shard(1)), (Shard(0), Shard(0)),
            (Shard(1), Shard(0))]


def expected_calls() -> dict[str, torch.Tensor]:
    """The single-process values of every call (the reference every placement must reproduce)."""
    return {name: fn(torch.empty(shape), seed=SEED, name=name) for shape, name, fn in calls()}


def expected_model(which: str) -> dict[str, torch.Tensor]:
    """Single-process ``materialize_`` of the unsharded model: ``policy``, ``own`` (no policy) or ``torch_default``
    with ``seed=SEED``, built on meta; ``partial``: :func:`partial_model` built under ``deferred()``;
    ``generator``: ``torch_default`` with a generator."""
    if which == "partial":
        with ti.deferred():
            model = partial_model()
        ti.materialize_(model, partial_policy(), seed=SEED)
        return {n: p.detach().clone() for n, p in model.named_parameters()} | \
            {n: b.detach().clone() for n, b in model.named_buffers()}  # fmt: skip
    with torch.device("meta"):
        model = TinyLM()
    if which == "generator":
        ti.materialize_(model, ti.presets.torch_default(), generator=torch.Generator().manual_seed(3))
    else:
        ti.materialize_(model, policy() if which == "policy" else None, seed=SEED)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def partial_model() -> nn.Module:
    """Tensor parallel on the blocks only: a tied embedding/head, a buffer shared by two blocks, a constructor value
    (recorded under deferred()) and a flagged parameter all stay plain or keep what they had."""
    model = TinyLM()
    model.head.weight = model.embed.weight
    scale = torch.arange(10, dtype=torch.float32)
    for block in model.blocks:
        block.register_buffer("scale", scale)
    model.gamma = nn.Parameter(1e-5 * torch.ones(10))
    model.gamma.no_decay = True
    return model


def partial_policy() -> ti.Policy:
    return ti.Policy([("blocks.*.weight", ti.Normal(std=0.02))])


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


SCENARIOS = ("placements", "fsdp", "fsdp_own", "fsdp_apply", "tp", "tp_apply", "tp_fsdp", "fault", "generator",
             "partial")
#: Scenarios run only when asked for (tests/model/test_sharded_wrappers.py).
EXTRA_SCENARIOS = ("checkpointed", "checkpointed_own", "order", "ddp", "mup")


def mup_base() -> nn.Module:
    """TinyLM's base for muP: width 5 (of 10), hidden 4 (of 7): every width dim grows, by uneven ratios."""
    return Model(vocab=13, width=5, hidden=4, depth=2)


def mup_policy(model: nn.Module, base: nn.Module) -> ti.Policy:
    """muP's init (std 0.02), and the norms' weights, which muP leaves to a model with no init method of its own."""
    import torchinit.mup as mup

    return mup.policy(model, base, std=0.02) + ti.Policy([("*.norm.weight", ti.Ones())])


def mup_step(model: nn.Module, base: nn.Module) -> tuple[list[tuple[str, float, float, list[str]]], torch.Tensor]:
    """muP's init is done: build AdamW from muP's groups, take one step on fixed tokens; the groups (kind, lr,
    weight decay, names) and the loss."""
    import torchinit.mup as mup

    groups = mup.param_groups(model, base, lr=1e-2, weight_decay=0.1)
    opt = torch.optim.AdamW(groups)
    tokens = torch.arange(24).reshape(3, 8) % 13
    loss = model(tokens).float().square().mean()
    loss.backward()
    opt.step()
    return [(g["kind"], g["lr"], g["weight_decay"], g["names"]) for g in groups], loss.detach()


class DrawsOutOfOrder(nn.Module):
    """A model whose init method fills ``b`` before ``a`` (parameter order: a, b, c), and interleaves ``c``'s two
    random fills with ``a``'s: the global RNG must be drawn in this order, not in parameter order."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.empty(6, 4))
        self.b = nn.Parameter(torch.empty(6, 4))
        self.c = nn.Parameter(torch.empty(6, 4))

    def init_weights(self) -> None:
        nn.init.normal_(self.b)
        nn.init.normal_(self.c)
        nn.init.uniform_(self.a)
        with torch.no_grad():
            self.c.add_(torch.rand(6, 4))


def expected_out_of_order() -> dict[str, torch.Tensor]:
    """One process: ``materialize_`` of :class:`DrawsOutOfOrder` built on meta, under ``torch.manual_seed(SEED)``."""
    with torch.device("meta"):
        model = DrawsOutOfOrder()
    torch.manual_seed(SEED)
    ti.materialize_(model)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def checkpointed(model: nn.Module) -> nn.Module:
    """``model`` with every block wrapped by activation checkpointing, as torchtitan does before ``fully_shard``."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(block)
    return model


class Interrupting(ti.Normal):
    """A rule that raises KeyboardInterrupt on its third call: materialize_ must leave the model as it was."""

    calls = 0

    def init(self, tensor, **randomness):  # type: ignore[override]
        Interrupting.calls += 1
        if Interrupting.calls == 3:
            raise KeyboardInterrupt
        return super().init(tensor, **randomness)


def run(scenario: str) -> dict[str, object]:
    """One scenario on this rank; the full value of every tensor it initialized (all ranks gather)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    world = dist.get_world_size()
    out: dict[str, object] = {}
    if scenario == "placements":
        meshes = [init_device_mesh("cpu", (world,))]
        if world == 4:
            meshes.append(init_device_mesh("cpu", (2, 2)))
        for mesh in meshes:
            for placements in placements_for(mesh.ndim):
                for shape, name, fn in calls():
                    if any(getattr(p, "dim", 0) >= len(shape) for p in placements):
                        continue
                    t = distribute_tensor(torch.full(shape, float("nan")), mesh, placements)
                    whole = _WHOLE["count"]
                    result = fn(t, seed=SEED, name=name)
                    key = f"{name}|{mesh.ndim}|{placements}"
                    out[key] = _full(result)
                    out[f"whole|{key}"] = _WHOLE["count"] - whole  # full-size temporaries this call made
        return out
    if scenario == "partial":
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        with ti.deferred():
            model = partial_model()
        plan = {f"blocks.{i}.{n}": (ColwiseParallel() if n == "up" else RowwiseParallel())
                for i in range(len(model.blocks)) for n in ("up", "down")}
        parallelize_module(model, init_device_mesh("cpu", (world,)), plan)
        model.blocks[0].up.weight.no_decay = True  # (parallelize_module itself drops attributes: set after it)
        ti.materialize_(model, partial_policy(), seed=SEED)
        out["checks"] = {
            "tied": model.head.weight is model.embed.weight,
            "shared buffer": model.blocks[0].scale is model.blocks[1].scale,
            "attributes": getattr(model.blocks[0].up.weight, "no_decay", None) is True and model.gamma.no_decay is True,
        }
        for name, b in model.named_buffers():
            out[name] = _full(b)
    elif scenario == "mup":
        from torch.distributed.fsdp import fully_shard

        import torchinit.mup as mup

        mesh = init_device_mesh("cpu", (world,))
        with torch.device("meta"):
            model, base = TinyLM(), mup_base()
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        out["roles"] = mup.roles(model, base)  # DTensors: their global shapes
        ti.materialize_(model, mup_policy(model, base), seed=SEED)
        out["init"] = {n: _full(p).detach().clone() for n, p in model.named_parameters()}
        out["groups"], out["loss"] = mup_step(model, base)
    elif scenario in ("ddp", "order"):
        model = _run_ddp() if scenario == "ddp" else _run_out_of_order(init_device_mesh("cpu", (world,)))
    elif scenario in ("fsdp", "fsdp_own", "fsdp_apply", "fault", "generator", "checkpointed", "checkpointed_own"):
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        with torch.device("meta"):
            model = TinyLM()
        if scenario.startswith("checkpointed"):
            checkpointed(model)
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        if scenario == "fault":
            interrupting = policy() + ti.Policy([(nn.Linear, {"weight": Interrupting(std=0.02)})])
            try:
                ti.materialize_(model, interrupting, seed=SEED)
            except KeyboardInterrupt:
                out["after_fault"] = [(n, p.is_meta, type(p.data).__name__) for n, p in model.named_parameters()]
            ti.materialize_(model, policy(), seed=SEED)  # then it works, as if nothing had happened
        elif scenario == "fsdp_apply":  # the torchtitan flow: to_empty, then init (here: torch's own, then rules)
            model.to_empty(device="cpu")
            ti.presets.torch_default().apply_(model, seed=SEED)
            policy().apply_(model, seed=SEED)
        elif scenario == "generator":
            ti.materialize_(model, ti.presets.torch_default(), generator=torch.Generator().manual_seed(3))
        else:
            whole = _WHOLE["replays"]
            report = ti.materialize_(model, policy() if scenario in ("fsdp", "checkpointed") else None, seed=SEED)
            out["whole replays"] = _WHOLE["replays"] - whole  # own-init values computed whole
            if dist.get_rank() == 0:
                out["report"] = str(report)  # on one rank only: no collective may hide in it
    elif scenario in ("tp", "tp_apply", "tp_fsdp"):
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        if scenario == "tp":
            tp_mesh = init_device_mesh("cpu", (world,))
        else:
            mesh2 = init_device_mesh("cpu", (max(world // 2, 1), min(world, 2)), mesh_dim_names=("dp", "tp"))
            tp_mesh = mesh2["tp"]
        if scenario == "tp_apply":  # a model with values (torch's), parallelized, then re-initialized by rules
            torch.manual_seed(dist.get_rank())  # the ranks' own values differ: none may survive
            model = TinyLM()
        else:
            with torch.device("meta"):
                model = TinyLM()
        plan: dict[str, object] = {}
        for i in range(len(model.blocks)):
            plan[f"blocks.{i}.up"] = ColwiseParallel()
            plan[f"blocks.{i}.down"] = RowwiseParallel()
        parallelize_module(model, tp_mesh, plan)
        if scenario == "tp_fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks:
                fully_shard(block, mesh=mesh2["dp"])
            fully_shard(model, mesh=mesh2["dp"])
        if scenario == "tp_apply":
            policy().apply_(model, seed=SEED)
        else:
            ti.materialize_(model, policy(), seed=SEED)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    for name, p in model.named_parameters():
        name = name.replace("_checkpoint_wrapped_module.", "")  # compared with the unwrapped model
        out[name] = _full(p.detach())
        out[f"type|{name}"] = f"{type(p.data).__name__} {tuple(getattr(p, 'placements', ()))}"
    out["fingerprint"] = ti.fingerprint(model)
    return out


def _run_out_of_order(mesh: object) -> nn.Module:
    """:class:`DrawsOutOfOrder` on meta, FSDP2-sharded, materialized from the global RNG (no seed=/generator=)."""
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        model = DrawsOutOfOrder()
    fully_shard(model, mesh=mesh)
    torch.manual_seed(SEED)  # the same global RNG state on every rank
    ti.materialize_(model)
    return model


def _run_ddp() -> nn.Module:
    """TinyLM wrapped in DDP (it needs real tensors), then initialized by rules and by torch's defaults with seed=;
    the names are reported without DDP's ``module.``."""
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(TinyLM())
    ti.presets.torch_default().apply_(model, seed=SEED)
    policy().apply_(model, seed=SEED)
    return _Unwrapped(model.module)


class _Unwrapped(nn.Module):
    """The module a wrapper holds, registered under the wrapper's own names (what the results are keyed by)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        for name, child in inner.named_children():
            self.add_module(name, child)


#: How many times a call computed a whole tensor to keep its local part (torchinit.rng.sampling.local_part), and
#: how many own-init values sharded materialize_ replayed whole (torchinit.model.sharded.replay_recording).
_WHOLE = {"count": 0, "replays": 0}


def _count_whole() -> None:
    import torchinit.model.sharded as sharded
    import torchinit.rng.sampling as sampling

    original, replay = sampling.local_part, sharded.replay_recording

    def counted(t: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        _WHOLE["count"] += 1
        return original(t, full)

    def replayed(*args, **kwargs):
        _WHOLE["replays"] += 1
        return replay(*args, **kwargs)

    sampling.local_part = counted  # type: ignore[assignment]
    sharded.replay_recording = replayed  # type: ignore[assignment]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, out: Path, scenarios: tuple[str, ...] = SCENARIOS,
           timeout: float = 180.0) -> list[tuple[int, str]]:
    """Run this worker on ``world`` ranks (a free port, one thread each); return each rank's exit code and output.
    No process outlives this call: past ``timeout`` seconds (all ranks together) every rank is killed."""
    port = free_port()
    procs: list[subprocess.Popen] = []
    src = str(Path(ti.__file__).resolve().parents[1])
    try:
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
            procs.append(subprocess.Popen([sys.executable, __file__, str(out), ",".join(scenarios)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        deadline = time.monotonic() + timeout
        results = []
        for p in procs:
            output, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, output))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def main() -> None:
    import torch.distributed as dist

    path = sys.argv[1]
    scenarios = sys.argv[2].split(",") if len(sys.argv) > 2 else SCENARIOS
    warnings.filterwarnings("ignore", message="materialize_: re-enacting")  # TinyLM has no init method: known
    warnings.filterwarnings("ignore", message="While redistributing")  # DTensor's note on 2-D gathers
    _count_whole()
    dist.init_process_group("gloo")
    try:
        results = {scenario: run(scenario) for scenario in scenarios}
        if dist.get_rank() == 0:
            torch.save(results, path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def leave(code: int) -> None:
    """End the process now, with ``code``, once stdout and stderr are flushed.

    gloo's worker threads outlive ``destroy_process_group()`` and can abort the process at interpreter exit
    ("terminate called without an active exception"); the results are written by then, so nothing is lost.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()
        leave(1)
    leave(0)
