"""mome (VLMo): the dual-encoder and fusion paths run the same shared weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlp.core.outputs import VisualTokens
from vlp.fusion import MoMEConfig, MoMEFusion

D = 16


def make(vl_layers: int) -> MoMEFusion:
    torch.manual_seed(0)
    return MoMEFusion(MoMEConfig(dim=D, layers=3, heads=2, vl_layers=vl_layers)).eval()


def inputs():
    g = torch.Generator().manual_seed(5)
    tm = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    vm = torch.ones(2, 5, dtype=torch.bool)
    return torch.randn(2, 4, D, generator=g), tm, VisualTokens(torch.randn(2, 5, D, generator=g), vm)


def test_fusion_without_the_other_side_equals_the_dual_encoder_paths():
    # With no VL layers, hiding the image keys leaves each text token exactly on the text-only
    # path (shared attention + L-FFN), and hiding the text keys leaves the image on the V-FFN path.
    fusion = make(vl_layers=0)
    text, tm, image = inputs()
    no_image = VisualTokens(image.tokens, torch.zeros_like(image.mask))
    torch.testing.assert_close(fusion(text, tm, no_image).text[tm], fusion.encode_text(text, tm)[tm])
    fused_image = fusion(text, torch.zeros_like(tm), image).image
    torch.testing.assert_close(fused_image, fusion.encode_image(image.tokens, image.mask))


def naive_mome(fusion: MoMEFusion, x, keep, experts_per_layer, split):
    """Shared attention, then the named expert (LayerNorm -> MLP) per token, then the final norm."""
    for block, route in zip(fusion.blocks, experts_per_layer):
        h = F.layer_norm(x, (D,), block.norm1.weight, block.norm1.bias, 1e-6)
        q, k, v = (t.view(2, -1, 2, D // 2).transpose(1, 2) for t in block.attn.qkv(h).chunk(3, -1))
        scores = (q @ k.transpose(-1, -2) / (D // 2) ** 0.5).masked_fill(~keep[:, None, None, :], float("-inf"))
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = x + attn @ block.attn.out.weight.T + block.attn.out.bias

        def expert(name, y, block=block):
            norm, mlp = block.mlp.experts[name]
            y = F.layer_norm(y, (D,), norm.weight, norm.bias, 1e-6)
            return F.gelu(y @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias

        if route == "mixed":
            x = x + torch.cat([expert("text", x[:, :split]), expert("image", x[:, split:])], 1)
        else:
            x = x + expert(route, x)
    return F.layer_norm(x, (D,), fusion.norm.weight, fusion.norm.bias, 1e-6)


def test_mome_routes_experts_per_mode():
    fusion = make(vl_layers=1)
    text, tm, image = inputs()
    mod = fusion.modality.weight
    with torch.no_grad():
        fused = fusion(text, tm, image)
        keep = torch.cat([tm, image.mask], 1)
        ref = naive_mome(
            fusion, torch.cat([text + mod[0], image.tokens + mod[1]], 1), keep, ["mixed", "mixed", "vl"], 4
        )
        ref_text = naive_mome(fusion, text + mod[0], tm, ["text"] * 3, None)
        ref_image = naive_mome(fusion, image.tokens + mod[1], image.mask, ["image"] * 3, None)
        torch.testing.assert_close(torch.cat([fused.text, fused.image], 1)[keep], ref[keep], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fusion.encode_text(text, tm)[tm], ref_text[tm], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fusion.encode_image(image.tokens, image.mask), ref_image, atol=1e-5, rtol=1e-4)
    assert "vl" not in fusion.blocks[0].mlp.experts and "vl" in fusion.blocks[2].mlp.experts


def test_mome_dual_text_path_touches_only_shared_attention_and_text_experts():
    fusion = make(vl_layers=1)
    text, tm, image = inputs()
    fusion.encode_text(text, tm).sum().backward()
    grads = {n for n, p in fusion.named_parameters() if p.grad is not None}
    assert "blocks.0.attn.qkv.weight" in grads and "blocks.2.mlp.experts.text.1.fc1.weight" in grads
    assert not any(".experts.image." in n or ".experts.vl." in n for n in grads)
    fusion.zero_grad(set_to_none=True)
    fusion(text, tm, image).pooled.sum().backward()
    grads = {n for n, p in fusion.named_parameters() if p.grad is not None}
    # the fusion mode reaches the very same attention tensor plus the VL expert on top
    assert "blocks.0.attn.qkv.weight" in grads and "blocks.2.mlp.experts.vl.1.fc1.weight" in grads
    assert "blocks.2.mlp.experts.text.1.fc1.weight" not in grads
