"""The same recipe on several processes (GPUs, or CPU workers with gloo), through fastai's
`distrib_ctx` (Hugging Face Accelerate underneath). Launch with `torchrun` or `accelerate launch`.

What stays the same: the global batch (each of N processes takes bs/N), the number of optimizer
steps per epoch and so the LR at every global step. What changes: throughput.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.distributed as dist
from fastai.torch_core import num_distrib, rank_distrib

from .config import Recipe, UserError

__all__ = ["world_size", "is_main", "local_batch_size", "alone", "require_accelerate", "distrib_ctx", "leave"]


def world_size() -> int:
    return max(num_distrib(), 1)
def is_main() -> bool:
    return rank_distrib() == 0


@contextlib.contextmanager
def alone():
    """Rank 0 working by itself after training (final evaluation over all test images, export):
    fastai decides whether to gather predictions from WORLD_SIZE, so hide it meanwhile."""
    old = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["WORLD_SIZE"]
        else:
            os.environ["WORLD_SIZE"] = old


def local_batch_size(r: Recipe) -> int:
    "Each process's share of the global batch; the global batch must split evenly."
    n = world_size()
    if r.bs % n:
        raise UserError(f"The batch size {r.bs} does not split evenly over {n} processes; "
                        f"choose a multiple of {n} so the global batch stays {r.bs}.")
    return r.bs // n


def leave() -> None:
    """Every process waits here until rank 0 has evaluated and exported, then all leave the process group
    together: a process that exits with gloo's threads still running can abort, and torchrun then stops
    the others mid-way."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def require_accelerate() -> None:
    "fastai's distributed module needs Hugging Face Accelerate; a one-process run never imports it."
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise UserError("A distributed launch needs Hugging Face Accelerate, which is not installed: "
                        'pip install "fastresnet[distributed]" (in a clone: pip install -e ".[distributed]").'
                        ) from None


@contextlib.contextmanager
def distrib_ctx(learn, r: Recipe):
    """fastai's `learn.distrib_ctx` under a distributed launch (its `DistributedTrainer`, with loaders that also work
    on gloo), a no-op otherwise."""
    if world_size() == 1:
        yield
        return
    require_accelerate()
    print(f"process {rank_distrib()} of {world_size()}: {local_batch_size(r)} images a step (global batch {r.bs})",
          flush=True)
    from fastai.callback.progress import ProgressCallback
    learn.add_cb(_trainer()(r.sync_bn, cpu=not torch.cuda.is_available()))  # cpu: gloo joins the processes
    if rank_distrib():
        learn.remove_cb(ProgressCallback)  # as fastai's `to_distributed`: one bar, rank 0's
    try:
        yield
    finally:
        learn.detach_distributed()


@functools.cache
def _trainer() -> type:
    "fastai's `DistributedTrainer` whose `DistributedDL`s broadcast their indices over gloo too (fastai's: CUDA only)."
    from fastai.distributed import DistributedDL, DistributedTrainer  # needs Accelerate: only under a launch

    class GlooDL(DistributedDL):
        def _broadcast(self, t, src):
            t = torch.tensor(t, dtype=torch.long)
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.broadcast(t, src)
            return t.cpu().tolist()

    class Trainer(DistributedTrainer):
        name = "distributed_trainer"
        def _wrap_dl(self, dl):
            return dl if isinstance(dl, DistributedDL) else GlooDL(dl, device=self.learn.model.device)
    return Trainer
