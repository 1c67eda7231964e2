"""OpenCLIP state dicts (ViT and ModifiedResNet towers) -> vlp `clip` / `clip-resnet`, without open_clip.

The ViT case is checked against transformers' CLIPModel whose weights were rewritten into the
OpenCLIP layout; the ModifiedResNet case against a functional re-implementation of OpenCLIP's
forward pass written here (torch.nn.functional convs, batch norms and multi-head attention).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from interop_helpers import close, perturb, train_clip_bpe

import vlp
from vlp.cli import main
from vlp.interop import ConversionError
from vlp.interop.openclip import import_openclip, load_openclip

transformers = pytest.importorskip("transformers")

# the tiny BPE of interop_helpers; OpenCLIP pools at argmax(ids): the end token is the highest id
VOCAB, SOT, EOT = 344, 342, 343


@pytest.fixture(scope="module")
def hf_clip():
    text = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=12, bos_token_id=SOT, eos_token_id=EOT, hidden_act="gelu",
    )  # fmt: skip
    vision = dict(
        hidden_size=128, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=16, hidden_act="gelu",
    )  # fmt: skip
    torch.manual_seed(0)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    return perturb(transformers.CLIPModel(config))


def blocks(state, ours: str, theirs: str, depth: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(depth):
        o, t = f"{ours}.{i}", f"{theirs}.{i}"
        qkv = [state[f"{t}.self_attn.{n}_proj.weight"] for n in "qkv"]
        out[f"{o}.attn.in_proj_weight"] = torch.cat(qkv)
        out[f"{o}.attn.in_proj_bias"] = torch.cat([state[f"{t}.self_attn.{n}_proj.bias"] for n in "qkv"])
        for mine, hf in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):  # fmt: skip
            out[f"{o}.{mine}.weight"] = state[f"{t}.{hf}.weight"]
            out[f"{o}.{mine}.bias"] = state[f"{t}.{hf}.bias"]
    return out


def text_state(hf) -> dict[str, torch.Tensor]:
    """The text half of an OpenCLIP state dict, from transformers' names (the well-known mapping)."""
    s = hf.state_dict()
    out = {
        "token_embedding.weight": s["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": s["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": s["text_model.final_layer_norm.weight"],
        "ln_final.bias": s["text_model.final_layer_norm.bias"],
        "text_projection": s["text_projection.weight"].t(),  # OpenCLIP multiplies x @ P
        "logit_scale": s["logit_scale"],
    }
    out.update(blocks(s, "transformer.resblocks", "text_model.encoder.layers", 2))
    return out


def vit_state(hf) -> dict[str, torch.Tensor]:
    s = hf.state_dict()
    out = text_state(hf)
    out.update(
        {
            "visual.class_embedding": s["vision_model.embeddings.class_embedding"],
            "visual.conv1.weight": s["vision_model.embeddings.patch_embedding.weight"],
            "visual.positional_embedding": s["vision_model.embeddings.position_embedding.weight"],
            "visual.ln_pre.weight": s["vision_model.pre_layrnorm.weight"],
            "visual.ln_pre.bias": s["vision_model.pre_layrnorm.bias"],
            "visual.ln_post.weight": s["vision_model.post_layernorm.weight"],
            "visual.ln_post.bias": s["vision_model.post_layernorm.bias"],
            "visual.proj": s["visual_projection.weight"].t(),
        }
    )
    out.update(blocks(s, "visual.transformer.resblocks", "vision_model.encoder.layers", 1))
    return out


def text_inputs():
    ids = torch.tensor([[SOT, 7, 9, EOT, 0, 0], [SOT, 5, 6, 7, 8, EOT]])  # OpenCLIP pads with 0 after the end
    return ids, ids.new_ones(ids.shape).bool() & (torch.arange(6) <= (ids == EOT).int().argmax(1, keepdim=True))


def test_openclip_vit_matches_the_same_weights_in_transformers(hf_clip, tmp_path):
    path = tmp_path / "open_clip_model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in vit_state(hf_clip).items()}, path)
    model = load_openclip(path, act="gelu")
    assert model.cfg.vision.patch_size == 16 and model.cfg.vision.image_size == 32 and model.cfg.text.heads == 1
    ids, mask = text_inputs()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf_clip(input_ids=ids, attention_mask=mask.long(), pixel_values=images)
        close(model.encode_text(ids, mask), ref.text_embeds)
        close(model.encode_image(images), ref.image_embeds)
    # a training checkpoint (.pt): {"epoch", "state_dict": {"module." + name}} read with weights_only
    wrapped = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in vit_state(hf_clip).items()}}, wrapped)
    tokenizer = train_clip_bpe(tmp_path / "tok")
    assert main(["convert", str(wrapped), str(tmp_path / "vlp"), "--act", "gelu", "--tokenizer", str(tokenizer)]) == 0
    loaded = vlp.load(tmp_path / "vlp")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert (tmp_path / "vlp" / "merges.txt").is_file() and vlp.load_preprocess(tmp_path / "vlp").crop == (32, 32)


