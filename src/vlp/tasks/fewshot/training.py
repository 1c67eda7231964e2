"""Training the few-shot parts on frozen towers: CoOp's context vectors against the image embeddings of the
shots, and CLIP-Adapter against the frozen template classifier. Both minimise cross-entropy of
``exp(logit_scale) * cos(image, class)`` over the shots, full batch (k shots x C classes is small), with a
cosine learning-rate schedule; the towers never receive a gradient."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError
from vlp.tasks.fewshot.head import ClipAdapter, CoOpPrompts


@dataclass
class FewShotOptions:
    """Settings of CoOp and the adapter (the paper's values where they work at toy scale; see the README)."""

    coop_n_ctx: int = 16
    coop_init: str | None = None  # e.g. "a photo of a": the context starts as that phrase (M = its tokens)
    coop_steps: int = 200
    coop_lr: float = 0.002  # CoOp's SGD learning rate
    coop_momentum: float = 0.9
    adapter_reduction: int = 4
    adapter_alpha: float = 0.2
    adapter_steps: int = 200
    adapter_lr: float = 1e-3  # AdamW
    adapter_weight_decay: float = 1e-4
    probe_C: float = 1.0  # the logistic-regression probe's inverse L2 strength

    def __post_init__(self) -> None:
        for name in ("coop_steps", "adapter_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"few-shot: {name}={getattr(self, name)} must be >= 1")
        for name in ("coop_lr", "adapter_lr", "probe_C"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"few-shot: {name}={getattr(self, name)} must be > 0")


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode with every parameter's ``requires_grad`` off; both restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps)))


def _check_shots(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if features.ndim != 2 or labels.shape != features.shape[:1] or not len(labels):
        raise ValueError(f"shots: expected features (N, E) and labels (N,), got {tuple(features.shape)} / "
                         f"{tuple(labels.shape)}")  # fmt: skip
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"shots: labels must lie in [0, {num_classes})")


def train_coop(
    model: nn.Module, prompts: CoOpPrompts, features: torch.Tensor, labels: torch.Tensor, scale: float,
    steps: int = 200, lr: float = 0.002, momentum: float = 0.9,
) -> list[float]:  # fmt: skip
    """Fit ``prompts``' context vectors to the shots: ``features`` (N, E) normalized image embeddings, ``labels``
    (N,); SGD with a cosine schedule, the model frozen. Returns the loss of every step."""
    _check_shots(features, labels, len(prompts.class_names))
    device = prompts.ctx.device
    features, labels = features.to(device, prompts.ctx.dtype), labels.to(device)
    optimizer = torch.optim.SGD(prompts.parameters(), lr=lr, momentum=momentum)
    schedule = _cosine(optimizer, steps)
    losses = []
    with frozen(model), torch.enable_grad():
        for _ in range(steps):
            logits = scale * features @ prompts(model).T
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
    return losses


def train_adapter(
    adapter: ClipAdapter, class_embeds: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, scale: float,
    steps: int = 200, lr: float = 1e-3, weight_decay: float = 1e-4,
) -> list[float]:  # fmt: skip
    """Fit ``adapter`` on the shots against the frozen ``(C, E)`` class embeddings; AdamW with a cosine schedule.
    Returns the loss of every step."""
    _check_shots(features, labels, class_embeds.shape[0])
    classes = class_embeds.detach()
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = _cosine(optimizer, steps)
    losses = []
    adapter.train()
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(scale * adapter(features) @ classes.T, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
    adapter.eval()
    return losses


def fit_coop(
    model: Any, tokenizer: Any, class_names: list[str], features: torch.Tensor, labels: torch.Tensor, scale: float,
    options: FewShotOptions, class_specific: bool = False, seed: int = 0,
) -> CoOpPrompts:  # fmt: skip
    """New :class:`CoOpPrompts` (context drawn with ``seed``) trained on the shots."""
    generator = torch.Generator().manual_seed(seed)
    n_ctx = None if options.coop_init else options.coop_n_ctx
    prompts = CoOpPrompts(model, tokenizer, class_names, n_ctx, options.coop_init, class_specific, generator)
    train_coop(model, prompts, features, labels, scale, options.coop_steps, options.coop_lr, options.coop_momentum)
    return prompts


def fit_adapter(
    class_embeds: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, scale: float, options: FewShotOptions,
    seed: int = 0,
) -> ClipAdapter:  # fmt: skip
    """A new :class:`ClipAdapter` (weights drawn with ``seed``) trained on the shots."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = ClipAdapter(features.shape[1], options.adapter_reduction, options.adapter_alpha)
    adapter = adapter.to(features.device, features.dtype)
    train_adapter(adapter, class_embeds, features, labels, scale, options.adapter_steps, options.adapter_lr,
                  options.adapter_weight_decay)  # fmt: skip
    return adapter
