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

The deterministic (evaluation) geometry is :class:`ResizeCrop`, one set of
rounding rules for the loaders' eval split and for the predict path of every
model (``vlp.load_preprocess`` and ``vlp.tasks.common.preprocess_images``):
they are transformers' PIL image processors', so an imported checkpoint sees
the pixels it was trained on. :mod:`vlp.interop.preprocess` only maps the
processors' config files onto :class:`~vlp.data.config.TransformConfig`.
"""

from __future__ import annotations

import functools
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
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
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


def resized_size(width: int, height: int, rule: str, size: tuple[int, int], size_divisor: int = 32) -> tuple[int, int]:
    """(width, height) of a ``width x height`` image after the resize ``rule`` (before any crop).

    ``size`` is (height, width); ``shortest_edge`` and ``vilt`` read ``size[0]``. The rounding is
    transformers' (PIL backend): shortest_edge keeps a shorter side already at the target and truncates
    the longer one, ``int(size * long / short)``; vilt scales the shorter side, caps the longer at
    ``int(1333 / 800 * size)``, rounds both half up and then down to multiples of ``size_divisor``.
    """
    if rule == "none":
        return width, height
    if rule == "exact":
        return size[1], size[0]
    target = size[0]
    if rule == "shortest_edge":
        short, long = min(width, height), max(width, height)
        if short == target:
            return width, height
        new_long = int(target * long / short)
        return (target, new_long) if width <= height else (new_long, target)
    if rule != "vilt":
        raise ValueError(f"resize rule {rule!r}: expected one of shortest_edge, exact, vilt, none")
    longer_cap = int(1333 / 800 * target)
    scale = target / min(width, height)
    if height < width:
        new_h, new_w = float(target), scale * width
    else:
        new_h, new_w = scale * height, float(target)
    if max(new_h, new_w) > longer_cap:
        scale = longer_cap / max(new_h, new_w)
        new_h, new_w = scale * new_h, scale * new_w
    new_h, new_w = int(new_h + 0.5), int(new_w + 0.5)
    return new_w // size_divisor * size_divisor, new_h // size_divisor * size_divisor


class ResizeCrop:
    """Resize the whole image by ``rule`` (see :func:`resized_size`), then take the centred ``crop``
    (height, width), or no crop when it is None; boxes follow.

    As in transformers, the resize is one PIL resize of the whole 8-bit image and the crop starts at
    the integer offsets ``(old - new) // 2`` of the resized image; the crop box is therefore a pixel
    grid of the resized image (a centre crop may sit up to half a pixel off the exact centre).
    """

    def __init__(
        self,
        rule: str,
        size: tuple[int, int],
        crop: tuple[int, int] | None = None,
        interpolation: str = "bicubic",
        size_divisor: int = 32,
    ) -> None:
        if interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation {interpolation!r}: expected one of {list(_RESAMPLE)}")
        self.rule, self.size, self.crop, self.size_divisor = rule, tuple(size), crop, size_divisor
        self.resample = _RESAMPLE[interpolation]
        resized_size(1, 1, rule, self.size, size_divisor)  # an unknown rule fails here, not at the first image

    def window(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """``(resized (w, h), crop box (left, top, right, bottom) in resized pixels)`` of a ``width x height``
        image."""
        new_w, new_h = resized_size(width, height, self.rule, self.size, self.size_divisor)
        if self.crop is None:
            return (new_w, new_h), (0, 0, new_w, new_h)
        crop_h, crop_w = self.crop
        if crop_h > new_h or crop_w > new_w:
            raise ValueError(
                f"crop {crop_h}x{crop_w} is larger than the resized image {new_h}x{new_w} "
                f"(height x width; resize {self.rule} {list(self.size)} of a {height}x{width} image)"
            )
        left, top = (new_w - crop_w) // 2, (new_h - crop_h) // 2
        return (new_w, new_h), (left, top, left + crop_w, top + crop_h)

    def view(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a ``width x height`` image the output shows, xyxy in that image's pixels (for mapping
        a box or map in the model's view back onto the original image)."""
        (new_w, new_h), (left, top, right, bottom) = self.window(width, height)
        sx, sy = width / new_w, height / new_h
        return left * sx, top * sy, right * sx, bottom * sy

    def __call__(self, item: Item, rng: random.Random) -> Item:
        width, height = item.image.size
        (new_w, new_h), (left, top, right, bottom) = self.window(width, height)
        # resize all, then crop, as transformers does: one resize of just the crop box (PIL's box=) would
        # resample fewer pixels (a 4:3 image at 224: ~0.3 ms less) but changes a few pixel values by 1-18 levels
        image = item.image if (new_w, new_h) == (width, height) else item.image.resize((new_w, new_h), self.resample)
        if (left, top, right, bottom) != (0, 0, new_w, new_h):
            image = image.crop((left, top, right, bottom))
        boxes = item.boxes
        if boxes is not None and len(boxes):
            boxes = boxes.astype(np.float64, copy=True)
            boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]] * (new_w / width), left, right) - left
            boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]] * (new_h / height), top, bottom) - top
        return Item(image, boxes, item.texts, item.flipped)


class Resize(ResizeCrop):
    """Resize to exactly ``size`` x ``size`` (the aspect ratio is not kept, every box stays in view)."""

    def __init__(self, size: int, interpolation: str = "bicubic") -> None:
        super().__init__("exact", (size, size), None, interpolation)


