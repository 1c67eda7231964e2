"""transformers LXMERT / VisualBERT <-> vlp `lxmert` / `visualbert` on region features, padded regions included."""

from __future__ import annotations

import pytest
import torch
from interop_helpers import close, padded_ids, perturb

import vlp
from vlp import Batch
from vlp.interop import ConversionError, export_folder, import_folder

transformers = pytest.importorskip("transformers")


def regions(feature_dim: int):
    g = torch.Generator().manual_seed(4)
    features = torch.randn(3, 6, feature_dim, generator=g)
    corners = torch.rand(3, 6, 2, 2, generator=g).sort(dim=2).values  # x1 <= x2, y1 <= y2
    boxes = torch.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0], corners[..., 1, 1]], dim=-1)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 2:] = False
    return features, boxes, mask


def round_trip(cls, config, tmp_path):
    torch.manual_seed(0)
    reference = perturb(cls(config))
    reference.save_pretrained(tmp_path / "hf")
    import_folder(tmp_path / "hf", tmp_path / "vlp")
    export_folder(tmp_path / "vlp", tmp_path / "back")
    reloaded, info = cls.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return vlp.load(tmp_path / "vlp"), reference, reloaded.eval()


def test_lxmert_three_encoders(tmp_path):
    config = transformers.LxmertConfig(
        vocab_size=40,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        l_layers=2,
        x_layers=2,
        r_layers=1,
        visual_feat_dim=20,
        max_position_embeddings=16,
    )
    model, reference, reloaded = round_trip(transformers.LxmertModel, config, tmp_path)
    layer = model.fusion.layers[0]
    assert layer.image.cross_attn is layer.text.cross_attn  # LXMERT's one visual_attention
    ids, mask = padded_ids([4, 9, 6], 40, first=2, last=3, pad=0)
    features, boxes, region_mask = regions(20)
    with torch.no_grad():
        out = model(
            Batch(
                input_ids=ids,
                attention_mask=mask,
                region_features=features,
                region_boxes=boxes,
                region_mask=region_mask,
            )
        )
        fused = model.fuse(out.text, out.text_mask, out.image)
        for ref_model in (reference, reloaded):
            ref = ref_model(
                input_ids=ids,
                attention_mask=mask.long(),
                visual_feats=features,
                visual_pos=boxes,
                visual_attention_mask=region_mask.long(),
                output_hidden_states=True,
            )
            close(fused.text[mask], ref.language_output[mask])
            close(fused.image[region_mask], ref.vision_output[region_mask])
            close(fused.pooled, ref.pooled_output)
            close(out.text[mask], ref.language_hidden_states[1][mask])  # the language encoder alone
            close(out.image.tokens[region_mask], ref.vision_hidden_states[0][region_mask])  # the object encoder


def test_visualbert_single_stream(tmp_path):
    config = transformers.VisualBertConfig(
        vocab_size=40,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_hidden_layers=2,
        visual_embedding_dim=20,
        max_position_embeddings=16,
    )
    model, reference, reloaded = round_trip(transformers.VisualBertModel, config, tmp_path)
    ids, mask = padded_ids([4, 9, 6], 40, first=2, last=3, pad=0)
    features, _, region_mask = regions(20)
    with torch.no_grad():
        out = model(Batch(input_ids=ids, attention_mask=mask, region_features=features, region_mask=region_mask))
        fused = model.fuse(out.text, out.text_mask, out.image)
        length = ids.shape[1]
        for ref_model in (reference, reloaded):
            ref = ref_model(
                input_ids=ids,
                attention_mask=mask.long(),
                visual_embeds=features,
                visual_attention_mask=region_mask.long(),
            )
            close(fused.text[mask], ref.last_hidden_state[:, :length][mask])
            close(fused.image[region_mask], ref.last_hidden_state[:, length:][region_mask])
            close(fused.pooled, ref.pooler_output)
    # the text and region LayerNorms are one in VisualBERT: copies trained apart cannot be exported
    with torch.no_grad():
        model.vision.feature_norm.weight.add_(0.1)
    vlp.save_pretrained(model, tmp_path / "apart")
    with pytest.raises(ConversionError, match=r"embeddings\.LayerNorm\.weight is one tensor in the target model"):
        export_folder(tmp_path / "apart", tmp_path / "out")
