"""Tiny converted models and a folder of photos for the ``vlp predict`` tests, built offline.

The transformers models are random (perturbed off their initial values, as the interop tests do), saved with
their tokenizer and image processor, and converted with ``vlp convert``'s importer, so the predict commands
read exactly what a user's converted BLIP / CLIP folder holds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "interop"))  # interop_helpers: tiny tokenizers, perturb

from interop_helpers import perturb, train_clip_bpe, write_bert_vocab  # noqa: E402
from predict_helpers import draw_photos  # noqa: E402

CLIP_SOT, CLIP_EOT = 342, 343  # the tiny BPE of interop_helpers: 344 tokens, its two specials last


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models run fastest on one thread, and the machine is shared."""


@pytest.fixture(scope="session")
def blip_folders(tmp_path_factory) -> tuple[Path, Path]:
    """``(transformers folder, converted vlp folder)`` of a tiny random BlipForConditionalGeneration."""
    transformers = pytest.importorskip("transformers")
    from vlp.interop import import_folder

    root = tmp_path_factory.mktemp("blip")
    text = dict(vocab_size=40, hidden_size=32, encoder_hidden_size=24, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, bos_token_id=2, pad_token_id=0,
                sep_token_id=3)  # fmt: skip
    vision = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    config = transformers.BlipConfig(text_config=text, vision_config=vision)
    # a larger perturbation than the interop tests': captions then differ between images
    model = perturb(transformers.BlipForConditionalGeneration(config), scale=0.5)
    model.save_pretrained(root / "hf")
    write_bert_vocab(root / "hf")
    transformers.BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "hf")
    return root / "hf", import_folder(root / "hf", root / "vlp")


@pytest.fixture(scope="session")
def clip_folders(tmp_path_factory) -> tuple[Path, Path]:
    """``(transformers folder, converted vlp folder)`` of a tiny random CLIPModel with its BPE and processor."""
    transformers = pytest.importorskip("transformers")
    from vlp.interop import import_folder

    root = tmp_path_factory.mktemp("clip")
    text = dict(vocab_size=344, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=32, bos_token_id=CLIP_SOT, eos_token_id=CLIP_EOT,
                pad_token_id=CLIP_EOT)  # fmt: skip
    vision = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    model = perturb(transformers.CLIPModel(config), scale=0.5)
    model.save_pretrained(root / "hf")
    train_clip_bpe(root / "hf")
    # shortest edge 36 then a 32 crop: the stored preprocessing differs from a plain resize, so using it matters
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(root / "hf")
    return root / "hf", import_folder(root / "hf", root / "vlp")


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    return draw_photos(tmp_path / "photos")
