"""Several processes, one run: torchrun launches them, the Trainer (accelerate) makes training
data-parallel, and this module keeps everything else on rank 0.

`slimtune run RECIPE --out DIR --nproc N` starts N copies of the same command through
torch's elastic launcher (what `torchrun --standalone` uses); launching by hand under `torchrun`
(also across nodes) or `accelerate launch` gives the same processes. Every rank walks the same
recipe, because every rank must take part in each training step. Around training:

- rank 0 alone writes: the run folder's setup, stage folders, exports, measurements, the report;
  the other ranks train in a scratch folder of their own (`runner._follow_stage`) and wait at a
  barrier until rank 0 has renamed the stage into place, then continue from it;
- what is computed once and cached (teacher logits) is computed by rank 0 first
  (`main_first`), then read from the cache by the others;
- a recipe's `batch_size` is the *global* batch: the Trainer's dataloader draws the same batches
  as a one-process run and accelerate splits each one across the ranks (`split_batches`), so N
  processes train the same model as one process, up to float summation order (and dropout masks).

There is no distribution code beyond that: the process group, gradient all-reduce, sharded
sampling and checkpoints are torch's, accelerate's and the Trainer's.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from datetime import timedelta

from .errors import SlimtuneError

# Rank 0 evaluates, benchmarks and exports while the others wait at a barrier: minutes to hours
# on a CPU. The default collective timeout (30 min) would kill a healthy run; a rank that dies
# ends the whole group through the launcher anyway.
BARRIER_TIMEOUT = timedelta(hours=int(os.environ.get("SLIMTUNE_BARRIER_TIMEOUT_HOURS", "12")))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """True inside a process that was launched as one of several (torchrun / accelerate launch)."""
    return world_size() > 1


def init(device: str) -> None:
    """Join the process group the launcher set up (gloo on CPU, nccl on CUDA); no-op alone.

    Initialised here, before any Trainer, with a long timeout for the rank-0-only steps;
    accelerate and the Trainer find the group already up and use it.
    """
    if not active():
        return
    import torch.distributed as dist

    from .console import QUIET_ENV

    if not is_main():
        os.environ[QUIET_ENV] = "1"  # one rank talks: rank 0
    if dist.is_initialized():
        return
    if device == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)


def barrier() -> None:
    if active():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any (a decision all ranks must take together)."""
    return bool(max_over_ranks(float(flag)))


def max_over_ranks(value: float) -> float:
    """The largest of every rank's `value`, the same on all ranks (one number they must agree on)."""
    if not active():
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the body first (computing and caching), the others after it (reading the cache)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def check_batch(batch_size: int, where: str, n: int | None = None) -> None:
    """A global batch must split evenly across the `n` processes (default: this run's)."""
    n = n or world_size()
    if batch_size % n:
        raise SlimtuneError(f"{where}: batch_size {batch_size} does not split across {n} processes; "
                            f"use a multiple of {n} (it is the global batch, divided among the processes)")


def trainer_args(batch_size: int) -> dict:
    """TrainingArguments that make N processes draw the batches one process would draw.

    `split_batches`: the dataloader yields global batches of `batch_size` (same sampler, same
    length grouping as one process) and each rank gets its 1/N slice; DDP averages the gradients,
    so one optimizer step sees the same examples and the same mean gradient as one process.
    """
    if not active():
        return {}
    return {"accelerator_config": {"split_batches": True}}


def record(args, batch_size: int) -> dict:
    """What a training stage ran on, for its metrics and the report."""
    state = getattr(args, "distributed_state", None)
    kind = str(getattr(state, "distributed_type", "NO")).split(".")[-1]
    n = world_size()
    return {
        "world_size": n,
        "distributed_type": kind,
        "per_process_batch_size": batch_size // n if n > 1 else batch_size,
        "effective_batch_size": batch_size * int(getattr(args, "gradient_accumulation_steps", 1)),
    }


# ---- launching --------------------------------------------------------------------------------


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m slimtune.cli ARGV` as `nproc` processes on this machine; returns the exit code.

    The children inherit stdout/stderr (rank 0 prints; the others are quiet). A child that fails
    has printed its own one-line error; the launcher stops the rest and the worst exit code is
    returned. Threads per process default to the cores divided by `nproc` (OMP_NUM_THREADS wins).
    """
    import logging

    if active():
        raise SlimtuneError("--nproc: this process was already launched as one of several (torchrun); drop --nproc")
    if nproc < 1:
        raise SlimtuneError(f"--nproc must be >= 1, not {nproc}")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cores = os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its own failure report is a traceback
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id=str(uuid.uuid4()), max_restarts=0, monitor_interval=0.5)
    try:
        elastic_launch(config, sys.executable)("-m", "slimtune.cli", *argv)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        return max((c for c in codes if c and c > 0), default=1)
    return 0


def finish() -> None:
    """The last barrier (all ranks end together, after rank 0's report), then leave the group."""
    if active():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
