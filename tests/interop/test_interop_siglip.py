"""transformers SiglipModel <-> vlp `siglip`: same embeddings, logits and hidden states; strict loading; export."""

from __future__ import annotations

import json

import pytest
import torch
from interop_helpers import check_dual_encoder, close, padded_ids, perturb

import vlp
from vlp.interop import ConversionError, export_folder, import_folder
from vlp.io.saving import save_pretrained

transformers = pytest.importorskip("transformers")

VOCAB, PAD, EOS = 60, 1, 2


def siglip_config(**vision_extra) -> transformers.SiglipConfig:
    text = dict(
        vocab_size=VOCAB,
        hidden_size=24,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    vision = dict(
        hidden_size=24,
        intermediate_size=36,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        **vision_extra,
    )
    return transformers.SiglipConfig(text_config=text, vision_config=vision)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("siglip") / "hf"
    torch.manual_seed(0)
    model = perturb(transformers.SiglipModel(siglip_config()))
    with torch.no_grad():  # SigLIP's own starting values, moved off round numbers
        model.logit_scale.fill_(2.4)
        model.logit_bias.fill_(-9.3)
    model.save_pretrained(folder)
    proc = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    proc.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def converted(hf_folder, tmp_path_factory):
    return import_folder(hf_folder, tmp_path_factory.mktemp("siglip") / "vlp")


def inputs():
    # a right-padded batch with its attention mask: SigLIP pools the last position, padding or not
    ids, mask = padded_ids([5, 9, 3], VOCAB, first=5, last=EOS, pad=PAD)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return ids, mask, images


def check_against(model, reference) -> None:
    check_dual_encoder(model, reference, *inputs())


def test_import_matches_transformers(hf_folder, converted):
    model = vlp.load(converted)
    check_against(model, transformers.SiglipModel.from_pretrained(hf_folder).eval())
    assert model.cfg.text.pooling == "last" and not model.cfg.text.causal and model.cfg.image_pool == "map"
    assert torch.equal(model.image_proj.weight, torch.eye(24)) and not model.image_proj.bias.any()
    assert json.loads((converted / "interop.json").read_text())["family"] == "siglip"
    assert model.recipe.data.image_size == 32 and "siglip" in model.recipe.objectives


def test_unpadded_batch_without_mask_matches(converted, hf_folder):
    # SigLIP's own usage: fixed-length padded ids and no attention mask at all
    model, hf = vlp.load(converted), transformers.SiglipModel.from_pretrained(hf_folder).eval()
    ids = torch.randint(3, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        close(model.encode_text(ids), hf(input_ids=ids, pixel_values=torch.zeros(1, 3, 32, 32)).text_embeds)


def test_export_reloads_in_transformers_with_the_same_outputs(hf_folder, converted, tmp_path):
    out = export_folder(converted, tmp_path / "back")
    reloaded, info = transformers.SiglipModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    original = transformers.SiglipModel.from_pretrained(hf_folder)
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    check_against(vlp.load(converted), reloaded.eval())
    assert json.loads((out / "preprocessor_config.json").read_text())["image_processor_type"] == "SiglipImageProcessor"


def test_trained_image_projection_is_refused_on_export(converted, tmp_path):
    model = vlp.load(converted)
    with torch.no_grad():
        model.image_proj.weight.mul_(1.5)
    save_pretrained(model, tmp_path / "trained")
    with pytest.raises(ConversionError, match="image_proj is not the identity"):
        export_folder(tmp_path / "trained", tmp_path / "out")


def test_a_vision_tower_without_its_head_is_refused(tmp_path):
    transformers.SiglipModel(siglip_config()).save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["vision_config"]["vision_use_head"] = False
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="vision_config.vision_use_head"):
        import_folder(tmp_path / "hf", tmp_path / "vlp")
