"""build_optimizer uses torch's fused AdamW on CPU, and it follows AdamW's update (checked by hand)."""

from __future__ import annotations

import torch
from torch import nn

from vlp.recipe.run import OptimConfig
from vlp.train.optim import build_optimizer, fused_adamw_fits, param_groups


def reference_adamw(params: dict[str, torch.Tensor], grads: list[dict[str, torch.Tensor]], decay: set[str],
                    cfg: OptimConfig) -> dict[str, torch.Tensor]:  # fmt: skip
    """AdamW (Loshchilov & Hutter) written out in float64: decoupled decay, bias-corrected moments."""
    p = {k: v.double().clone() for k, v in params.items()}
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v = {k: torch.zeros_like(t) for k, t in p.items()}
    b1, b2 = cfg.betas
    for t, step_grads in enumerate(grads, start=1):
        for k in p:
            g = step_grads[k].double()
            if k in decay:
                p[k] *= 1 - cfg.lr * cfg.weight_decay
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            p[k] -= cfg.lr * m_hat / (v_hat.sqrt() + cfg.eps)
    return p


def test_cpu_optimizer_is_fused_and_follows_adamw() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Linear(16, 3))
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-8)
    start = {k: v.detach().clone() for k, v in net.named_parameters()}
    decay = {n for g in param_groups(net, cfg) if g["weight_decay"] > 0 for n in g["param_names"]}
    assert decay == {"0.weight", "2.weight"}
    opt = build_optimizer(net, cfg)
    assert all(group["fused"] for group in opt.param_groups)
    gen = torch.Generator().manual_seed(1)
    grads = [{k: torch.randn(v.shape, generator=gen) for k, v in start.items()} for _ in range(25)]
    for step_grads in grads:
        for name, param in net.named_parameters():
            param.grad = step_grads[name].clone()
        opt.step()
        opt.zero_grad(set_to_none=True)
    expected = reference_adamw(start, grads, decay, cfg)
    for name, param in net.named_parameters():
        assert torch.allclose(param.detach().double(), expected[name], atol=1e-6, rtol=0), name
        assert not torch.equal(param.detach(), start[name])


def test_fused_only_where_the_kernel_fits() -> None:
    assert fused_adamw_fits([torch.zeros(3, requires_grad=True)])
    assert not fused_adamw_fits([torch.zeros(3, dtype=torch.long)])  # not floating
    assert not fused_adamw_fits([torch.zeros(3, device="meta")])  # neither CPU nor CUDA
    assert not fused_adamw_fits([])


def test_no_fused_kernel_on_a_device_this_torch_lacks_it_for(monkeypatch):
    """Before torch 2.4 the fused AdamW kernel ran on CUDA only (CPU params raised at construction)."""
    from vlp.train import optim

    params = [nn.Parameter(torch.zeros(3))]
    assert fused_adamw_fits(params)  # torch 2.13 lists "cpu"
    monkeypatch.setattr(optim.foreach_utils, "_get_fused_kernels_supported_devices", lambda: ["cuda", "xpu"])
    assert not fused_adamw_fits(params)
    assert build_optimizer(nn.Linear(2, 2), OptimConfig()).defaults["fused"] is None
