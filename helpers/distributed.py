"""Training one model in several processes (torchrun): the plumbing; a first reading can skip it.

torchrun starts one copy of train.py per process (one per GPU, or several on a CPU) and tells each its
rank (0 .. N-1) and N in environment variables. Each process trains on its own share of every epoch's
images (--batch-size is per process, so the effective batch is N times larger);
DistributedDataParallel averages their gradients after every backward pass, so all hold the same
weights; each scores its share of the validation images and all share their predictions, so all agree
on the metrics and on when to stop; only the first (rank 0) prints and writes files.
With one process (plain `python train.py`) every function here does nothing.
"""
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def start(device):
    """(rank, world_size, device) of this process; with several, join the others first."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:
        if device.type == "cuda":  # one GPU per process: torchrun's LOCAL_RANK is its index on this machine
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        # The processes find each other at torchrun's address; nccl talks GPU to GPU, gloo over TCP.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if rank > 0:
            sys.stdout = open(os.devnull, "w")  # only rank 0 reports; errors still reach stderr
    return rank, world_size, device


def wrap(module, device, world_size):
    """The module, wrapped so that each backward pass averages its gradients over the processes (while
    backward still runs), which keeps the same weights everywhere."""
    if world_size == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def unwrap(module):
    """The module inside wrap's wrapping (to score with: validation needs no averaging of gradients)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def agree_after_epoch(model, train_loss, world_size, device):
    """After an epoch every process holds the same weights but its own loss and batch-norm statistics:
    all take the mean loss, and rank 0's statistics (see below). Returns the mean loss."""
    share_batch_norm_statistics(model, world_size)
    return mean_over_processes(train_loss, world_size, device)


def mean_over_processes(value, world_size, device):
    """The mean of a number over the processes (every process gets it)."""
    if world_size == 1:
        return value
    total = torch.tensor(value, device=device)
    dist.all_reduce(total)  # gloo and nccl both sum
    return total.item() / world_size


def share_batch_norm_statistics(model, world_size):
    """Batch norm's running statistics are not gradients: each process updated its own in the last step.
    Rank 0's are the ones saved, so all validate with those."""
    if world_size > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def gather(values, world_size):
    """Every process's list of per-image values, joined back into the dataset's order: process k of n
    scored images k, k + n, k + 2n ... (see train.py's build_run). Every process gets the whole list."""
    if world_size == 1:
        return values
    shares = [None] * world_size
    dist.all_gather_object(shares, values)
    return [shares[i % world_size][i // world_size] for i in range(sum(map(len, shares)))]


def finish(world_size):
    if world_size > 1:
        dist.destroy_process_group()
