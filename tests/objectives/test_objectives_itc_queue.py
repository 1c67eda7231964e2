"""ALBEF's queue of momentum features in ITC: off = the old loss bit for bit, on = a hand-looped reference,
the ring buffer's pointer, evaluation, and resume through the engine's checkpoint path."""

import math

import pytest
import torch
import torch.nn.functional as F
from objectives_toy_model import ToyModel, ToyTokenizer, toy_batch

import vlp
from vlp.config import ConfigError
from vlp.core.outputs import ModelOutputs
from vlp.data.batch import Batch
from vlp.io.checkpoints import CheckpointManager
from vlp.objectives import ITC, ITCConfig, Pretraining, build_objectives, validate_objectives
from vlp.objectives.queue import FeatureQueue
from vlp.train.distributed import full_model_state, load_model_state


def dyadic(n: int, dim: int, seed: int) -> torch.Tensor:
    """Multiples of 1/16: every dot product is exact in float32, whatever the summation order."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-8, 9, (n, dim), generator=g).float() / 16


# Losses of the code before the queue existed (commit 00da704), printed with float.hex() by running
# these cases through ITC there. queue_size: 0 must give exactly these numbers.
BEFORE = {
    "plain": ({}, False, False, "0x1.36bee80000000p+1"),
    "ids_smooth": ({"label_smoothing": 0.1}, True, False, "0x1.0ab3860000000p+1"),
    "distill": ({"distill_alpha": 0.4}, False, True, "0x1.2746200000000p+1"),
    "local_distill_ids": ({"local_loss": True, "distill_alpha": 0.4}, True, True, "0x1.0d12ee0000000p+1"),
}


@pytest.mark.parametrize("name", sorted(BEFORE))
@pytest.mark.parametrize("queue", [{}, {"queue_size": 0}])
def test_queue_off_is_bit_equal_to_the_loss_before(name: str, queue: dict) -> None:
    options, use_ids, distill, expected = BEFORE[name]
    outputs = ModelOutputs(
        model=None, image_embed=dyadic(6, 4, 0), text_embed=dyadic(6, 4, 1), logit_scale=torch.tensor(math.log(4.0))
    )
    if distill:
        outputs.momentum = ModelOutputs(model=None, image_embed=dyadic(6, 4, 2), text_embed=dyadic(6, 4, 3))
    batch = Batch(image_index=torch.tensor([0, 0, 1, 2, 2, 3]) if use_ids else None)
    itc = ITC(ITCConfig(**options, **queue))
    loss, _ = itc(outputs, batch)
    assert loss.item() == float.fromhex(expected)
    assert itc.queue is None and not any("queue" in key for key in itc.state_dict())


def naive_queued_itc(rows, m_rows, batch_ids, stored, scale, alpha, smoothing) -> float:
    """ALBEF's ITC by loops. Columns: the momentum features of the batch, then the stored (image, text, id)
    entries; p = softmax of scale * <row, column>; target = alpha * the momentum rows' softmax over the same
    columns + (1 - alpha) * uniform over the row's positives (its own column, or every column of its image)."""
    image, text = rows
    m_image, m_text = m_rows
    n = len(image)
    col_ids = list(batch_ids) + [entry[2] for entry in stored] if batch_ids is not None else None
    total = 0.0
    for direction in range(2):  # 0: image -> text columns, 1: text -> image columns
        for i in range(n):
            row, m_row = (image[i], m_image[i]) if direction == 0 else (text[i], m_text[i])
            columns = [m_text[j] if direction == 0 else m_image[j] for j in range(n)]
            columns += [entry[1] if direction == 0 else entry[0] for entry in stored]
            logits = [scale * float(row @ c) for c in columns]
            m_logits = [scale * float(m_row @ c) for c in columns]
            log_z = math.log(sum(math.exp(v) for v in logits))
            m_z = sum(math.exp(v) for v in m_logits)
            if col_ids is None:
                positives = [j == i for j in range(len(columns))]
            else:
                positives = [col_ids[j] == batch_ids[i] for j in range(len(columns))]
            for j in range(len(columns)):
                q = alpha * math.exp(m_logits[j]) / m_z + (1 - alpha) * positives[j] / sum(positives)
                q = (1 - smoothing) * q + smoothing / len(columns)
                total -= q * (logits[j] - log_z)
    return total / (2 * n)


@pytest.mark.parametrize(
    ("alpha", "smoothing", "use_ids"), [(0.4, 0.0, False), (0.0, 0.0, False), (0.4, 0.1, True), (0.3, 0.0, True)]
)
def test_queued_itc_matches_hand_looped_albef(alpha: float, smoothing: float, use_ids: bool) -> None:
    size, batch_size, scale = 5, 3, 6.0
    itc = ITC(ITCConfig(queue_size=size, distill_alpha=alpha, label_smoothing=smoothing))
    slots, pointer = [None] * size, 0  # the reference's own ring buffer
    for step in range(4):  # 12 entries through 5 slots: the queue wraps twice
        image, text, m_image, m_text = (F.normalize(torch.randn(batch_size, 4), dim=-1) for _ in range(4))
        ids = torch.tensor([step, step, 7]) if use_ids else None  # id 7 recurs: it has positives in the queue
        outputs = ModelOutputs(
            model=None, image_embed=image, text_embed=text, logit_scale=torch.tensor(math.log(scale))
        )
        outputs.momentum = ModelOutputs(model=None, image_embed=m_image, text_embed=m_text)
        loss, logs = itc(outputs, Batch(image_index=ids))
        stored = [entry for entry in slots if entry is not None]
        batch_ids = None if ids is None else ids.tolist()
        expected = naive_queued_itc((image, text), (m_image, m_text), batch_ids, stored, scale, alpha, smoothing)
        assert loss.item() == pytest.approx(expected, rel=1e-5), f"step {step}"
        assert logs["itc_queue"] == len(stored)
        for k in range(batch_size):
            slots[pointer] = (m_image[k], m_text[k], -1 if ids is None else int(ids[k]))
            pointer = (pointer + 1) % size


