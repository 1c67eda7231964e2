"""Training data for text-to-image: ShapesWorld scenes rendered on the fly, their captions and control maps;
or any caption dataset the data layer reads (:class:`CaptionImages` over :func:`vlp.data.build_loader`).

Both are loaders in the training engine's sense: iterables of :class:`GenerationBatch` with a saveable
position (``state_dict`` / ``load_state_dict``), so a resumed run sees the same next batches.

A rendered batch is drawn by sampling scenes with :func:`vlp.data.shapesworld.sample_scene`,
rendering them (:func:`render_layers`) and picking one of the captions that
:func:`make_captions` writes for the dataset, so the model sees the same images
and caption distribution as a ShapesWorld dataset on disk, without an epoch
limit (rendering a 32x32 scene takes about a millisecond, far below a training
step). Everything is drawn from one seeded numpy generator, so a run is
reproducible.

Images are ``(B, 3, H, W)`` float in ``[-1, 1]``. Control maps (ControlNet's
extra input) are ``(B, 3, H, W)`` float in ``[0, 1]``:

- ``layout``: black, with each object's box filled with its palette colour
  (a pixel is inside when its centre is);
- ``edge``: the outline of every object, ``|d alpha/dx| + |d alpha/dy|`` of its exact
  coverage, clipped to 1, in all three channels (the background never makes edges).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from vlp.data.shapesworld import COLORS, SIZES, Scene, make_captions, render_layers, sample_scene, tokenize
from vlp.data.shapesworld.render import Rendered
from vlp.data.shapesworld.vocab import COLOR_WORDS, PLURALS, SHAPE_WORDS

# every word that names a shape or a colour, plurals included
ATTRIBUTE_WORDS = frozenset(
    [w for words in (*SHAPE_WORDS.values(), *COLOR_WORDS.values()) for w in words]
    + [PLURALS[w] for words in SHAPE_WORDS.values() for w in words]
)


def names_attribute(caption: str) -> bool:
    """Whether ``caption`` names a shape or a colour."""
    return any(word in ATTRIBUTE_WORDS for word in tokenize(caption))


ControlKind = Literal["layout", "edge"]


@dataclass
class GenerationBatch:
    """``images`` (B, 3, H, W) in [-1, 1]; ``input_ids`` (B, L) long; ``attention_mask`` (B, L) bool (True = real
    token); ``control`` (B, 3, H, W) in [0, 1] or None; ``captions`` the raw prompts (never moved)."""

    images: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    control: torch.Tensor | None = None
    captions: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GenerationBatch:
        moved = [
            t.to(device, non_blocking=non_blocking) if t is not None else None
            for t in (self.images, self.input_ids, self.attention_mask, self.control)
        ]
        return GenerationBatch(*moved, self.captions)


@dataclass
class ShapesDataConfig:
    """Which ShapesWorld scenes to train on. ``seed`` fixes the whole stream of scenes and captions."""

    type: Literal["render"] = "render"  # rendered on the fly; a data-layer type (karpathy, ...) reads files
    image_size: int = 32
    min_objects: int = 1
    max_objects: int = 2
    # size classes drawn (small, medium, large: radius 8, 12, 16% of the side). At 32x32 a small star is
    # 5 pixels wide, too few to tell its shape from a circle's
    sizes: list[str] = field(default_factory=lambda: list(SIZES))
    max_text_len: int = 24
    seed: int = 0
    # all: any of the scene's captions; attributes: only those naming a shape or colour (counts such as
    # "there is one object." say nothing a short training run can use)
    captions: Literal["all", "attributes"] = "all"
    tokenizer_captions: int = 2000  # scenes whose captions train the WordPiece tokenizer
    vocab_size: int = 400  # largest tokenizer vocabulary (ShapesWorld needs about 100 words)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size={self.image_size}: ShapesWorld images must be at least 8 pixels wide")
        if not 1 <= self.min_objects <= self.max_objects <= 9:
            raise ValueError(
                f"min_objects={self.min_objects}, max_objects={self.max_objects}: expected 1 <= min <= max <= 9"
            )
        if not self.sizes or any(size not in SIZES for size in self.sizes):
            raise ValueError(f"sizes={self.sizes}: expected a non-empty subset of {list(SIZES)}")
        if self.captions not in ("all", "attributes"):
            raise ValueError(f"captions={self.captions!r}: expected 'all' or 'attributes'")
        if self.max_text_len < 3:
            raise ValueError(f"max_text_len={self.max_text_len}: must be >= 3 ([CLS] word [SEP])")


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, H, W)`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``(B, 3, H, W)`` in [-1, 1] -> uint8 ``(B, H, W, 3)`` (values outside are clipped)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def box_pixels(box: tuple[float, float, float, float], size: int) -> tuple[int, int, int, int]:
    """The pixel range ``[c0, c1) x [r0, r1)`` whose centres lie inside ``box`` (x0, y0, x1, y1 in pixels)."""
    x0, y0, x1, y1 = box
    # pixel j's centre is j + 0.5: inside when x0 <= j + 0.5 < x1
    c0, c1 = int(np.ceil(x0 - 0.5)), int(np.ceil(x1 - 0.5))
    r0, r1 = int(np.ceil(y0 - 0.5)), int(np.ceil(y1 - 0.5))
    return max(c0, 0), max(r0, 0), min(c1, size), min(r1, size)


def layout_map(scene: Scene, size: int) -> np.ndarray:
    """``(size, size, 3)`` float32 in [0, 1]: each object's box filled with its colour on black."""
    out = np.zeros((size, size, 3), dtype=np.float32)
    for obj in scene.objects:
        c0, r0, c1, r1 = box_pixels(obj.box(size), size)
        out[r0:r1, c0:c1] = np.asarray(COLORS[obj.color], dtype=np.float32) / 255.0
    return out


