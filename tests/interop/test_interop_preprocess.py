"""Image preprocessing stored with converted models equals transformers' image processors (PIL backend)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlp.interop.preprocess import Preprocess, from_hf, load_preprocess

transformers = pytest.importorskip("transformers")

SIZES = [(61, 83), (90, 40), (48, 48), (33, 200)]  # (height, width): landscape, portrait, square, extreme


def images(mode: str = "RGB") -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]
    return [im.convert(mode) for im in out]


PROCESSORS = {
    "clip": lambda: transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    "blip": lambda: transformers.BlipImageProcessor(size={"height": 24, "width": 40}),
    "vilt": lambda: transformers.ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8),
}


@pytest.mark.parametrize("kind", sorted(PROCESSORS))
def test_pixels_equal_transformers(kind, tmp_path):
    processor = PROCESSORS[kind]()
    processor.save_pretrained(tmp_path)
    ours = from_hf(tmp_path)
    assert ours is not None and ours.resize == {"clip": "shortest_edge", "blip": "exact", "vilt": "vilt"}[kind]
    modes = ["RGB"] if kind == "vilt" else ["RGB", "L", "RGBA"]  # ViLT's processor does not convert modes
    for mode in modes:
        for image in images(mode):
            expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
            got = ours(image)
            assert got.shape == expected.shape and got.dtype == torch.float32
            # same PIL resize on the 8-bit image, same crop offsets: only float rounding differs
            assert float((got - expected).abs().max()) < 1e-5, (kind, mode, image.size)


def test_round_trip_through_preprocess_json_and_back(tmp_path):
    PROCESSORS["clip"]().save_pretrained(tmp_path / "hf")
    ours = from_hf(tmp_path / "hf")
    ours.save(tmp_path)
    again = load_preprocess(tmp_path)
    assert again == ours
    image = images()[0]
    assert torch.equal(again(image), ours(image))
    # written back as a transformers config, it describes the same pipeline
    (tmp_path / "back").mkdir()
    import json

    (tmp_path / "back" / "preprocessor_config.json").write_text(json.dumps(ours.to_hf("CLIPImageProcessor")))
    reloaded = transformers.CLIPImageProcessor.from_pretrained(tmp_path / "back")
    assert torch.allclose(reloaded(images=image, return_tensors="pt")["pixel_values"][0], ours(image), atol=1e-5)
    settings = ours.transform_config()
    assert settings["image_size"] == 32 and settings["transform"]["eval_crop"] == "center"


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="interpolation 'area'"):
        Preprocess(interpolation="area")
    (tmp_path / "preprocessor_config.json").write_text('{"size": {"longest": 3}}')
    with pytest.raises(ValueError, match=r"preprocessor_config\.json: size=\{'longest': 3\}"):
        from_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="no image preprocessing settings"):
        load_preprocess(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="larger than the resized image"):
        Preprocess(resize="exact", size=(8, 8), crop=(16, 16))(images()[0])