def test_pointer_wraps_and_keeps_the_newest_entries() -> None:
    queue = FeatureQueue(5)

    def push(first: int, n: int) -> None:  # entry k carries the value k in every feature
        values = torch.arange(first, first + n, dtype=torch.float32)[:, None].repeat(1, 2)
        queue.enqueue(values, -values, torch.arange(first, first + n))

    for first in range(0, 12, 3):
        push(first, 3)
    # entry k is in slot k % 5; of entries 0..11 the newest in each slot survive
    assert queue.image[:, 0].tolist() == [10, 11, 7, 8, 9]
    assert queue.text[:, 1].tolist() == [-10, -11, -7, -8, -9]
    assert queue.ids.tolist() == [10, 11, 7, 8, 9]
    assert int(queue.count) == 12 and queue.filled == 5
    push(12, 7)  # more than the queue holds: entries 14..18, still in slot k % 5
    assert queue.ids.tolist() == [15, 16, 17, 18, 14]
    assert int(queue.count) == 19


def test_partly_filled_queue_and_missing_ids() -> None:
    queue = FeatureQueue(4)
    image, text, ids = queue.columns(torch.ones(3, 2))
    assert image.shape == text.shape == (0, 2) and ids.shape == (0,)
    queue.enqueue(torch.ones(3, 2), torch.zeros(3, 2), None)
    image, _, ids = queue.columns(torch.ones(3, 2))
    assert image.shape == (3, 2) and ids.tolist() == [-1, -1, -1]  # slot 4 never written: not a column
    with pytest.raises(ConfigError, match="queue holds 2-d features.*embeddings are 3-d"):
        queue.enqueue(torch.ones(1, 3), torch.ones(1, 3), None)


def test_evaluation_does_not_enqueue_and_the_queue_needs_momentum() -> None:
    itc = ITC(ITCConfig(queue_size=8))
    image, text = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    outputs = ModelOutputs(model=None, image_embed=image, text_embed=text, logit_scale=torch.tensor(1.0))
    with pytest.raises(ConfigError, match=r"objectives.itc: needs outputs.momentum.*model.momentum > 0"):
        itc(outputs, Batch())
    outputs.momentum = ModelOutputs(model=None, image_embed=image, text_embed=text)
    itc.eval()
    itc(outputs, Batch())
    assert itc.queue.filled == 0
    itc.train()
    itc(outputs, Batch())
    assert itc.queue.filled == 3
    with pytest.raises(ConfigError, match=r"objectives.itc: queue_size must be >= 0 \(0: no queue\), got -1"):
        validate_objectives({"itc": {"queue_size": -1}})


def pretraining(queue_size: int = 6) -> Pretraining:
    torch.manual_seed(0)
    objectives = build_objectives({"itc": {"queue_size": queue_size}}, tokenizer=ToyTokenizer())
    return Pretraining(ToyModel(), objectives, momentum=0.9)


def train_step(pt: Pretraining, optimizer: torch.optim.Optimizer, seed: int) -> float:
    loss, _ = pt(toy_batch(seed=seed))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    pt.after_step()
    return loss.item()


def test_resume_gives_the_same_next_loss(tmp_path) -> None:
    pt = pretraining()
    optimizer = torch.optim.SGD(pt.parameters(), lr=0.5)
    for seed in range(3):  # 12 entries through 6 slots
        train_step(pt, optimizer, seed)
    assert pt.objectives["itc"].queue.filled == 6
    # through the training engine's checkpoint path: full state -> safetensors -> a fresh module
    folder = CheckpointManager(tmp_path).save(3, full_model_state(pt), {"step": 3})
    weights, _, _ = CheckpointManager(tmp_path).load(folder)
    assert weights["objectives.itc.queue.image"].shape == (6, 8)
    fresh = pretraining()
    load_model_state(fresh, weights)  # its queue was never sized: loading sizes it
    for seed in (3, 4):  # the same losses, and the pointer continues where it was
        expected, _ = pt(toy_batch(seed=seed))
        got, _ = fresh(toy_batch(seed=seed))
        assert got.item() == expected.item()
    for key, value in pt.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # without the saved queue the next loss differs: the queue is part of what resume restores
    weights = full_model_state(pt)
    other = pretraining()
    load_model_state(other, {**weights, "objectives.itc.queue.count": torch.tensor(0)})
    assert other(toy_batch(seed=5))[0].item() != pt(toy_batch(seed=5))[0].item()


def test_checkpoint_of_another_queue_size_is_refused() -> None:
    pt = pretraining(queue_size=6)
    pt(toy_batch())
    with pytest.raises(RuntimeError, match="queue has 6 entries but objectives.itc.queue_size is 4"):
        pretraining(queue_size=4).load_state_dict(pt.state_dict())


@pytest.mark.parametrize(("name", "size"), [("albef", 65536), ("blip", 57600), ("albef-tiny", 256)])
def test_recipes_queue_the_momentum_features(name: str, size: int) -> None:
    with torch.device("meta"):
        model = vlp.create_model(name)
    assert model.cfg.momentum == 0.995  # the queue holds the momentum model's features
    assert validate_objectives(model.recipe.objectives)["itc"]["queue_size"] == size
