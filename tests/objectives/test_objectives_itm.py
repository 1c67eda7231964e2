"""ITM: negative sampling and the loss against a pair-by-pair computation."""

import pytest
import torch
import torch.nn.functional as F

from vlp.config import ConfigError
from vlp.objectives import ITM, ITMConfig
from vlp.objectives.itm import positive_mask, sample_negatives


@pytest.mark.parametrize("hard", [True, False])
def test_sampler_never_picks_a_positive(hard: bool) -> None:
    ids = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4])  # several captions per image
    positive = positive_mask(8, ids, torch.device("cpu"))
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        # strongly favour the positives: a sampler that leaked them would pick them
        scores = torch.randn(8, 8, generator=g) + 20 * positive.float() if hard else None
        index, valid = sample_negatives(scores, positive, g)
        assert valid.all()
        assert not positive[torch.arange(8), index].any(), f"seed {seed} picked a positive"
        assert (ids[index] != ids).all()


def test_sampler_with_peaked_similarity_picks_the_hardest() -> None:
    positive = positive_mask(5, None, torch.device("cpu"))
    scores = torch.zeros(5, 5)
    hardest = torch.tensor([3, 4, 0, 1, 2])
    scores[torch.arange(5), hardest] = 30.0
    scores[torch.arange(5), torch.arange(5)] = 100.0  # the positive is even more similar, but excluded
    for seed in range(20):
        index, _ = sample_negatives(scores, positive, torch.Generator().manual_seed(seed))
        assert torch.equal(index, hardest)


def test_hard_sampling_follows_the_softmax() -> None:
    # 500 independent 3-sample groups in one call: "positives" are everything outside a row's group
    # (and the row itself), so each row draws one of its 2 partners: the favoured one (score 1) with
    # probability e / (e + 1), the other (score 0) with 1 / (e + 1)
    groups = 500
    group = torch.arange(3 * groups) // 3
    positive = (group[:, None] != group[None, :]) | torch.eye(3 * groups, dtype=torch.bool)
    favoured = group * 3 + (torch.arange(3 * groups) + 1) % 3
    scores = torch.zeros(3 * groups, 3 * groups)
    scores[torch.arange(3 * groups), favoured] = 1.0
    picks, valid = sample_negatives(scores, positive, torch.Generator().manual_seed(0))
    assert valid.all() and (group[picks] == group).all() and (picks != torch.arange(3 * groups)).all()
    assert (picks == favoured).float().mean().item() == pytest.approx(torch.e / (torch.e + 1), abs=0.04)


def test_non_finite_similarities_draw_uniformly_instead_of_raising() -> None:
    # a diverging run: NaN / inf similarities made softmax NaN and multinomial raised, which killed the run
    # before the non-finite guard could skip the step
    ids = torch.tensor([0, 0, 1, 2])
    positive = positive_mask(4, ids, torch.device("cpu"))
    scores = torch.randn(4, 4)
    scores[0] = float("nan")
    scores[1, 2] = float("inf")
    scores[2, :] = float("-inf")
    finite_row = scores[3].clone()
    picks = []
    for seed in range(300):
        index, valid = sample_negatives(scores, positive, torch.Generator().manual_seed(seed))
        assert valid.all() and (ids[index] != ids).all()
        picks.append(index)
    picks = torch.stack(picks)
    assert set(picks[:, 0].tolist()) == {2, 3}  # the broken row: every non-positive is drawn
    assert set(picks[:, 2].tolist()) == {0, 1, 3}
    # a finite row still follows its softmax over the non-positives {0, 1, 2}
    expected = F.softmax(finite_row[:3], 0)[0].item()
    assert (picks[:, 3] == 0).float().mean().item() == pytest.approx(expected, abs=0.08)


def test_rows_without_a_negative_are_not_valid() -> None:
    ids = torch.tensor([7, 7, 7])
    _, valid = sample_negatives(None, positive_mask(3, ids, torch.device("cpu")))
    assert not valid.any()


@pytest.mark.parametrize("negatives", ["hard", "random"])
def test_itm_loss_matches_pair_by_pair(toy_model, batch, negatives: str) -> None:
    torch.manual_seed(1)
    outputs = toy_model(batch)
    loss, logs = ITM(ITMConfig(negatives=negatives, seed=3))(outputs, batch)

    # the same draws in the same order, then every pair fused on its own
    g = torch.Generator().manual_seed(3)
    positive = positive_mask(4, None, torch.device("cpu"))
    sims = None
    if negatives == "hard":
        sims = (outputs.image_embed @ outputs.text_embed.t() * outputs.logit_scale.exp()).detach()
    neg_image, _ = sample_negatives(None if sims is None else sims.t(), positive, g)
    neg_text, _ = sample_negatives(sims, positive, g)
    pairs = [(i, i, 1) for i in range(4)] + [(i, int(neg_image[i]), 0) for i in range(4)]
    pairs += [(int(neg_text[i]), i, 0) for i in range(4)]
    logits, labels = [], []
    for t, v, label in pairs:
        image = outputs.image
        fused = toy_model.fuse(
            outputs.text[t : t + 1],
            outputs.text_mask[t : t + 1],
            type(image)(image.tokens[v : v + 1], image.mask[v : v + 1], image.positions[v : v + 1]),
        )
        logits.append(toy_model.heads["itm"](fused.pooled)[0])
        labels.append(label)
    logits, labels = torch.stack(logits), torch.tensor(labels)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert logs["itm_acc"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    loss.backward()
    assert toy_model.heads["itm"].weight.grad.abs().sum() > 0


def test_itm_hard_needs_embeddings(toy_model, batch) -> None:
    outputs = toy_model(batch)
    outputs.image_embed = None
    with pytest.raises(ConfigError, match="objectives.itm.negatives.*random"):
        ITM(ITMConfig())(outputs, batch)
    loss, _ = ITM(ITMConfig(negatives="random"))(outputs, batch)
    assert torch.isfinite(loss)
