"""AdamW with weight-decay groups, per-module learning rates and frozen parts.

Weight decay is a pull towards zero that makes sense for weight matrices only.
Like OpenCLIP and timm we exempt every 0/1-d parameter (biases, norm scales,
the contrastive temperature ``logit_scale``), every parameter of a norm or
``nn.Embedding`` module, and named position/class embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.utils._foreach_utils as foreach_utils
from torch import nn

from vlp.config import ConfigError
from vlp.recipe.run import OptimConfig

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_NO_DECAY_NAMES = ("logit_scale", "temperature", "pos_embed", "position_embedding", "cls_token", "mask_token")


def _matches(name: str, prefix: str) -> bool:
    """``prefix`` names ``name`` itself or a module above it (dotted boundary)."""
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def _top_level(module: nn.Module) -> str:
    return ", ".join(sorted({name.split(".")[0] for name, _ in module.named_parameters()})) or "(no parameters)"


def freeze(module: nn.Module, prefixes: Iterable[str], where: str = "optim.freeze") -> list[str]:
    """Set ``requires_grad=False`` on every parameter under one of ``prefixes``.

    Returns the frozen parameter names. A prefix that matches nothing is an error
    (a typo would otherwise silently train a tower meant to stay locked).
    """
    prefixes = list(prefixes)
    frozen = []
    for prefix in prefixes:
        hits = [(n, p) for n, p in module.named_parameters() if _matches(n, prefix)]
        if not hits:
            raise ConfigError(f"{where}: {prefix!r} matches no parameter; top-level modules: {_top_level(module)}")
        for name, param in hits:
            param.requires_grad_(False)
            frozen.append(name)
    return sorted(set(frozen))


def no_decay_names(module: nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay."""
    explicit = set()
    hook = getattr(module, "no_weight_decay", None)  # timm convention: a set of names or prefixes
    if callable(hook):
        explicit = set(hook())
    names = set()
    for mod_name, mod in module.named_modules():
        exempt_module = isinstance(mod, (*_NORMS, nn.Embedding)) or type(mod).__name__.endswith("Norm")
        for p_name, param in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            leaf = p_name.split(".")[-1]
            if (
                exempt_module
                or param.ndim < 2
                or leaf.startswith("bias")
                or any(token in full for token in _NO_DECAY_NAMES)
                or any(_matches(full, e) for e in explicit)
            ):
                names.add(full)
    return names


def param_groups(module: nn.Module, cfg: OptimConfig, where: str = "optim") -> list[dict]:
    """Trainable parameters split by (lr, decay), one optimizer group each.

    Each group carries ``name`` (e.g. ``"vision/no_decay"``) for logs; ``lr`` is
    the peak lr the schedule scales. Parameters shared between modules (tied
    weights) appear once.
    """
    for prefix in cfg.module_lr:
        if not any(_matches(n, prefix) for n, _ in module.named_parameters()):
            raise ConfigError(
                f"{where}.module_lr.{prefix}: matches no parameter; top-level modules: {_top_level(module)}"
            )
    skip_decay = no_decay_names(module)
    # the longest prefix wins so that {"vision": 1e-5, "vision.proj": 1e-4} works as expected
    prefixes = sorted(cfg.module_lr, key=len, reverse=True)
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in module.named_parameters():  # named_parameters already drops duplicates
        if not param.requires_grad:
            continue
        prefix = next((p for p in prefixes if _matches(name, p)), "")
        decay = name not in skip_decay and cfg.weight_decay > 0
        key = (prefix, decay)
        if key not in groups:
            groups[key] = {
                "name": f"{prefix or 'default'}/{'decay' if decay else 'no_decay'}",
                "params": [],
                "param_names": [],
                "lr": cfg.module_lr.get(prefix, cfg.lr) if prefix else cfg.lr,
                "weight_decay": cfg.weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    if not groups:
        raise ConfigError(f"{where}: no trainable parameters (is everything frozen by optim.freeze?)")
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def fused_adamw_devices() -> set[str]:
    """Device types this torch's fused AdamW kernel runs on (CPU only from torch 2.4; ``torch>=2.2`` is allowed)."""
    listed = getattr(foreach_utils, "_get_fused_kernels_supported_devices", None)
    return set(listed()) if listed is not None else {"cuda"}  # a torch without the list: the kernel's first home


def fused_adamw_fits(params: Iterable[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW kernel takes ``params``: dense floating tensors on CPU or CUDA, one
    device type, none a DTensor (FSDP's shards keep torch's default). The kernel does the foreach update's
    arithmetic in one pass per tensor; results agree to float rounding (~1e-8), at about 1/3 of the CPU time."""
    params = list(params)
    kinds = {p.device.type for p in params}
    return (
        len(kinds) == 1
        and kinds <= {"cpu", "cuda"} & fused_adamw_devices()
        and all(type(p.data) is torch.Tensor and p.is_floating_point() and not p.is_sparse for p in params)
    )


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` of ``module`` (the unwrapped model).

    The fused kernel where it fits (:func:`fused_adamw_fits`: plain tensors on CPU or CUDA); torch's
    default (foreach) elsewhere; the parameters, already on their device, tell which.
    """
    groups = param_groups(module, cfg)
    for group in groups:
        del group["param_names"]  # keep optimizer state free of per-step bookkeeping
    fused = fused_adamw_fits(p for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)
