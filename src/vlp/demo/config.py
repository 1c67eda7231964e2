"""Sizes and budgets of ``vlp demo``: the full run (every score well above chance in a few minutes
on 2 CPU cores) and ``--quick`` (a smoke test of every step in seconds; scores near chance)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlp.config import ConfigError

DEMO_RECIPE = Path(__file__).parent / "recipes" / "albef-demo.yaml"


@dataclass
class DemoConfig:
    """What the demo generates and how long it trains.

    ``images`` ShapesWorld images of ``image_size`` pixels (80/10/10 train/val/test of the 90% that is
    not the compositional hold-out). ``*_steps``: optimizer steps of batch ``batch_size`` for
    pretraining and each fine-tune. ``threads``: torch intra-op threads (1 is fastest for these
    tiny models on a shared CPU). ``examples``: pictures per figure in the report.
    """

    images: int = 3000
    image_size: int = 32
    patch_size: int = 4
    seed: int = 0
    vocab_size: int = 400
    # the image tower first learns to tag the object categories in each image (task `tagging`), as ALBEF's
    # ViT starts from ImageNet weights; 0 = start pretraining from random weights
    tag_steps: int = 800
    tag_lr: float = 2e-3
    pretrain_steps: int = 2000
    batch_size: int = 32
    pretrain_lr: float = 2e-3
    vqa_steps: int = 1600
    refexp_steps: int = 600
    caption_steps: int = 800
    finetune_lr: float = 5e-4
    head_lr: float = 2e-3  # new task heads start from scratch: a higher rate (ViLT uses 10x)
    caption_beams: int = 3
    threads: int = 1
    # processes for the three fine-tunes, which are independent after pretraining: 2 runs the longest (VQA)
    # in a second process meanwhile (same scores: each seeds itself); 1 runs them one after the other
    finetune_processes: int = 2
    workers: int | None = None  # ShapesWorld generator processes (None = its default)
    examples: int = 8
    # text-to-image (recipe t2i-shapes, one thread) trained in a second process while the first core tags and
    # pretrains: `generation_steps` optimizer steps, sized to end with the pretraining (about 190 s on an idle
    # 2-core machine) so that the fine-tunes after it get both cores (measured: a text-to-image process still
    # running then cost the demo 25 s of wall time); a step count, unlike a time budget, also gives the same
    # samples on every run of one machine. 0 = none (pass a trained generator folder instead).
    # `generation_seconds` trains for that many CPU seconds instead (None: the step count; 0: none).
    # Samples get `generation_sample_steps` DDIM steps.
    generation_steps: int = 750
    generation_seconds: float | None = None
    generation_sample_steps: int = 50
    # dotted overrides of the pretraining recipe (albef-demo.yaml), e.g. {"objectives.itm.swap_words": []}
    recipe_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.tag_steps, int) or self.tag_steps < 0:
            raise ConfigError(f"demo tag_steps={self.tag_steps!r}: expected an integer >= 0 (0 = no tagging stage)")
        for name in ("images", "vocab_size", "pretrain_steps", "batch_size", "vqa_steps", "refexp_steps",
                     "caption_steps", "caption_beams", "threads", "finetune_processes", "examples",
                     "generation_sample_steps"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"demo {name}={value!r}: expected an integer >= 1")
        if self.images < 60:
            raise ConfigError(f"demo images={self.images}: expected >= 60 (every split needs images)")
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise ConfigError(f"demo image_size={self.image_size}: expected a multiple of patch_size={self.patch_size}")
        seconds = self.generation_seconds
        if seconds is not None and (not isinstance(seconds, (int, float)) or seconds < 0):
            raise ConfigError(f"demo generation_seconds={seconds!r}: expected a number >= 0 (0 = off) or None")
        if not isinstance(self.generation_steps, int) or self.generation_steps < 0:
            raise ConfigError(f"demo generation_steps={self.generation_steps!r}: expected an integer >= 0 (0 = off)")
        for name in ("tag_lr", "pretrain_lr", "finetune_lr", "head_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"demo {name}={getattr(self, name)!r}: expected > 0")

    def generation_budget(self) -> dict[str, float] | None:
        """How long the demo trains its text-to-image model: ``{"seconds": S}`` (CPU seconds) or ``{"steps": N}``;
        None when it trains none."""
        if self.generation_seconds is not None:
            return {"seconds": float(self.generation_seconds)} if self.generation_seconds > 0 else None
        return {"steps": self.generation_steps} if self.generation_steps > 0 else None

    @classmethod
    def quick(cls, **changes: Any) -> DemoConfig:
        """Seconds instead of minutes: every step runs, on 120 images and a few optimizer steps."""
        small = dict(images=120, vocab_size=200, tag_steps=3, pretrain_steps=6, batch_size=8, vqa_steps=3,
                     refexp_steps=3, caption_steps=3, caption_beams=1, examples=4, workers=1, generation_steps=2,
                     generation_sample_steps=2,
                     # 120 images' text has too few plurals for a second swap group of single tokens
                     recipe_overrides={"objectives.itm.swap_words": [["circle", "square", "star"]]})  # fmt: skip
        return cls(**{**small, **changes})

    def replace(self, **changes: Any) -> DemoConfig:
        return dataclasses.replace(self, **changes)


__all__ = ["DEMO_RECIPE", "DemoConfig"]