class CenterCrop(ResizeCrop):
    """Resize the shorter side to ``size`` and take the centred ``size`` x ``size`` square (CLIP's rule)."""

    def __init__(self, size: int, interpolation: str = "bicubic") -> None:
        super().__init__("shortest_edge", (size, size), (size, size), interpolation)


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


def _normalize_ops(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, rescale: float) -> torch.Tensor:
    """The float32 operations of the normalization, in their order: every output value is
    ``((float(v) / 255 or * rescale) - mean) / std``, one IEEE rounding per step."""
    pixels = pixels.float()
    # dividing by 255 rounds like transformers' x * (1 / 255) to within an ulp; other factors multiply
    pixels = pixels.div_(255.0) if rescale == 1 / 255 else pixels.mul_(rescale)
    return pixels.sub_(mean).div_(std)


@functools.lru_cache(maxsize=16)
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...], rescale: float) -> np.ndarray:
    """(channels, 256) float32: the normalized value of each 8-bit value of each channel, computed by the same
    float32 operations as a whole image would be (element-wise IEEE operations give the same result wherever
    the element sits), so looking values up is exact."""
    values = torch.arange(256, dtype=torch.float32).view(1, 256)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1)
    return _normalize_ops(values.expand(len(mean), 256).clone(), mean_t, std_t, rescale).numpy()


def normalize_uint8(
    pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], rescale: float = 1 / 255
) -> torch.Tensor:
    """(H, W, C) or (B, H, W, C) uint8 -> (C, H, W) or (B, C, H, W) float32, bit for bit what :func:`to_tensor`
    computes for each image.

    A table lookup per channel (256 precomputed values) instead of four float passes over the image
    (convert, rescale, subtract, divide) plus the channel transpose: ~2.3x less CPU for a 224x224 image.
    """
    if pixels.dtype != np.uint8 or pixels.ndim not in (3, 4) or not pixels.shape[-1] == len(mean) == len(std):
        raise ValueError(
            f"normalize_uint8: expected (H, W, {len(mean)}) or (B, H, W, {len(mean)}) uint8 pixels for "
            f"{len(mean)} mean values, got {pixels.dtype} {tuple(pixels.shape)}"
        )
    table = _lookup_table(tuple(map(float, mean)), tuple(map(float, std)), float(rescale))
    batch = pixels if pixels.ndim == 4 else pixels[None]
    out = np.empty((batch.shape[0], batch.shape[3], batch.shape[1], batch.shape[2]), dtype=np.float32)
    for b in range(batch.shape[0]):
        for c in range(batch.shape[3]):
            # mode="clip" lets take write straight into ``out`` (the default buffers); uint8 is always in range
            np.take(table[c], batch[b, :, :, c], out=out[b, c], mode="clip")
    return torch.from_numpy(out if pixels.ndim == 4 else out[0])


def to_tensor(
    image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...], rescale: float = 1 / 255
) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32, times ``rescale`` (to [0, 1] by default), normalized by ``mean``/``std``."""
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == len(mean) == len(std) == 3:
        return normalize_uint8(pixels, mean, std, rescale)
    # not an RGB image: the plain operations, and their error for a shape that does not fit
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return _normalize_ops(torch.from_numpy(pixels.copy()).permute(2, 0, 1), mean_t, std_t, rescale)


class ImageTransform:
    """The whole image pipeline of a split: geometry (+ flip in training), then tensor + normalize.

    Training: ``train_crop`` at ``size`` x ``size``. Evaluation: :meth:`eval_geometry` of the config (by
    default ``center`` = shorter side to ``size`` + centred square, ``resize`` = squash to ``size``).
    """

    def __init__(self, size: int, config: TransformConfig | None = None, train: bool = False) -> None:
        config = config or TransformConfig()
        self.size = size
        self.config = config
        self.train = train
        steps: list = []
        if not train:
            steps.append(eval_geometry(size, config))
        elif config.train_crop == "random_resized":
            steps.append(RandomResizedCrop(size, config.scale, config.ratio, config.interpolation))
        elif config.train_crop == "center":
            steps.append(CenterCrop(size, config.interpolation))
        else:
            steps.append(Resize(size, config.interpolation))
        if train and config.hflip > 0:
            steps.append(HorizontalFlip(config.hflip))
        self.steps = steps

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """The (width, height) a JPEG must at least decode to: both sides >= what the resize needs."""
        if not self.config.draft:
            return None
        step = self.steps[0]
        if self.train or not isinstance(step, ResizeCrop):
            return (self.size, self.size)
        if step.rule == "none":
            return None  # the pixels are used as they are: a reduced decode would change them
        height, width = step.size
        return (width, height) if step.rule == "exact" else (height, height)

    def geometry(self, item: Item, rng: random.Random) -> Item:
        for step in self.steps:
            item = step(item, rng)
        return item

    def __call__(self, item: Item, rng: random.Random) -> tuple[torch.Tensor, Item]:
        """Returns the normalized ``(3, H, W)`` tensor (``size`` x ``size`` unless the eval settings say
        otherwise) and the transformed item."""
        item = self.geometry(item, rng)
        return to_tensor(item.image, self.config.mean, self.config.std, self.config.rescale), item


def eval_geometry(size: int, config: TransformConfig) -> ResizeCrop:
    """The evaluation resize + crop of ``config`` for ``image_size`` ``size`` (see TransformConfig)."""
    rule = config.eval_resize or ("shortest_edge" if config.eval_crop == "center" else "exact")
    resize = config.eval_size or (size, size)
    crop = (config.crop_size or (size, size)) if config.eval_crop == "center" else None
    return ResizeCrop(rule, resize, crop, config.interpolation, config.size_divisor)
