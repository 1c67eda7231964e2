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


def _tiny_clip(folder, processor) -> None:
    """A tiny transformers CLIP (32-pixel vision tower) saved with ``processor``'s image settings."""
    from interop_helpers import train_clip_bpe

    text = dict(vocab_size=344, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=32, bos_token_id=342, eos_token_id=343, pad_token_id=343)  # fmt: skip
    vision = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)  # fmt: skip
    torch.manual_seed(0)  # the weights do not matter here: only the preprocessing is compared
    transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision)).save_pretrained(folder)
    train_clip_bpe(folder)
    processor.save_pretrained(folder)


@pytest.mark.parametrize("shortest_edge", [32, 37])  # 37: resized larger than the 32-pixel crop (ImageNet style)
def test_loader_eval_predict_and_transformers_give_the_same_pixels(shortest_edge, tmp_path):
    """One pipeline: a converted CLIP's data loader (eval), its predict path (preprocess_images on the recipe's data
    section), and its stored preprocessing give identical pixels, which are CLIPImageProcessor's."""
    import json

    import vlp
    from vlp.config import from_dict, to_dict
    from vlp.data.config import DataConfig
    from vlp.data.loader import build_loader
    from vlp.interop import import_folder
    from vlp.tasks.common import preprocess_images

    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": shortest_edge}, crop_size={"height": 32, "width": 32}, resample=2
    )
    _tiny_clip(tmp_path / "hf", processor)
    import_folder(tmp_path / "hf", tmp_path / "vlp")
    model = vlp.load(tmp_path / "vlp")
    pictures = images()
    (tmp_path / "data" / "images").mkdir(parents=True)
    for i, picture in enumerate(pictures):  # PNG: lossless, so the loader decodes exactly these pixels
        picture.save(tmp_path / "data" / "images" / f"{i}.png")
    records = [{"image": f"{i}.png", "caption": "a photo", "split": "test"} for i in range(len(pictures))]
    (tmp_path / "data" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    expected = processor(images=pictures, return_tensors="pt")["pixel_values"]
    data = to_dict(model.recipe.data) | {"type": "manifest", "root": str(tmp_path / "data"),
                                         "paths": {"images": "images", "manifest": "manifest.jsonl"}}  # fmt: skip
    loader = build_loader(from_dict(DataConfig, data), "test", vlp.load_tokenizer(tmp_path / "vlp"), batch_size=8)
    from_loader = next(iter(loader)).images
    predicted = preprocess_images([tmp_path / "data" / "images" / f"{i}.png" for i in range(4)], model.recipe.data)
    stored = vlp.load_preprocess(tmp_path / "vlp").batch(pictures)
    assert from_loader.shape == expected.shape == (4, 3, 32, 32)
    assert float((from_loader - expected).abs().max()) < 1e-6
    assert torch.equal(predicted, from_loader) and torch.equal(stored, from_loader)
