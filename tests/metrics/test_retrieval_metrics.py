"""Retrieval recall on hand-worked matrices and against a naive argsort reference."""

import numpy as np
import pytest
import torch

from vlp.metrics import retrieval_metrics
from vlp.metrics.retrieval import i2t_ranks, t2i_ranks

# 3 images x 6 texts, two captions per image: texts 0,1 -> image 0; 2,3 -> 1; 4,5 -> 2
SIM = torch.tensor(
    [
        [0.9, 0.1, 0.8, 0.2, 0.3, 0.4],  # best gt 0.9 (text 0) is on top: rank 0
        [0.5, 0.6, 0.1, 0.55, 0.2, 0.3],  # best gt 0.55 (text 3); text 1 (0.6) above: rank 1
        [0.7, 0.6, 0.65, 0.5, 0.1, 0.2],  # best gt 0.2 (text 5); texts 0-3 above: rank 4
    ]
)
TXT2IMG = [0, 0, 1, 1, 2, 2]
IMG2TXT = [[0, 1], [2, 3], [4, 5]]


def test_hand_worked_ranks():
    assert i2t_ranks(SIM, IMG2TXT).tolist() == [0, 1, 4]
    # columns: text 0 (gt 0.9 top), 1 (0.1 below 0.6, 0.6), 2 (0.1 below 0.8, 0.65), 3 (0.55 top),
    # 4 (0.1 below 0.3, 0.2), 5 (0.2 below 0.4, 0.3)
    assert t2i_ranks(SIM, torch.tensor(TXT2IMG)).tolist() == [0, 2, 2, 0, 2, 2]


def test_hand_worked_recalls_custom_ks():
    out = retrieval_metrics(SIM, TXT2IMG, IMG2TXT, ks=(1, 2, 3))
    assert out["i2t_r1"] == pytest.approx(100 / 3)
    assert out["i2t_r2"] == pytest.approx(200 / 3)
    assert out["i2t_r3"] == pytest.approx(200 / 3)
    assert out["t2i_r1"] == pytest.approx(100 * 2 / 6)
    assert out["t2i_r2"] == pytest.approx(100 * 2 / 6)
    assert out["t2i_r3"] == pytest.approx(100.0)
    assert out["rsum"] == pytest.approx(100 / 3 + 400 / 3 + 100 / 3 + 100 / 3 + 100)


def test_standard_names_means_and_rsum():
    out = retrieval_metrics(SIM, TXT2IMG)  # img2txt derived from txt2img
    expected = {"i2t_r1": 100 / 3, "i2t_r5": 100.0, "i2t_r10": 100.0, "t2i_r1": 100 / 3, "t2i_r5": 100.0}
    for key, value in expected.items():
        assert out[key] == pytest.approx(value)
    assert out["i2t_mean"] == pytest.approx((100 / 3 + 200) / 3)
    assert out["r_mean"] == pytest.approx((out["i2t_mean"] + out["t2i_mean"]) / 2)
    assert out["rsum"] == pytest.approx(2 * (100 / 3 + 200))


def _naive(sim: np.ndarray, txt2img: list[int], img2txt: list[list[int]]) -> dict[str, float]:
    # the ALBEF evaluation loop: argsort each row/column, position of the best ground truth
    ri = []
    for i, row in enumerate(sim):
        order = np.argsort(row)[::-1]
        ri.append(min(int(np.where(order == t)[0][0]) for t in img2txt[i]))
    rt = []
    for j, col in enumerate(sim.T):
        order = np.argsort(col)[::-1]
        rt.append(int(np.where(order == txt2img[j])[0][0]))
    ri, rt = np.array(ri), np.array(rt)
    out = {}
    for k in (1, 5, 10):
        out[f"i2t_r{k}"] = 100.0 * (ri < k).mean()
        out[f"t2i_r{k}"] = 100.0 * (rt < k).mean()
    return out


def test_matches_naive_argsort_reference():
    gen = torch.Generator().manual_seed(0)
    n_img, per = 30, 5
    txt2img = [i for i in range(n_img) for _ in range(per)]
    img2txt = [list(range(i * per, (i + 1) * per)) for i in range(n_img)]
    # a noisy signal so recalls land strictly between 0 and 100
    signal = torch.zeros(n_img, n_img * per)
    signal[torch.tensor(txt2img), torch.arange(n_img * per)] = 1.0
    sim = (signal.T * 1.5).T + torch.randn(n_img, n_img * per, generator=gen)
    ours = retrieval_metrics(sim, txt2img, img2txt)
    ref = _naive(sim.numpy(), txt2img, img2txt)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value), key
    assert 0 < ours["t2i_r1"] < 100


def test_ties_count_against_ground_truth():
    sim = torch.zeros(2, 4)  # everything tied
    out = retrieval_metrics(sim, [0, 0, 1, 1], ks=(1, 2, 3))
    # image: 2 non-gt texts tie with its best gt -> rank 2; text: 1 other image ties -> rank 1
    assert out["i2t_r1"] == 0.0 and out["i2t_r2"] == 0.0 and out["i2t_r3"] == 100.0
    assert out["t2i_r1"] == 0.0 and out["t2i_r2"] == 100.0


def test_separate_t2i_scores_and_minus_inf():
    sim_t2i = torch.full((3, 6), float("-inf"))
    sim_t2i[torch.tensor(TXT2IMG), torch.arange(6)] = 1.0  # text -> image perfect
    out = retrieval_metrics(SIM, TXT2IMG, sim_t2i=sim_t2i)
    assert out["t2i_r1"] == 100.0
    assert out["i2t_r1"] == pytest.approx(100 / 3)  # unchanged: i2t still uses SIM


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"txt2img": [0, 0, 1]}, "txt2img has 3 entries"),
        ({"txt2img": [0, 0, 1, 1, 2, 3]}, "outside 0..2"),
        ({"txt2img": TXT2IMG, "img2txt": [[0, 1], [2], [3, 4, 5]]}, r"txt2img\[3\] = 1"),
        ({"txt2img": TXT2IMG, "img2txt": [[0, 1], [], [2, 3, 4, 5]]}, "img2txt\\[1\\] is empty"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(SIM, **kwargs)


def test_nan_rejected():
    bad = SIM.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(bad, TXT2IMG)
