"""create_model on the three example recipes: forward, backward, contract methods, overrides."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vlp
from vlp import Batch
from vlp.config import ConfigError
from vlp.models.config import ModelConfig
from vlp.models.model import VisionLanguageModel


def batch(n: int = 3, length: int = 7) -> Batch:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[1, 5:] = False
    ids = torch.randint(5, 1000, (n, length), generator=g).masked_fill(~mask, 0)
    return Batch(input_ids=ids, attention_mask=mask, images=torch.randn(n, 3, 32, 32, generator=g))


def grads_of(model) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_albef_tiny_forward_backward():
    torch.manual_seed(0)
    model = vlp.create_model("albef-tiny")
    assert isinstance(model, VisionLanguageModel) and model.recipe.model.name == "albef-tiny"
    b = batch()
    out = model(b)
    assert out.model is model and out.text.shape == (3, 7, 32) and out.image.tokens.shape == (3, 17, 32)
    assert out.text_embed.shape == (3, 16) and out.image_embed.shape == (3, 16)
    torch.testing.assert_close(out.text_embed.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.logit_scale.exp(), torch.tensor(1 / 0.07))
    fused = model.fuse(out.text, out.text_mask, out.image)
    sims = out.image_embed @ out.text_embed.T * out.logit_scale.exp()
    itc = F.cross_entropy(sims, torch.arange(3))
    itm = F.cross_entropy(model.heads["itm"](fused.pooled), torch.ones(3, dtype=torch.long))
    mlm = F.cross_entropy(model.heads["mlm"](fused.text)[b.attention_mask], b.input_ids[b.attention_mask])
    (itc + itm + mlm).backward()
    grads = grads_of(model)
    # every part took part: the ViT, the unimodal and the cross-attention text layers, the heads
    for name in [
        "vision.patch_embed.weight",
        "text.layers.0.attn.qkv.weight",
        "text.layers.3.cross_attn.q.weight",
        "heads.itm.weight",
        "heads.mlm.bias",
        "logit_scale",
        "text_proj.weight",
    ]:
        assert name in grads and torch.isfinite(grads[name]).all() and grads[name].abs().sum() > 0, name
    # the encode_* paths are the ones forward used
    torch.testing.assert_close(model.encode_text(b.input_ids, b.attention_mask), out.text_embed)
    torch.testing.assert_close(model.encode_image(b.images), out.image_embed)


def test_vilt_tiny_text_side_is_the_embeddings_and_fusion_is_merged_attention():
    torch.manual_seed(0)
    model = vlp.create_model("vilt-tiny")
    b = batch()
    out = model(b)
    torch.testing.assert_close(out.text, model.text.embeddings(b.input_ids))
    assert out.text_embed is None and model.text_proj is None
    fused = model.fuse(out.text, out.text_mask, out.image)
    assert fused.text.shape == (3, 7, 32) and fused.image.shape == (3, 17, 32)
    loss = model.heads["itm"](fused.pooled).logsumexp(-1).mean() + model.heads["mlm"](fused.text).mean()
    loss.backward()
    grads = grads_of(model)
    assert {
        "text.embeddings.word.weight",
        "vision.patch_embed.weight",
        "fusion.encoder.layers.3.mlp.fc2.weight",
    } <= set(grads)
    with pytest.raises(RuntimeError, match="no dual-encoder side"):
        model.encode_text(b.input_ids)


def test_clip_tiny_is_a_dual_encoder():
    torch.manual_seed(0)
    model = vlp.create_model("clip-tiny")
    b = batch()
    out = model(b)
    # independent recomputation: last real token of the causal text tower, [CLS] of the ViT
    hidden = model.text(b.input_ids, b.attention_mask)
    last = b.attention_mask.sum(1) - 1
    text_ref = F.normalize(hidden[torch.arange(3), last] @ model.text_proj.weight.T, dim=-1)
    image_ref = F.normalize(model.vision(b.images).tokens[:, 0] @ model.image_proj.weight.T, dim=-1)
    torch.testing.assert_close(out.text_embed, text_ref)
    torch.testing.assert_close(out.image_embed, image_ref)
    assert model.text_proj.bias is None
    logits = out.logit_scale.exp() * out.image_embed @ out.text_embed.T
    loss = (F.cross_entropy(logits, torch.arange(3)) + F.cross_entropy(logits.T, torch.arange(3))) / 2
    loss.backward()
    assert model.logit_scale.grad is not None and model.vision.patch_embed.weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="dual encoder"):
        model.fuse(out.text, out.text_mask, out.image)
    assert "itm" not in model.heads and math.isclose(model.cfg.temperature, 0.07)


def test_create_model_overrides_and_errors():
    model = vlp.create_model("vilt-tiny", **{"model.fusion.layers": 2, "heads.vqa": {"num_answers": 5}})
    assert len(model.fusion.encoder.layers) == 2 and model.recipe.model.fusion.layers == 2
    assert model.heads["vqa"][-1].out_features == 5
    model = vlp.create_model(model.cfg, **{"fusion.heads": 4})  # a ModelConfig; keys relative to model
    assert model.fusion.encoder.layers[0].attn.heads == 4 and model.recipe is None
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        vlp.create_model("nope")
    with pytest.raises(ConfigError, match="fusion.layer: unknown key"):
        vlp.create_model("vilt-tiny", **{"model.fusion.layer": 2})
    with pytest.raises(ConfigError, match="fusion takes text tokens of width 32 but model.text.dim is 16"):
        vlp.create_model("vilt-tiny", **{"model.text.dim": 16})
    with pytest.raises(ConfigError, match="model.embed_dim > 0 needs both"):
        VisionLanguageModel(ModelConfig(embed_dim=8))


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = vlp.create_model("albef-tiny").train()
    b = batch()

    def grads():
        model.zero_grad()
        out = model(b)
        fused = model.fuse(out.text, out.text_mask, out.image)
        (fused.pooled.square().sum() + out.text_embed.sum() + out.image_embed.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    assert model.text.grad_checkpointing and model.vision.transformer.grad_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)
