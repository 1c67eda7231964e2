"""Gathering features across ranks with gradient, for contrastive losses.

``gather_with_grad(x)`` concatenates every rank's ``(B_r, ...)`` tensor in rank
order. The local rank's slot *is* the local tensor as far as autograd is
concerned: the backward pass sums, over all ranks, the gradient each rank's loss
sends to that slot (``all_reduce``) and hands this rank its own rows. This is
what ``torch.distributed.nn.all_gather`` does; it is written out here so that it
also works when ranks hold different batch sizes (the last, short batch of an
epoch) and on gloo.

Why the sum: with DDP each rank's parameter gradient is averaged over ranks. If
every rank computes the loss ``L`` over the global batch, rank r's local features
get ``sum_k dL_k/df_r = world * dL/df_r``; DDP's average then gives exactly the
gradient of a single process holding the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_sizes(size: int, device: torch.device) -> list[int]:
    """Every rank's batch size (one tiny all_gather), in rank order."""
    rank, world = dist_info()
    if world == 1:
        return [size]
    local = torch.tensor([size], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(sizes, local)
    return [int(s) for s in torch.cat(sizes).tolist()]


def _gather(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    largest = max(sizes)
    padded = x
    if x.shape[0] < largest:  # all_gather needs equal shapes: pad, then cut the padding off again
        padded = torch.cat([x, x.new_zeros((largest - x.shape[0], *x.shape[1:]))])
    buffers = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(buffers, padded.contiguous())
    return torch.cat([buf[:n] for buf, n in zip(buffers, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank
        return _gather(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous()
        # all_reduce rather than reduce_scatter: gloo lacks the latter and the tensors are small (N x embed_dim)
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """``(B_r, ...)`` on each rank -> ``(sum B_r, ...)``, rank-ordered, differentiable w.r.t. the local rows.

    ``sizes`` (every rank's B_r, from :func:`gather_sizes`) saves a collective when known.
    Without an initialized process group (or with one rank) returns ``x`` itself.
    """
    rank, world = dist_info()
    if world == 1:
        return x
    sizes = sizes if sizes is not None else gather_sizes(x.shape[0], x.device)
    if not x.requires_grad:
        return _gather(x, sizes)
    return _GatherWithGrad.apply(x, sizes, rank)
