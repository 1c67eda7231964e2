"""The composed model with the other fusion designs: BLIP, VLMo, OSCAR tags, METER."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlp import Batch
from vlp.config import ConfigError, from_dict
from vlp.models.config import ModelConfig
from vlp.models.model import VisionLanguageModel

TEXT = {"type": "bert", "vocab_size": 60, "dim": 16, "heads": 2, "mlp_dim": 32, "max_positions": 32, "dropout": 0.0}
PATCH = {"type": "patch", "image_size": 16, "patch_size": 8, "dim": 16, "heads": 2, "mlp_dim": 32}


def model_of(**model) -> VisionLanguageModel:
    torch.manual_seed(0)
    return VisionLanguageModel(from_dict(ModelConfig, model, "model")).eval()


def batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    ids = torch.randint(5, 60, (2, 5), generator=g).masked_fill(~mask, 0)
    return Batch(input_ids=ids, attention_mask=mask, images=torch.randn(2, 3, 16, 16, generator=g))


def blip(share: str = "all_but_self_attention") -> VisionLanguageModel:
    text = {**TEXT, "layers": 2, "cross_attention_from": 0}
    return model_of(
        text=text,
        vision={**PATCH, "layers": 1},
        fusion={"type": "text_cross", "from_layer": 0, "restart": True},
        decoder={**text, "causal": True},
        decoder_share=share,
        embed_dim=8,
        heads={"itm": {}},
    )


def test_blip_decoder_shares_all_but_self_attention():
    model = blip()
    text, dec = model.text, model.decoder
    assert dec.embeddings is text.embeddings
    for mine, theirs in zip(dec.layers, text.layers):
        assert mine.mlp is theirs.mlp and mine.cross_attn is theirs.cross_attn and mine.norm2 is theirs.norm2
        assert mine.attn is not theirs.attn and mine.norm1 is not theirs.norm1
    assert model.heads["lm"].decoder.weight is text.embeddings.word.weight
    unshared = blip("none")
    assert unshared.decoder.layers[0].mlp is not unshared.text.layers[0].mlp
    n_shared = sum(p.numel() for p in model.parameters())
    assert n_shared < sum(p.numel() for p in unshared.parameters())


def test_blip_unimodal_fused_and_causal_decoding():
    model = blip()
    b = batch()
    out = model(b)
    image = out.image
    # the fusion input is the embeddings output; ITC uses the whole stack without the image
    torch.testing.assert_close(out.text, model.text.embeddings(b.input_ids))
    ref = F.normalize(model.text_proj(model.text(b.input_ids, b.attention_mask)[:, 0]), dim=-1)
    torch.testing.assert_close(out.text_embed, ref)
    fused = model.fuse(out.text, out.text_mask, image)
    torch.testing.assert_close(
        fused.text, model.text(b.input_ids, b.attention_mask, context=image.tokens, context_mask=image.mask)
    )
    logits = model.decode(b.input_ids, b.attention_mask, image)
    assert logits.shape == (2, 5, 60)
    changed = b.input_ids.clone()
    changed[:, 3] = 7
    logits2 = model.decode(changed, b.attention_mask, image)
    torch.testing.assert_close(logits[:, :3], logits2[:, :3])  # causal: the future does not leak back
    assert not torch.allclose(logits[0, 3:], logits2[0, 3:])


def vlmo() -> VisionLanguageModel:
    return model_of(
        text={**TEXT, "layers": 0},
        vision={**PATCH, "layers": 0, "final_norm": False},
        fusion={"type": "mome", "dim": 16, "layers": 2, "heads": 2, "vl_layers": 1},
        embed_dim=8,
        heads={"itm": {}, "mlm": {}},
    )


def test_vlmo_dual_and_fusion_paths_share_the_mome_weights():
    model = vlmo()
    b = batch()
    out = model(b)
    embeddings = model.text.embeddings(b.input_ids)
    ref_text = model.fusion.encode_text(embeddings, b.attention_mask)[:, 0]
    torch.testing.assert_close(out.text_embed, F.normalize(model.text_proj(ref_text), dim=-1))
    patches = model.vision(b.images)
    ref_image = model.fusion.encode_image(patches.tokens, patches.mask)[:, 0]
    torch.testing.assert_close(out.image_embed, F.normalize(model.image_proj(ref_image), dim=-1))
    fused = model.fuse(out.text, out.text_mask, out.image)
    assert fused.pooled.shape == (2, 16) and model.heads["mlm"](fused.text).shape == (2, 5, 60)
    # both losses reach the same shared attention weights
    model.train()
    (model(b).text_embed.sum()).backward()
    dual_grad = model.fusion.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    model.heads["itm"](model.fuse(out.text, out.text_mask, out.image).pooled).sum().backward()
    assert dual_grad.abs().sum() > 0 and model.fusion.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_oscar_tags_are_packed_after_the_caption():
    model = model_of(
        text={**TEXT, "layers": 0},
        vision={**PATCH, "layers": 0},
        fusion={"type": "single_stream", "dim": 16, "layers": 1, "heads": 2, "norm_first": False},
        use_tags=True,
        heads={"mlm": {}},
    )
    cls, sep = 2, 3
    ids = torch.tensor([[cls, 10, 11, sep, 0], [cls, 12, sep, 0, 0]])
    mask = ids != 0
    tags = torch.tensor([[20, sep, 0], [21, 22, sep]])
    tag_mask = tags != 0
    joined, joined_mask, types = model.join_tags(ids, mask, None, tags, tag_mask)
    assert joined.tolist() == [[cls, 10, 11, sep, 20, sep, 0, 0], [cls, 12, sep, 21, 22, sep, 0, 0]]
    assert joined_mask.tolist() == [[True] * 6 + [False] * 2] * 2
    assert types.tolist() == [[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0]]
    b = Batch(input_ids=ids, attention_mask=mask, images=torch.randn(2, 3, 16, 16), tag_ids=tags, tag_mask=tag_mask)
    out = model(b)
    assert out.text.shape == (2, 8, 16) and torch.equal(out.extra["input_ids"], joined)
    torch.testing.assert_close(out.text, model.text.embeddings(joined, types))


def test_meter_co_attention_with_both_poolers_sizes_its_heads():
    model = model_of(
        text={**TEXT, "layers": 1},
        vision={**PATCH, "layers": 1, "dim": 24, "heads": 2},
        fusion={
            "type": "co_attention",
            "text_dim": 16,
            "image_dim": 8,
            "image_in_dim": 24,
            "layers": 1,
            "heads": 2,
            "order": "self_first",
            "pooling": "both",
        },
        heads={"itm": {}, "vqa": {"num_answers": 7}, "box": {}, "mrc": {"num_classes": 5}, "mlm": {}},
    )
    out = model(batch())
    fused = model.fuse(out.text, out.text_mask, out.image)
    assert fused.pooled.shape == (2, 24)
    assert model.heads["itm"](fused.pooled).shape == (2, 2) and model.heads["vqa"](fused.pooled).shape == (2, 7)
    assert model.heads["mrc"](fused.image).shape == (2, 5, 5)
    box = model.heads["box"](fused.pooled)
    assert box.shape == (2, 4) and bool((box[:, 2:] >= box[:, :2]).all()) and bool(((box >= 0) & (box <= 1)).all())


def test_model_config_errors():
    text1, text2 = {**TEXT, "layers": 1}, {**TEXT, "layers": 2}
    with pytest.raises(ConfigError, match="model.heads.mrc: needs fused image tokens"):
        model_of(text=text1, vision=PATCH, fusion={"type": "none"}, embed_dim=4, heads={"mrc": {"num_classes": 3}})
    with pytest.raises(ConfigError, match="model.heads.lm: needs a text decoder"):
        model_of(text=text1, heads={"lm": {}})
    with pytest.raises(ConfigError, match="model.vision.dim is 16; set model.text.context_dim: 16"):
        cross = {**text2, "cross_attention_from": 1, "context_dim": 8}
        model_of(text=cross, vision=PATCH, fusion={"type": "text_cross", "from_layer": 1})
    with pytest.raises(ConfigError, match="decoder layer 0 has cross-attention but text layer 0 has none"):
        text, decoder = {**text2, "cross_attention_from": 1}, {**text2, "cross_attention_from": 0}
        model_of(text=text, decoder=decoder, decoder_share="all_but_self_attention")
    with pytest.raises(RuntimeError, match="has no decoder part"):
        model_of(text=text1).decode(torch.ones(1, 2, dtype=torch.long), None, None)
