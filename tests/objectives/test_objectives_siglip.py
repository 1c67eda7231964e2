"""SigLIP's sigmoid loss against a loop over pairs, a hand-worked case and transformers' SiglipModel loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlp.config import ConfigError, from_dict
from vlp.core.outputs import ModelOutputs
from vlp.data.batch import Batch
from vlp.models.config import ModelConfig
from vlp.models.model import VisionLanguageModel
from vlp.objectives import SigLIP, SigLIPConfig, build_objectives


def embeds(n: int = 5, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=-1), F.normalize(torch.randn(n, dim, generator=g), dim=-1)


def naive_siglip(image, text, t: float, b: float, positives=None) -> float:
    """-1/|B| sum_ij log sigmoid(z_ij (t <x_i, y_j> + b)), one pair at a time."""
    n = len(image)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if (positives[i][j] if positives else i == j) else -1.0
            logit = t * float(image[i] @ text[j]) + b
            total -= math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return total / n


def outputs_of(image, text, log_t, bias) -> ModelOutputs:
    return ModelOutputs(model=None, image_embed=image, text_embed=text, logit_scale=log_t, logit_bias=bias)


def test_siglip_matches_the_loop_over_pairs_and_its_gradients() -> None:
    image, text = embeds()
    log_t, bias = torch.tensor(math.log(10.0), requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    loss, logs = SigLIP(SigLIPConfig())(outputs_of(image, text, log_t, bias), Batch())
    assert loss.item() == pytest.approx(naive_siglip(image, text, 10.0, -10.0), rel=1e-6)
    assert logs["logit_scale"] == pytest.approx(10.0) and logs["logit_bias"] == -10.0
    loss.backward()
    # d/db = 1/n sum_ij -z_ij sigmoid(-z_ij logit_ij), worked out by hand from d log sigmoid(u)/du = sigmoid(-u)
    z = torch.eye(5) * 2 - 1
    logits = 10.0 * image @ text.T - 10.0
    assert bias.grad.item() == pytest.approx(float((-z * torch.sigmoid(-z * logits)).sum() / 5), rel=1e-5)


def test_siglip_hand_worked_two_pairs() -> None:
    # orthogonal pairs: matching dot 1, others 0; t = 1, b = 0 -> logits [[1, 0], [0, 1]]
    image = text = torch.eye(2)
    loss, _ = SigLIP(SigLIPConfig())(outputs_of(image, text, torch.tensor(0.0), torch.tensor(0.0)), Batch())
    expected = (2 * math.log(1 + math.exp(-1)) + 2 * math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_siglip_image_index_makes_every_caption_of_an_image_positive() -> None:
    image, text = embeds(4)
    ids = torch.tensor([0, 0, 1, 2])
    positives = [[bool(ids[i] == ids[j]) for j in range(4)] for i in range(4)]
    out = outputs_of(image, text, torch.tensor(1.0), torch.tensor(-2.0))
    loss, _ = SigLIP(SigLIPConfig())(out, Batch(image_index=ids))
    assert loss.item() == pytest.approx(naive_siglip(image, text, math.e, -2.0, positives), rel=1e-6)
    plain, _ = SigLIP(SigLIPConfig(use_image_index=False))(out, Batch(image_index=ids))
    assert plain.item() == pytest.approx(naive_siglip(image, text, math.e, -2.0), rel=1e-6)


def test_siglip_equals_transformers_siglip_loss() -> None:
    transformers = pytest.importorskip("transformers")
    text_cfg = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2)
    vision_cfg = dict(
        hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    torch.manual_seed(0)
    hf = transformers.SiglipModel(transformers.SiglipConfig(text_config=text_cfg, vision_config=vision_cfg)).eval()
    with torch.no_grad():
        hf.logit_scale.fill_(1.3)
        hf.logit_bias.fill_(-1.7)
        ids, pixels = torch.randint(0, 50, (4, 6)), torch.randn(4, 3, 16, 16)
        ref = hf(input_ids=ids, pixel_values=pixels, return_loss=True)
    out = outputs_of(ref.image_embeds, ref.text_embeds, hf.logit_scale[0], hf.logit_bias[0])
    loss, _ = SigLIP(SigLIPConfig())(out, Batch())
    torch.testing.assert_close(loss, ref.loss, rtol=1e-5, atol=1e-6)


def test_siglip_needs_the_models_logit_bias() -> None:
    image, text = embeds()
    with pytest.raises(ConfigError, match="logit_bias"):
        SigLIP(SigLIPConfig())(outputs_of(image, text, torch.tensor(1.0), None), Batch())
    with pytest.raises(ConfigError, match="objectives.siglip.bogus"):
        build_objectives({"siglip": {"bogus": 1}})
    assert isinstance(build_objectives({"siglip": {"weight": 0.5}})["siglip"][1], SigLIP)


def test_logit_bias_parameter_only_when_enabled() -> None:
    base = dict(
        text={"type": "bert", "vocab_size": 30, "dim": 16, "layers": 1, "heads": 2, "mlp_dim": 32},
        vision={"type": "patch", "image_size": 16, "patch_size": 8, "dim": 16, "layers": 1, "heads": 2},
        fusion={"type": "none"},
        embed_dim=8,
    )
    plain = VisionLanguageModel(from_dict(ModelConfig, base, "model"))
    assert "logit_bias" not in dict(plain.named_parameters()) and plain.logit_bias is None
    biased = VisionLanguageModel(from_dict(ModelConfig, {**base, "logit_bias": True, "temperature": 0.1}, "model"))
    assert biased.logit_bias.item() == -10.0 and biased.logit_scale.item() == pytest.approx(math.log(10.0))
    with pytest.raises(ValueError, match="logit_bias"):
        from_dict(ModelConfig, {**base, "embed_dim": 0, "logit_bias": True}, "model")
