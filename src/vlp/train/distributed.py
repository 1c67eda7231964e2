"""Data-parallel training on PyTorch's own engine (torch.distributed).

Launch with ``torchrun``; the engine reads RANK / WORLD_SIZE / LOCAL_RANK from
the environment it sets and uses nccl on GPUs, gloo on CPUs::

    # one machine, 8 GPUs
    torchrun --standalone --nproc_per_node 8 -m vlp.cli pretrain albef-tiny
    # two machines (run on each; --node_rank 0 on the first, 1 on the second)
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 \\
        --rdzv_backend c10d --rdzv_endpoint HOST_OF_NODE0:29500 -m vlp.cli pretrain albef-tiny

DDP (gradients all-reduced, full model on every rank) is the default; FSDP
(``train.distributed: fsdp``, parameters, gradients and optimizer state sharded
with ``fully_shard``) is the option for models that do not fit one device.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from vlp.config import ConfigError
from vlp.layers import TransformerBlock


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when a GPU is there, else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but torch sees no CUDA device (use cpu or auto)")
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun described in the environment (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = pick_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=target if target.type == "cuda" else None)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=target)


def cleanup(wait: bool = True) -> None:
    """Leave the process group; ``wait`` first lets every rank finish (rank 0 may still be
    writing a checkpoint), since tearing gloo down under a busy peer aborts the process."""
    if dist.is_initialized():
        if wait and sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a torchrun rank at once, after its process group is gone.

    A finished gloo rank can abort in C++ teardown at interpreter exit ("terminate
    called without an active exception") when a peer exits first, which torchrun
    then reports as a failed run. Everything is flushed and written by now, so the
    rank skips the interpreter's teardown.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main_print(*args: Any, info: DistInfo | None = None, file=None) -> None:
    """``print`` on rank 0 only (every rank prints the same thing otherwise)."""
    rank = info.rank if info is not None else (dist.get_rank() if dist.is_initialized() else 0)
    if rank == 0:
        print(*args, file=file or sys.stderr, flush=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; a no-op on one process."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _fsdp_units(module: nn.Module) -> list[nn.Module]:
    """Modules that get their own FSDP shard group: every transformer block."""
    blocks = (TransformerBlock, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    return [m for m in module.modules() if isinstance(m, blocks)]


def wrap_model(module: nn.Module, kind: str, info: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """DDP- or FSDP-wrap ``module`` (already on ``info.device``) when running on several ranks.

    DDP returns a wrapper; FSDP (``fully_shard``) shards ``module`` in place and
    returns it. On one process the module is returned unchanged.
    """
    if not info.enabled:
        return module
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # fully_shard cannot shard 0-d parameters (CLIP's logit_scale): they stay whole on
        # every rank and their gradients are averaged by sync_replicated_grads
        scalars = [p for p in module.parameters() if p.ndim == 0]
        for unit in _fsdp_units(module):
            fully_shard(unit, ignored_params=set(scalars) or None)
        fully_shard(module, ignored_params=set(scalars) or None)
        module._vlp_replicated_params = scalars
        return module
    raise ConfigError(f"train.distributed: expected ddp or fsdp, got {kind!r}")


def sync_replicated_grads(model: nn.Module) -> None:
    """Average over ranks the gradients of parameters FSDP left unsharded (call after the last backward)."""
    params = [p for p in getattr(model, "_vlp_replicated_params", []) if p.grad is not None]
    if not params or not dist.is_initialized():
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` that also handles FSDP's mix of sharded (DTensor) and whole
    parameters; returns the global norm before clipping as a plain tensor."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if hasattr(g, "device_mesh")]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    plain = [g for g in grads if not hasattr(g, "device_mesh")]
    sharded_norm = torch.nn.utils.get_total_norm(sharded).full_tensor()  # all-reduces the shards' norms
    total = sharded_norm
    if plain:
        total = torch.sqrt(sharded_norm**2 + torch.nn.utils.get_total_norm(plain).to(sharded_norm) ** 2)
    with_grad = [p for p in params if p.grad is not None]
    torch.nn.utils.clip_grads_with_norm_([p for p in with_grad if hasattr(p.grad, "device_mesh")], max_norm, total)
    torch.nn.utils.clip_grads_with_norm_([p for p in with_grad if not hasattr(p.grad, "device_mesh")], max_norm, total)
    return total


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """Skip the gradient all-reduce of this backward (all but the last micro-step)."""
    if not skip or not dist.is_initialized():
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU weights (keys of the unwrapped module); complete on rank 0.

    A collective under FSDP: every rank must call it.
    """
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer state keyed by parameter name, unsharded; complete on rank 0."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full weights (every rank passes the same dict); FSDP re-shards them."""
    result = set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
    missing, unexpected = getattr(result, "missing_keys", []), getattr(result, "unexpected_keys", [])
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint weights do not fit the model: missing {sorted(missing)[:10]}, "
            f"unexpected {sorted(unexpected)[:10]}"
        )


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    # strict=False: a parameter that never got a gradient has no AdamW state to restore
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))
