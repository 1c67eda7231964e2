"""ControlNet (Zhang et al., 2023): steer a frozen text-to-image U-Net with a spatial control map.

A trainable copy of the U-Net's encoder half (time embedding, ``conv_in``, down
levels, middle block), initialised from the base model's weights, reads the noisy
image plus the control map. The map enters through a small conv encoder whose
last conv is zero-initialised and is added to the copy's ``conv_in`` output. The
copy's skip features and middle output leave through zero-initialised 1x1 convs
and are added to the base U-Net's skip connections and middle block. At
initialisation every zero conv outputs 0, so the controlled model equals the
base model exactly; training moves only the control branch (the base is frozen
by :meth:`vlp.generation.model.TextToImageModel.add_control`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlp.generation.unet import UNet, zero_module


@dataclass
class ControlConfig:
    """The control input: ``kind`` of map (see :mod:`vlp.generation.data`) and the widths of its conv encoder."""

    kind: Literal["layout", "edge"] = "layout"
    hint_channels: list[int] = field(default_factory=lambda: [16, 32])

    def __post_init__(self) -> None:
        if self.kind not in ("layout", "edge"):
            raise ValueError(f"kind={self.kind!r}: expected 'layout' or 'edge'")
        if not self.hint_channels or any(c < 1 for c in self.hint_channels):
            raise ValueError(f"hint_channels={self.hint_channels}: expected one or more positive widths")


class HintEncoder(nn.Module):
    """Control map ``(B, 3, H, W)`` in [0, 1] -> ``(B, channels, H / p, W / p)`` features, starting at exactly 0.

    The map is pixel-unshuffled by the U-Net's patch size ``p`` (so it lines up with
    ``conv_in``'s output), then 3x3 convs with SiLU, then a zero-initialised 3x3 conv.
    """

    def __init__(self, in_channels: int, patch_size: int, widths: list[int], out_channels: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        width = in_channels * patch_size**2
        for w in widths:
            layers += [nn.Conv2d(width, w, 3, padding=1), nn.SiLU()]
            width = w
        self.body = nn.Sequential(*layers)
        self.out = zero_module(nn.Conv2d(width, out_channels, 3, padding=1))

    def forward(self, control: torch.Tensor) -> torch.Tensor:
        if self.patch_size > 1:
            control = F.pixel_unshuffle(control, self.patch_size)
        return self.out(self.body(control))


class ControlNet(nn.Module):
    """``forward(x_t (B, C, H, W), t (B,), context (B, L, Dc), context_mask (B, L) bool, control (B, 3, H, W),
    scale) -> (skip residuals [(B, Ci, Hi, Wi)], middle residual (B, Cm, h, w))``, to pass to ``UNet(control=...)``.

    Built from a base :class:`UNet` whose encoder it copies (weights included).
    ``scale`` multiplies every residual (ControlNet's conditioning scale; 1 = as trained).
    """

    def __init__(self, base: UNet, cfg: ControlConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = copy.deepcopy(base.encoder)
        for p in self.encoder.parameters():
            p.requires_grad_(True)  # the copy trains even though the base it came from is frozen
        ucfg = base.cfg
        self.hint = HintEncoder(3, ucfg.patch_size, list(cfg.hint_channels), ucfg.channels)
        self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in self.encoder.skip_channels)
        self.zero_mid = zero_module(nn.Conv2d(self.encoder.mid_channels, self.encoder.mid_channels, 1))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        control: torch.Tensor,
        scale: float = 1.0,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        if control.shape[0] != x.shape[0] or control.shape[1] != 3 or control.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"control: expected (B={x.shape[0]}, 3, {x.shape[-2]}, {x.shape[-1]}) like the image, "
                f"got {tuple(control.shape)}"
            )
        h, skips, _ = self.encoder(x, t, context, context_mask, hint=self.hint(control))
        residuals = [conv(s) * scale for conv, s in zip(self.zero_convs, skips)]
        return residuals, self.zero_mid(h) * scale


__all__ = ["ControlConfig", "ControlNet", "HintEncoder"]
