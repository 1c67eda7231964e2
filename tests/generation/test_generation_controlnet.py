"""ControlNet: exact equivalence at initialisation, frozen base, only control parameters train."""

from __future__ import annotations

import torch

from vlp.generation.controlnet import ControlConfig
from vlp.generation.data import GenerationBatch


def _randomize(module: torch.nn.Module) -> None:
    torch.manual_seed(1)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.05)


def _inputs(tokenizer, b=2, size=16):
    g = torch.Generator().manual_seed(0)
    tokens = tokenizer(["a red circle", "a blue square on the left"][:b], max_length=16)
    x = torch.randn(b, 3, size, size, generator=g)
    control = torch.rand(b, 3, size, size, generator=g)
    return x, torch.tensor([5, 60][:b]), tokens, control


def test_controlnet_starts_as_the_base_model_exactly(tiny_model, tokenizer):
    _randomize(tiny_model)  # a "trained" base: nothing in it is zero any more
    tiny_model.eval()
    x, t, tokens, control = _inputs(tokenizer)
    ctx, mask = tiny_model.condition(tokens.input_ids, tokens.attention_mask)
    before = tiny_model.predict(x, t, ctx, mask)
    tiny_model.add_control(ControlConfig(kind="layout"))
    # the copy holds the base encoder's weights
    for (name, a), b in zip(
        tiny_model.unet.encoder.state_dict().items(), tiny_model.control.encoder.state_dict().values()
    ):
        assert torch.equal(a, b), name
    after = tiny_model.predict(x, t, ctx, mask, control=control)
    assert torch.equal(after, before)
    # the equality is owed to the zero convs: any non-zero one breaks it
    with torch.no_grad():
        tiny_model.control.zero_mid.bias.fill_(0.1)
    assert not torch.allclose(tiny_model.predict(x, t, ctx, mask, control=control), before)


def test_base_is_frozen_and_only_control_parameters_change(tiny_model, tokenizer):
    _randomize(tiny_model)
    tiny_model.add_control(ControlConfig(kind="layout", hint_channels=[8]))
    control_names = {n for n, _ in tiny_model.named_parameters() if n.startswith("control.")}
    for name, p in tiny_model.named_parameters():
        assert p.requires_grad == (name in control_names), name
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    x, _, tokens, control = _inputs(tokenizer)
    batch = GenerationBatch(x.clamp(-1, 1), tokens.input_ids, tokens.attention_mask, control)
    params = [p for p in tiny_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    tiny_model.train()
    assert not tiny_model.unet.training and not tiny_model.text.training  # frozen parts stay in eval mode
    torch.manual_seed(0)
    for _ in range(3):
        loss, _ = tiny_model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {n for n, p in tiny_model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed <= control_names
    # zero convs move on step 1; the copied encoder, reached through them, from step 2 on
    assert all(n in changed for n in control_names if "zero_convs" in n or "zero_mid" in n)
    assert any(n.startswith("control.encoder.") for n in changed)
    assert any(n.startswith("control.hint.") for n in changed)


def test_control_map_shape_is_checked(tiny_model, tokenizer):
    tiny_model.add_control(ControlConfig())
    x, t, tokens, _ = _inputs(tokenizer)
    ctx, mask = tiny_model.condition(tokens.input_ids, tokens.attention_mask)
    try:
        tiny_model.predict(x, t, ctx, mask, control=torch.zeros(2, 3, 8, 8))
    except ValueError as err:
        assert "control: expected (B=2, 3, 16, 16)" in str(err)
    else:
        raise AssertionError("a control map of the wrong size was accepted")
