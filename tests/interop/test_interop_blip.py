"""transformers BLIP retrieval / captioning <-> vlp `blip`: same ITM logits, similarities, LM logits."""

from __future__ import annotations

import json

import pytest
import torch
from interop_helpers import close, padded_ids, perturb

import vlp
from vlp import Batch
from vlp.interop import export_folder, import_folder

transformers = pytest.importorskip("transformers")


def blip_config(**extra) -> transformers.BlipConfig:
    text = dict(
        vocab_size=40,
        hidden_size=32,
        encoder_hidden_size=24,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        bos_token_id=1,
        pad_token_id=0,
        sep_token_id=3,
    )
    vision = dict(
        hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    return transformers.BlipConfig(text_config=text, vision_config=vision, **extra)


def round_trip(cls, tmp_path):
    torch.manual_seed(0)
    reference = perturb(cls(blip_config(image_text_hidden_size=16)))
    reference.save_pretrained(tmp_path / "hf")
    import_folder(tmp_path / "hf", tmp_path / "vlp")
    export_folder(tmp_path / "vlp", tmp_path / "back")
    reloaded, info = cls.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return vlp.load(tmp_path / "vlp"), reference, reloaded.eval()


def inputs():
    ids, mask = padded_ids([4, 9, 6], 40, first=2, last=3, pad=0)
    return ids, mask, torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def test_blip_retrieval_itm_and_similarity(tmp_path):
    model, reference, reloaded = round_trip(transformers.BlipForImageTextRetrieval, tmp_path)
    ids, mask, images = inputs()
    with torch.no_grad():
        out = model(Batch(input_ids=ids, attention_mask=mask, images=images))
        fused = model.fuse(out.text, out.text_mask, out.image)
        for ref_model in (reference, reloaded):
            kwargs = dict(input_ids=ids, attention_mask=mask.long(), pixel_values=images)
            itm = ref_model(**kwargs, use_itm_head=True)
            sim = ref_model(**kwargs, use_itm_head=False)
            close(model.heads["itm"](fused.pooled), itm.itm_score)
            close(out.image_embed @ out.text_embed.T, sim.itm_score)
            close(fused.text[mask], itm.question_embeds[mask])  # the image-grounded text tokens
            close(out.image.tokens, itm.last_hidden_state)  # ViT tokens after post_layernorm
    # BLIP's retrieval model has no temperature: vlp's stays at its initial value, and the folder says so
    assert torch.allclose(model.logit_scale, torch.tensor(1 / 0.07).log())
    record = json.loads((tmp_path / "vlp" / "interop.json").read_text())
    assert list(record["vlp_only"]) == ["logit_scale"] and record["architecture"] == "BlipForImageTextRetrieval"


def test_blip_captioning_logits(tmp_path):
    model, reference, reloaded = round_trip(transformers.BlipForConditionalGeneration, tmp_path)
    assert model.text is None and model.heads["lm"].decoder.weight is model.decoder.embeddings.word.weight
    ids, mask, images = inputs()
    with torch.no_grad():
        logits = model.decode(ids, mask, model.image_tokens(images))
        for ref_model in (reference, reloaded):
            ref = ref_model(input_ids=ids, attention_mask=mask.long(), pixel_values=images)
            close(logits[mask], ref.logits[mask])


def untied_captioner(tmp_path):
    torch.manual_seed(3)
    config = blip_config(tie_word_embeddings=False)
    config.text_config.tie_word_embeddings = False  # the text LM ties by its own config too
    reference = perturb(transformers.BlipForConditionalGeneration(config))
    state = reference.state_dict()
    # untied, the two bias copies are separate parameters; perturb moved them apart
    assert not torch.equal(
        state["text_decoder.cls.predictions.bias"], state["text_decoder.cls.predictions.decoder.bias"]
    )
    reference.save_pretrained(tmp_path / "hf")
    return reference


def test_blip_untied_captioner_round_trip(tmp_path):
    reference = untied_captioner(tmp_path)
    import_folder(tmp_path / "hf", tmp_path / "vlp")
    model = vlp.load(tmp_path / "vlp")
    assert model.heads["lm"].decoder.weight is not model.decoder.embeddings.word.weight
    export_folder(tmp_path / "vlp", tmp_path / "back")
    reloaded, info = transformers.BlipForConditionalGeneration.from_pretrained(
        tmp_path / "back", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not reloaded.config.tie_word_embeddings
    back = reloaded.state_dict()
    # both bias keys are written, each holding the bias transformers' forward adds (decoder.bias)
    used = reference.state_dict()["text_decoder.cls.predictions.decoder.bias"]
    assert torch.equal(back["text_decoder.cls.predictions.decoder.bias"], used)
    assert torch.equal(back["text_decoder.cls.predictions.bias"], used)
    ids, mask, images = inputs()
    with torch.no_grad():
        logits = model.decode(ids, mask, model.image_tokens(images))
        for ref_model in (reference, reloaded.eval()):
            ref = ref_model(input_ids=ids, attention_mask=mask.long(), pixel_values=images)
            close(logits[mask], ref.logits[mask])


def test_blip_differing_bias_copies_import_the_one_transformers_uses(tmp_path):
    """A tied config whose file holds two different biases: transformers then leaves them untied (with a
    warning) and its forward adds ``decoder.bias``; the import takes that one."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(4)
    tied = perturb(transformers.BlipForConditionalGeneration(blip_config()))
    tied.save_pretrained(tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    bias = state["text_decoder.cls.predictions.bias"]
    state["text_decoder.cls.predictions.decoder.bias"] = bias + 0.5
    save_file(state, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    reference = transformers.BlipForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    model = vlp.create_model("blip", pretrained=tmp_path / "hf")
    torch.testing.assert_close(model.heads["lm"].bias.detach(), bias + 0.5, rtol=0, atol=0)
    ids, mask, images = inputs()
    with torch.no_grad():
        logits = model.decode(ids, mask, model.image_tokens(images))
        ref = reference(input_ids=ids, attention_mask=mask.long(), pixel_values=images)
    close(logits[mask], ref.logits[mask])
