"""The objectives on the composed model (vlp.create_model) and recipes, end to end."""

import pytest
import torch
import torch.nn.functional as F

import vlp
from vlp import Batch
from vlp.objectives import MRFR, MRFRConfig, Pretraining, build_objectives
from vlp.objectives.region import select_regions


class Tok:
    """The ids a tokenizer trained by vlp would have (specials first) for the recipes' 1000-word vocabulary."""

    pad_id, unk_id, cls_id, sep_id, mask_id, vocab_size = 0, 1, 2, 3, 4, 1000


def text_batch(n: int = 4, length: int = 8, **fields) -> Batch:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[1, 5:] = False
    ids = torch.randint(5, 1000, (n, length), generator=g)
    ids[:, 0] = Tok.cls_id
    ids[torch.arange(n), mask.sum(1) - 1] = Tok.sep_id
    ids = ids.masked_fill(~mask, Tok.pad_id)
    word_ids = (torch.arange(length) - 1).div(2, rounding_mode="floor").repeat(n, 1)  # two pieces per word
    word_ids[(ids == Tok.cls_id) | (ids == Tok.sep_id) | ~mask] = -1
    return Batch(input_ids=ids, attention_mask=mask, word_ids=word_ids, **fields)


@pytest.mark.parametrize("name", ["albef-tiny", "vilt-tiny", "clip-tiny"])
def test_recipe_objectives_train_the_model(name: str) -> None:
    torch.manual_seed(0)
    model = vlp.create_model(name)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batch = text_batch(images=images, image_index=torch.tensor([0, 0, 1, 2]))
    pretraining = Pretraining(model, model.recipe.objectives, tokenizer=Tok())
    assert (pretraining.ema is not None) == (model.cfg.momentum > 0)
    loss, logs = pretraining(batch)
    assert set(logs) >= {"loss", *(f"loss_{k}" for k in model.recipe.objectives)}
    assert torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for part in ["vision.", "text.", *(f"heads.{h}." for h in model.heads)]:
        assert any(n.startswith(part) and g.abs().sum() > 0 for n, g in grads.items()), f"{name}: no gradient in {part}"
    if pretraining.ema is not None:
        before = pretraining.ema.module.logit_scale.item()
        with torch.no_grad():
            model.logit_scale.add_(1.0)
        pretraining.after_step()
        assert pretraining.ema.module.logit_scale.item() == pytest.approx(before + (1 - model.cfg.momentum))


def test_itc_on_clip_equals_cross_entropy_of_its_embeddings() -> None:
    torch.manual_seed(0)
    model = vlp.create_model("clip-tiny")
    batch = text_batch(images=torch.randn(4, 3, 32, 32))
    ((_, itc),) = build_objectives({"itc": {}}).values()
    outputs = model(batch)
    loss, _ = itc(outputs, batch)
    logits = outputs.image_embed @ outputs.text_embed.t() * outputs.logit_scale.exp()
    labels = torch.arange(4)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def region_model():
    cfg = {
        "name": "uniter-micro",
        "text": {"type": "bert", "vocab_size": 1000, "dim": 32, "layers": 0, "heads": 2, "dropout": 0.0},
        "vision": {"type": "region", "feature_dim": 6, "dim": 32},
        "fusion": {"type": "single_stream", "dim": 32, "layers": 1, "heads": 2},
        "heads": {"itm": {}, "mlm": {}, "mrc": {"num_classes": 5}, "mrfr": {}},
    }
    torch.manual_seed(0)
    return vlp.create_model({"model": cfg})


def region_batch() -> Batch:
    g = torch.Generator().manual_seed(2)
    region_mask = torch.ones(4, 5, dtype=torch.bool)
    region_mask[0, 3:] = False
    xy = torch.rand(4, 5, 2, generator=g) * 0.5
    return text_batch(
        region_features=torch.randn(4, 5, 6, generator=g),
        region_boxes=torch.cat([xy, xy + 0.4], -1),
        region_mask=region_mask,
        region_class_probs=torch.softmax(torch.randn(4, 5, 5, generator=g), -1),
    )


