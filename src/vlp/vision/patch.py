"""Patch (ViT) visual encoder, type ``"patch"``: ViT, CLIP-ViT, and ViLT's embeddings-only variant.

Images ``(B, 3, H, W)`` are cut into ``patch_size`` squares by a strided conv,
optionally prefixed by a learned [CLS] token, given learned or fixed 2-D sin-cos
position embeddings, and (if ``layers > 0``) run through a pre-norm transformer.
``layers: 0`` keeps only the embeddings; ViLT lets its fusion transformer do the rest.

Parameter names follow timm's VisionTransformer so checkpoint import is a rename:

==================  ==========================  ==============================
vlp                 timm ViT                    OpenAI / OpenCLIP ``visual.``
==================  ==========================  ==============================
patch_embed         patch_embed.proj            conv1 (``patch_bias: false``)
cls_token (1,1,D)   cls_token                   class_embedding (D,)
pos_embed (1,N,D)   pos_embed                   positional_embedding (N, D)
norm_pre            norm_pre                    ln_pre (``pre_norm: true``)
transformer.layers  blocks (qkv/proj/fc1/fc2)   transformer.resblocks (in_proj/out_proj/c_fc/c_proj)
norm                norm                        ln_post
==================  ==========================  ==============================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, part
from vlp.core.outputs import VisualTokens
from vlp.data.batch import Batch
from vlp.layers.block import Transformer
from vlp.layers.linear import inference_fast_path, linear, training_fast_path
from vlp.layers.positions import grid_positions, pair, resize_grid_embedding, sincos_2d
from vlp.vision.base import VisualEncoder, grid_token_positions, images_of
from vlp.vision.config import VisionConfig
from vlp.vision.conv_stem import ConvStem

ACTIVATIONS = ("gelu", "quick_gelu", "gelu_tanh", "relu")


@dataclass
class PatchConfig(VisionConfig):
    """A ViT image tower. ``mlp_dim: 0`` means ``4 * dim``; ``layers: 0`` = embeddings only."""

    type: str = "patch"
    image_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_channels: int = 3
    dim: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 0
    act: str = "gelu"  # gelu | quick_gelu (OpenAI CLIP) | gelu_tanh | relu
    cls_token: bool = True
    pos: Literal["learned", "sincos"] = "learned"
    pre_norm: bool = False  # LayerNorm on the embeddings before the blocks (CLIP's ln_pre)
    final_norm: bool = True  # LayerNorm after the blocks (ViT's norm, CLIP's ln_post)
    patch_bias: bool = True  # CLIP's conv1 has no bias
    eps: float = 1e-6
    dropout: float = 0.0
    attn_dropout: float = 0.0
    # how learned positions are resized for another image size: bicubic with antialias (timm, OpenCLIP),
    # bicubic without it ("bicubic_plain": transformers' interpolate_pos_encoding of CLIP, BLIP, ViT; the
    # two differ at every new size, as PyTorch's antialiased bicubic uses another kernel), or ViLT's
    # bilinear with align_corners=True ("bilinear_corners")
    pos_resize: Literal["bicubic", "bicubic_plain", "bilinear_corners"] = "bicubic"
    # channels of stride-1 3x3 conv + BN + ReLU layers run before the patchify conv (empty = plain
    # ViT); see vlp.vision.conv_stem. The patchify conv then reads conv_stem[-1] channels.
    conv_stem: list[int] = dataclasses.field(default_factory=list)
    # dense_features: MaskCLIP's last-layer "values" (for [CLS]/attention-pooled embeddings), or the final
    # "tokens" themselves (for models whose image embedding is the max over tokens, model.image_pool: max:
    # each token then lives in the space the embedding is picked from, as in CAM)
    dense: Literal["values", "tokens"] = "values"
    # initial per-channel scale of each block's residual branches (OpenCLIP's ls_init_value); None = off
    layer_scale: float | None = None

    def __post_init__(self) -> None:
        height, width = pair(self.image_size, "image_size")
        if self.patch_size <= 0 or height % self.patch_size or width % self.patch_size:
            raise ConfigError(
                f"patch.image_size {self.image_size} must be a multiple of patch.patch_size {self.patch_size}"
            )
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"patch.act: expected one of {list(ACTIVATIONS)}, got {self.act!r}")
        if self.layers < 0:
            raise ConfigError(f"patch.layers: expected >= 0, got {self.layers}")
        if self.layers and self.dim % self.heads:
            raise ConfigError(f"patch.dim {self.dim} is not divisible by patch.heads {self.heads}")
        if self.pos == "sincos" and self.dim % 4:
            raise ConfigError(f"patch.dim {self.dim} must be divisible by 4 for pos: sincos")
        if self.dense not in ("values", "tokens"):
            raise ConfigError(f"patch.dense: expected 'values' or 'tokens', got {self.dense!r}")
        if not isinstance(self.conv_stem, (list, tuple)) or any(
            not isinstance(c, int) or c < 1 for c in self.conv_stem
        ):
            raise ConfigError(f"patch.conv_stem: expected a list of positive channel counts, got {self.conv_stem!r}")


class PatchEncoder(VisualEncoder):
    """ViT encoder: ``forward(batch_or_images (B, 3, H, W)) -> VisualTokens``.

    Returns tokens ``(B, prefix + h*w, D)`` batch-first with ``h = H / patch_size``,
    ``w = W / patch_size``, a keep-mask ``(B, N)`` that is all ``True``, and positions
    ``(B, N, 2)``: the normalized ``(row, col)`` centre of each patch in ``(0, 1)``
    (see :func:`vlp.layers.positions.grid_positions`), and ``(-1, -1)`` for [CLS].
    Images of another size than ``config.image_size`` get bicubic-resized learned
    position embeddings (or freshly computed sin-cos ones).
    """

    def __init__(self, config: PatchConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.patch_size = config.patch_size
        self.grid_size = self._grid_of(pair(config.image_size, "image_size"))
        self.num_prefix_tokens = 1 if config.cls_token else 0
        # only models with a conv stem have the `stem` submodule, so plain ViT checkpoints keep their names
        self.stem = ConvStem(config.in_channels, list(config.conv_stem)) if config.conv_stem else None
        patch_in = self.stem.out_channels if self.stem is not None else config.in_channels
        self.patch_embed = nn.Conv2d(
            patch_in, config.dim, config.patch_size, stride=config.patch_size, bias=config.patch_bias
        )
        if config.cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        else:
            self.register_parameter("cls_token", None)
        self._set_pos_embed(self._initial_pos_embed(self.grid_size))
        self.pos_drop = nn.Dropout(config.dropout)
        self.norm_pre = nn.LayerNorm(config.dim, eps=config.eps) if config.pre_norm else nn.Identity()
        self.transformer = (
            Transformer(
                config.dim,
                config.layers,
                config.heads,
                mlp_dim=config.mlp_dim or 4 * config.dim,
                norm_first=True,
                act=config.act,
                dropout=config.dropout,
                attn_dropout=config.attn_dropout,
                eps=config.eps,
                layer_scale=config.layer_scale,
            )
            if config.layers
            else None
        )
        self.norm = nn.LayerNorm(config.dim, eps=config.eps) if config.final_norm else nn.Identity()

    def _grid_of(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return image_hw[0] // self.patch_size, image_hw[1] // self.patch_size

    def _initial_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        if self.config.pos == "sincos":
            return sincos_2d(grid, self.dim, num_prefix_tokens=self.num_prefix_tokens).unsqueeze(0)
        table = torch.zeros(1, self.num_prefix_tokens + grid[0] * grid[1], self.dim)
        return nn.init.trunc_normal_(table, std=0.02)

    def _set_pos_embed(self, table: torch.Tensor) -> None:
        """Learned tables are parameters; fixed sin-cos ones are buffers not saved in checkpoints."""
        if hasattr(self, "pos_embed"):
            delattr(self, "pos_embed")
        if self.config.pos == "learned":
            self.pos_embed = nn.Parameter(table)
        else:
            self.register_buffer("pos_embed", table, persistent=False)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """``(1, prefix + h*w, D)`` position embeddings for an ``h x w`` patch grid."""
        if grid == self.grid_size:
            return self.pos_embed
        if self.config.pos == "sincos":
            table = sincos_2d(grid, self.dim, num_prefix_tokens=self.num_prefix_tokens)
            return table.to(self.pos_embed.device).unsqueeze(0)
        if self.config.pos_resize == "bilinear_corners":
            return self._resize_bilinear_corners(grid)
        antialias = self.config.pos_resize != "bicubic_plain"
        return resize_grid_embedding(self.pos_embed, self.grid_size, grid, self.num_prefix_tokens, antialias=antialias)

    def _resize_bilinear_corners(self, grid: tuple[int, int]) -> torch.Tensor:
        """ViLT's rule: the grid part bilinearly resized with ``align_corners=True``, prefix kept."""
        prefix = self.pos_embed[:, : self.num_prefix_tokens]
        cells = self.pos_embed[:, self.num_prefix_tokens :]
        image = cells.transpose(1, 2).reshape(1, self.dim, *self.grid_size)
        image = F.interpolate(image, size=grid, mode="bilinear", align_corners=True)
        return torch.cat([prefix, image.flatten(2).transpose(1, 2)], dim=1)

    @torch.no_grad()
    def resize_positions(self, new_image_size: int | tuple[int, int]) -> None:
        """Permanently switch to ``new_image_size`` (e.g. fine-tuning at 384 after pretraining at 224).

        The learned grid is bicubic-resized (the [CLS] position is kept); ``config.image_size``
        is updated so that a saved config matches the saved weights. Call this before
        building the optimizer: the learned table becomes a new parameter.
        """
        image_hw = pair(new_image_size, "new_image_size")
        self.config = dataclasses.replace(self.config, image_size=new_image_size)  # re-validates divisibility
        grid = self._grid_of(image_hw)
        old = self.pos_embed
        table = self.position_embedding(grid).detach().clone()
        self.grid_size = grid
        self._set_pos_embed(table.to(device=old.device, dtype=old.dtype))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if self.transformer is not None:
            self.transformer.grad_checkpointing = enable

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, D, h, w)``: the conv stem (if any), then the patchify conv."""
        if self.stem is not None:
            images = self.stem(images)
        if self._patchify_as_gemm(images):
            return self._patchify_gemm(images)
        return self.patch_embed(images)

    def _patchify_as_gemm(self, images: torch.Tensor) -> bool:
        conv = self.patch_embed
        plain = (
            type(conv) is nn.Conv2d
            and conv.kernel_size == conv.stride
            and conv.padding == (0, 0)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.weight.dtype == images.dtype
            and images.dim() == 4
            and images.shape[-2] % conv.stride[0] == 0
            and images.shape[-1] % conv.stride[1] == 0
        )
        return plain and (inference_fast_path(images) or training_fast_path(images, conv.weight.flatten(1)))

    def _patchify_gemm(self, images: torch.Tensor) -> torch.Tensor:
        """The patchify conv as one GEMM, for inference and for training on CPU: ``(B, C, H, W) -> (B, D, h, w)``.

        Its kernel equals its stride, so the conv is a matmul of non-overlapping patches, each flattened in the
        weight's (C, kh, kw) order, by the (D, C*kh*kw) weight: one reshaping copy of the images, then a
        :func:`~vlp.layers.linear.linear` (bias included; oneDNN's GEMM). At CLIP-B/32 on 2 threads this beats
        oneDNN's direct conv in inference (about 37 ms against 47 ms for 32 images), and in training its weight
        gradient is one GEMM (about 5 ms for 8 images) where the conv's backward took about 70 ms. The result is
        returned as a ``(B, D, h, w)`` view of ``(B, h*w, D)`` rows, so the caller's flatten and transpose to
        tokens copy nothing.
        """
        conv = self.patch_embed
        (ph, pw), dim = conv.kernel_size, conv.out_channels
        batch, channels, height, width = images.shape
        h, w = height // ph, width // pw
        patches = images.reshape(batch, channels, h, ph, w, pw).permute(0, 2, 4, 1, 3, 5)
        rows = linear(patches.reshape(batch * h * w, -1), conv.weight.reshape(dim, -1), conv.bias)
        return rows.view(batch, h, w, dim).permute(0, 3, 1, 2)

    def forward(self, batch_or_images: Batch | torch.Tensor) -> VisualTokens:
        images = images_of(batch_or_images, "patch encoder", self.config.in_channels)
        batch = images.shape[0]
        x, grid = self._embed(images)
        if self.transformer is not None:
            x = self.transformer(x)
        x = self.norm(x)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        positions = grid_token_positions(grid_positions(grid, x.device), batch, self.num_prefix_tokens)
        return VisualTokens(tokens=x, mask=mask, positions=positions)

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(B, C, H, W) -> ((B, prefix + h*w, D), (h, w))``: patches, [CLS], positions, ``norm_pre``."""
        batch, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"patch encoder: image size {height}x{width} is not a multiple of patch_size {self.patch_size}"
            )
        x = self.embed_patches(images)  # (B, D, h, w)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D), raster order
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.to(x.dtype).expand(batch, -1, -1), x], dim=1)
        x = x + self.position_embedding(grid).to(x.dtype)
        return self.norm_pre(self.pos_drop(x)), grid

    def prefix_tokens(self, batch_or_images: Batch | torch.Tensor) -> torch.Tensor:
        """The final prefix tokens ``(B, prefix, D)`` ([CLS]): ``forward(...).tokens[:, :prefix]``, computing less.

        The last block runs for the prefix queries only (every patch still gives keys and values) and the
        final norm reads the prefix only: what a [CLS]-pooled image embedding needs, for about 1/12 less
        work in a 12-layer ViT-B/32. Needs a [CLS] token.
        """
        if not self.num_prefix_tokens:
            raise ValueError("prefix_tokens needs a prefix token (patch.cls_token: true)")
        images = images_of(batch_or_images, "patch encoder", self.config.in_channels)
        x, _ = self._embed(images)
        if self.transformer is None:
            return self.norm(x[:, : self.num_prefix_tokens])
        index = torch.arange(self.num_prefix_tokens, device=x.device).expand(x.shape[0], -1)
        return self.norm(self.transformer.forward_at(x, index))

    def dense_features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """MaskCLIP's dense patch features: ``(B, 3, H, W) -> ((B, h*w, D), (h, w))``, raster order.

        The layers before the last run as usual; in the last layer only the value path is kept
        (``out(v(norm1(x)))``: no query-key attention, no residual, no MLP), then the final norm.
        Each patch keeps its own content instead of the image-level summary attention mixes in,
        which is what makes patch-text similarity a localization map (Zhou et al., 2022).
        Prefix tokens ([CLS]) are dropped. Needs ``layers >= 1``. With ``dense: tokens`` the output
        is the encoder's own final tokens (for max-pooled image embeddings).
        """
        if self.transformer is None:
            raise ValueError("dense_features needs a patch encoder with transformer layers (layers >= 1)")
        images = images_of(images, "patch encoder", self.config.in_channels)
        if self.config.dense == "tokens":
            grid = self._grid_of((images.shape[-2], images.shape[-1]))
            return self(images).tokens[:, self.num_prefix_tokens :], grid
        batch = images.shape[0]
        x = self.embed_patches(images)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.to(x.dtype).expand(batch, -1, -1), x], dim=1)
        x = self.norm_pre(x + self.position_embedding(grid).to(x.dtype))
        *body, last = self.transformer.layers
        for layer in body:
            x = layer(x)
        value = last.attn.qkv(last.norm1(x)).chunk(3, dim=-1)[2]  # heads concatenated = the unsplit v
        value = last.attn.out(value)
        x = self.norm(last.ls1(value) if last.ls1 is not None else value)
        return x[:, self.num_prefix_tokens :], grid


part(VisionConfig, "patch", PatchEncoder)(PatchConfig)

__all__ = ["PatchConfig", "PatchEncoder"]
