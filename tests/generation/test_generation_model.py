"""TextToImageModel: caption dropout, overfitting a tiny batch, seeded generation, save / load."""

from __future__ import annotations

import pytest
import torch

from vlp.config import ConfigError
from vlp.generation.data import ShapesDataConfig, ShapesStream
from vlp.generation.diffusion import ddpm_loss
from vlp.generation.model import TextToImageConfig, load_generator, save_generator


def test_dropped_rows_become_the_null_prompt(tiny_model, tokenizer):
    with torch.no_grad():
        tiny_model.null_context.normal_()
    tokens = tokenizer(["a red circle", "there is a yellow star"], max_length=16)
    drop = torch.tensor([False, True])
    ctx, mask = tiny_model.condition(tokens.input_ids, tokens.attention_mask, drop)
    full, full_mask = tiny_model.condition(tokens.input_ids, tokens.attention_mask)
    assert torch.equal(ctx[0], full[0]) and torch.equal(mask[0], full_mask[0])
    assert torch.equal(ctx[1, 0], tiny_model.null_context[0])
    assert mask[1].tolist() == [True] + [False] * (mask.shape[1] - 1)


def test_loss_decreases_when_overfitting_a_tiny_batch(tiny_model, tokenizer):
    stream = ShapesStream(ShapesDataConfig(image_size=16, max_objects=1, seed=3), tokenizer)
    batch = stream.next_batch(4)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 100, (4,), generator=g)
    noise = torch.randn(batch.images.shape, generator=g)
    ctx_args = (batch.input_ids, batch.attention_mask)

    def fixed_loss() -> torch.Tensor:
        ctx, mask = tiny_model.condition(*ctx_args)
        return ddpm_loss(
            lambda x, tt: tiny_model.predict(x, tt, ctx, mask), tiny_model.schedule, batch.images, t, noise
        )

    optimizer = torch.optim.Adam(tiny_model.parameters(), lr=3e-3)
    first = fixed_loss().item()
    for _ in range(60):
        loss = fixed_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert fixed_loss().item() < 0.5 * first
    # the training forward (random t, caption dropout) runs and returns a finite loss with its log
    tiny_model.train()
    loss, logs = tiny_model(batch)
    assert torch.isfinite(loss) and set(logs) == {"loss"}


def test_generate_is_seeded(tiny_model):
    tiny_model.eval()
    a = tiny_model.generate(["a red circle", "a blue square"], samples=2, seed=7, steps=3)
    b = tiny_model.generate(["a red circle", "a blue square"], samples=2, seed=7, steps=3)
    c = tiny_model.generate(["a red circle", "a blue square"], samples=2, seed=8, steps=3)
    assert a.shape == (4, 3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.abs().max()) <= 1.0
    with pytest.raises(ValueError, match="list of strings"):
        tiny_model.generate("a red circle")


def test_save_and_load_round_trip(tiny_model, tmp_path):
    torch.manual_seed(2)
    for p in tiny_model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    tiny_model.eval()
    folder = save_generator(tiny_model, tmp_path / "model")
    loaded = load_generator(folder)
    assert loaded.tokenizer.get_vocab() == tiny_model.tokenizer.get_vocab()
    a = tiny_model.generate(["a big cross"], samples=2, seed=1, steps=3)
    b = loaded.generate(["a big cross"], samples=2, seed=1, steps=3)
    assert torch.equal(a, b)
    assert not any(k.startswith("schedule.") for k in tiny_model.state_dict())  # recomputed, never stored


def test_load_refuses_a_folder_that_is_not_a_generator(tmp_path):
    (tmp_path / "recipe.yaml").write_text("model:\n  name: clip\n  embed_dim: 16\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a text-to-image model folder"):
        load_generator(tmp_path)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_generator(tmp_path / "missing")


def test_config_checks_the_image_size():
    with pytest.raises(ValueError, match="not divisible by the U-Net's downsample factor 4"):
        TextToImageConfig(image_size=30)
