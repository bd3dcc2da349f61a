"""Per-rank cost of sharded init: ``materialize_(fsdp_model, policy, seed=s)`` at world sizes 1 and 2.

Run: ``python benchmarks/sharded.py`` (writes ``benchmarks/results/sharded.md``). It starts
each world size as that many processes on gloo (one intra-op thread per rank, so ranks map
to cores), builds a decoder-shaped model on meta, wraps every block and the root with FSDP2
``fully_shard``, and times ``materialize_`` with a GPT-2-style policy (normal(0, 0.02)
weights, zero biases, unit norms: element-wise, so each rank generates only its shard), or with
``--own-init`` with no policy (the model's own init: each module's ``reset_parameters``).
Per rank it reports the time (median of ``--repeat`` runs, each on a fresh model), the
peak resident memory the call added (VmHWM, reset before the call, minus the resident size
before), the parameter bytes the rank holds, the memset floor (allocating and zeroing those
bytes), and the same for the torch way: ``to_empty`` then ``normal_``/``zero_``/``fill_`` on
the DTensors (DTensor's random ops, whose values change with the world size). ``--check`` also
compares ``fingerprint(model)`` between the world sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import torchinit as ti

RESULTS = Path(__file__).with_name("results") / "sharded.md"
SEED = 0


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
from sharded_example import Model as Decoder  # noqa: E402  (the documented example's model)


def policy() -> ti.Policy:
    return ti.Policy([
        (nn.Linear, {"weight": ti.Normal(std=0.02), "bias": ti.Zeros()}),
        (nn.Embedding, {"weight": ti.Normal(std=0.02)}),
        (nn.LayerNorm, {"weight": ti.Ones(), "bias": ti.Zeros()}),
    ])  # fmt: skip


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    """Start a new peak: writing 5 to clear_refs resets the process's VmHWM (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def torch_init_(model: nn.Module) -> None:
    """The reference: what a torch user writes after ``to_empty`` (DTensor random ops; not sharding-invariant)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, 0.02)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def _sharded(args: argparse.Namespace, mesh: object) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        model = Decoder(args.vocab, args.width, args.hidden, args.depth)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _measure(step, args: argparse.Namespace) -> tuple[float, int]:
    """Median time and peak added resident memory of ``step()`` over ``args.repeat`` runs on fresh models."""
    import torch.distributed as dist

    times, peaks = [], []
    for _ in range(args.repeat):
        model = step("build")
        dist.barrier()
        before = _rss_bytes()
        _reset_peak()
        start = time.perf_counter()
        step(model)
        times.append(time.perf_counter() - start)
        peaks.append(_peak_bytes() - before)
        del model
        dist.barrier()
    return statistics.median(times), max(peaks)


def rank_main(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo")
    try:
        world, rank = dist.get_world_size(), dist.get_rank()
        mesh = init_device_mesh("cpu", (world,))

        def ours(model):
            if model == "build":
                return _sharded(args, mesh)
            with warnings.catch_warnings():  # (the process's own filters: this is a benchmark's rank)
                warnings.simplefilter("ignore")  # the decoder has no init method: materialize_ says so
                ti.materialize_(model, None if args.own_init else policy(), seed=SEED)

        def reference(model):
            if model == "build":
                return _sharded(args, mesh)
            model.to_empty(device="cpu")
            torch_init_(model)

        time_ours, peak = _measure(ours, args)
        time_torch, peak_torch = _measure(reference, args)
        model = _sharded(args, mesh)
        ours(model)
        local_bytes = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
        fingerprint = ti.fingerprint(model) if args.check else ""
        del model
        start = time.perf_counter()
        torch.zeros(local_bytes // 4, dtype=torch.float32)
        memset = time.perf_counter() - start
        row = {"rank": rank, "world": world, "time": time_ours, "peak": peak, "torch": time_torch,
               "peak_torch": peak_torch, "bytes": local_bytes, "memset": memset, "fingerprint": fingerprint}
        rows = [None] * world
        dist.all_gather_object(rows, row)
        if rank == 0:
            Path(args.out).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def launch(world: int, args: argparse.Namespace, out: Path) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    try:
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
            cmd = [sys.executable, __file__, "--rank-main", "--out", str(out), "--repeat", str(args.repeat),
                   "--vocab", str(args.vocab), "--width", str(args.width), "--hidden", str(args.hidden),
                   "--depth", str(args.depth)] + (["--check"] if args.check else []) + \
                (["--own-init"] if args.own_init else [])
            procs.append(subprocess.Popen(cmd, env=env))
        for p in procs:
            if p.wait(timeout=1800) != 0:
                raise RuntimeError(f"world size {world}: a rank exited with {p.returncode}")
        return json.loads(out.read_text())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=8192)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worlds", default="1,2")
    parser.add_argument("--check", action="store_true", help="compare fingerprints between world sizes")
    parser.add_argument("--own-init", action="store_true", help="no policy: the model's own init (reset_parameters)")
    parser.add_argument("--results", default=str(RESULTS), help="where the Markdown table goes")
    parser.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_main:
        rank_main(args)
        # gloo's worker threads outlive destroy_process_group() and can abort the process at interpreter exit
        # ("terminate called without an active exception"): the results are written, so leave now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    with torch.device("meta"):
        model = Decoder(args.vocab, args.width, args.hidden, args.depth)
    n_params = sum(p.numel() for p in model.parameters())
    rows = []
    for world in (int(w) for w in args.worlds.split(",")):
        out = Path(f"/tmp/torchinit-sharded-{os.getpid()}-{world}.json")
        rows += launch(world, args, out)
        out.unlink(missing_ok=True)
    base = statistics.mean(r["time"] for r in rows if r["world"] == 1) if any(r["world"] == 1 for r in rows) else None
    lines = [
        "# Sharded init: per-rank cost",
        "",
        f"`python benchmarks/sharded.py` on {os.cpu_count()} CPUs, torch {torch.__version__}: "
        f"a {args.depth}-block decoder (vocab {args.vocab}, width {args.width}, hidden {args.hidden}; "
        f"{n_params / 1e6:.0f}M fp32 parameters, {n_params * 4 / 2**30:.2f} GiB) built on meta, FSDP2 `fully_shard` on "
        f"every block and the root, then "
        + ("`materialize_(model, seed=0)`: the model's own init (each module's `reset_parameters`). " if args.own_init
           else "`materialize_(model, policy, seed=0)` with a GPT-2-style policy. ")
        +
        f"One intra-op thread per rank; time is the median of {args.repeat} runs on fresh models.",
        "",
        "| world size | rank | time (s) | time vs 1 rank | torch (s) | time / torch's | param bytes on the rank (MiB) "
        "| peak added (MiB) | peak / param bytes | torch's peak / param bytes | memset floor (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['time'] / base:.2f}x" if base else "—"
        lines.append(f"| {r['world']} | {r['rank']} | {r['time']:.2f} | {ratio} | {r['torch']:.2f} | "
                     f"{r['time'] / r['torch']:.2f}x | {r['bytes'] / 2**20:.0f} | {r['peak'] / 2**20:.0f} | "
                     f"{r['peak'] / r['bytes']:.2f} | {r['peak_torch'] / r['bytes']:.2f} | {r['memset']:.2f} |")
    lines += ["", "torch: `model.to_empty(device=\"cpu\")` then `normal_(0, 0.02)`/`zero_`/`fill_(1)` on the DTensors "
              "(DTensor's own random ops: other values at each world size). Peak: the largest over the runs of the "
              "resident memory added during the call (VmHWM, reset before each run, minus the resident size before)."]
    if args.check:
        prints = {r["world"]: r["fingerprint"] for r in rows}
        lines += ["", "Fingerprints (`torchinit.model.digest(model)`, the same bits at every world size):", ""]
        lines += [f"- world size {w}: `{fp}`" for w, fp in sorted(prints.items())]
    results = Path(args.results)
    results.parent.mkdir(exist_ok=True)
    results.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
