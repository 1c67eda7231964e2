"""The attribute judge: a small CNN trained on real ShapesWorld renders that names an image's shape and colour.

It sees single-object scenes (any size, any background) and predicts the
object's shape (6 classes) and colour (7 classes) with two heads. The object is
first found by colour segmentation (:func:`vlp.generation.scoring.object_box`) and
cropped to a ``crop_size`` square around it, so a 5-pixel star and a 10-pixel one
look alike to the CNN; an image without a saturated blob is used whole. Generated
images are scored by whether it finds the shape and colour the prompt asked for;
its accuracy on held-out real renders is the ceiling to compare against, and
chance (1/6, 1/7, 1/42 for both) the floor.

Saved as ``attribute_classifier.safetensors`` + ``attribute_classifier.json``
(the settings), so an evaluation can reuse it instead of retraining.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlp.data.shapesworld import COLORS, SHAPES, render_scene, sample_scene
from vlp.generation.data import to_uint8, to_unit
from vlp.generation.scoring import object_box
from vlp.io.saving import load_weights

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
WEIGHTS_FILE = "attribute_classifier.safetensors"
CONFIG_FILE = "attribute_classifier.json"


@dataclass
class ClassifierConfig:
    image_size: int = 32  # the images it judges
    crop_size: int = 16  # the object crop the CNN sees
    width: int = 16  # channels of the first stage; doubled at each of the two poolings
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0


def crop_objects(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 3, H, W)`` in [-1, 1] -> ``(B, 3, size, size)``: a square around each image's largest saturated blob.

    The square is the blob's box grown to its longer side plus one pixel of margin on each
    side (clipped to the image), resized bilinearly; images without a blob are resized whole.
    """
    h, w = images.shape[-2:]
    crops = []
    for image, pixels in zip(images, to_uint8(images)):
        box = object_box(pixels)
        if box is None:
            c0, r0, c1, r1 = 0, 0, w, h
        else:
            side = min(max(box[2] - box[0], box[3] - box[1]) + 2, h, w)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            c0 = int(min(max(round(cx - side / 2), 0), w - side))
            r0 = int(min(max(round(cy - side / 2), 0), h - side))
            c1, r1 = c0 + side, r0 + side
        crop = image[None, :, r0:r1, c0:c1]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(crops)


class AttributeClassifier(nn.Module):
    """``forward(crops (B, 3, crop_size, crop_size))`` -> ``(shape logits (B, 6), colour logits (B, 7))``;
    :meth:`predict` takes whole images ``(B, 3, H, W)`` in [-1, 1] and crops them first.

    Three conv stages (two 3x3 convs + BatchNorm + ReLU each, max-pooling between them), then the
    concatenated global average and max over positions feed two linear heads.
    """

    def __init__(self, cfg: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ClassifierConfig()
        w = self.cfg.width

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            )

        self.features = nn.Sequential(
            stage(3, w), nn.MaxPool2d(2), stage(w, 2 * w), nn.MaxPool2d(2), stage(2 * w, 4 * w)
        )
        self.shape_head = nn.Linear(8 * w, len(SHAPES))
        self.color_head = nn.Linear(8 * w, len(COLOR_NAMES))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(images)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.shape_head(pooled), self.color_head(pooled)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted ``(shape index (B,), colour index (B,))`` long."""
        self.eval()
        shapes, colors = [], []
        for chunk in images.split(batch_size):
            s, c = self(crop_objects(chunk, self.cfg.crop_size))
            shapes.append(s.argmax(-1))
            colors.append(c.argmax(-1))
        return torch.cat(shapes), torch.cat(colors)


def render_objects(
    pairs: list[tuple[str, str]], size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """Real single-object renders of the given (shape, colour) pairs.

    Returns ``images (N, 3, size, size)`` in [-1, 1], shape indices (N,), colour indices (N,)
    and the scenes (for layout maps and boxes).
    """
    scenes = [sample_scene(rng, 1, 1, require=[pair]) for pair in pairs]
    images = np.stack([render_scene(s, size) for s in scenes])
    shapes = torch.tensor([SHAPES.index(s) for s, _ in pairs])
    colors = torch.tensor([COLOR_NAMES.index(c) for _, c in pairs])
    return to_unit(images), shapes, colors, scenes


def random_pairs(n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    return [
        (SHAPES[int(rng.integers(len(SHAPES)))], COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]) for _ in range(n)
    ]


def train_classifier(cfg: ClassifierConfig | None = None, progress: bool = False) -> AttributeClassifier:
    """Train on freshly rendered single-object scenes (a new batch every step; seeded)."""
    cfg = cfg or ClassifierConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 11]))
    model = AttributeClassifier(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = range(cfg.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="attribute classifier", unit="step", leave=False)
    model.train()
    for step in steps:
        images, shapes, colors, _ = render_objects(random_pairs(cfg.batch_size, rng), cfg.image_size, rng)
        # light pixel noise: generated images are never as clean as renders
        images = images + 0.05 * torch.rand(()) * torch.randn_like(images)
        images = crop_objects(images.clamp(-1, 1), cfg.crop_size)
        for group in optimizer.param_groups:  # cosine decay: a short run still ends at a low lr
            group["lr"] = cfg.lr * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        shape_logits, color_logits = model(images)
        loss = F.cross_entropy(shape_logits, shapes) + F.cross_entropy(color_logits, colors)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def save_classifier(model: AttributeClassifier, folder: str | Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(model.cfg), indent=2), encoding="utf-8")
    return folder


def load_classifier(folder: str | Path) -> AttributeClassifier:
    """The classifier saved by :func:`save_classifier` in ``folder`` (strict weights, eval mode)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no attribute classifier saved here")
    try:
        cfg = ClassifierConfig(**json.loads(path.read_text(encoding="utf-8")))
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not an attribute classifier config ({err})") from err
    model = AttributeClassifier(cfg)
    load_weights(model, folder / WEIGHTS_FILE)
    return model.eval()


def load_or_train_classifier(folder: str | Path | None, cfg: ClassifierConfig | None = None) -> AttributeClassifier:
    """Reuse the classifier in ``folder`` if one is there, else train one (and save it there when given)."""
    if folder is not None and (Path(folder) / CONFIG_FILE).is_file():
        return load_classifier(folder)
    model = train_classifier(cfg, progress=True)
    if folder is not None:
        save_classifier(model, folder)
    return model


__all__ = [
    "COLOR_NAMES",
    "AttributeClassifier",
    "ClassifierConfig",
    "crop_objects",
    "load_classifier",
    "load_or_train_classifier",
    "random_pairs",
    "render_objects",
    "save_classifier",
    "train_classifier",
]
