"""A small text-conditioned U-Net for pixel-space diffusion (the DDPM / Stable Diffusion layout, shrunk).

Images are channel-first ``(B, C, H, W)``; the text context is batch-first
``(B, L, Dc)`` with a boolean keep-mask ``(B, L)`` (``True`` = real token), as
everywhere in vlp. The network predicts, for the noisy ``x`` at timestep ``t``, the
noise that was added (or the velocity ``v``; see :mod:`vlp.generation.diffusion`).

Layout: ``conv_in`` -> per resolution level ``res_blocks`` ResBlocks (timestep
embedding added inside each), optionally followed by a spatial attention block
(self-attention and/or cross-attention to the text tokens), then a stride-2
downsample -> middle (ResBlock, attention, ResBlock) -> the mirror image going up,
each block concatenating one skip connection -> GroupNorm, SiLU, ``conv_out``.

The encoder half (time embedding, ``conv_in``, the down levels and the middle) is
its own module, :class:`UNetEncoder`, so that ControlNet can hold a trainable copy
of exactly that half (see :mod:`vlp.generation.controlnet`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vlp.layers import MLP, Attention, attention_bias, masked_mean


@dataclass
class UNetConfig:
    """Sizes of the U-Net. Level ``i`` has ``channels * channel_mult[i]`` channels at resolution ``H / 2**i``."""

    in_channels: int = 3
    out_channels: int = 3
    channels: int = 64
    # space-to-depth factor: the network runs on (C * p * p, H / p, W / p) (pixel-unshuffle), so a 32x32 image
    # costs what a 16x16 one would at p = 2; the output is pixel-shuffled back to (C, H, W)
    patch_size: int = 1
    channel_mult: tuple[int, ...] = (1, 2, 2)
    res_blocks: int = 1  # ResBlocks per level on the way down (the way up has one more, as in DDPM)
    self_attention_levels: list[int] = field(default_factory=lambda: [2])  # levels with self-attention
    cross_attention_levels: list[int] = field(default_factory=lambda: [1, 2])  # levels attending to the text
    # also add the text's mean token to the timestep embedding (GLIDE and Imagen do): every ResBlock then sees
    # the prompt, which a small model learns to use in far fewer steps than cross-attention alone
    pooled_text: bool = False
    heads: int = 4
    groups: int = 8  # GroupNorm groups; every level's width must be divisible by it
    dropout: float = 0.0
    context_dim: int = 0  # width of the text tokens; 0 = filled in from the text encoder by the model

    def __post_init__(self) -> None:
        if not self.channel_mult:
            raise ValueError("channel_mult: needs at least one level")
        for name in ("channels", "res_blocks", "in_channels", "out_channels", "patch_size", "heads", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        levels = len(self.channel_mult)
        for name in ("self_attention_levels", "cross_attention_levels"):
            bad = [lv for lv in getattr(self, name) if not 0 <= lv < levels]
            if bad:
                raise ValueError(f"{name}={getattr(self, name)}: levels must lie in [0, {levels})")
        for mult in self.channel_mult:
            width = self.channels * mult
            if width % self.groups:
                raise ValueError(f"channels * channel_mult = {width} is not divisible by groups={self.groups}")
            if width % self.heads:
                raise ValueError(f"channels * channel_mult = {width} is not divisible by heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout}: expected a probability in [0, 1)")

    @property
    def downsample_factor(self) -> int:
        """Image sides must be divisible by this: the patch size times one halving per level below the top."""
        return self.patch_size * 2 ** (len(self.channel_mult) - 1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B,) -> (B, dim)``: ``[cos(t f_k), sin(t f_k)]`` with ``f_k = max_period^(-k/half)``.

    The transformer's position encoding applied to the (integer or fractional)
    diffusion timestep, as in DDPM; an odd ``dim`` gets a zero last column.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


# Text is padded to a multiple of this many tokens before the U-Net attends to it. CPU attention (torch's flash
# kernel, softmax) vectorises over the keys, and a count that is not a multiple of the vector width (16 floats
# with AVX-512) runs a scalar tail: 11 caption tokens cost about twice what 16 do.
TEXT_MULTIPLE = 16


def pad_text(
    context: torch.Tensor | None, context_mask: torch.Tensor | None, multiple: int = TEXT_MULTIPLE
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``context (B, L, Dc)`` and its keep-mask ``(B, L)`` padded with masked-out zero tokens to a multiple of
    ``multiple`` tokens. The U-Net computes the same with either: a masked key gets exactly zero attention
    weight and the pooled text averages the kept tokens only. A missing mask keeps every given token."""
    if context is None:
        return context, context_mask
    b, length = context.shape[:2]
    if context_mask is None:
        context_mask = torch.ones(b, length, dtype=torch.bool, device=context.device)
    extra = -length % multiple
    if extra == 0:
        return context, context_mask
    return F.pad(context, (0, 0, 0, extra)), F.pad(context_mask, (0, extra), value=False)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (a residual branch that starts as identity; ControlNet's zero conv)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """``x + f(x, temb)``: two 3x3 convs with GroupNorm and SiLU; the timestep embedding is added between them.

    ``(B, Cin, H, W), (B, T) -> (B, Cout, H, W)``. The second conv starts at zero
    (the block starts as the identity / a 1x1 projection), which keeps the
    untrained network's output scale independent of depth.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SpatialAttention(nn.Module):
    """Attention over the pixels of a feature map: self-attention and/or cross-attention to text, then an MLP.

    ``x (B, C, H, W), context (B, L, Dc), context_mask (B, L) bool -> (B, C, H, W)``.
    The map is flattened to ``(B, H*W, C)`` tokens (pre-norm residual sub-layers,
    as in Stable Diffusion's transformer block) and the block's output projection
    starts at zero, so it begins as the identity. Padded text tokens (mask False)
    receive no attention.
    """

    def __init__(self, ch: int, heads: int, groups: int, self_attn: bool, context_dim: int | None) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.self_attn = Attention(ch, heads) if self_attn else None
        self.norm_self = nn.LayerNorm(ch) if self_attn else None
        self.cross_attn = Attention(ch, heads, cross=True, context_dim=context_dim) if context_dim else None
        self.norm_cross = nn.LayerNorm(ch) if context_dim else None
        self.norm_mlp = nn.LayerNorm(ch)
        self.mlp = MLP(ch, 4 * ch)
        self.proj_out = zero_module(nn.Conv2d(ch, ch, 1))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, C)
        if self.self_attn is not None:
            tokens = tokens + self.self_attn(self.norm_self(tokens))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this U-Net attends to text: pass context (B, L, Dc) and context_mask (B, L)")
            # one bias row per caption (B, 1, 1, L), broadcast over the H*W queries, instead of the (B, 1, HW, L)
            # that keep_mask would build (and the attention kernel would read) at every call
            bias = None
            if context_mask is not None:
                bias = attention_bias(context_mask, False, 1, context.shape[1], tokens.dtype, tokens.device)
            tokens = tokens + self.cross_attn(self.norm_cross(tokens), context, bias=bias)
        tokens = tokens + self.mlp(self.norm_mlp(tokens))
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _fold_rows(w: torch.Tensor, dim: int) -> torch.Tensor:
    """The 3 taps of a 3x3 kernel along ``dim`` as the 4 taps of a stride-2 transposed conv that reads the
    un-upsampled map (see :class:`Upsample`): ``[w2, w1 + w2, w0 + w1, w0]``."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling, then a 3x3 conv (padding 1): ``(B, C, H, W) -> (B, C, 2H, 2W)``.

    Computed as one stride-2 4x4 transposed conv of the input whose kernel is folded from the 3x3 one: an
    output pixel ``2i + a`` sees input rows ``(i - 1, i)`` through taps ``(w0, w1 + w2)`` when ``a = 0`` and
    ``(i, i + 1)`` through ``(w0 + w1, w2)`` when ``a = 1`` (likewise along the columns), so the result is the
    same up to float rounding for 16 instead of 36 multiply-adds per input pixel and channel pair, and without
    the upsampled map. :meth:`reference` is the literal form.
    """

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if type(conv) is not nn.Conv2d:  # a replaced conv (quantized, wrapped) keeps its own forward
            return self.reference(x)
        # (out, in, 3, 3) -> (out, in, 4, 4) -> conv_transpose2d's (in, out, 4, 4)
        kernel = _fold_rows(_fold_rows(conv.weight, 2), 3).transpose(0, 1)
        return F.conv_transpose2d(x, kernel, conv.bias, stride=2, padding=1)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample, then convolve: what :meth:`forward` computes, done literally (2.25x the multiply-adds)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _attention(cfg: UNetConfig, level: int, ch: int) -> nn.Module | None:
    self_attn = level in cfg.self_attention_levels
    context_dim = cfg.context_dim if level in cfg.cross_attention_levels and cfg.context_dim else None
    if not self_attn and context_dim is None:
        return None
    return SpatialAttention(ch, cfg.heads, cfg.groups, self_attn, context_dim)


