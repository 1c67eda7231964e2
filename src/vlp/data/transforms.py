"""Image transforms on PIL images that keep captions and boxes true (no torchvision).

An :class:`Item` carries the image together with the boxes (pixel xyxy in the
current image) and the texts that describe it; every geometric transform moves
the boxes with the pixels, and the horizontal flip also swaps the words "left"
and "right" in the texts (as ALBEF's grounding fine-tuning does), so that "the
cup left of the plate" stays true. The swap is purely lexical: "the right
answer" becomes "the left answer" too, which is why the flip is off by default.

Randomness comes from a ``random.Random`` passed in by the caller, seeded from
(seed, epoch, sample index), so a sample's crop does not depend on which
DataLoader worker happens to decode it.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from vlp.data.config import TransformConfig

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
_LEFT_RIGHT = re.compile(r"\b(left|right)(most)?\b", re.IGNORECASE)


@dataclass
class Item:
    """An image with what must stay true about it.

    ``boxes`` is (K, 4) float xyxy in pixels of ``image`` (or None); ``texts``
    are the captions / questions / expressions; ``flipped`` records whether a
    horizontal flip was applied (so answers can be swapped too).
    """

    image: Image.Image
    boxes: np.ndarray | None = None
    texts: list[str] = field(default_factory=list)
    flipped: bool = False


def swap_left_right(text: str) -> str:
    """Swap the words left/right (and leftmost/rightmost), keeping their case."""

    def replace(match: re.Match[str]) -> str:
        word, suffix = match.group(1), match.group(2) or ""
        other = "right" if word.lower() == "left" else "left"
        if word.isupper():
            other = other.upper()
        elif word[0].isupper():
            other = other.capitalize()
        return other + suffix

    return _LEFT_RIGHT.sub(replace, text)


def _crop_resize(item: Item, box: tuple[float, float, float, float], size: tuple[int, int], resample: int) -> Item:
    """Crop ``box`` (x1, y1, x2, y2 in pixels) and resize it to ``size`` (w, h); boxes follow."""
    x1, y1, x2, y2 = box
    out_w, out_h = size
    image = item.image.resize(size, resample, box=box)
    boxes = item.boxes
    if boxes is not None and len(boxes):
        boxes = boxes.astype(np.float64, copy=True)
        boxes[:, [0, 2]] = (np.clip(boxes[:, [0, 2]], x1, x2) - x1) * (out_w / (x2 - x1))
        boxes[:, [1, 3]] = (np.clip(boxes[:, [1, 3]], y1, y2) - y1) * (out_h / (y2 - y1))
    return Item(image, boxes, item.texts, item.flipped)


class Resize:
    """Resize to exactly ``size`` x ``size`` (the aspect ratio is not kept, every box stays in view)."""

    def __init__(self, size: int, interpolation: str = "bicubic") -> None:
        self.size = size
        self.resample = _RESAMPLE[interpolation]

    def __call__(self, item: Item, rng: random.Random) -> Item:
        w, h = item.image.size
        return _crop_resize(item, (0, 0, w, h), (self.size, self.size), self.resample)


class CenterCrop:
    """Resize the shorter side to ``size`` and take the centred ``size`` x ``size`` square."""

    def __init__(self, size: int, interpolation: str = "bicubic") -> None:
        self.size = size
        self.resample = _RESAMPLE[interpolation]

    def __call__(self, item: Item, rng: random.Random) -> Item:
        w, h = item.image.size
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        return _crop_resize(item, (left, top, left + side, top + side), (self.size, self.size), self.resample)


class RandomResizedCrop:
    """A random crop of ``scale`` x the area with aspect ratio in ``ratio``, resized to ``size``.

    The sampling follows the well-known Inception recipe: ten tries to draw an
    (area, log-ratio) pair that fits; otherwise a centre crop with the ratio
    clamped into range.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bicubic",
    ) -> None:
        self.size = size
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.ratio = ratio
        self.resample = _RESAMPLE[interpolation]

    def crop_box(self, width: int, height: int, rng: random.Random) -> tuple[float, float, float, float]:
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left = rng.randint(0, width - w)
                top = rng.randint(0, height - h)
                return (left, top, left + w, top + h)
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return (left, top, left + w, top + h)

    def __call__(self, item: Item, rng: random.Random) -> Item:
        box = self.crop_box(*item.image.size, rng)
        return _crop_resize(item, box, (self.size, self.size), self.resample)


class HorizontalFlip:
    """Mirror the image with probability ``p``; boxes are mirrored and left/right words swapped."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, item: Item, rng: random.Random) -> Item:
        # always draw, so that p does not shift the random stream of later transforms
        if rng.random() >= self.p:
            return item
        width = item.image.size[0]
        image = item.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        boxes = item.boxes
        if boxes is not None and len(boxes):
            boxes = boxes.astype(np.float64, copy=True)
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        return Item(image, boxes, [swap_left_right(t) for t in item.texts], not item.flipped)


def to_tensor(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32, scaled to [0, 1] then normalized by ``mean``/``std``."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return pixels.sub_(mean_t).div_(std_t)


class ImageTransform:
    """The whole image pipeline of a split: geometry (+ flip in training), then tensor + normalize."""

    def __init__(self, size: int, config: TransformConfig | None = None, train: bool = False) -> None:
        config = config or TransformConfig()
        self.size = size
        self.config = config
        self.train = train
        crop = config.train_crop if train else config.eval_crop
        steps: list = []
        if crop == "random_resized":
            steps.append(RandomResizedCrop(size, config.scale, config.ratio, config.interpolation))
        elif crop == "center":
            steps.append(CenterCrop(size, config.interpolation))
        else:
            steps.append(Resize(size, config.interpolation))
        if train and config.hflip > 0:
            steps.append(HorizontalFlip(config.hflip))
        self.steps = steps

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """The size a JPEG must at least decode to: both sides >= the output size."""
        return (self.size, self.size) if self.config.draft else None

    def geometry(self, item: Item, rng: random.Random) -> Item:
        for step in self.steps:
            item = step(item, rng)
        return item

    def __call__(self, item: Item, rng: random.Random) -> tuple[torch.Tensor, Item]:
        """Returns the normalized ``(3, size, size)`` tensor and the transformed item."""
        item = self.geometry(item, rng)
        return to_tensor(item.image, self.config.mean, self.config.std), item