# ----------------------------------------------------------------------------- ModifiedResNet reference
def resnet_state(layers: list[int], width: int, embed: int, image: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random OpenCLIP ModifiedResNet weights (``visual.`` names), BatchNorm statistics included."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}

    def conv(name, cout, cin, k):
        out[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2 / (cin * k * k)) ** 0.5

    def bn(name, c):
        out[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        out[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        out[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        out[f"{name}.running_var"] = 1 + torch.rand(c, generator=g)
        out[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("visual.conv1", width // 2, 3, 3), bn("visual.bn1", width // 2)
    conv("visual.conv2", width // 2, width // 2, 3), bn("visual.bn2", width // 2)
    conv("visual.conv3", width, width // 2, 3), bn("visual.bn3", width)
    inplanes = width
    for stage, depth in enumerate(layers):
        planes = width * 2**stage
        for b in range(depth):
            p = f"visual.layer{stage + 1}.{b}"
            conv(f"{p}.conv1", planes, inplanes, 1), bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1), bn(f"{p}.bn3", planes * 4)
            if b == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1), bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    channels, cells = width * 32, (image // 32) ** 2
    out["visual.attnpool.positional_embedding"] = torch.randn(cells + 1, channels, generator=g) / channels**0.5
    for name, cout in (("q_proj", channels), ("k_proj", channels), ("v_proj", channels), ("c_proj", embed)):
        out[f"visual.attnpool.{name}.weight"] = torch.randn(cout, channels, generator=g) / channels**0.5
        out[f"visual.attnpool.{name}.bias"] = 0.1 * torch.randn(cout, generator=g)
    return out


def reference_resnet(s: dict[str, torch.Tensor], x: torch.Tensor, layers: list[int], heads: int) -> torch.Tensor:
    """OpenCLIP's ModifiedResNet.forward, step by step, on a state dict: ``(B, 3, H, W) -> (B, embed)``."""

    def bn(t, name):
        w, b, m, v = (s[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
        return F.batch_norm(t, m, v, w, b, training=False, eps=1e-5)

    x = F.relu(bn(F.conv2d(x, s["visual.conv1.weight"], stride=2, padding=1), "visual.bn1"))
    x = F.relu(bn(F.conv2d(x, s["visual.conv2.weight"], padding=1), "visual.bn2"))
    x = F.relu(bn(F.conv2d(x, s["visual.conv3.weight"], padding=1), "visual.bn3"))
    x = F.avg_pool2d(x, 2)
    for stage, depth in enumerate(layers):
        for b in range(depth):
            p, stride = f"visual.layer{stage + 1}.{b}", (1 if stage == 0 or b > 0 else 2)
            out = F.relu(bn(F.conv2d(x, s[f"{p}.conv1.weight"]), f"{p}.bn1"))
            out = F.relu(bn(F.conv2d(out, s[f"{p}.conv2.weight"], padding=1), f"{p}.bn2"))
            out = F.avg_pool2d(out, stride) if stride > 1 else out  # anti-aliased stride
            out = bn(F.conv2d(out, s[f"{p}.conv3.weight"]), f"{p}.bn3")
            identity = x
            if f"{p}.downsample.0.weight" in s:
                identity = F.avg_pool2d(x, stride) if stride > 1 else x
                identity = bn(F.conv2d(identity, s[f"{p}.downsample.0.weight"]), f"{p}.downsample.1")
            x = F.relu(out + identity)
    tokens = x.flatten(2).permute(2, 0, 1)  # (HW, B, C)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens]) + s["visual.attnpool.positional_embedding"][:, None]
    a = "visual.attnpool"
    pooled, _ = F.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=tokens.shape[-1], num_heads=heads,
        q_proj_weight=s[f"{a}.q_proj.weight"], k_proj_weight=s[f"{a}.k_proj.weight"],
        v_proj_weight=s[f"{a}.v_proj.weight"], in_proj_weight=None,
        in_proj_bias=torch.cat([s[f"{a}.q_proj.bias"], s[f"{a}.k_proj.bias"], s[f"{a}.v_proj.bias"]]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=s[f"{a}.c_proj.weight"], out_proj_bias=s[f"{a}.c_proj.bias"],
        use_separate_proj_weight=True, training=False, need_weights=False,
    )  # fmt: skip
    return pooled[0]


def test_openclip_modified_resnet_matches_a_reference_forward(hf_clip, tmp_path):
    layers, width, embed = [1, 2, 1, 1], 4, 16  # heads = width * 32 // 64 = 2, as OpenAI's build_model
    state = {**text_state(hf_clip), **resnet_state(layers, width, embed, image=64)}
    torch.save(state, tmp_path / "rn.pt")
    model = load_openclip(tmp_path / "rn.pt", act="gelu")
    assert model.cfg.vision.layers == layers and model.cfg.vision.image_size == 64 and model.cfg.vision.heads == 2
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    ids, mask = text_inputs()
    with torch.no_grad():
        expected = F.normalize(reference_resnet(state, images, layers, heads=2), dim=-1)
        close(model.encode_image(images), expected)
        ref = hf_clip(input_ids=ids, attention_mask=mask.long(), pixel_values=torch.zeros(2, 3, 32, 32))
        close(model.encode_text(ids, mask), ref.text_embeds)
    # the attention pool is already the joint embedding: vlp's image_proj is the identity
    assert torch.equal(model.image_proj.weight, torch.eye(embed))
    # an OpenAI-style file without BatchNorm step counters loads too (they change no output)
    plain = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(plain, tmp_path / "plain.pt")
    conv = load_openclip(tmp_path / "plain.pt").vision.layer1[0].conv1.weight
    assert torch.equal(conv, state["visual.layer1.0.conv1.weight"])
    import_openclip(tmp_path / "rn.pt", tmp_path / "vlp", act="gelu")
    assert vlp.load(tmp_path / "vlp").cfg.vision.width == width
    # create_model takes the file directly (here with the activation as a recipe override)
    direct = vlp.create_model("clip-resnet", pretrained=tmp_path / "rn.pt", **{"model.text.act": "gelu"})
    with torch.no_grad():
        close(direct.encode_image(images), expected)
        close(direct.encode_text(ids, mask), ref.text_embeds)


def test_openclip_errors_name_the_problem(hf_clip, tmp_path):
    state = vit_state(hf_clip)
    state["visual.extra_head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(ConversionError, match=r"unexpected 1: visual\.extra_head\.weight"):
        load_openclip(tmp_path / "extra.pt")
    torch.save({"token_embedding.weight": torch.zeros(3, 4)}, tmp_path / "partial.pt")
    with pytest.raises(ConversionError, match="not an OpenCLIP/OpenAI CLIP state dict"):
        load_openclip(tmp_path / "partial.pt")
    torch.save({"state_dict": state, "opt": object()}, tmp_path / "pickled.pt")
    with pytest.raises(ConversionError, match="tensor-only"):
        load_openclip(tmp_path / "pickled.pt")
