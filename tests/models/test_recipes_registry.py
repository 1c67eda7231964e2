"""The classic-model registry: every required recipe is listed, builds at the paper's size, its
``-tiny`` twin is the same model at CPU size whose data section loads ShapesWorld, and the
dual-encoder side (encode_text / encode_image) exists exactly where the paper has one.

Base recipes are built on the ``meta`` device (shapes only, no memory), so counting a
200M-parameter model costs a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import vlp
from vlp import Batch
from vlp.data.loader import build_loader
from vlp.data.shapesworld import generate
from vlp.objectives import Pretraining
from vlp.recipe import recipe_dict
from vlp.text.tokenizer import Tokenizer

REQUIRED = [
    "clip",
    "clip-resnet",
    "vilt",
    "visualbert",
    "uniter",
    "oscar",
    "pixelbert",
    "lxmert",
    "meter",
    "albef",
    "blip",
    "vlmo",
]
DUAL = {"clip", "clip-resnet", "albef", "blip", "vlmo"}  # models with a dual-encoder (ITC) side
M = 1e6


# ----------------------------------------------------------------------------- reference counts
# Shapes-only parameter counts of standard blocks, written out from the architectures (not from
# vlp's modules), for the models whose papers give no total.
def linear(d_in: int, d_out: int) -> int:
    return d_in * d_out + d_out


def attention(d: int) -> int:
    return 4 * linear(d, d)  # q, k, v, out


def bert_layer(d: int = 768, ffn: int = 3072) -> int:
    return attention(d) + 2 * d + linear(d, ffn) + linear(ffn, d) + 2 * d  # post-norm: 2 LayerNorms


def cross_sublayer(d: int = 768) -> int:
    return attention(d) + 2 * d  # cross-attention + its LayerNorm


BERT_BASE = 110 * M  # Devlin et al. 2019
VIT_B16 = 86.19 * M  # ViT-B/16 image tower (OpenCLIP docs/model_profile.csv: ViT-B-16 image_mparams)
RESNET50_TRUNK = 25.56 * M - linear(2048, 1000)  # torchvision resnet50 without its classifier

# name -> (which parameters are counted, expected count, where the number comes from).
# "all" = every unique parameter; "no_heads" = all but model.heads (pretraining heads differ
# between papers and checkpoints); a prefix tuple = only parameters under those prefixes.
PARAMS = {
    "clip": ("all", 151.28 * M, "OpenCLIP docs/model_profile.csv, ViT-B-32"),
    "clip-resnet": ("all", 102.01 * M, "OpenCLIP docs/model_profile.csv, RN50"),
    # ViLT's 87.4M counts the transformer and the patch projection, not the word-embedding table
    "vilt": (("vision.", "fusion."), 87.4 * M, "ViLT paper (Kim et al. 2021): ViLT-B/32 87.4M"),
    # UNITER's 86M is the 12-layer transformer (L=12, H=768, A=12)
    "uniter": (("fusion.",), 86 * M, "UNITER paper (Chen et al. 2020): UNITER-base 86M"),
    "vlmo": ("all", 175 * M, "VLMo README (microsoft/unilm/vlmo): VLMo-base #parameters 175M"),
    "lxmert": ("no_heads", 207.94 * M, "transformers LxmertModel(LxmertConfig()), the released base config"),
    # plausible ranges from published component sizes (the papers give no total):
    "visualbert": ("no_heads", BERT_BASE + linear(2048, 768), "BERT-base + 2048->768 region projection"),
    "oscar": ("no_heads", BERT_BASE + linear(2048 + 7, 768), "BERT-base + region feature/geometry projection"),
    "pixelbert": ("no_heads", RESNET50_TRUNK + BERT_BASE + linear(2048, 768), "ResNet-50 trunk + BERT-base"),
    "meter": (
        "no_heads",
        VIT_B16 + BERT_BASE + 6 * 2 * (bert_layer() + cross_sublayer()) + 2 * linear(768, 768),
        "ViT-B/16 + BERT-base (RoBERTa in the paper) + 6 co-attention layers x 2 streams + 2 poolers",
    ),
    "albef": (
        "no_heads",
        VIT_B16 + BERT_BASE + 6 * cross_sublayer() + 2 * linear(768, 256),
        "ViT-B/16 + BERT-base + cross-attention in 6 layers + ITC projections (ALBEF is cited as 210M)",
    ),
    "blip": (
        "no_heads",
        VIT_B16 + BERT_BASE + 12 * cross_sublayer() + 12 * (attention(768) + 2 * 768) + 2 * linear(768, 256),
        "ViT-B/16 + BERT-base + cross-attention in 12 layers + the decoder's own causal self-attention",
    ),
}


def count(model: torch.nn.Module, what) -> int:
    named = list(model.named_parameters())  # shared / tied parameters are listed once
    if what == "all":
        return sum(p.numel() for _, p in named)
    if what == "no_heads":
        return sum(p.numel() for n, p in named if not n.startswith("heads."))
    return sum(p.numel() for n, p in named if n.startswith(what))


# ----------------------------------------------------------------------------- the registry
def test_list_models_has_every_classic_model_at_both_sizes() -> None:
    names = vlp.list_models()
    assert names == sorted(names)
    missing = [n for base in REQUIRED for n in (base, f"{base}-tiny") if n not in names]
    assert not missing, f"recipes missing from vlp.list_models(): {missing}"


@pytest.mark.parametrize("name", REQUIRED)
def test_base_recipe_has_the_papers_parameter_count(name: str) -> None:
    what, expected, source = PARAMS[name]
    with torch.device("meta"):
        model = vlp.create_model(name)
    assert all(p.is_meta for p in model.parameters())
    got = count(model, what)
    assert abs(got - expected) <= 0.1 * expected, (
        f"{name}: {got / M:.2f}M parameters ({what}) but {expected / M:.2f}M expected ({source})"
    )
    # the dual-encoder side is there exactly when the paper has one
    assert (model.text_proj is not None) == (name in DUAL)
    assert model.recipe.model.name == name


@pytest.mark.parametrize("name", REQUIRED)
def test_tiny_recipe_is_the_same_model_at_cpu_size(name: str) -> None:
    base, tiny = recipe_dict(name)["model"], recipe_dict(f"{name}-tiny")["model"]
    for part in ("text", "vision", "fusion", "decoder"):
        kinds = [(cfg or {}).get(part, {}) or {} for cfg in (base, tiny)]
        assert kinds[0].get("type") == kinds[1].get("type"), f"{name}-tiny: model.{part}.type differs from {name}"
    assert set(base.get("heads", {})) == set(tiny.get("heads", {}))
    assert set(recipe_dict(name).get("objectives", {})) == set(recipe_dict(f"{name}-tiny").get("objectives", {}))
    model = vlp.create_model(f"{name}-tiny")
    assert count(model, "all") < 2 * M, f"{name}-tiny has {count(model, 'all')} parameters: not CPU-sized"
    assert model.recipe.data.type == "shapesworld" and model.recipe.data.image_size <= 64
    if model.text is not None:
        assert model.text.embeddings.vocab_size <= 1000


# ----------------------------------------------------------------------------- dual-encoder side
def small_batch(n: int = 3) -> Batch:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(n, 6, dtype=torch.bool)
    mask[1, 4:] = False
    ids = torch.randint(5, 100, (n, 6), generator=g)
    ids[:, 0], ids[torch.arange(n), mask.sum(1) - 1] = 2, 3  # [CLS] ... [SEP]
    return Batch(
        input_ids=ids.masked_fill(~mask, 0), attention_mask=mask, images=torch.randn(n, 3, 32, 32, generator=g)
    )


@pytest.mark.parametrize("name", REQUIRED)
def test_encode_text_and_image_exist_exactly_on_dual_encoder_models(name: str) -> None:
    torch.manual_seed(0)
    model = vlp.create_model(f"{name}-tiny").eval()
    batch = small_batch()
    if name not in DUAL:
        with pytest.raises(RuntimeError, match="no dual-encoder side"):
            model.encode_text(batch.input_ids, batch.attention_mask)
        with pytest.raises(RuntimeError, match="no dual-encoder side"):
            model.encode_image(batch)
        return
    with torch.no_grad():
        text = model.encode_text(batch.input_ids, batch.attention_mask)
        image = model.encode_image(batch)
        out = model(batch)
    dim = model.cfg.embed_dim
    assert text.shape == (3, dim) and image.shape == (3, dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(3))
    # the same embeddings the training pass hands to ITC, and a padded text is not its unpadded twin
    torch.testing.assert_close(text, out.text_embed)
    torch.testing.assert_close(image, out.image_embed)
    assert not torch.allclose(text[0], text[1])
    # a bare image tensor works as well as a Batch
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(batch.images), image)
    # padding does not leak into the embedding: changing a padded id changes nothing
    ids = batch.input_ids.clone()
    ids[1, 5] = 42
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids, batch.attention_mask), text)


# ----------------------------------------------------------------------------- data sections
@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("shapesworld")
    generate(root, images=10, size=32, seed=0, workers=1, formats=("albef", "regions"))
    records = json.loads((root / "annotations" / "captions_train.json").read_text())
    return root, Tokenizer.train([r["caption"] for r in records], vocab_size=1000)


@pytest.mark.parametrize("name", REQUIRED)
def test_tiny_recipe_data_section_loads_shapesworld_for_its_model(name: str, shapes_root) -> None:
    """The recipe's own data section, pointed at a ShapesWorld folder, feeds its model and objectives."""
    root, tokenizer = shapes_root
    torch.manual_seed(0)
    model = vlp.create_model(f"{name}-tiny")
    config = dataclasses.replace(model.recipe.data, root=str(root))
    batch = next(iter(build_loader(config, "train", tokenizer, batch_size=4, num_workers=0)))
    vision = model.recipe.model.vision
    if vision.type == "region":
        # the oracle detector's 64-d descriptors, boxes and class scores; OSCAR also reads tags
        assert batch.region_features.shape[-1] == vision.feature_dim == 64
        assert batch.region_class_probs is not None and batch.region_mask.any(1).all()
        assert (batch.tag_ids is not None) or not model.cfg.use_tags
    else:
        assert batch.images.shape[1:] == (3, 32, 32)
    loss, logs = Pretraining(model, model.recipe.objectives, tokenizer=tokenizer)(batch)
    assert math.isfinite(loss.item()) and {f"loss_{o}" for o in model.recipe.objectives} <= set(logs)
