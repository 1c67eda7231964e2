"""MRC and MRFR count masked regions only: checked region by region."""

import pytest
import torch

from vlp.config import ConfigError
from vlp.objectives import MRC, MRFR, MRCConfig, MRFRConfig
from vlp.objectives.region import select_regions


def test_select_regions_only_real_and_at_least_one() -> None:
    mask = torch.tensor([[True, True, False, False], [True, True, True, True], [False] * 4])
    for seed in range(50):
        chosen = select_regions(mask, 0.15, torch.Generator().manual_seed(seed))
        assert not (chosen & ~mask).any()
        assert chosen[0].any() and chosen[1].any() and not chosen[2].any()
    big = torch.ones(200, 50, dtype=torch.bool)
    rate = select_regions(big, 0.15, torch.Generator().manual_seed(0)).float().mean().item()
    assert rate == pytest.approx(0.15, abs=0.01)


def masked_fused_image(model, outputs, batch, masked):
    """Zero the masked regions' features by hand and run image + fusion again."""
    features = batch.region_features.clone()
    for b, r in masked.nonzero().tolist():
        features[b, r] = 0.0
    image = model.image_tokens(batch.replace(region_features=features))
    return model.fuse(outputs.text, outputs.text_mask, image).image


@pytest.mark.parametrize("variant", ["ce", "kl"])
def test_mrc_counts_masked_regions_only(toy_model, batch, variant: str) -> None:
    outputs = toy_model(batch)
    loss, logs = MRC(MRCConfig(variant=variant, prob=0.3, seed=4))(outputs, batch)
    masked = select_regions(batch.region_mask, 0.3, torch.Generator().manual_seed(4))
    assert masked.sum() >= 4 and not (masked & ~batch.region_mask).any()
    logits = toy_model.heads["mrc"](masked_fused_image(toy_model, outputs, batch, masked))
    terms = []
    for b, r in masked.nonzero().tolist():
        log_q = logits[b, r].log_softmax(-1)
        p = batch.region_class_probs[b, r]
        if variant == "ce":
            terms.append(-log_q[p.argmax()])
        else:
            terms.append(sum(p[c] * (p[c].log() - log_q[c]) for c in range(len(p))))
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert 0.0 <= logs["mrc_acc"] <= 1.0
    loss.backward()
    assert toy_model.heads["mrc"].weight.grad.abs().sum() > 0


def test_mrfr_counts_masked_regions_only(toy_model, batch) -> None:
    outputs = toy_model(batch)
    loss, _ = MRFR(MRFRConfig(prob=0.3, seed=4))(outputs, batch)
    masked = select_regions(batch.region_mask, 0.3, torch.Generator().manual_seed(4))
    prediction = toy_model.heads["mrfr"](masked_fused_image(toy_model, outputs, batch, masked))
    squared = [((prediction[b, r] - batch.region_features[b, r]) ** 2).mean() for b, r in masked.nonzero().tolist()]
    assert loss.item() == pytest.approx(torch.stack(squared).mean().item(), rel=1e-5)
    # changing an unmasked region's *target* does not change the loss
    changed = batch.region_features.clone()
    b, r = (~masked & batch.region_mask).nonzero()[0].tolist()
    changed[b, r] += 5.0
    loss_changed, _ = MRFR(MRFRConfig(prob=0.3, seed=4))(toy_model(batch), batch.replace(region_features=changed))
    assert loss_changed.item() != pytest.approx(loss.item())  # the input changed (it is not masked) ...
    direct = toy_model.heads["mrfr"](
        masked_fused_image(toy_model, toy_model(batch), batch.replace(region_features=changed), masked)
    )
    ref = torch.stack([((direct[i, j] - changed[i, j]) ** 2).mean() for i, j in masked.nonzero().tolist()]).mean()
    assert loss_changed.item() == pytest.approx(ref.item(), rel=1e-5)  # ... but only masked targets count


def test_mrc_and_mrfr_share_one_masked_pass(toy_model, batch) -> None:
    outputs = toy_model(batch)
    MRC(MRCConfig())(outputs, batch)
    (key,) = [k for k in outputs.extra if k.startswith("masked_regions")]
    cached = outputs.extra[key]
    MRFR(MRFRConfig())(outputs, batch)
    assert outputs.extra[key] is cached


def test_region_objectives_check_their_inputs(toy_model, batch) -> None:
    outputs = toy_model(batch)
    with pytest.raises(ConfigError, match="objectives.mrc.*region_class_probs"):
        MRC(MRCConfig())(outputs, batch.replace(region_class_probs=None))
    with pytest.raises(ConfigError, match="objectives.mrc.*5 classes.*3"):
        MRC(MRCConfig())(outputs, batch.replace(region_class_probs=batch.region_class_probs[..., :3]))
    with pytest.raises(ConfigError, match="objectives.mrfr.*region_features"):
        MRFR(MRFRConfig())(outputs, batch.replace(region_features=None))
