"""transformers CLIPModel <-> vlp `clip`: same embeddings, logits and hidden states; strict loading; export."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from interop_helpers import check_dual_encoder, close, padded_ids, perturb, train_clip_bpe

import vlp
from vlp.cli import main
from vlp.interop import ConversionError, export_folder, import_folder

transformers = pytest.importorskip("transformers")

VOCAB = 344  # the tiny BPE of interop_helpers; ids 342 / 343 are <|startoftext|> / <|endoftext|>
SOT, EOT = 342, 343


def clip_config(eos: int = EOT) -> transformers.CLIPConfig:
    text = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        bos_token_id=SOT,
        eos_token_id=eos,
        pad_token_id=EOT,
    )
    vision = dict(
        hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip") / "hf"
    torch.manual_seed(0)
    model = perturb(transformers.CLIPModel(clip_config()))
    model.save_pretrained(folder)
    assert len(json.loads((train_clip_bpe(folder) / "vocab.json").read_text())) == VOCAB  # travels with the weights
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def converted(hf_folder, tmp_path_factory):
    return import_folder(hf_folder, tmp_path_factory.mktemp("clip") / "vlp")


def inputs():
    # padded with <|endoftext|> as CLIP's tokenizer does: pooling must take the *first* end token
    ids, mask = padded_ids([5, 11, 3], SOT, first=SOT, last=EOT, pad=EOT)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return ids, mask, images


def check_against(model, reference) -> None:
    # vlp normalizes every visual token with post_layernorm; transformers only the pooled [CLS]
    check_dual_encoder(model, reference, *inputs(), vision_norm=reference.vision_model.post_layernorm)


def test_import_matches_transformers(hf_folder, converted):
    model = vlp.load(converted)
    check_against(model, transformers.CLIPModel.from_pretrained(hf_folder).eval())
    assert model.cfg.text.eos_id == EOT and model.cfg.vision.pre_norm and not model.cfg.proj_bias
    # everything that comes along with the weights
    names = {p.name for p in converted.iterdir()}
    assert {"vocab.json", "merges.txt", "preprocess.json", "transformers_config.json", "recipe.yaml"} <= names
    assert type(vlp.load_tokenizer(converted)).__name__ == "ClipTokenizer"
    pre = json.loads((converted / "preprocess.json").read_text())
    assert pre["resize"] == "shortest_edge" and pre["crop"] == [32, 32]
    assert model.recipe.data.image_size == 32 and model.recipe.data.transform.eval_crop == "center"


def test_export_reloads_in_transformers_with_the_same_outputs(hf_folder, converted, tmp_path):
    out = export_folder(converted, tmp_path / "back")
    reloaded, info = transformers.CLIPModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    original = transformers.CLIPModel.from_pretrained(hf_folder)
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    check_against(vlp.load(converted), reloaded.eval())
    assert (out / "vocab.json").is_file() and (out / "preprocessor_config.json").is_file()
    assert transformers.CLIPTokenizerFast.from_pretrained(out).vocab_size == VOCAB


def test_legacy_eos_config_pools_at_the_highest_id(tmp_path):
    torch.manual_seed(1)
    hf = perturb(transformers.CLIPModel(clip_config(eos=2)))  # pre-2023 configs: argmax(input_ids)
    hf.save_pretrained(tmp_path / "hf")
    model = vlp.create_model("clip", pretrained=tmp_path / "hf")
    assert model.cfg.text.pooling == "argmax"
    check_against(model, hf)


@pytest.mark.parametrize("eos", [EOT, 2], ids=["eos_id", "legacy_argmax"])
def test_trimmed_text_equals_transformers_on_the_padded_batch(eos, tmp_path):
    """model.text_trim: a batch padded to 16 runs the tower on 8 positions; embeddings, logits and the
    hidden states at real tokens equal transformers' (and vlp's own untrimmed pass) on the padded batch."""
    torch.manual_seed(2)
    hf = perturb(transformers.CLIPModel(clip_config(eos=eos))).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = vlp.create_model("clip", pretrained=tmp_path / "hf").eval()
    assert model.cfg.text_trim == 8
    ids, mask = padded_ids([5, 3, 2, 7], SOT, first=SOT, last=EOT, pad=EOT)
    ids = torch.cat([ids, torch.full((4, 9), EOT)], 1)  # padded to max_position_embeddings, 16
    mask = torch.cat([mask, torch.zeros(4, 9, dtype=torch.bool)], 1)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    seen = []
    model.text.embeddings.register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long(), pixel_values=images)
        out = model(vlp.Batch(input_ids=ids, attention_mask=mask, images=images))
        text_embed, image_embed = model.encode_text(ids, mask), model.encode_image(images)
        assert seen == [8, 8]
        close(out.text_embed, ref.text_embeds)
        close(text_embed, ref.text_embeds)
        close(model.logit_scale.exp() * text_embed @ image_embed.T, ref.logits_per_text)
        close(out.text[mask], ref.text_model_output.last_hidden_state[mask])
        model.cfg.text_trim = 0  # vlp's own padded pass
        torch.testing.assert_close(model.encode_text(ids, mask), text_embed, atol=1e-6, rtol=1e-6)
    assert seen[-1] == 16


def test_create_model_pretrained_and_family_check(hf_folder, converted):
    for source in (hf_folder, converted):
        model = vlp.create_model("clip-tiny", pretrained=source)
        assert not model.training and model.recipe is not None
        check_against(model, transformers.CLIPModel.from_pretrained(hf_folder).eval())
    with pytest.raises(vlp.config.ConfigError, match="holds a clip model, but recipe 'vilt' is a vilt model"):
        vlp.create_model("vilt", pretrained=hf_folder)
    with pytest.raises(Exception, match=r"shape mismatch.*text\.embeddings\.word\.weight"):
        vlp.create_model("clip", pretrained=converted, **{"model.text.vocab_size": 50})


def test_missing_and_unexpected_weights_are_listed(hf_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(hf_folder / "model.safetensors")
    folder = tmp_path / "broken"
    shutil.copytree(hf_folder, folder)
    del state["text_model.encoder.layers.1.mlp.fc2.bias"]
    state["text_model.extra.weight"] = torch.zeros(2)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ConversionError) as info:
        import_folder(folder, tmp_path / "out")
    message = str(info.value)
    assert "missing 1: text_model.encoder.layers.1.mlp.fc2.bias" in message
    assert "unexpected 1: text_model.extra.weight" in message and str(folder) in message
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_legacy_bin_is_read_without_unpickling(hf_folder, converted, tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    shutil.copytree(hf_folder, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    state["text_model.embeddings.position_ids"] = torch.arange(16)[None]  # an old buffer: skipped by name
    torch.save(state, folder / "pytorch_model.bin")
    model = vlp.create_model("clip", pretrained=folder)
    reference = vlp.load(converted)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    torch.save({"weights": state, "hook": print}, folder / "pytorch_model.bin")  # a pickled callable
    with pytest.raises(ValueError, match="tensor-only"):
        vlp.create_model("clip", pretrained=folder)


def test_cli_round_trip_and_errors(hf_folder, tmp_path, capsys):
    assert main(["convert", str(hf_folder), str(tmp_path / "vlp")]) == 0
    assert "imported" in capsys.readouterr().out
    assert main(["convert", "--to", "transformers", str(tmp_path / "vlp"), str(tmp_path / "hf")]) == 0
    assert transformers.CLIPModel.from_pretrained(tmp_path / "hf") is not None
    assert main(["convert", str(hf_folder), str(tmp_path / "vlp")]) == 2  # not empty
    assert "folder is not empty" in capsys.readouterr().err
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    assert main(["convert", str(tmp_path / "cfg"), str(tmp_path / "x")]) == 2
    assert "GPT2LMHeadModel" in capsys.readouterr().err


def test_export_refuses_what_transformers_cannot_hold(tmp_path):
    model = vlp.create_model("clip-resnet-tiny")
    vlp.save_pretrained(model, tmp_path / "rn")
    with pytest.raises(ConversionError, match="only a ViT image tower exports"):
        export_folder(tmp_path / "rn", tmp_path / "out")


def test_legacy_eos_with_a_resized_vocabulary_pools_like_transformers(tmp_path):
    """eos_token_id 2 and three tokens added past <|endoftext|>: transformers pools at argmax(input_ids),
    which is the end token for ordinary text and an added token wherever one occurs."""
    config = clip_config(eos=2)
    config.text_config.vocab_size = VOCAB + 3
    torch.manual_seed(2)
    hf = perturb(transformers.CLIPModel(config))
    hf.save_pretrained(tmp_path / "hf")
    model = vlp.create_model("clip", pretrained=tmp_path / "hf")
    assert model.cfg.text.pooling == "argmax"
    ids, mask, images = inputs()  # ordinary texts: <|endoftext|> (343) is each row's highest id
    added = ids.clone()
    added[1, 4] = VOCAB + 1  # an added token: transformers' argmax picks it, so must vlp
    with torch.no_grad():
        for rows in (ids, added):
            ref = hf(input_ids=rows, attention_mask=mask.long(), pixel_values=images)
            close(model.encode_text(rows, mask), ref.text_embeds)
    # exported back, the model still pools at argmax: eos_token_id 2 is written again
    export_folder(vlp.save_pretrained(model, tmp_path / "vlp"), tmp_path / "back")
    reloaded = transformers.CLIPModel.from_pretrained(tmp_path / "back").eval()
    assert reloaded.config.text_config.eos_token_id == 2
    with torch.no_grad():
        back = reloaded(input_ids=added, attention_mask=mask.long(), pixel_values=images).text_embeds
        close(back, hf(input_ids=added, attention_mask=mask.long(), pixel_values=images).text_embeds)


@pytest.mark.parametrize("size", [56, 24])  # a 7x7 and a 3x3 patch grid for the checkpoint's 4x4
def test_other_image_sizes_match_transformers_interpolate_pos_encoding(hf_folder, converted, size):
    reference = transformers.CLIPModel.from_pretrained(hf_folder).eval()
    model = vlp.load(converted)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = reference.vision_model(pixel_values=images, interpolate_pos_encoding=True)
        tokens = model.image_tokens(images).tokens
        embeds = model.encode_image(images)
        want = reference.get_image_features(pixel_values=images, interpolate_pos_encoding=True)
    want = getattr(want, "pooler_output", want)
    close(tokens, reference.vision_model.post_layernorm(ref.last_hidden_state), 1e-5)
    close(embeds, torch.nn.functional.normalize(want, dim=-1), 1e-5)
