"""The text-to-image model: a vlp text encoder conditions a diffusion U-Net through cross-attention.

``TextToImageModel(cfg)`` holds ``text`` (a vlp text encoder, e.g. the ``bert``
part, trained jointly or frozen), ``unet`` (:class:`~vlp.generation.unet.UNet`
attending to all text tokens), ``null_context`` (the learned "no prompt" token
used for classifier-free guidance), the noise ``schedule`` and, optionally,
``control`` (a :class:`~vlp.generation.controlnet.ControlNet`).

Training (``forward(batch) -> (loss, logs)``, the vlp training contract) drops
each caption with probability ``cond_drop``, replacing its tokens by the null
token, so one network learns both the conditional and the unconditional noise
prediction. A model folder holds ``model.safetensors``, ``recipe.yaml`` (whose
``model`` section is this config) and the tokenizer files; loading never unpickles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import vlp.text  # noqa: F401  registers the text parts
from vlp.config import ConfigError, build, from_dict, read_yaml
from vlp.generation.controlnet import ControlConfig, ControlNet
from vlp.generation.data import GenerationBatch
from vlp.generation.diffusion import DiffusionConfig, NoiseSchedule, ddim_sample, ddpm_loss, guided
from vlp.generation.unet import UNet, UNetConfig
from vlp.interop.bert import text_encoder_from_pretrained
from vlp.io.saving import RECIPE_NAME, WEIGHTS_NAME, load, load_tokenizer, load_weights, save_pretrained
from vlp.text.config import TextConfig
from vlp.text.encoder import BertTextConfig


def _tiny_text() -> BertTextConfig:
    return BertTextConfig(vocab_size=400, dim=64, layers=2, heads=4, mlp_dim=256, max_positions=64, dropout=0.0)


@dataclass
class TextToImageConfig:
    """A text-conditioned pixel-space diffusion model (the ``model`` section of a generation recipe)."""

    name: str = "t2i"
    image_size: int = 32
    text: TextConfig = field(default_factory=_tiny_text)
    # initialise the text tower (and take the tokenizer) from a vlp model folder or a transformers BERT
    # folder; used once when training starts, the trained weights are then saved with the model
    text_from: str = ""
    freeze_text: bool = False  # keep the text tower fixed (a pretrained dual-encoder tower)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    cond_drop: float = 0.1  # probability of training a caption as the null prompt (classifier-free guidance)
    control: ControlConfig | None = None  # ControlNet branch; the rest of the model is frozen when set

    def __post_init__(self) -> None:
        if not 0.0 <= self.cond_drop < 1.0:
            raise ValueError(f"cond_drop={self.cond_drop}: expected a probability in [0, 1)")
        if self.image_size % self.unet.downsample_factor:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by the U-Net's downsample factor "
                f"{self.unet.downsample_factor} (patch_size * 2 ** (levels - 1))"
            )


class TextToImageModel(nn.Module):
    """Text-conditioned DDPM (eps or v prediction) with DDIM sampling and classifier-free guidance.

    Images are ``(B, 3, H, W)`` in [-1, 1]; text is ``input_ids (B, L)`` long with a keep-mask
    ``attention_mask (B, L)`` bool (True = real token); control maps ``(B, 3, H, W)`` in [0, 1].
    ``tokenizer`` (a :class:`vlp.text.Tokenizer`, not a module) may be attached for :meth:`generate`.
    """

    def __init__(self, cfg: TextToImageConfig) -> None:
        super().__init__()
        self.text = build(cfg.text)
        self.unet = UNet(dataclasses.replace(cfg.unet, context_dim=self.text.dim))
        self.null_context = nn.Parameter(torch.zeros(1, self.text.dim))
        self.schedule = NoiseSchedule(cfg.diffusion)
        self.control: ControlNet | None = None
        self.tokenizer: Any = None
        self.cfg = dataclasses.replace(cfg, control=None)
        if cfg.freeze_text:
            self.text.requires_grad_(False)
        if cfg.control is not None:
            self.add_control(cfg.control)

    # ----------------------------------------------------------------- ControlNet
    def add_control(self, cfg: ControlConfig) -> ControlNet:
        """Attach a ControlNet copied from the current U-Net and freeze everything else (text, U-Net, null token)."""
        if self.control is not None:
            raise RuntimeError("this model already has a control branch")
        for p in self.parameters():
            p.requires_grad_(False)
        self.control = ControlNet(self.unet, cfg)
        self.cfg = dataclasses.replace(self.cfg, control=cfg)
        return self.control

    def train(self, mode: bool = True) -> TextToImageModel:
        super().train(mode)
        # frozen parts stay in eval mode (no dropout): they are fixed functions, not being trained
        if self.cfg.freeze_text or self.control is not None:
            self.text.eval()
        if self.control is not None:
            self.unet.eval()
        return self

    # ----------------------------------------------------------------- conditioning
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text tokens ``(B, L, D)`` for the U-Net to attend to."""
        if self.cfg.freeze_text or self.control is not None:
            with torch.no_grad():
                return self.text(input_ids, attention_mask)
        return self.text(input_ids, attention_mask)

    def condition(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, drop: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context (B, L, D), mask (B, L))``; rows where ``drop`` (B,) bool is True become the null prompt.

        A null row holds ``null_context`` at position 0 and masks out every other position,
        so conditional and null rows share one padded batch.
        """
        context = self.encode_text(input_ids, attention_mask)
        if drop is None:
            return context, attention_mask
        # no shortcut when no row is dropped: null_context then gets a zero gradient, not none, as DDP needs
        # every rank to give every parameter a gradient (and the check would cost a device-to-host sync)
        b, length, _ = context.shape
        null = self.null_context.to(context.dtype).expand(b, length, -1)
        null_mask = torch.zeros_like(attention_mask)
        null_mask[:, 0] = True
        context = torch.where(drop[:, None, None], null, context)
        return context, torch.where(drop[:, None], null_mask, attention_mask)

    def predict(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        control: torch.Tensor | None = None,
        control_scale: float = 1.0,
    ) -> torch.Tensor:
        """The network's prediction ``(B, 3, H, W)`` for ``x_t``: the noise, or ``v`` when
        ``cfg.diffusion.prediction`` is ``v``. With a control branch and a ``control`` map, steered by it."""
        residuals = None
        if control is not None:
            if self.control is None:
                raise ValueError("a control map was given but this model has no control branch (model.control)")
            residuals = self.control(x_t, t, context, context_mask, control, control_scale)
        return self.unet(x_t, t, context, context_mask, residuals)

    # ----------------------------------------------------------------- training
    def forward(self, batch: GenerationBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DDPM loss on ``batch`` with caption dropout; returns ``(loss, {"loss": ...})``."""
        if self.control is not None and batch.control is None:
            raise ValueError(f"this model trains a {self.cfg.control.kind} control branch: the batch has no control")
        b = batch.images.shape[0]
        drop = None
        if self.training and self.cfg.cond_drop > 0:
            drop = torch.rand(b, device=batch.images.device) < self.cfg.cond_drop
        context, mask = self.condition(batch.input_ids, batch.attention_mask, drop)
        control = batch.control if self.control is not None else None
        loss = ddpm_loss(lambda x, t: self.predict(x, t, context, mask, control), self.schedule, batch.images)
        return loss, {"loss": loss.detach()}

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        steps: int = 50,
        guidance: float = 3.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        control: torch.Tensor | None = None,
        control_scale: float = 1.0,
        progress: bool = False,
    ) -> torch.Tensor:
        """DDIM samples ``(B, 3, H, W)`` in [-1, 1], one per row of ``input_ids``.

        ``guidance`` is the classifier-free guidance scale ``s`` in
        ``out_uncond + s (out_cond - out_uncond)``: 1 = purely conditional, 0 = unconditional;
        for ``s != 1`` the conditional and null rows run as one batch of ``2B``.
        """
        b = input_ids.shape[0]
        context, mask = self.condition(input_ids, attention_mask)
        if guidance != 1.0:
            null_ctx, null_mask = self.condition(
                input_ids, attention_mask, torch.ones(b, dtype=torch.bool, device=input_ids.device)
            )
            context, mask = torch.cat([context, null_ctx]), torch.cat([mask, null_mask])
            control = torch.cat([control, control]) if control is not None else None

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if guidance == 1.0:
                return self.predict(x, t, context, mask, control, control_scale)
            both = self.predict(torch.cat([x, x]), torch.cat([t, t]), context, mask, control, control_scale)
            cond, uncond = both.chunk(2)
            return guided(cond, uncond, guidance)

        size = self.cfg.image_size
        device = input_ids.device
        return ddim_sample(
            model_fn, self.schedule, (b, 3, size, size), steps, eta, generator, device, progress=progress
        )

    def generate(
        self,
        prompts: list[str],
        samples: int = 1,
        seed: int = 0,
        control: torch.Tensor | None = None,
        tokenizer: Any = None,
        **sample_kwargs: Any,
    ) -> torch.Tensor:
        """``samples`` images per prompt, ``(len(prompts) * samples, 3, H, W)`` in [-1, 1], prompt-major.

        ``control`` is one map per prompt ``(P, 3, H, W)``. Seeded: the same seed gives the same images.
        """
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("generate needs a tokenizer: pass tokenizer= or load the model with load_generator")
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts: expected a non-empty list of strings")
        repeated = [p for p in prompts for _ in range(samples)]
        device = self.null_context.device
        tokens = tokenizer(repeated, max_length=self.text.cfg.max_positions).to(device)
        if control is not None:
            if control.shape[0] != len(prompts):
                raise ValueError(f"control: expected one map per prompt ({len(prompts)}), got {control.shape[0]}")
            control = control.to(device).repeat_interleave(samples, dim=0)
        generator = torch.Generator(device=device).manual_seed(seed)
        return self.sample(
            tokens.input_ids, tokens.attention_mask, generator=generator, control=control, **sample_kwargs
        )


