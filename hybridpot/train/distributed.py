"""Data-parallel training over processes with ``torch.distributed`` (gloo on CPU, nccl on GPU).

Launch::

    torchrun --nproc_per_node=P -m hybridpot.cli train CONFIG.yaml       # or: torchrun ... $(which hybridpot) train ...

The trainer notices torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins the process group; a process group the caller initialised already is used
as it is. With one process nothing here does anything.

What each step does
-------------------
All ranks draw the same batch order. Each global batch of ``training.batch_size`` frames is cut into
P contiguous shards (sizes differ by at most one; a rank may get none in a short last batch). Rank r
computes, on its shard S_r only,

    L_r = (1 / B) sum_{f in S_r} l_f          B = frames in the *global* batch

where l_f is the per-frame loss of :class:`~hybridpot.train.losses.ForceMatchingLoss` (energy per
atom, forces averaged over the frame's atoms: the atom normalisation is inside each frame, so only
the frame count B couples the shards). Summing the ranks' gradients then gives exactly the gradient of
the single-process loss (1 / B) sum_f l_f on the whole batch. Dividing each shard's loss by its own
frame count and averaging over ranks (what DDP does) would weight frames unequally whenever shards
differ in size.

Gradients are summed by one explicit ``all_reduce`` of a flat buffer after ``backward()``, not by the
``DistributedDataParallel`` wrapper: force matching differentiates ``F = -dE/dR`` (taken with
``create_graph=True``) once more with respect to the weights, and DDP's autograd hooks do not support
such double backward (pytorch/pytorch#63812, #47562). The same buffer carries the loss and a stop flag,
so every rank clips the same gradient, takes the same optimiser step and stops at the same step
(Ctrl-C reaching only some ranks, a time budget measured on rank 0).

Validation frames are sharded the same way and the error sums merged, so every rank sees the same
validation metric (plateau schedule, early stopping). Only rank 0 writes files (checkpoint, model,
metrics, plots); resuming works with any number of processes, because the result of a step does not
depend on how the batch was sharded (up to float rounding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from hybridpot.train.metrics import ErrorAccumulator

#: Environment variables that torchrun sets for every worker.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass
class DistributedContext:
    """This process's place in a data-parallel run; ``world_size == 1`` means a single process.

    owns_group: the process group was created by :func:`setup` (and is destroyed by :func:`teardown`).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    # ------------------------------------------------------------------ data
    def shard(self, indices: Sequence[int]) -> List[int]:
        """This rank's contiguous share of a global batch (sizes differ by at most one)."""
        return list(indices[slice(*shard_bounds(len(indices), self.rank, self.world_size))])

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: a bare ``cuda`` device becomes ``cuda:LOCAL_RANK``."""
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    # ------------------------------------------------------------------ collectives
    def sum_gradients(self, params: Iterable[Tensor], *extras: float) -> List[float]:
        """Sum the ``.grad`` of ``params`` over ranks in place (a missing grad counts as zero) and
        return the sums of the scalars ``extras``, all in one ``all_reduce``."""
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError("sum_gradients: no parameters require gradients")
        device = params[0].device
        chunks = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64) for p in params]
        chunks.append(torch.tensor(extras, dtype=torch.float64, device=device))
        flat = torch.cat(chunks)
        if self.enabled:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            summed = flat[offset : offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = summed.clone()
            else:
                p.grad.copy_(summed)
            offset += n
        return [float(v) for v in flat[offset:].cpu()]

    def broadcast_tensors(self, tensors: Iterable[Tensor]) -> None:
        """Copy rank 0's values of ``tensors`` (parameters, buffers) to every rank."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (decisions that depend on wall-clock time)."""
        if not self.enabled:
            return bool(flag)
        device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.broadcast(value, src=0)
        return bool(value.item() > 0.5)

    def merge_errors(self, errors: ErrorAccumulator) -> ErrorAccumulator:
        """Error sums of every rank's shard, added in rank order (identical on all ranks)."""
        if not self.enabled:
            return errors
        states: List[dict] = [{} for _ in range(self.world_size)]
        dist.all_gather_object(states, errors.state_dict())
        merged = ErrorAccumulator(errors.energy_offset)
        total = {"n_frames": 0, "n_atoms": 0, "errors": {}}
        for state in states:
            total["n_frames"] += state["n_frames"]
            total["n_atoms"] += state["n_atoms"]
            for name, (abs_sum, sq_sum, count) in state["errors"].items():
                a, s, c = total["errors"].get(name, (0.0, 0.0, 0))
                total["errors"][name] = (a + abs_sum, s + sq_sum, c + count)
        merged.load_state_dict(total)
        return merged


def shard_bounds(n: int, rank: int, world_size: int) -> Tuple[int, int]:
    """[start, stop) of rank ``rank``'s share of ``n`` items; the first ``n % world_size`` ranks get
    one more."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def launched_by_torchrun() -> bool:
    """True when torchrun's variables describe more than one process."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def setup(device: torch.device) -> DistributedContext:
    """The context of this process: an existing process group, one made from torchrun's environment
    (backend nccl for CUDA devices, gloo otherwise), or a single process."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            backend=str(dist.get_backend()),
        )
    if not launched_by_torchrun():
        return DistributedContext()
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 asks for distributed training, but this torch lacks torch.distributed")
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank if device.index is None else device.index)
    dist.init_process_group(backend=backend)
    return DistributedContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, backend=backend, owns_group=True
    )


def teardown(context: DistributedContext, *, wait: bool = True) -> None:
    """Destroy the process group if :func:`setup` created it; ``wait``: first wait for all ranks (not
    after an error, when other ranks may never arrive)."""
    if context.owns_group and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
        context.owns_group = False
