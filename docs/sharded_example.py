"""Sharded init with no seed checkpoint: the same weights on any number of ranks (docs/sharded.md).

Run on CPU with gloo, at several world sizes, and compare the fingerprints::

    torchrun --nproc-per-node 1 docs/sharded_example.py
    torchrun --nproc-per-node 2 docs/sharded_example.py
    torchrun --nproc-per-node 4 docs/sharded_example.py

The flow is torchtitan's (build on meta, shard, allocate, initialize) with one change: the
initial weights come from ``torchinit.materialize_(model, policy, seed=0)``, whose values
are a function of (seed, parameter name) alone, so no rank has to write a seed checkpoint
for the others to load.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import torchinit as ti


class Block(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class Model(nn.Module):
    def __init__(self, vocab: int = 1000, width: int = 64, hidden: int = 256, depth: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(Block(width, hidden) for _ in range(depth))
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


POLICY = ti.Policy([
    (nn.Linear, {"weight": ti.TruncNormalStd(std=0.02), "bias": ti.Zeros()}),
    ("*.down.weight", ti.TruncNormalStd(std=0.02 / (2 * 4) ** 0.5)),  # GPT-2's scaled residual projections
    (nn.Embedding, {"weight": ti.Normal(std=0.02)}),
    (nn.LayerNorm, {"weight": ti.Ones(), "bias": ti.Zeros()}),
])  # fmt: skip


def fsdp_model(world: int) -> nn.Module:
    """FSDP2: every block and the root sharded on dim 0 over all ranks (FSDP2 also takes uneven shards)."""
    # imported where used, so that the model class above imports on a torch without FSDP2 (before 2.6)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        model = Model()
    mesh = init_device_mesh("cpu", (world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def tp_model(world: int) -> nn.Module:
    """Tensor parallel: each block's up projection column-wise, its down projection row-wise (the hidden size must
    divide evenly: torch's tensor-parallel forward does not run uneven shards)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    with torch.device("meta"):
        model = Model()
    plan = {}
    for i in range(len(model.blocks)):
        plan[f"blocks.{i}.up"] = ColwiseParallel()
        plan[f"blocks.{i}.down"] = RowwiseParallel()
    return parallelize_module(model, init_device_mesh("cpu", (world,)), plan)


def main() -> None:
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    try:
        prints = {}
        for kind, build in (("FSDP2", fsdp_model), ("TP", tp_model)):
            model = build(world)
            ti.materialize_(model, POLICY, seed=0)  # each rank allocates and fills only its shards
            prints[kind] = ti.fingerprint(model)  # gathers the DTensors: every rank calls it
            loss = model(torch.arange(16).view(2, 8)).logsumexp(-1).mean()
            loss.backward()  # the sharded model trains as usual
        if rank == 0:
            with torch.device("meta"):
                single = Model()
            ti.materialize_(single, POLICY, seed=0)  # one process, nothing sharded
            prints["unsharded"] = ti.fingerprint(single)
            for kind, digest in prints.items():
                print(f"world size {world}, {kind:9}: {digest}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # gloo's worker threads outlive destroy_process_group() and can abort the process at interpreter exit
    # ("terminate called without an active exception", a torch bug): the results are printed, so leave now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
