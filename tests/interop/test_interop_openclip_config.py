"""OpenCLIP configs: heads, layer scale, activation, pooling and projections follow the model config.

open_clip cannot be installed here (it needs torchvision), so the checkpoints are OpenCLIP-format
state dicts built by hand, and the expected outputs come from :func:`reference_text` /
:func:`reference_image`: OpenCLIP's ``TextTransformer`` / ``VisionTransformer`` forward written
out step by step in plain torch for the tiny configs used here.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from interop_helpers import close, max_diff
from safetensors.torch import save_file

import vlp
from vlp.cli import main
from vlp.interop import ConversionError
from vlp.interop.openclip import import_openclip, load_openclip

VOCAB, CONTEXT, EOT = 50, 8, 49
# 4 heads of width 16 in both towers: OpenAI's width // 64 rule would give 1 head
BASE = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 16, "mlp_ratio": 2.0},
    "text_cfg": {
        "context_length": CONTEXT,
        "vocab_size": VOCAB,
        "width": 64,
        "heads": 4,
        "layers": 2,
        "mlp_ratio": 2.0,
    },
}
IDS = torch.tensor([[EOT - 1, 5, 9, EOT, 0, 0, 0, 0], [EOT - 1, 3, 4, 5, 6, 7, 8, EOT]])  # padded with 0 after EOT
MASK = torch.arange(CONTEXT) <= (IDS == EOT).int().argmax(1, keepdim=True)
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def config(**changes) -> dict:
    """BASE with ``changes``: ``text_cfg.x=...`` / ``vision_cfg.x=...`` / top-level keys."""
    cfg = copy.deepcopy(BASE)
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        (cfg[section] if section else cfg)[name] = value
    return cfg


def make_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in OpenCLIP's names for ``cfg`` (LayerNorms and layer-scale gammas off 1 / 0)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}

    def rand(*shape, scale=0.1, base=0.0):
        return base + scale * torch.randn(*shape, generator=g)

    def norm(name, dim):
        out[f"{name}.weight"], out[f"{name}.bias"] = rand(dim, base=1.0), rand(dim)

    def linear(name, cout, cin):
        out[f"{name}.weight"], out[f"{name}.bias"] = rand(cout, cin, scale=0.2), rand(cout)

    def blocks(prefix, width, layers, mlp_ratio, ls):
        mlp = int(width * mlp_ratio)
        for i in range(layers):
            p = f"{prefix}.{i}"
            norm(f"{p}.ln_1", width), norm(f"{p}.ln_2", width)
            out[f"{p}.attn.in_proj_weight"] = rand(3 * width, width, scale=0.2)
            out[f"{p}.attn.in_proj_bias"] = rand(3 * width)
            linear(f"{p}.attn.out_proj", width, width), linear(f"{p}.mlp.c_fc", mlp, width)
            linear(f"{p}.mlp.c_proj", width, mlp)
            if ls is not None:  # trained gammas, far from the init value
                out[f"{p}.ls_1.gamma"], out[f"{p}.ls_2.gamma"] = rand(width, scale=0.5), rand(width, scale=0.5)

    text, vision, embed = cfg["text_cfg"], cfg["vision_cfg"], cfg["embed_dim"]
    tw = text["width"]
    out["token_embedding.weight"] = rand(VOCAB, tw, scale=0.5)
    out["positional_embedding"] = rand(CONTEXT, tw)
    blocks("transformer.resblocks", tw, text["layers"], text["mlp_ratio"], text.get("ls_init_value"))
    norm("ln_final", tw)
    if text.get("proj_bias"):
        linear("text_projection", embed, tw)
    elif text.get("proj_type") != "none":
        out["text_projection"] = rand(tw, embed, scale=0.2)
    out["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    vw, patch = vision["width"], vision["patch_size"]
    cells = (vision["image_size"] // patch) ** 2
    out["visual.conv1.weight"] = rand(vw, 3, patch, patch, scale=0.05)
    out["visual.class_embedding"] = rand(vw, scale=0.5)
    out["visual.positional_embedding"] = rand(cells + 1, vw)
    if not vision.get("no_ln_pre"):
        norm("visual.ln_pre", vw)
    blocks("visual.transformer.resblocks", vw, vision["layers"], vision["mlp_ratio"], vision.get("ls_init_value"))
    norm("visual.ln_post", vw)
    out["visual.proj"] = rand(vw, embed, scale=0.2)
    return out


# ------------------------------------------------------------------------- the reference forward pass
def _ln(x, s, name):
    return F.layer_norm(x, x.shape[-1:], s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-5)


def _attention(x, s, p, heads, causal):
    b, n, d = x.shape
    q, k, v = F.linear(x, s[f"{p}.in_proj_weight"], s[f"{p}.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if causal:  # OpenCLIP's text mask: -inf above the diagonal; padding is not masked
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return F.linear(out, s[f"{p}.out_proj.weight"], s[f"{p}.out_proj.bias"])


def _tower(x, s, prefix, layers, heads, quick_gelu, causal):
    act = (lambda t: t * torch.sigmoid(1.702 * t)) if quick_gelu else F.gelu
    for i in range(layers):
        p = f"{prefix}.{i}"
        g1, g2 = s.get(f"{p}.ls_1.gamma", 1.0), s.get(f"{p}.ls_2.gamma", 1.0)
        x = x + g1 * _attention(_ln(x, s, f"{p}.ln_1"), s, f"{p}.attn", heads, causal)
        h = act(F.linear(_ln(x, s, f"{p}.ln_2"), s[f"{p}.mlp.c_fc.weight"], s[f"{p}.mlp.c_fc.bias"]))
        x = x + g2 * F.linear(h, s[f"{p}.mlp.c_proj.weight"], s[f"{p}.mlp.c_proj.bias"])
    return x


def reference_text(s, ids, cfg) -> torch.Tensor:
    text = cfg["text_cfg"]
    x = s["token_embedding.weight"][ids] + s["positional_embedding"][: ids.shape[1]]
    x = _tower(x, s, "transformer.resblocks", text["layers"], text["heads"], cfg["quick_gelu"], causal=True)
    x = _ln(x, s, "ln_final")
    rows = torch.arange(ids.shape[0])
    pool = text.get("pool_type", "argmax")
    pooled = {
        "argmax": lambda: x[rows, ids.argmax(-1)],
        "first": lambda: x[:, 0],
        "last": lambda: x[:, -1],
        "eos": lambda: x[rows, (ids == text.get("eos_id")).int().argmax(-1)],
    }[pool]()
    if "text_projection.weight" in s:
        return F.linear(pooled, s["text_projection.weight"], s["text_projection.bias"])
    return pooled @ s["text_projection"] if "text_projection" in s else pooled


def reference_image(s, images, cfg) -> torch.Tensor:
    vision = cfg["vision_cfg"]
    x = F.conv2d(images, s["visual.conv1.weight"], stride=vision["patch_size"]).flatten(2).transpose(1, 2)
    x = torch.cat([s["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1) + s["visual.positional_embedding"]
    if not vision.get("no_ln_pre"):
        x = _ln(x, s, "visual.ln_pre")
    heads = vision["width"] // vision["head_width"]
    x = _tower(x, s, "visual.transformer.resblocks", vision["layers"], heads, cfg["quick_gelu"], causal=False)
    return _ln(x[:, 0], s, "visual.ln_post") @ s["visual.proj"]  # pool_type 'tok'


def write_hub(folder, cfg, state, preprocess=None, weights="open_clip_model.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    body = {"model_cfg": cfg, "preprocess_cfg": preprocess or {}}
    (folder / "open_clip_config.json").write_text(json.dumps(body), encoding="utf-8")
    if weights.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, folder / weights)
    else:
        torch.save(state, folder / weights)
    return folder


def check_matches(model, state, cfg) -> None:
    with torch.no_grad():
        text = F.normalize(reference_text(state, IDS, cfg), dim=-1)
        image = F.normalize(reference_image(state, IMAGES, cfg), dim=-1)
        close(model.encode_text(IDS, MASK), text)
        close(model.encode_image(IMAGES), image)
        logits = model.logit_scale.exp() * model.encode_image(IMAGES) @ model.encode_text(IDS, MASK).t()
        close(logits, state["logit_scale"].exp() * image @ text.t(), tol=1e-3)


# ------------------------------------------------------------------------------------------- tests
def test_heads_come_from_the_config_and_a_guess_warns(tmp_path):
    cfg = config()
    state = make_state(cfg)
    folder = write_hub(tmp_path / "hub", cfg, state)
    model = load_openclip(folder)
    assert (model.cfg.text.heads, model.cfg.vision.heads) == (4, 4)
    check_matches(model, state, cfg)
    # the same weights without their config: heads guessed as width // 64 = 1, said in a warning
    loose = tmp_path / "loose.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, loose)
    with pytest.warns(UserWarning, match="heads were guessed"):
        guessed = load_openclip(loose)
    assert guessed.cfg.text.heads == 1
    with torch.no_grad():  # the guess is silently far off: the reason the config is read
        assert max_diff(guessed.encode_text(IDS, MASK), model.encode_text(IDS, MASK)) > 0.05


def test_layer_scale_and_no_ln_pre(tmp_path):
    cfg = config(vision_cfg__ls_init_value=1e-5, text_cfg__ls_init_value=1e-5, vision_cfg__no_ln_pre=True)
    state = make_state(cfg, seed=1)
    model = load_openclip(write_hub(tmp_path / "hub", cfg, state))
    assert model.cfg.text.layer_scale is not None and not model.cfg.vision.pre_norm
    check_matches(model, state, cfg)
    # a vlp folder round trip keeps the layer-scale gammas
    import_openclip(tmp_path / "hub", tmp_path / "vlp")
    loaded = vlp.load(tmp_path / "vlp")
    assert torch.equal(loaded.text.layers[1].ls2.gamma, state["transformer.resblocks.1.ls_2.gamma"])


def test_quick_gelu_and_gelu_each_match_their_reference(tmp_path):
    outputs = {}
    for quick in (True, False):
        cfg = config(quick_gelu=quick)
        state = make_state(cfg, seed=2)
        model = load_openclip(write_hub(tmp_path / str(quick), cfg, state))
        assert model.cfg.text.act == ("quick_gelu" if quick else "gelu")
        check_matches(model, state, cfg)
        outputs[quick] = model.encode_text(IDS, MASK).detach()
    assert max_diff(outputs[True], outputs[False]) > 1e-3  # the activation matters at these weights
    with pytest.raises(ConversionError, match="act='quick_gelu' conflicts with .*quick_gelu=False"):
        load_openclip(tmp_path / "False", act="quick_gelu")


@pytest.mark.parametrize(
    "changes",
    [
        {"text_cfg__pool_type": "first"},
        {"text_cfg__pool_type": "eos", "text_cfg__eos_id": EOT},
        {"text_cfg__proj_bias": True, "text_cfg__final_ln_after_pool": True, "vision_cfg__final_ln_after_pool": True},
        {"text_cfg__proj_type": "none", "embed_dim": 64},
    ],
    ids=["first", "eos", "proj-bias", "text-proj-none"],
)
def test_pooling_and_projection_variants(tmp_path, changes):
    cfg = config(**changes)
    state = make_state(cfg, seed=4)
    check_matches(load_openclip(write_hub(tmp_path / "hub", cfg, state)), state, cfg)


def test_argmax_pooling_follows_the_ids_when_eot_is_not_the_last_vocab_id(tmp_path):
    """OpenCLIP's pool_type 'argmax' pools at ``text.argmax(dim=-1)``, wherever <|endoftext|> sits in the
    vocabulary (a tokenizer with fewer tokens than the embedding table, a vocabulary grown past eot): the
    import pools at the argmax of the ids too, as the CLIP import does, not at a fixed id vocab_size - 1."""
    cfg = config()
    state = make_state(cfg, seed=6)
    model = load_openclip(write_hub(tmp_path / "hub", cfg, state))
    assert (model.cfg.text.pooling, model.cfg.text.eos_id) == ("argmax", -1)
    sot, eot = 38, 39  # ids 40..49 exist in the table but the tokenizer never writes them
    ids = torch.tensor([[sot, 5, 9, eot, 0, 0, 0, 0], [sot, 3, 4, 5, 6, 7, 8, eot]])
    mask = torch.arange(CONTEXT) <= (ids == eot).int().argmax(1, keepdim=True)
    with torch.no_grad():
        close(model.encode_text(ids, mask), F.normalize(reference_text(state, ids, cfg), dim=-1))
        close(model.encode_text(IDS, MASK), F.normalize(reference_text(state, IDS, cfg), dim=-1))  # eot = vocab - 1


def test_last_token_pooling_warns_and_matches_unpadded_text(tmp_path):
    cfg = config(text_cfg__pool_type="last")
    state = make_state(cfg, seed=5)
    with pytest.warns(UserWarning, match="pool_type='last'"):
        model = load_openclip(write_hub(tmp_path / "hub", cfg, state))
    with torch.no_grad():  # OpenCLIP masks no padding: with an all-True mask both pool the last position
        close(model.encode_text(IDS), F.normalize(reference_text(state, IDS, cfg), dim=-1))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vision_cfg__attentional_pool": True}, r"vision_cfg\.attentional_pool=True: an attentional pooler"),
        ({"vision_cfg__pool_type": "avg"}, r"vision_cfg\.pool_type='avg'"),
        ({"text_cfg__embed_cls": True}, r"text_cfg\.embed_cls=True"),
        ({"vision_cfg__timm_model_name": "vit_base"}, r"vision_cfg\.timm_model_name='vit_base': a timm image tower"),
        ({"text_cfg__rope": True}, r"text_cfg\.rope: an OpenCLIP setting vlp does not know"),
        ({"text_cfg__heads": 3}, r"text_cfg\.heads=3 does not divide the width 64"),
        ({"vision_cfg__mlp_ratio": 4.0}, r"vision_cfg\.mlp_ratio=4\.0 gives an MLP of 256; the weights hold 128"),
        ({"init_logit_bias": -10.0}, r"init_logit_bias=-10\.0: SigLIP's logit bias"),
    ],
    ids=["attn-pool", "avg-pool", "embed-cls", "timm", "unknown", "heads", "mlp-ratio", "logit-bias"],
)
def test_fields_vlp_cannot_honour_are_errors_naming_them(tmp_path, changes, message):
    state = make_state(config(), seed=6)
    folder = write_hub(tmp_path / "hub", config(**changes), state)
    with pytest.raises(ConversionError, match=message):
        load_openclip(folder)
    assert main(["convert", str(folder), str(tmp_path / "out")]) == 2


def test_hub_folder_converts_with_its_preprocess_and_a_bare_config_file(tmp_path, capsys):
    cfg = config(quick_gelu=False)
    state = make_state(cfg, seed=7)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    pre = {"mean": mean, "std": std, "interpolation": "bilinear", "resize_mode": "squash"}
    hub = write_hub(tmp_path / "hub", cfg, state, pre, weights="open_clip_pytorch_model.bin")
    assert main(["convert", str(hub), str(tmp_path / "vlp")]) == 0
    assert "(openclip)" in capsys.readouterr().out
    loaded = vlp.load(tmp_path / "vlp")
    check_matches(loaded, state, cfg)
    stored = vlp.load_preprocess(tmp_path / "vlp")
    assert stored.mean == tuple(mean) and stored.std == tuple(std) and stored.resize == "exact"
    assert stored.size == (32, 32) and stored.interpolation == "bilinear"
    assert loaded.recipe.data.image_size == 32 and loaded.recipe.data.max_text_len <= CONTEXT
    # create_model takes the hub folder too
    check_matches(vlp.create_model("clip", pretrained=str(hub)), state, cfg)
    # a loose state dict + OpenCLIP's bare model config (model_configs/NAME.json) on the command line
    loose = tmp_path / "epoch_9.pt"
    torch.save({"state_dict": state}, loose)
    (tmp_path / "tiny.json").write_text(json.dumps(cfg), encoding="utf-8")
    args = ["convert", str(loose), str(tmp_path / "vlp2"), "--openclip-config", str(tmp_path / "tiny.json")]
    assert main(args) == 0
    check_matches(vlp.load(tmp_path / "vlp2"), state, cfg)
    # a config that is not this checkpoint's is named with the size that disagrees
    (tmp_path / "other.json").write_text(json.dumps(config(text_cfg__layers=3)), encoding="utf-8")
    with pytest.raises(ConversionError, match=r"other\.json: text_cfg\.layers is 3 but the weights hold 2"):
        load_openclip(loose, config=tmp_path / "other.json")


def test_custom_text_state_dict_with_text_prefix(tmp_path):
    cfg = config(custom_text=True)
    state = make_state(cfg, seed=8)
    visual = {k: v for k, v in state.items() if k.startswith("visual.") or k == "logit_scale"}
    prefixed = {**visual, **{f"text.{k}": v for k, v in state.items() if k not in visual}}
    check_matches(load_openclip(write_hub(tmp_path / "hub", cfg, prefixed)), state, cfg)


def test_modified_resnet_heads_follow_head_width(tmp_path):
    from test_interop_openclip import reference_resnet, resnet_state

    layers, width = [1, 1, 1, 1], 4  # 128 channels at the pool: head_width 32 -> 4 heads (OpenAI's rule: 2)
    cfg = config(vision_cfg={"layers": layers, "width": width, "head_width": 32, "image_size": 64})
    text = {k: v for k, v in make_state(config(), seed=9).items() if not k.startswith("visual.")}
    state = {**text, **resnet_state(layers, width, cfg["embed_dim"], image=64)}
    model = load_openclip(write_hub(tmp_path / "hub", cfg, state))
    assert model.cfg.vision.heads == 4
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        close(model.encode_image(images), F.normalize(reference_resnet(state, images, layers, heads=4), dim=-1))
        close(model.encode_text(IDS, MASK), F.normalize(reference_text(state, IDS, cfg), dim=-1))
