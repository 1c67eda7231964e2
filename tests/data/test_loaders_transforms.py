"""Transforms keep boxes and captions true: checked against the pixels they move."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from vlp.data.config import TransformConfig
from vlp.data.transforms import (
    CenterCrop,
    HorizontalFlip,
    ImageTransform,
    Item,
    RandomResizedCrop,
    Resize,
    normalize_uint8,
    swap_left_right,
    to_tensor,
)

RED = (255, 0, 0)


def _scene(size=(80, 60), box=(10, 20, 30, 50)) -> Item:
    """A black image with one red rectangle covering ``box`` (xyxy, exclusive right/bottom)."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste(RED, box)
    return Item(image, np.array([box], dtype=np.float64), ["a red box on the left"])


def _red_extent(image: Image.Image) -> tuple[float, float, float, float]:
    """xyxy extent of the pixels that are mostly red (independent of any box bookkeeping)."""
    pixels = np.asarray(image, dtype=np.int32)
    ys, xs = np.nonzero((pixels[..., 0] > 127) & (pixels[..., 1] < 128))
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_swap_left_right_words_and_case() -> None:
    assert swap_left_right("the cup left of the plate") == "the cup right of the plate"
    assert swap_left_right("Left, right and LEFTMOST; rightmost") == "Right, left and RIGHTMOST; leftmost"
    assert swap_left_right("bright leftover copyright") == "bright leftover copyright"  # whole words only
    assert swap_left_right("left-hand side") == "right-hand side"


def test_flip_moves_pixels_boxes_and_words_together() -> None:
    item = _scene()
    flipped = HorizontalFlip(p=1.0)(item, random.Random(0))
    assert flipped.flipped and flipped.texts == ["a red box on the right"]
    np.testing.assert_allclose(flipped.boxes, [[80 - 30, 20, 80 - 10, 50]])  # x' = W - x, swapped ends
    assert _red_extent(flipped.image) == tuple(flipped.boxes[0])
    unflipped = HorizontalFlip(p=0.0)(item, random.Random(0))
    assert unflipped is item


@pytest.mark.parametrize("step", [Resize(40), CenterCrop(40), RandomResizedCrop(40, scale=(0.6, 1.0))])
def test_geometry_keeps_boxes_on_their_pixels(step) -> None:
    for seed in range(5):
        out = step(_scene(), random.Random(seed))
        assert out.image.size == (40, 40)
        if out.boxes[0, 2] - out.boxes[0, 0] < 3 or out.boxes[0, 3] - out.boxes[0, 1] < 3:
            continue  # the crop cut the box down to a sliver: nothing to compare
        # resampling blurs edges by about a pixel
        np.testing.assert_allclose(_red_extent(out.image), out.boxes[0], atol=1.5)


def test_center_crop_hand_worked() -> None:
    # transformers' rule: 80x60 -> shorter side 40, longer int(40 * 80 / 60) = 53, so x scales by 53/80 and y by
    # 40/60; then the crop starts at x = (53 - 40) // 2 = 6: box x 10..30 -> 0.625..13.875, y 20..50 -> 13.33..33.33
    out = CenterCrop(40)(_scene(), random.Random(0))
    np.testing.assert_allclose(out.boxes[0], [10 * 53 / 80 - 6, 20 * 2 / 3, 30 * 53 / 80 - 6, 50 * 2 / 3])
    # what the 40x40 output shows of the 80x60 original: resized x 6..46 at 53/80 pixels per pixel, all of y
    np.testing.assert_allclose(CenterCrop(40).view(80, 60), [6 * 80 / 53, 0, 46 * 80 / 53, 60])
    # resized to a shorter side of 45 (60x45), then the centred 40x40 from (10, 2): x scales by 0.75, y too
    config = TransformConfig(eval_crop="center", eval_size=(45, 45), mean=(0, 0, 0), std=(1, 1, 1))
    tensor, item = ImageTransform(40, config)(_scene(), random.Random(0))
    np.testing.assert_allclose(item.boxes[0], [0, 20 * 0.75 - 2, 30 * 0.75 - 10, 50 * 0.75 - 2])
    assert tensor.shape == (3, 40, 40) and ImageTransform(40, config).draft_size == (45, 45)
    np.testing.assert_allclose(_red_extent(item.image), item.boxes[0], atol=1.5)


def test_eval_center_crop_equals_clip_image_processor() -> None:
    """The eval ``center`` crop is transformers' CLIPImageProcessor (PIL backend) pixel for pixel."""
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    for shortest in (32, 37):
        processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": shortest}, crop_size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3],
            image_std=[0.2, 0.3, 0.4]
        )  # fmt: skip
        config = TransformConfig(eval_crop="center", eval_size=(shortest, shortest), mean=(0.5, 0.4, 0.3),
                                 std=(0.2, 0.3, 0.4))  # fmt: skip
        for h, w in [(61, 83), (90, 40), (33, 200), (47, 47), (32, 45)]:
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
            got, _ = ImageTransform(32, config)(Item(image), random.Random(0))
            assert float((got - expected).abs().max()) < 1e-6, (shortest, h, w)