# --------------------------------------------------------------------------- folders


def save_generator(model: TextToImageModel, folder: str | Path, recipe: Any = None, overwrite: bool = False) -> Path:
    """Write ``model.safetensors``, ``recipe.yaml`` (with ``model`` = the model's config) and the tokenizer."""
    return save_pretrained(model, folder, recipe=recipe, tokenizer=model.tokenizer, overwrite=overwrite)


def load_generator(folder: str | Path, device: str | torch.device = "cpu") -> TextToImageModel:
    """The model saved by :func:`save_generator` (weights loaded strictly, tokenizer attached, eval mode)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: model folder not found")
    path = folder / RECIPE_NAME
    data = read_yaml(path)
    if "model" not in data:
        raise ConfigError(f"{path}: has no 'model' section")
    if "unet" not in (data["model"] or {}):
        raise ConfigError(f"{path}: model section has no 'unet': not a text-to-image model folder")
    cfg = from_dict(TextToImageConfig, data["model"], f"{path}:model")
    model = TextToImageModel(cfg)
    load_weights(model, folder / WEIGHTS_NAME)
    model.tokenizer = load_tokenizer(folder)
    return model.to(device).eval()


def load_text_tower(folder: str | Path) -> tuple[nn.Module, Any]:
    """``(text encoder, tokenizer)`` from a vlp model folder (``recipe.yaml``) or a transformers BERT folder."""
    folder = Path(folder)
    if (folder / "recipe.yaml").is_file():
        source = load(folder)
        if getattr(source, "text", None) is None:
            raise ConfigError(f"{folder}: this vlp model has no text encoder to condition on")
        return source.text, load_tokenizer(folder)
    if (folder / "config.json").is_file():
        return text_encoder_from_pretrained(folder)
    raise ConfigError(
        f"model.text_from={str(folder)!r}: expected a vlp model folder (recipe.yaml) or a transformers BERT "
        "folder (config.json)"
    )


__all__ = [
    "TextToImageConfig",
    "TextToImageModel",
    "load_generator",
    "load_text_tower",
    "save_generator",
]
