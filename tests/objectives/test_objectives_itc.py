"""ITC against cross-entropy over an explicitly built similarity matrix."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlp.config import ConfigError
from vlp.core.outputs import ModelOutputs
from vlp.data.batch import Batch
from vlp.objectives import ITC, ITCConfig


def embeds(n: int = 5, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=-1), F.normalize(torch.randn(n, dim, generator=g), dim=-1)


def naive_itc(image, text, scale: float, smoothing: float = 0.0, positives=None, soft=None) -> float:
    """Loops: S[i][j] = scale * <image_i, text_j>; mean over both directions of -sum_j q_ij log p_ij."""
    n = len(image)
    sims = [[scale * float(image[i] @ text[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for direction in range(2):
        for i in range(n):
            row = [sims[i][j] if direction == 0 else sims[j][i] for j in range(n)]
            log_z = math.log(sum(math.exp(v) for v in row))
            pos = [j for j in range(n) if (positives[i][j] if positives else i == j)]
            for j in range(n):
                q = (1 / len(pos) if j in pos else 0.0) * (1 - smoothing) + smoothing / n
                if soft is not None:
                    q = soft[direction][i][j]
                total -= q * (row[j] - log_z)
    return total / (2 * n)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_itc_matches_naive_cross_entropy(smoothing: float) -> None:
    image, text = embeds()
    log_scale = torch.tensor(math.log(1 / 0.07))
    loss, logs = ITC(ITCConfig(label_smoothing=smoothing))(
        ModelOutputs(model=None, image_embed=image, text_embed=text, logit_scale=log_scale), Batch()
    )
    assert loss.item() == pytest.approx(naive_itc(image, text, 1 / 0.07, smoothing), rel=1e-5)
    # the library route: F.cross_entropy both ways
    logits = image @ text.t() / 0.07
    labels = torch.arange(5)
    ref = (
        F.cross_entropy(logits, labels, label_smoothing=smoothing)
        + F.cross_entropy(logits.t(), labels, label_smoothing=smoothing)
    ) / 2
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert logs["itc_acc"] == pytest.approx(accuracy)
    assert logs["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)


def test_logit_scale_is_clamped_at_100() -> None:
    image, text = embeds()
    log_scale = torch.tensor(math.log(1000.0), requires_grad=True)
    loss, logs = ITC(ITCConfig())(
        ModelOutputs(model=None, image_embed=image, text_embed=text, logit_scale=log_scale), Batch()
    )
    assert logs["logit_scale"] == pytest.approx(100.0, rel=1e-5)
    assert loss.item() == pytest.approx(naive_itc(image, text, 100.0), rel=1e-5)
    loss.backward()
    assert log_scale.grad.item() == 0.0  # at the ceiling, as CLIP's in-place clamp
    fixed, _ = ITC(ITCConfig(temperature=0.5))(ModelOutputs(model=None, image_embed=image, text_embed=text), Batch())
    assert fixed.item() == pytest.approx(naive_itc(image, text, 2.0), rel=1e-5)


def test_several_captions_per_image_are_all_positives() -> None:
    image, text = embeds(6)
    ids = torch.tensor([0, 0, 1, 2, 2, 2])
    image = image[ids]  # rows of the same image carry the same image embedding, as in a real batch
    positives = [[bool(ids[i] == ids[j]) for j in range(6)] for i in range(6)]
    outputs = ModelOutputs(model=None, image_embed=image, text_embed=text, logit_scale=torch.tensor(math.log(10.0)))
    loss, _ = ITC(ITCConfig(label_smoothing=0.1))(outputs, Batch(image_index=ids))
    assert loss.item() == pytest.approx(naive_itc(image, text, 10.0, 0.1, positives), rel=1e-5)
    plain, _ = ITC(ITCConfig(use_image_index=False))(outputs, Batch(image_index=ids))
    assert plain.item() == pytest.approx(naive_itc(image, text, 10.0), rel=1e-5)


def test_momentum_distillation_targets() -> None:
    image, text = embeds(4)
    m_image, m_text = embeds(4, seed=1)
    scale, alpha = 5.0, 0.4
    soft = []
    for a, b in ((m_image, m_text), (m_text, m_image)):
        rows = []
        for i in range(4):
            z = sum(math.exp(scale * float(a[i] @ b[k])) for k in range(4))
            p = [math.exp(scale * float(a[i] @ b[j])) / z for j in range(4)]
            rows.append([alpha * p[j] + (1 - alpha) * (i == j) for j in range(4)])
        soft.append(rows)
    outputs = ModelOutputs(model=None, image_embed=image, text_embed=text, logit_scale=torch.tensor(math.log(scale)))
    outputs.momentum = ModelOutputs(model=None, image_embed=m_image, text_embed=m_text)
    loss, _ = ITC(ITCConfig(distill_alpha=alpha))(outputs, Batch())
    assert loss.item() == pytest.approx(naive_itc(image, text, scale, soft=soft), rel=1e-5)


def test_local_loss_on_one_process_equals_full() -> None:
    image, text = embeds()
    outputs = ModelOutputs(model=None, image_embed=image, text_embed=text, logit_scale=torch.tensor(2.0))
    full, _ = ITC(ITCConfig())(outputs, Batch())
    local, _ = ITC(ITCConfig(local_loss=True))(outputs, Batch())
    assert local.item() == pytest.approx(full.item())


def test_itc_errors_name_what_is_missing() -> None:
    with pytest.raises(ConfigError, match="objectives.itc.*image_embed.*embed_dim"):
        ITC(ITCConfig())(ModelOutputs(model=None), Batch())
    image, text = embeds()
    with pytest.raises(ConfigError, match="logit_scale.*temperature"):
        ITC(ITCConfig())(ModelOutputs(model=None, image_embed=image, text_embed=text), Batch())
