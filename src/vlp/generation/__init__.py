"""Text-to-image generation: a text-conditioned diffusion U-Net, DDIM sampling, classifier-free guidance, ControlNet.

- :mod:`~vlp.generation.unet`: the U-Net (ResBlocks with timestep embedding, self- and cross-attention to text).
- :mod:`~vlp.generation.diffusion`: noise schedules, DDPM loss, DDIM sampler, guidance.
- :mod:`~vlp.generation.controlnet`: the trainable encoder copy joined by zero-initialised convs.
- :mod:`~vlp.generation.model`: :class:`TextToImageModel` (vlp text encoder + U-Net), save / load.
- :mod:`~vlp.generation.data`: ShapesWorld scenes rendered on the fly, captions, layout / edge maps, and any
  caption dataset of :mod:`vlp.data` as training batches.
- :mod:`~vlp.generation.train`: recipes, run on the training engine (``vlp train-generation``).
- :mod:`~vlp.generation.evaluate`: attribute accuracy, layout IoU and CLIP-score (``vlp eval generation``), or
  CLIP-score on the captions of any caption dataset.

Submodules are imported on first use so that ``vlp --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "TextToImageConfig": "vlp.generation.model",
    "TextToImageModel": "vlp.generation.model",
    "load_generator": "vlp.generation.model",
    "save_generator": "vlp.generation.model",
    "UNet": "vlp.generation.unet",
    "UNetConfig": "vlp.generation.unet",
    "ControlNet": "vlp.generation.controlnet",
    "ControlConfig": "vlp.generation.controlnet",
    "DiffusionConfig": "vlp.generation.diffusion",
    "NoiseSchedule": "vlp.generation.diffusion",
    "ddim_sample": "vlp.generation.diffusion",
    "train_generation": "vlp.generation.train",
    "load_generation_recipe": "vlp.generation.train",
    "evaluate_generation": "vlp.generation.evaluate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlp.generation' has no attribute {name!r}")


__all__ = sorted(_LAZY)