def edge_map(rendered: Rendered) -> np.ndarray:
    """``(H, W, 3)`` float32 in [0, 1]: outlines from the objects' exact coverage, not from the noisy image."""
    size = rendered.image.shape[0]
    edges = np.zeros((size, size), dtype=np.float32)
    for alpha in rendered.alphas:
        gx = np.abs(np.diff(alpha, axis=1, append=alpha[:, -1:]))
        gy = np.abs(np.diff(alpha, axis=0, append=alpha[-1:, :]))
        edges = np.maximum(edges, np.clip(gx + gy, 0.0, 1.0))
    return np.repeat(edges[:, :, None], 3, axis=2)


def control_map(kind: ControlKind, scene: Scene, rendered: Rendered) -> np.ndarray:
    """The control map of ``kind`` for a rendered scene, ``(H, W, 3)`` float32 in [0, 1]."""
    if kind == "layout":
        return layout_map(scene, rendered.image.shape[0])
    if kind == "edge":
        return edge_map(rendered)
    raise ValueError(f"control kind {kind!r}: expected 'layout' or 'edge'")


def draw_scene(cfg: ShapesDataConfig, rng: np.random.Generator) -> tuple[Scene, Rendered, list[str]]:
    """One scene, its rendering and the captions a ShapesWorld dataset would store for it."""
    scene = sample_scene(rng, cfg.min_objects, cfg.max_objects, sizes=cfg.sizes)
    return scene, render_layers(scene, cfg.image_size), make_captions(scene, rng)


def tokenizer_corpus(cfg: ShapesDataConfig) -> list[str]:
    """Captions to train the tokenizer on (their own seed stream, so they never shift the training scenes)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 7]))
    return [c for _ in range(cfg.tokenizer_captions) for c in draw_scene(cfg, rng)[2]]


class ShapesStream:
    """An endless, seeded stream of :class:`GenerationBatch` of ShapesWorld scenes.

    ``next_batch(batch_size)`` renders fresh scenes; each image gets one of its
    captions chosen uniformly. With ``control`` the batch carries that control map.
    Iterating yields batches of ``batch_size`` without end (the engine's loader
    protocol; its position is the generator's state). Rank ``r > 0`` of a
    distributed run draws its own scenes (rank 0's are those of one process).
    """

    def __init__(
        self,
        cfg: ShapesDataConfig,
        tokenizer: Any,
        control: ControlKind | None = None,
        batch_size: int = 32,
        rank: int = 0,
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.control = control
        self.batch_size = batch_size
        self.rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0, *([rank] if rank else [])]))

    def __iter__(self) -> Iterator[GenerationBatch]:
        while True:
            yield self.next_batch(self.batch_size)

    def state_dict(self) -> dict[str, str]:
        # the bit generator's state holds 128-bit integers: kept as JSON text (weights-only loadable)
        return {"rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict[str, str]) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])

    def next_batch(self, batch_size: int) -> GenerationBatch:
        images, captions, controls = [], [], []
        for _ in range(batch_size):
            scene, rendered, texts = draw_scene(self.cfg, self.rng)
            images.append(rendered.image)
            if self.cfg.captions == "attributes":
                # an inventory caption always names attributes, so the filtered list is never empty
                texts = [t for t in texts if names_attribute(t)] or texts
            captions.append(texts[int(self.rng.integers(len(texts)))])
            if self.control is not None:
                controls.append(control_map(self.control, scene, rendered))
        tokens = self.tokenizer(captions, max_length=self.cfg.max_text_len)
        control = torch.from_numpy(np.stack(controls)).permute(0, 3, 1, 2).contiguous() if controls else None
        return GenerationBatch(to_unit(np.stack(images)), tokens.input_ids, tokens.attention_mask, control, captions)


class CaptionImages:
    """A data-layer caption loader (:class:`vlp.data.loader.VLPLoader`) as :class:`GenerationBatch` es.

    The data layer normalises images with its transform's ``rescale``, ``mean`` and ``std``; that is undone
    here to the diffusion model's ``[-1, 1]`` (8-bit 0 -> -1, 255 -> 1), whatever the recipe's statistics.
    Position, epochs and length are the wrapped loader's.
    """

    def __init__(self, loader: Any, transform: Any) -> None:
        self.loader = loader
        std = torch.tensor(transform.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(transform.mean, dtype=torch.float32).view(1, 3, 1, 1)
        # x = (v * rescale - mean) / std for 8-bit v, and the model wants v / 127.5 - 1
        self.scale = std / (transform.rescale * 127.5)
        self.shift = mean / (transform.rescale * 127.5) - 1.0

    def _convert(self, batch: Any) -> GenerationBatch:
        if batch.images is None or batch.input_ids is None:
            raise ValueError(
                f"{self.loader.name}: text-to-image needs an image and a caption in every batch; this data "
                "gives " + ("no images" if batch.images is None else "no captions")
            )
        images = batch.images.float() * self.scale + self.shift
        captions = [m.get("text", "") for m in batch.meta]
        return GenerationBatch(images, batch.input_ids, batch.attention_mask.bool(), None, captions)

    def __iter__(self) -> Iterator[GenerationBatch]:
        for batch in self.loader:
            yield self._convert(batch)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


__all__ = [
    "CaptionImages",
    "ControlKind",
    "GenerationBatch",
    "ShapesDataConfig",
    "ShapesStream",
    "box_pixels",
    "control_map",
    "draw_scene",
    "edge_map",
    "names_attribute",
    "layout_map",
    "to_uint8",
    "to_unit",
    "tokenizer_corpus",
]