def test_eval_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"transform.eval_size must be 2 positive sizes \(height, width\)"):
        TransformConfig(eval_size=(0, 4))
    with pytest.raises(ValueError, match="transform.rescale must be positive"):
        TransformConfig(rescale=0.0)
    with pytest.raises(ValueError, match="crop 40x40 is larger than the resized image 30x20"):
        config = TransformConfig(eval_crop="center", eval_resize="exact", eval_size=(30, 20))
        ImageTransform(40, config)(_scene(), random.Random(0))
    assert ImageTransform(40, TransformConfig(eval_resize="none")).draft_size is None  # full size: nothing to shrink


def test_random_resized_crop_is_seeded_and_in_range() -> None:
    crop = RandomResizedCrop(32, scale=(0.25, 0.5), ratio=(0.5, 2.0))
    boxes = [crop.crop_box(200, 100, random.Random(s)) for s in range(50)]
    assert boxes == [crop.crop_box(200, 100, random.Random(s)) for s in range(50)]
    assert len(set(boxes)) > 40
    for x1, y1, x2, y2 in boxes:
        w, h = x2 - x1, y2 - y1
        assert 0 <= x1 and x2 <= 200 and 0 <= y1 and y2 <= 100
        assert 0.24 * 20000 <= w * h <= 0.51 * 20000
        assert 0.45 <= w / h <= 2.2


def test_to_tensor_normalizes_per_channel() -> None:
    image = Image.new("RGB", (3, 2), (255, 0, 51))
    tensor = to_tensor(image, mean=(0.5, 0.5, 0.1), std=(0.5, 0.25, 0.1))
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    expected = torch.tensor([(1.0 - 0.5) / 0.5, (0.0 - 0.5) / 0.25, (0.2 - 0.1) / 0.1])
    torch.testing.assert_close(tensor[:, 0, 0], expected)


def _float_passes(pixels: np.ndarray, mean, std, rescale: float) -> torch.Tensor:
    """to_tensor as it was before the lookup table: four float32 passes over the (3, H, W) image."""
    out = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()
    out = out.div_(255.0) if rescale == 1 / 255 else out.mul_(rescale)
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return out.sub_(mean_t).div_(std_t)


@pytest.mark.parametrize("rescale", [1 / 255, 1 / 127.5, 1.0])
def test_to_tensor_lookup_is_bitwise_the_float_passes(rescale: float) -> None:
    """Every 8-bit value of every channel (and a photo-sized image): the same float32 values bit for bit."""
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's
    every = np.stack([np.arange(256, dtype=np.uint8)] * 3, -1).reshape(16, 16, 3)
    rng = np.random.default_rng(0)
    for pixels in (every, every[::-1, :, ::-1].copy(), rng.integers(0, 256, (224, 160, 3), dtype=np.uint8)):
        expected = _float_passes(pixels, mean, std, rescale)
        got = to_tensor(Image.fromarray(pixels), mean, std, rescale)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert torch.equal(got, expected)
    batch = rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    expected = torch.stack([_float_passes(p, mean, std, rescale) for p in batch])
    assert torch.equal(normalize_uint8(batch, mean, std, rescale), expected)


def test_normalize_uint8_names_a_wrong_input() -> None:
    with pytest.raises(ValueError, match=r"expected \(H, W, 3\) or \(B, H, W, 3\) uint8 pixels.*float32 \(4, 4, 3\)"):
        normalize_uint8(np.zeros((4, 4, 3), np.float32), (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match=r"uint8 \(4, 4, 4\)"):
        normalize_uint8(np.zeros((4, 4, 4), np.uint8), (0.5,) * 3, (0.5,) * 3)


def test_image_transform_train_vs_eval() -> None:
    config = TransformConfig(hflip=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    train = ImageTransform(40, config, train=True)
    tensor, item = train(_scene(), random.Random(3))
    assert tensor.shape == (3, 40, 40) and item.flipped and item.texts == ["a red box on the right"]
    evaluation = ImageTransform(40, config, train=False)
    tensor, item = evaluation(_scene(), random.Random(3))
    assert not item.flipped and item.texts == ["a red box on the left"]
    np.testing.assert_allclose(item.boxes[0], [10 / 2, 20 * 40 / 60, 30 / 2, 50 * 40 / 60])  # eval = squash resize
    assert float(tensor.max()) == 1.0 and float(tensor.min()) == 0.0
    assert train.draft_size == (40, 40)
    assert ImageTransform(40, TransformConfig(draft=False)).draft_size is None
