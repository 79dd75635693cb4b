"""Data parallelism by hand: what lets the course's own training loops share work across processes.

``accelerate launch --num_processes N`` (or ``torchrun``) starts N copies of the same program and
tells each its ``RANK`` (0 to N-1) and the ``WORLD_SIZE`` N. *Data parallelism* gives every
process a whole copy of the model and a 1/N slice of every batch, and keeps the copies identical
by making them take the same optimiser step: after each backward pass the processes average
their gradients with an *all-reduce* (a sum over every process, which every process receives),
so each copy steps with the gradient of the whole batch. That is what PyTorch's
``DistributedDataParallel`` (DDP) does, and what trl's Trainer asks accelerate for; the course's
own loops (the base GPT's ``gpt.train``, lesson 06's ``ppo.train_ppo``) do it here, in the open:

- ``start`` and ``stop``: join the launch's process group (gloo on a CPU, NCCL on GPUs), once,
  and leave it;
- ``shard``: this process's slice of a global batch, refusing a batch that does not split evenly
  (the global batch is the recipe's, on any number of processes);
- ``average_gradients``: one all-reduce of every gradient after ``backward``, before clipping;
- ``sum_over_processes``: statistics of the global batch from each process's share of it;
- ``gather``: python objects (the answers' texts) from every process, in rank order;
- ``broadcast_parameters``: rank 0's weights to every process, so the copies start identical.

**Alone** (no launcher: ``WORLD_SIZE`` unset or 1) every function returns at once and talks to no
one, so one process computes exactly what it computed before this module existed.

Why not DDP itself: DDP wraps the model (the model becomes ``wrapped.module``), and its
all-reduce runs in buckets *during* the backward pass, hooked onto the parameters, to hide the
communication behind the computation. Here one all-reduce runs after the backward pass: slower
on many GPUs, but the whole mechanism is three lines a learner can read, the models stay plain
``transformers`` models (``generate``, peft's ``disable_adapter``, ``save_pretrained`` work as
alone), and a test can switch the synchronisation off to see the copies drift apart.
FSDP and DeepSpeed ZeRO (``scale/accelerate/``) shard the weights themselves; they serve trl's
Trainer, while the course's loops keep a whole copy of each model in every process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from rlhf_helpers.artifacts import rank_and_world_size


def rank() -> int:
    """This process's index in the launch, 0 alone."""
    return rank_and_world_size()[0]


def world_size() -> int:
    """The number of processes in the launch, 1 alone."""
    return rank_and_world_size()[1]


def is_main_process() -> bool:
    """True for rank 0, which alone prints and writes what the whole launch shares."""
    return rank() == 0


def start(device) -> None:
    """Join the launch's process group, if there is a launch and this process has not joined yet.

    accelerate's ``PartialState`` reads what the launcher set (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR`` and ``MASTER_PORT``), picks the backend (gloo for a CPU, NCCL for GPUs) and on
    GPUs gives each process its own device (``cuda:LOCAL_RANK``). trl's Trainer joins the same
    group, so a launch that trains a trl stage and then one of ours shares one group.
    """
    if world_size() == 1 or dist.is_initialized():
        return
    from accelerate import PartialState

    PartialState(cpu=torch.device(device).type == "cpu")


def per_process(count: int, what: str) -> int:
    """``count / world size``: this process's share of a global ``count`` of rows.

    An uneven split is refused: rows left over would make the processes take different numbers of
    steps (and wait for each other forever), or change the recipe's batch.
    """
    world = world_size()
    if count % world:
        raise ValueError(f"{what} of {count} does not split evenly across {world} processes: make it a "
                         f"multiple of {world}, or launch a number of processes that divides it.")
    return count // world


def shard(batch):
    """This process's contiguous slice of a global batch: a list, or a tensor along its first dimension.

    Process r of N takes rows ``r * B/N`` to ``(r + 1) * B/N``; alone, the batch itself. Every
    process must hold the same global batch (the same seed draws it everywhere).
    """
    r, world = rank_and_world_size()
    if world == 1:
        return batch
    size = per_process(len(batch), "A batch")
    return batch[r * size:(r + 1) * size]


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over every process (a new tensor); alone, ``tensor``."""
    if world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def gather(items: list) -> list:
    """Every process's ``items``, concatenated in rank order, on every process; alone, ``items``.

    For python objects (texts): ``all_gather_object`` pickles them between the processes of one
    launch, which all run this same code.
    """
    world = world_size()
    if world == 1:
        return items
    parts: list = [None] * world
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def average_gradients(params) -> None:
    """Replace every gradient by its average over the processes, in place: DDP's step, by hand.

    Call it after ``backward`` and before clipping: then every process clips the same gradient
    and takes the same optimiser step, and the copies of the model stay identical. The gradients
    travel as one flat tensor (one all-reduce instead of one per parameter). A parameter without a
    gradient is left out; every process has the same ones, since they run the same model.
    Alone, nothing happens.
    """
    world = world_size()
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(*models) -> None:
    """Copy rank 0's weights into every other process's models (what DDP does when it wraps one).

    Models built from the same seed or loaded from the same artifact are already identical; this
    makes it certain, so that averaged gradients keep them identical. Alone, nothing happens.
    """
    if world_size() == 1:
        return
    for model in models:
        for param in model.parameters():
            dist.broadcast(param.detach(), src=0)


def stop() -> None:
    """Leave the process group before the program ends (left open, a process can abort while exiting)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
