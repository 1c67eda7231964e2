"""The QuickGELU feed-forward layer folded into one SiLU pass computes CLIP's ``x * sigmoid(1.702 x)`` MLP."""

from __future__ import annotations

import torch
from torch import nn

from vlp.layers.block import MLP, quick_gelu_mlp
from vlp.models.quantize import quantize_linear_int8


def reference(mlp: MLP, x: torch.Tensor) -> torch.Tensor:
    """The three-pass MLP in float64, written out from the definition."""
    w1, b1 = mlp.fc1.weight.double(), mlp.fc1.bias.double()
    w2, b2 = mlp.fc2.weight.double(), mlp.fc2.bias.double()
    h = x.double() @ w1.t() + b1
    return (h * torch.sigmoid(1.702 * h)) @ w2.t() + b2


def test_folded_forward_and_gradients_match_the_definition() -> None:
    torch.manual_seed(0)
    mlp = MLP(16, 64, act="quick_gelu")
    x = torch.randn(3, 5, 16, requires_grad=True)
    out = quick_gelu_mlp(x, mlp.fc1, mlp.fc2)
    ref = reference(mlp, x)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-6)
    out.square().sum().backward()
    grads = [x.grad, mlp.fc1.weight.grad, mlp.fc1.bias.grad, mlp.fc2.weight.grad, mlp.fc2.bias.grad]
    x64 = x.detach().double().requires_grad_(True)
    params = [p.detach().double().requires_grad_(True) for p in (mlp.fc1.weight, mlp.fc1.bias)]
    params += [p.detach().double().requires_grad_(True) for p in (mlp.fc2.weight, mlp.fc2.bias)]
    h = x64 @ params[0].t() + params[1]
    (((h * torch.sigmoid(1.702 * h)) @ params[2].t() + params[3]).square().sum()).backward()
    for got, want in zip(grads, [x64.grad] + [p.grad for p in params]):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_the_mlp_folds_without_autograd_only_and_agrees_with_its_plain_path() -> None:
    # in training the GEMM scalars cost backward passes of their own, so the fold is for inference
    torch.manual_seed(1)
    mlp = MLP(8, 32, act="quick_gelu")
    x = torch.randn(4, 8)
    assert not mlp._folds_quick_gelu()
    with torch.no_grad():
        assert mlp._folds_quick_gelu()
        folded = mlp(x)
    torch.testing.assert_close(folded.double(), reference(mlp, x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(folded, mlp(x).detach(), atol=1e-6, rtol=1e-6)


def test_replaced_or_biasless_layers_keep_their_own_forward() -> None:
    torch.manual_seed(2)
    mlp = MLP(8, 32, act="quick_gelu")
    mlp.fc1 = nn.Linear(8, 32, bias=False)
    with torch.no_grad():
        assert not mlp._folds_quick_gelu()
    x = torch.randn(2, 8)
    h = mlp.fc1(x)
    torch.testing.assert_close(mlp(x), mlp.fc2(h * torch.sigmoid(1.702 * h)))
    quantized = quantize_linear_int8(nn.Sequential(MLP(8, 32, act="quick_gelu")))[0]
    with torch.no_grad():
        assert not quantized._folds_quick_gelu()
        assert not MLP(8, 32, act="gelu")._folds_quick_gelu()
        # without autograd (where the fold would run) the int8 MLP is its own three calls, value for value
        torch.testing.assert_close(quantized(x), quantized.fc2(quantized.act(quantized.fc1(x))), atol=0, rtol=0)
