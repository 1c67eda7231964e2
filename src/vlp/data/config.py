"""The data section of a recipe: which loader, which files, which transform.

``type`` picks a loader registered in :mod:`vlp.data.loader` (``manifest``,
``karpathy``, ``albef``, ``vqav2``, ``refcoco``, ``coco_instances``,
``webdataset``, ``shapesworld``); ``root`` is the dataset folder and ``paths``
name its files relative to ``root`` (``{split}`` in a path is replaced by the
split being loaded). ``options`` holds the chosen loader's own settings; each
loader declares them as a dataclass, so an unknown option is rejected with the
allowed names, exactly like an unknown key here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# CLIP's pixel statistics (also used by ALBEF and BLIP); ImageNet's are
# (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TransformConfig:
    """Image transforms; training uses ``train_crop`` (+ ``hflip``), evaluation ``eval_crop``."""

    # random_resized: RandomResizedCrop(scale, ratio); center: resize shorter side then centre crop;
    # resize: squash the whole image to image_size x image_size (keeps every box in view). The rounding of
    # center is transformers' (CLIPImageProcessor): see vlp.data.transforms.ResizeCrop
    train_crop: Literal["random_resized", "center", "resize"] = "random_resized"
    eval_crop: Literal["center", "resize"] = "resize"  # center: centre crop after the resize; resize: no crop
    # The evaluation resize (what imported image processors need; the defaults give the two rules above):
    # shortest_edge (the shorter side becomes eval_size[0]), exact (to eval_size), vilt (ViLT's rule:
    # shorter side eval_size[0], longer at most 1333/800 of it, both down to multiples of size_divisor),
    # none; None = the rule eval_crop implies (center: shortest_edge, resize: exact)
    eval_resize: Literal["shortest_edge", "exact", "vilt", "none"] | None = None
    eval_size: tuple[int, int] | None = None  # (height, width) of the eval resize; None = image_size square
    crop_size: tuple[int, int] | None = None  # (height, width) of the eval centre crop; None = image_size square
    size_divisor: int = 32  # eval_resize vilt only
    scale: tuple[float, float] = (0.5, 1.0)  # area fraction range of random_resized
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of random_resized
    hflip: float = 0.0  # probability of a horizontal flip in training (swaps left/right words); 0 = off
    rescale: float = 1 / 255  # 8-bit values times rescale, then (x - mean) / std
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: Literal["bicubic", "bilinear", "nearest", "lanczos", "box", "hamming"] = "bicubic"  # PIL's filters
    draft: bool = True  # JPEG draft mode: let libjpeg decode large images at a reduced scale

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"transform.scale must satisfy 0 < min <= max <= 1, got {list(self.scale)}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"transform.ratio must satisfy 0 < min <= max, got {list(self.ratio)}")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"transform.hflip is a probability in [0, 1], got {self.hflip}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"transform.std must be positive, got {list(self.std)}")
        for name in ("eval_size", "crop_size"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or any(int(v) != v or v <= 0 for v in value)):
                raise ValueError(f"transform.{name} must be 2 positive sizes (height, width), got {list(value)}")
        if self.size_divisor < 1:
            raise ValueError(f"transform.size_divisor must be >= 1, got {self.size_divisor}")
        if not self.rescale > 0:
            raise ValueError(f"transform.rescale must be positive, got {self.rescale}")


@dataclass
class DataConfig:
    type: str = ""  # a loader name registered in vlp.data.registry; "" = not named yet (training asks for data)
    root: str = ""  # dataset folder; paths below are relative to it
    paths: dict[str, str] = field(default_factory=dict)
    image_size: int = 224
    max_text_len: int = 40
    strict: bool = False  # raise on a bad sample instead of skipping and counting it
    options: dict[str, Any] = field(default_factory=dict)  # the loader's own settings (validated by the loader)
    transform: TransformConfig = field(default_factory=TransformConfig)
    seed: int = 0  # the sample order depends only on (seed, epoch)
    shuffle_buffer: int = 1000  # samples held by the streaming (WebDataset) shuffle buffer; 0 = no shuffle
    max_image_pixels: int = 89_478_485  # decompression-bomb limit (width * height), PIL's default
    # longer captions are cut to this many characters (whole words), then to max_text_len tokens by the
    # tokenizer; only a caption above 64 KiB of UTF-8 is skipped (overlong_caption)
    max_caption_chars: int = 2000
    # a folder for the decoded-image store (vlp.data.decoded_store): every image file decoded once and kept as
    # uint8 pixels, rebuilt when a file or the decode settings change; "" = decode every time (no store)
    decoded_cache: str = ""

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.max_text_len < 2:
            raise ValueError(f"max_text_len must leave room for [CLS] and [SEP], got {self.max_text_len}")
        if self.shuffle_buffer < 0 or self.max_image_pixels <= 0 or self.max_caption_chars <= 0:
            raise ValueError("shuffle_buffer must be >= 0, max_image_pixels and max_caption_chars > 0")