class Stage(nn.Module):
    """A ResBlock optionally followed by spatial attention: ``(B, Cin, H, W) -> (B, Cout, H, W)``."""

    def __init__(self, cfg: UNetConfig, level: int, in_ch: int, out_ch: int, temb_dim: int) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, temb_dim, cfg.groups, cfg.dropout)
        self.attn = _attention(cfg, level, out_ch)

    def forward(self, x, temb, context=None, context_mask=None) -> torch.Tensor:
        x = self.res(x, temb)
        return x if self.attn is None else self.attn(x, context, context_mask)


class UNetEncoder(nn.Module):
    """The encoder half: time embedding, ``conv_in``, down levels and the middle block.

    ``forward(x (B, C, H, W), t (B,), context, context_mask, hint=None) -> (mid (B, Cm, h, w),
    skips [(B, Ci, Hi, Wi)], temb (B, T))``. ``hint`` ``(B, channels, H / p, W / p)`` is added to
    ``conv_in``'s output (ControlNet's entry point for the control map). With ``pooled_text`` the
    masked mean of ``context`` is embedded and added to the timestep embedding. ``skip_channels``
    lists each skip's width, in the order they are produced.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        ch = cfg.channels
        temb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.text_embed = None
        if cfg.pooled_text:
            if not cfg.context_dim:
                raise ValueError("pooled_text=True needs a text context (context_dim > 0)")
            self.text_embed = nn.Sequential(
                nn.Linear(cfg.context_dim, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim)
            )
        self.conv_in = nn.Conv2d(cfg.in_channels * cfg.patch_size**2, ch, 3, padding=1)
        self.down = nn.ModuleList()
        self.skip_channels = [ch]
        width = ch
        for level, mult in enumerate(cfg.channel_mult):
            stages = nn.ModuleList()
            for _ in range(cfg.res_blocks):
                stages.append(Stage(cfg, level, width, ch * mult, temb_dim))
                width = ch * mult
                self.skip_channels.append(width)
            sample = Downsample(width) if level < len(cfg.channel_mult) - 1 else None
            if sample is not None:
                self.skip_channels.append(width)
            self.down.append(nn.ModuleDict({"stages": stages, **({"downsample": sample} if sample else {})}))
        self.mid_res1 = ResBlock(width, width, temb_dim, cfg.groups, cfg.dropout)
        self.mid_attn = SpatialAttention(width, cfg.heads, cfg.groups, True, cfg.context_dim or None)
        self.mid_res2 = ResBlock(width, width, temb_dim, cfg.groups, cfg.dropout)
        self.mid_channels = width
        self.cfg = cfg

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        hint: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        context, context_mask = pad_text(context, context_mask)  # a no-op when the U-Net padded it already
        temb = self.time_embed(timestep_embedding(t, self.cfg.channels))
        if self.text_embed is not None:
            if context is None:
                raise ValueError("this U-Net adds the pooled text to the timestep: pass context and context_mask")
            temb = temb + self.text_embed(masked_mean(context, context_mask))
        if self.cfg.patch_size > 1:
            x = F.pixel_unshuffle(x, self.cfg.patch_size)
        h = self.conv_in(x)
        if hint is not None:
            h = h + hint
        skips = [h]
        for level in self.down:
            for stage in level["stages"]:
                h = stage(h, temb, context, context_mask)
                skips.append(h)
            if "downsample" in level:
                h = level["downsample"](h)
                skips.append(h)
        h = self.mid_res1(h, temb)
        h = self.mid_attn(h, context, context_mask)
        h = self.mid_res2(h, temb)
        return h, skips, temb


class UNet(nn.Module):
    """Denoiser ``f(x_t, t, text)`` (eps or v): ``(B, C, H, W), (B,), (B, L, Dc), (B, L) bool -> (B, C_out, H, W)``.

    ``H`` and ``W`` must be divisible by ``2 ** (levels - 1)``. ``control`` adds
    ControlNet residuals: one tensor per skip connection (same shapes as the skips,
    in production order) and one for the middle block's output.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = UNetEncoder(cfg)
        ch, temb_dim = cfg.channels, 4 * cfg.channels
        skip_channels = list(self.encoder.skip_channels)
        width = self.encoder.mid_channels
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            out = ch * cfg.channel_mult[level]
            stages = nn.ModuleList()
            for _ in range(cfg.res_blocks + 1):
                stages.append(Stage(cfg, level, width + skip_channels.pop(), out, temb_dim))
                width = out
            sample = Upsample(width) if level > 0 else None
            self.up.append(nn.ModuleDict({"stages": stages, **({"upsample": sample} if sample else {})}))
        self.norm_out = nn.GroupNorm(cfg.groups, width)
        self.conv_out = nn.Conv2d(width, cfg.out_channels * cfg.patch_size**2, 3, padding=1)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        control: tuple[list[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        factor = self.cfg.downsample_factor
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(
                f"x: expected (B, {self.cfg.in_channels}, H, W) with H and W divisible by {factor}, "
                f"got {tuple(x.shape)}"
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"t: expected shape ({x.shape[0]},), got {tuple(t.shape)}")
        context, context_mask = pad_text(context, context_mask)
        h, skips, temb = self.encoder(x, t, context, context_mask)
        if control is not None:
            residuals, mid = control
            if len(residuals) != len(skips):
                raise ValueError(f"control: expected {len(skips)} skip residuals, got {len(residuals)}")
            skips = [s + r for s, r in zip(skips, residuals)]
            h = h + mid
        for level in self.up:
            for stage in level["stages"]:
                h = stage(torch.cat([h, skips.pop()], dim=1), temb, context, context_mask)
            if "upsample" in level:
                h = level["upsample"](h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, self.cfg.patch_size) if self.cfg.patch_size > 1 else out


__all__ = [
    "Downsample",
    "ResBlock",
    "SpatialAttention",
    "Stage",
    "UNet",
    "UNetConfig",
    "UNetEncoder",
    "Upsample",
    "pad_text",
    "timestep_embedding",
    "zero_module",
]
