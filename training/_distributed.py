"""Training in several processes at once (torch DistributedDataParallel), one per GPU or several on a CPU.

A run started by torchrun (or `simsearch train --nproc N`, which starts torchrun) finds WORLD_SIZE and the
other variables torchrun sets and joins their process group. Each process takes its share of every batch;
the embeddings, labels and teachers' outputs of the whole batch are gathered before the loss, so a pair loss
mines over the whole batch and every process computes the loss a single process would, and its gradient
(`gather`; a test trains both ways and compares the weights). BatchNorm layers see their process's share.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int
    size: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        """The process that validates, logs, checkpoints and writes the artifact."""
        return self.rank == 0


def launched_size() -> int:
    """How many training processes torchrun started (1 when it did not start this one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(device: str | None) -> tuple[World | None, str | None]:
    """Join torchrun's process group when there is one: (the world, the device this process trains on).
    Without torchrun: (None, `device` unchanged). GPUs: one per process, cuda:LOCAL_RANK, with NCCL;
    CPU (asked for, or no GPU): gloo."""
    size = launched_size()
    if size <= 1:
        return None, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = device != "cpu" and torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if on_gpu:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    backend = "nccl" if on_gpu else "gloo"
    if not dist.is_initialized():
        # Long enough for the main process's validation and checkpoint between two collectives.
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    return World(dist.get_rank(), dist.get_world_size(), local_rank, backend), device


def finish(world: World | None) -> None:
    """The end of the processes' work together (the last step, or a stop): wait until every process is here,
    then leave the group. Leaving while another process was still on its way out aborted one process in
    eight ("terminate called without an active exception")."""
    if world is not None and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def leave(world: World | None) -> None:
    """Leave the process group without waiting for the others (a failure: torchrun stops them)."""
    if world is not None and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World | None) -> None:
    """Wait until every process is here (nothing without torchrun)."""
    if world is not None:
        dist.barrier()


def _comm_device(world: World) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if world.backend == "nccl" else torch.device("cpu")


def broadcast(world: World | None, t: torch.Tensor) -> torch.Tensor:
    """The main process's `t` (same shape and dtype everywhere), on `t`'s device."""
    if world is None:
        return t
    buf = t.to(_comm_device(world)).contiguous()
    dist.broadcast(buf, src=0)
    return buf.to(t.device)


def broadcast_module(world: World | None, module: nn.Module) -> None:
    """Give every process the main process's parameters and buffers of `module` (a loss's heads, say: DDP
    does this for the network it wraps)."""
    if world is None:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            t.copy_(broadcast(world, t.detach()))


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times `factor` backward."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def gather(world: World | None, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The whole batch: each of `tensors` (this process's share of a batch, rows first; None passes through)
    concatenated over the processes in rank order, on every process, in one collective (each is a wait for
    the slowest process). Where one needs a gradient, the whole batch's loss reaches this process's network
    through its own share only, scaled by the number of processes: DDP's average of those over the processes is
    then the single process's gradient. Values travel as float32 (labels are exact below 2**24)."""
    if world is None:
        return tensors
    present = [t for t in tensors if t is not None]
    rows = present[0].shape[0]
    widths = [t[0].numel() for t in present]
    local = torch.cat([t.detach().reshape(rows, -1).float() for t in present], 1).to(_comm_device(world))
    parts = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(parts, local.contiguous())
    whole = torch.cat(parts).to(present[0].device)
    out, col, i = [], 0, 0
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        g = whole[:, col:col + widths[i]].reshape(-1, *t.shape[1:])
        col, i = col + widths[i], i + 1
        g = g.round().to(t.dtype) if not t.dtype.is_floating_point else g.to(t.dtype)
        if t.requires_grad:
            shares = list(g.split(rows))
            shares[world.rank] = _ScaleGrad.apply(t, float(world.size))
            g = torch.cat(shares)
        out.append(g)
    return tuple(out)


def average_gradients(world: World | None, params: list[nn.Parameter]) -> None:
    """Average the gradients of parameters DDP does not hold (the loss's heads) over the processes, in one
    collective. Each process computes the same loss on the same gathered batch, so they agree already; this
    keeps them from drifting apart by rounding."""
    if world is None:
        return
    have = [p for p in params if p.grad is not None]
    if not have:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in have]).to(_comm_device(world))
    dist.all_reduce(flat)
    flat = flat.div_(world.size).to(have[0].grad.device)
    for p in have:
        n = p.grad.numel()
        p.grad.copy_(flat[:n].view_as(p.grad))
        flat = flat[n:]


def share(world: World | None, idx: torch.Tensor) -> torch.Tensor:
    """This process's contiguous share of a batch's indices (the batch size divides evenly: checked up front).
    The loss sees the whole batch again (`gather`), so a share need not hold whole classes."""
    if world is None:
        return idx
    n = idx.numel() // world.size
    return idx[world.rank * n:(world.rank + 1) * n]