def test_region_objectives_on_a_uniter_like_model() -> None:
    model = region_model()
    batch = region_batch()
    objectives = {"itm": {"negatives": "random"}, "mlm": {"strategy": "span"}, "mrc": {"variant": "kl"}, "mrfr": {}}
    loss, logs = Pretraining(model, objectives, tokenizer=Tok(), momentum=0.0)(batch)
    assert torch.isfinite(loss) and {"loss_mrc", "loss_mrfr", "mrc_acc"} <= set(logs)
    loss.backward()
    assert model.heads["mrc"].net[0].weight.grad.abs().sum() > 0

    # MRFR by hand on the real model (eval: no dropout between the two computations)
    model.eval()
    outputs = model(batch)
    mrfr, _ = MRFR(MRFRConfig(prob=0.4, seed=5))(outputs, batch)
    masked = select_regions(batch.region_mask, 0.4, torch.Generator().manual_seed(5))
    features = batch.region_features.clone()
    features[masked] = 0.0
    image = model.image_tokens(batch.replace(region_features=features))
    fused = model.fuse(outputs.text, outputs.text_mask, image).image
    prediction = model.heads["mrfr"](fused)
    rows = masked.nonzero().tolist()
    expected = torch.stack([((prediction[b, r] - batch.region_features[b, r]) ** 2).mean() for b, r in rows]).mean()
    assert mrfr.item() == pytest.approx(expected.item(), rel=1e-5)


def test_lm_on_a_blip_like_decoder() -> None:
    text = {"type": "bert", "vocab_size": 1000, "dim": 32, "layers": 2, "heads": 2, "dropout": 0.0}
    cfg = {
        "name": "blip-micro",
        "text": {**text, "cross_attention_from": 0, "context_dim": 32},
        "vision": {"type": "patch", "image_size": 32, "patch_size": 8, "dim": 32, "layers": 1, "heads": 2},
        "fusion": {"type": "text_cross", "from_layer": 0},
        "decoder": {**text, "causal": True, "cross_attention_from": 0, "context_dim": 32},
        "decoder_share": "all_but_self_attention",
        "embed_dim": 16,
        "heads": {"itm": {}},
    }
    torch.manual_seed(0)
    model = vlp.create_model({"model": cfg})
    batch = text_batch(images=torch.randn(4, 3, 32, 32))
    objectives = {"itc": {}, "itm": {"negatives": "hard"}, "lm": {"label_smoothing": 0.1}}
    pretraining = Pretraining(model, objectives, momentum=0.0)
    loss, logs = pretraining(batch)
    outputs = model(batch)
    logits = model.decode(batch.input_ids, batch.attention_mask, outputs.image)
    targets = batch.input_ids[:, 1:].masked_fill(~batch.attention_mask[:, 1:], -100)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 1000), targets.reshape(-1), label_smoothing=0.1)
    assert logs["loss_lm"] == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert model.decoder.layers[0].attn.qkv.weight.grad.abs().sum() > 0


def test_mlm_masks_oscar_tags_joined_by_the_model() -> None:
    from vlp.config import ConfigError

    model = region_model()
    model.cfg.use_tags = True
    batch = region_batch().replace(tag_ids=torch.tensor([[30, 31, Tok.sep_id]] * 4), tag_mask=torch.ones(4, 3).bool())
    outputs = model(batch)
    assert outputs.extra["input_ids"].shape == (4, 11)  # caption + tags
    ((_, mlm),) = build_objectives({"mlm": {"prob": 0.9, "seed": 0}}, tokenizer=Tok()).values()
    masked, labels = mlm.mask(
        outputs.extra["input_ids"], outputs.extra["attention_mask"], None, torch.Generator().manual_seed(0)
    )
    joined = outputs.extra["input_ids"]
    tags = (outputs.extra["token_type_ids"] == 1) & (joined != Tok.sep_id)
    assert tags.sum() == 8 and (labels[tags] != -100).any()  # tag tokens are masked too (OSCAR)
    assert torch.equal(labels[labels != -100], joined[labels != -100])
    loss, _ = mlm(outputs, batch)
    assert torch.isfinite(loss)
    ((_, whole),) = build_objectives({"mlm": {"strategy": "whole_word"}}, tokenizer=Tok()).values()
    with pytest.raises(ConfigError, match="word_ids.*strategy: random"):
        whole(outputs, batch)
