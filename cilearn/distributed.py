"""One run on several processes with torch.distributed: ``torchrun --nproc_per_node N -m cilearn run CONFIG``
(multi-node: torchrun's usual ``--nnodes/--node_rank/--rdzv_endpoint`` flags).  gloo on CPU, NCCL on CUDA.

How the work is split, and why the results equal a single process's:

- every process holds the same model, method state and random generators (seeded alike), so every
  process draws the same permutation and augments the same global batch of ``train.batch_size`` samples —
  the batch a single process would train on — and computes the forward and backward of its own
  contiguous share of it (a disjoint shard of every epoch's permutation);
- the gradients are summed with one all-reduce per step, each process's weighted by its share of the
  batch: the result is the gradient of the whole batch (up to the order of a float sum), every process
  applies the same step and the models stay identical (checked after every task).  The effective batch
  is ``train.batch_size`` whatever the number of processes, so the learning rate is not rescaled;
- everything that is not a gradient step — the frozen teacher, exemplar selection (herding), class means,
  evaluation — runs on every process on identical models and inputs and gives identical results; the
  inference passes behind evaluation, herding and class means are sharded: each process computes its own
  whole batches and one all-reduce gathers them (:class:`~cilearn.engine.evaluate.Inference`, bit-identical to one
  process); only rank 0 writes the run directory and prints; a checkpoint is read by rank 0 and broadcast,
  and resumes on any number of processes (one included).

Why not ``DistributedDataParallel``: it synchronises gradients only for work that goes through its own
``forward``, while cilearn's methods call parts of the network (features, head, a teacher) from their hooks;
the explicit all-reduce gives the same gradients for every method (without DDP's overlap of communication
with the backward pass).  BatchNorm statistics are per process unless ``train.sync_batchnorm`` (CUDA only:
PyTorch's SyncBatchNorm has no CPU kernel); with it, or without BatchNorm, runs match a single process.

Methods with per-step state (ER, DER, DER++, ER-ACE, A-GEM, ...) run as in one process: the replayed
minibatches are drawn whole with the shared generator on every process (each computes its share, like the
stream batch); ``after_step`` receives the whole stream batch and its gathered outputs, so every process's
reservoir and stored logits stay identical to a single process's; A-GEM's reference gradient is averaged
over the shares before the projection. The weighting of the shares is exact when the stream batch and the
replayed minibatch divide by the number of processes, which is checked for these methods (an epoch's last,
partial stream batch may differ by one sample per process).
"""

from __future__ import annotations

import datetime
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .errors import CilearnError, ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: rank() and is_main() serve the logger and the file
# writer, and `cilearn --help` must not pay for importing torch.


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """True in a single process and in rank 0 of a torchrun job: the one process that writes and prints."""
    return rank() == 0


class ProcessesDiverged(CilearnError):
    """The processes of a torchrun job no longer hold the same model (a nondeterministic kernel)."""


class PeerLost(CilearnError):
    """Another process of the torchrun job died or stopped answering."""


@contextmanager
def _collective(what: str):
    """A collective call: a peer that died (connection closed, timeout) becomes one clear error."""

    try:
        yield
    except (RuntimeError, dist.DistBackendError) as exc:
        text = re.sub(r"\[[^\]]*\]:?\s*", "", " ".join(str(exc).split()))  # drop source paths and addresses
        detail = text.split(". ")[0][:160]
        raise PeerLost(f"another process of this torchrun job stopped or stopped answering during {what} "
                       f"({detail}).") from None


@dataclass
class Distributed:
    rank: int
    world: int
    backend: str

    # --- setup ---
    @classmethod
    def from_environment(cls, device: torch.device, timeout_s: float) -> Distributed | None:
        """The job this process belongs to (torchrun's environment), or None for a single process."""
        if world_size() <= 1:
            return None

        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), backend=backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self, batch_size: int) -> str:
        low, extra = divmod(batch_size, self.world)
        share = f"{low}" + (f"-{low + 1}" if extra else "")
        return (f"torchrun: {self.world} processes ({self.backend}); each computes {share} of every batch of "
                f"{batch_size}: the effective batch is train.batch_size, so the learning rate is not rescaled")

    # --- one step ---
    def shard(self, n: int) -> slice:
        """This process's contiguous part of a global batch of ``n`` samples (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def average_gradients(self, parameters: list[torch.nn.Parameter], local: int, total: int) -> None:
        """Replace each gradient by the whole batch's: Σ over processes of (local / total) × local gradient.

        Every process passes the same parameters in the same order; a missing gradient counts as zeros."""

        params = [p for p in parameters if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = _flatten_dense_tensors(grads).mul_(local / total)
        with _collective("the gradient all-reduce"):
            dist.all_reduce(flat)
        for p, synced in zip(params, _unflatten_dense_tensors(flat, grads)):
            if p.grad is None:
                p.grad = synced.clone()
            else:
                p.grad.copy_(synced)

    def gather_rows(self, local: torch.Tensor, rows: slice, total: int) -> torch.Tensor:
        """The (total, ...) tensor whose ``rows`` are this process's ``local`` and the rest the other
        processes' parts (each process passes its own slice of one partition): one all-reduce, the others
        contributing zeros, so every value arrives unchanged."""

        whole = torch.zeros((total, *local.shape[1:]), dtype=local.dtype, device=local.device)
        whole[rows] = local
        return self.sum(whole)

    def weighted_mean(self, value: torch.Tensor, weight: int) -> torch.Tensor:
        """Σ weight·value / Σ weight over the processes (e.g. a mean gradient over each process's share of a
        minibatch, weighted by the share's size), on every process; one all-reduce."""

        flat = torch.cat([value.reshape(-1) * weight, value.new_tensor([float(weight)])])
        flat = self.sum(flat)
        return (flat[:-1] / flat[-1]).view_as(value)

    def sum(self, value: torch.Tensor) -> torch.Tensor:

        value = value.clone()
        with _collective("an all-reduce"):
            dist.all_reduce(value)
        return value

    # --- consistency ---
    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process (e.g. the checkpoint to resume from)."""

        box = [obj if self.main else None]
        with _collective("a broadcast"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_identical(self, model: torch.nn.Module, where: str) -> None:
        """Refuse to go on when the processes' models differ (a checksum of every parameter and buffer)."""

        values = [t.detach().double().flatten() for t in model.state_dict().values() if t.is_floating_point()]
        flat = torch.cat(values) if values else torch.zeros(1, dtype=torch.float64)
        weights = torch.arange(1, len(flat) + 1, dtype=torch.float64, device=flat.device)
        checksum = torch.stack([flat.sum(), (flat * weights).sum()]).to(torch.float64)
        gathered = [torch.zeros_like(checksum) for _ in range(self.world)]
        with _collective("the model check"):
            dist.all_gather(gathered, checksum)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise ProcessesDiverged(f"the {self.world} processes of this torchrun job hold different models {where} "
                                    f"(a nondeterministic kernel?); set train.deterministic: true and start again.")

    def barrier(self) -> None:

        with _collective("a barrier"):
            dist.barrier()


def check_config(train_cfg, device: torch.device) -> None:
    if train_cfg.sync_batchnorm and world_size() > 1 and device.type != "cuda":
        raise ConfigError("train.sync_batchnorm: PyTorch's SyncBatchNorm runs on CUDA only; on CPU set it to false "
                          "(BatchNorm statistics are then per process).")
